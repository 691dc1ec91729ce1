"""FlexLoRA server aggregation: fedlora's factored SVD vs the dense-SVD reference, in one run.

    python benchmarks/aggregation.py            # LLaMA-7B-shaped round: 32 layers x q,k,v,o (4096 x 4096)
    python benchmarks/aggregation.py --quick    # smoke run: 2 layers of 2048 x 2048
    python benchmarks/aggregation.py --threads 1  # one intra-op thread (steadier on a shared machine)

A round: 10 clients, ranks drawn (seeded) from {4, 8, 16, 32, 64}, alpha 16 (so the scales differ),
n_k drawn from [50, 500]. Per module the server must produce every client's rank-r_k factors of
ΔW = Σ p_k s_k B_k A_k.

- factored (fedlora): ``flexlora_aggregate`` (QR of the stacked factors + R x R SVD; float64 math,
  float32 storage) and ``flexlora_client_factors`` per client. Timed on every module.
- dense reference (what the official FlexLoRA release does): form ΔW in float32, then
  ``torch.linalg.svd(ΔW)`` (full matrices) and slice U S, Vh per client. It is slow (~16 s per
  4096² module on 2 idle cores, several times more on a loaded machine), so it is timed on a sample
  of modules and scaled to the whole round. On ``--exact-sample`` modules both are also compared
  with a float64 dense SVD, the exact yardstick (the float32 reference has errors of its own).

Peak memory: each variant runs on one module in a child process (after a warm-up module of the
same size, so one-off library buffers are not counted against either); the child resets the
kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5) after building its inputs and reports
``VmHWM - VmRSS``: the bytes the aggregation added at its peak, torch and LAPACK allocations
included. glibc's mmap threshold is fixed so that freed blocks go back to the kernel.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

from fedlora.lora.factors import LoraFactors
from fedlora.strategies.flexlora import flexlora_aggregate, flexlora_client_factors

RANK_LEVELS = (4, 8, 16, 32, 64)
ALPHA = 16.0


def round_setup(num_clients: int, seed: int) -> tuple[list[int], list[float]]:
    """Client ranks and weights p_k = n_k / Σ n_j, seeded."""
    gen = torch.Generator().manual_seed(seed)
    ranks = [RANK_LEVELS[int(i)] for i in torch.randint(len(RANK_LEVELS), (num_clients,), generator=gen)]
    counts = torch.randint(50, 501, (num_clients,), generator=gen).double()
    return ranks, (counts / counts.sum()).tolist()


def module_factors(index: int, ranks: list[int], d: int, seed: int) -> list[LoraFactors]:
    """Trained-looking factors of one module: A ~ U(±1/√d) (PEFT init), B ~ N(0, 0.01²)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + index)
    bound = 1 / math.sqrt(d)
    return [LoraFactors(torch.rand(r, d, generator=gen) * 2 * bound - bound, 0.01 * torch.randn(d, r, generator=gen), ALPHA) for r in ranks]


def factored(factors: list[LoraFactors], weights: list[float]) -> list[LoraFactors]:
    g, _ = flexlora_aggregate(factors, weights)
    return [flexlora_client_factors(g, f.rank, ALPHA, 0, "m") for f in factors]


def dense_reference(factors: list[LoraFactors], weights: list[float]) -> list[LoraFactors]:
    W = torch.zeros(factors[0].d_out, factors[0].d_in)
    for f, w in zip(factors, weights):
        W += w * f.scale * (f.B @ f.A)
    U, S, Vh = torch.linalg.svd(W)  # full_matrices=True, float32, CPU: as the official release
    return [LoraFactors(Vh[: f.rank].clone(), U[:, : f.rank] * (S[: f.rank] / f.scale), ALPHA) for f in factors]


def exact_reference(factors: list[LoraFactors], weights: list[float]) -> list[LoraFactors]:
    """Float64 dense SVD: the accuracy yardstick for both variants (slow, sampled)."""
    W = torch.zeros(factors[0].d_out, factors[0].d_in, dtype=torch.float64)
    for f, w in zip(factors, weights):
        W += w * f.scale * (f.B.double() @ f.A.double())
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return [LoraFactors(Vh[: f.rank], U[:, : f.rank] * (S[: f.rank] / f.scale), ALPHA) for f in factors]


def client_errors(got: list[LoraFactors], ref: list[LoraFactors]) -> list[float]:
    """||s B_j A_j - s B_j^ref A_j^ref||_F / ||s B_j^ref A_j^ref||_F per client, in float64."""
    out = []
    for g, r in zip(got, ref):
        dg, dr = g.delta(torch.float64), r.delta(torch.float64)
        out.append(float(torch.linalg.matrix_norm(dg - dr) / torch.linalg.matrix_norm(dr)))
    return out


CPU_SECONDS: list[float] = []  # process CPU time of each timed call (all threads), next to wall time


def timed(fn, *args):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    CPU_SECONDS.append(time.process_time() - cpu)
    return out, time.perf_counter() - start


def _proc_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(variant: str, d: int, num_clients: int, seed: int) -> None:
    """Run one variant on one module and print the peak bytes it added (JSON)."""
    ranks, weights = round_setup(num_clients, seed)
    factors = module_factors(0, ranks, d, seed)
    fn = factored if variant == "factored" else dense_reference
    fn(module_factors(1, ranks, d, seed), weights)  # warm-up module of the same size: steady-state peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _proc_kb("VmRSS")
    out = fn(factors, weights)
    peak = _proc_kb("VmHWM")
    print(json.dumps({"peak_bytes": (peak - base) * 1024, "outputs": len(out)}))


def peak_memory(variant: str, d: int, num_clients: int, seed: int) -> int:
    cmd = [sys.executable, __file__, "--child", variant, "--d", str(d), "--clients", str(num_clients), "--seed", str(seed),
           "--threads", str(torch.get_num_threads())]
    # Fixed glibc thresholds: every large block is mmap'd and unmapped on free, so freed memory is
    # not silently reused from the heap and RSS follows the live allocations.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def main_round(args: argparse.Namespace) -> None:
    modules = args.layers * 4
    ranks, weights = round_setup(args.clients, args.seed)
    print(f"round: {args.layers} layers x q,k,v,o = {modules} modules of {args.d} x {args.d}; {args.clients} clients, ranks {ranks}, "
          f"stacked rank R = {sum(ranks)}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average before the run: {open('/proc/loadavg').read().split()[:3]} (this machine is shared; "
          "factored and dense runs are interleaved so both see the same load)")
    warm = module_factors(10**6, ranks, 64, args.seed)
    factored(warm, weights), dense_reference(warm, weights)  # first LAPACK calls pay one-off setup costs
    fact_total, fact_cpu, errors, dense_times, dense_cpu, exact_errors = 0.0, 0.0, [], [], [], ([], [])
    for i in range(modules):
        factors = module_factors(i, ranks, args.d, args.seed)
        got, t = timed(factored, factors, weights)
        fact_total, fact_cpu = fact_total + t, fact_cpu + CPU_SECONDS[-1]
        if i < args.dense_sample:
            ref, td = timed(dense_reference, factors, weights)
            dense_times.append(td)
            dense_cpu.append(CPU_SECONDS[-1])
            errors += client_errors(got, ref)
            print(f"  module {i}: factored {t:.3f} s, dense reference {td:.1f} s, max client rel. error {max(client_errors(got, ref)):.2e}")
            if i < args.exact_sample:
                exact = exact_reference(factors, weights)
                exact_errors[0].extend(client_errors(got, exact))
                exact_errors[1].extend(client_errors(ref, exact))
                print(f"  module {i} vs a float64 dense SVD: factored max client rel. error {max(client_errors(got, exact)):.2e}, "
                      f"float32 dense reference {max(client_errors(ref, exact)):.2e}")
    dense_total = sum(dense_times) / len(dense_times) * modules
    print(f"factored SVD, all {modules} modules timed: {fact_total:.1f} s ({fact_total / modules * 1e3:.0f} ms/module)")
    print(f"dense SVD reference, {len(dense_times)} modules timed, scaled x{modules / len(dense_times):.0f}: {dense_total:.0f} s "
          f"({dense_total / modules:.1f} s/module)")
    print(f"time ratio dense / factored: {dense_total / fact_total:.0f}x wall clock, "
          f"{sum(dense_cpu) / len(dense_cpu) * modules / fact_cpu:.0f}x process CPU time")
    print(f"relative error of each client's rank-r_k update vs the dense reference: max {max(errors):.2e}, "
          f"median {sorted(errors)[len(errors) // 2]:.2e} over {len(errors)} client-modules")
    if exact_errors[0]:
        print(f"relative error vs a float64 dense SVD ({len(exact_errors[0])} client-modules): factored max {max(exact_errors[0]):.2e}, "
              f"float32 dense reference max {max(exact_errors[1]):.2e}")
    if args.skip_memory:
        return
    pf, pd = peak_memory("factored", args.d, args.clients, args.seed), peak_memory("dense", args.d, args.clients, args.seed)
    print(f"peak memory added by one module's aggregation (child process, VmHWM - VmRSS after clear_refs): "
          f"factored {pf / 2**20:.0f} MiB, dense {pd / 2**20:.0f} MiB, ratio {pd / max(pf, 1):.1f}x")


def main_scaling(args: argparse.Namespace) -> None:
    print(f"client scaling on one {args.d} x {args.d} module (factored path while R < {args.d}, dense fallback from R >= {args.d}):")
    for n in args.scaling:
        ranks, weights = round_setup(n, args.seed + n)
        factors = module_factors(0, ranks, args.d, args.seed)
        g, t = timed(flexlora_aggregate, factors, weights)
        path = "factored" if sum(ranks) < args.d else "dense fallback (ΔW accumulated, SVD of d x d)"
        print(f"  {n:5d} clients: R = {sum(ranks):6d}, {t:7.2f} s wall ({CPU_SECONDS[-1]:7.2f} s CPU), {path}, global rank {g.rank}")
        del factors, g
    print(f"load average after the run: {open('/proc/loadavg').read().split()[:3]}")


def trained_like(n: int, d: int, r: int, shared: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    """Client factors of a federation trained from one global model: a global update with a decaying
    spectrum over ``G = 4 x shared`` directions (singular values 1 .. 1e-4, geometric); each client's
    rank-``r`` factors hold ``r`` of those directions (a seeded random subset) plus 1e-5 noise. (A sum
    of independent random factors has a flat spectrum that no trained federation shows.)"""
    gen = torch.Generator().manual_seed(seed)
    G = 4 * shared
    U = torch.linalg.qr(torch.randn(d, G, generator=gen)).Q
    V = torch.linalg.qr(torch.randn(d, G, generator=gen)).Q
    s = torch.logspace(0, -4, G)
    Bs, As = [], []
    for _ in range(n):
        idx = torch.randperm(G, generator=gen)[:r]
        Bs.append(U[:, idx] * s[idx].sqrt() + 1e-5 * torch.randn(d, r, generator=gen))
        As.append((V[:, idx] * s[idx].sqrt()).T + 1e-5 * torch.randn(r, d, generator=gen))
    return Bs, As, [1.0 / n] * n


def main_many_clients(args: argparse.Namespace) -> None:
    """Top-k triplets on the implicit operator vs the dense SVD of ΔW vs the exact factored path, one module."""
    from fedlora.lora.linalg import svd_of_weighted_sum
    from fedlora.lora.randomized import top_svd_of_weighted_sum

    n, r, k, d = args.many_clients, args.many_rank, args.top_k, args.d
    Bs, As, w = trained_like(n, d, r, shared=k, seed=args.seed)
    print(f"many clients: {n} clients of rank {r} on one {d} x {d} module (stacked rank {n * r}), top-{k} triplets; "
          f"{torch.get_num_threads()} threads, interleaved x{args.reps}")
    truth = torch.linalg.svdvals(sum(wk * (B.double() @ A.double()) for B, A, wk in zip(Bs, As, w)))  # float64 yardstick, untimed
    times: dict[str, list[float]] = {"dense SVD of ΔW": [], "exact factored": [], "randomized top-k": []}
    for _ in range(args.reps):  # interleaved: load from other processes hits all three alike
        dense, t = timed(lambda: torch.linalg.svd(sum(wk * (B @ A) for B, A, wk in zip(Bs, As, w)), full_matrices=False)[1])
        times["dense SVD of ΔW"].append(t)
        exact, t = timed(lambda: svd_of_weighted_sum(Bs, As, w, out_dtype=torch.float32)[1])
        times["exact factored"].append(t)
        (U, S, Vh, bound), t = timed(lambda: top_svd_of_weighted_sum(Bs, As, w, k, tol=1e-5, dtype=torch.float32))
        times["randomized top-k"].append(t)
    rel = lambda x: float(((x[:k].double() - truth[:k]).abs() / truth[0]).max())  # noqa: E731
    for name, ts in times.items():
        print(f"  {name:18} median {sorted(ts)[len(ts) // 2]:8.2f} s (min {min(ts):.2f}, max {max(ts):.2f})")
    print(f"  top-{k} singular values vs a float64 dense SVD, max relative error: randomized {rel(S):.1e} (a-posteriori bound "
          f"{bound:.1e}, tolerance 1e-5), dense float32 {rel(dense):.1e}, exact factored {rel(exact):.1e}")
    med = {name: sorted(ts)[args.reps // 2] for name, ts in times.items()}
    print(f"ratio dense SVD (float32, as the official release) / randomized top-{k}: {med['dense SVD of ΔW'] / med['randomized top-k']:.1f}x; "
          f"dense / exact factored: {med['dense SVD of ΔW'] / med['exact factored']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 layers of 2048 x 2048, scaling to 100 clients")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--dense-sample", type=int, default=2, help="modules on which the dense reference is timed")
    parser.add_argument("--exact-sample", type=int, default=2, help="modules also checked against a float64 dense SVD")
    parser.add_argument("--scaling", type=int, nargs="*", default=[10, 100, 1000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--many-clients", type=int, default=100, help="clients of the many-client case (0: skip it)")
    parser.add_argument("--many-rank", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only-many", action="store_true", help="run only the many-client case")
    parser.add_argument("--child", choices=["factored", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args.d, args.clients, args.seed)
    if args.quick:
        args.layers, args.d, args.dense_sample, args.scaling = 2, 2048, 1, [10, 100]
        args.many_clients, args.reps = 50, 1
    if not args.only_many:
        main_round(args)
        main_scaling(args)
    if args.many_clients:
        main_many_clients(args)


if __name__ == "__main__":
    main()
