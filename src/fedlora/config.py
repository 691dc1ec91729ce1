"""Typed run configuration: TOML file -> validated, frozen dataclasses, every error in one message.

A run config has seven sections (``[run]``, ``[model]``, ``[data]``, ``[clients]``, ``[strategy]``,
``[train]``, ``[eval]``); every field is declared below with its default, its meaning and its
allowed values. ``load_config(path, overrides)`` reads a file, applies ``--set key=value``
overrides (dotted keys, values parsed as TOML literals, bare words as strings) and validates the
whole config at once, torchtune style: :class:`ConfigError` lists *every* problem, one per line,
each naming the key (``train.lr``), the value found and what is allowed; an unknown section or key
is an error with a did-you-mean. ``[strategy]`` takes ``name`` plus the method's own constructor
arguments (e.g. ``gamma`` for HetLoRA), checked against the method's signature.

Example::

    [run]
    name = "quickstart"
    rounds = 3
    [model]
    name = "bundled:smollm2"
    [clients]
    rank_distribution = "heavy-tail-light"
    [strategy]
    name = "flexlora"
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "ConfigError", "RunSection", "ModelSection", "DataSection", "ClientsSection", "StrategySection",
    "TrainSection", "EvalSection", "Config", "SECTIONS", "load_config", "parse_config", "parse_overrides",
    "apply_overrides", "config_to_dict", "dumps_toml",
]  # fmt: skip

RANK_DISTRIBUTIONS = ("uniform", "heavy-tail-light", "heavy-tail-strong", "normal")
ALLOCATIONS = ("auto", "flexlora", "uniform", "fedpilot")


class ConfigError(ValueError):
    """A config has one or more problems; ``errors`` holds one line per problem."""

    def __init__(self, errors: Sequence[str], source: str = "config") -> None:
        self.errors = list(errors)
        self.source = source
        noun = "error" if len(self.errors) == 1 else "errors"
        super().__init__(f"invalid {source} ({len(self.errors)} {noun}):\n" + "\n".join(f"  - {e}" for e in self.errors))


def opt(default: Any, help: str, *, choices: Sequence[Any] | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None) -> Any:  # fmt: skip
    """A config field: default, documentation and its constraints, declared together."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "ge": ge, "gt": gt, "le": le}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunSection:
    """``[run]``: identity, length and bookkeeping of a run."""

    name: str = opt("fedlora-run", "run name; the run folder is `out_dir/name` (unless `fedlora run --out DIR`)")
    out_dir: str = opt("runs", "folder that holds run folders (relative paths: from the current directory)")
    seed: int = opt(0, "master seed: data split, partition, ranks, sampling, client seeds and LoRA inits derive from it")
    rounds: int = opt(3, "federated rounds", ge=1)
    eval_every: int = opt(1, "evaluate the global adapter every k rounds (round 0 and the last round always); 0: only those", ge=0)
    eval_last: int = opt(0, "also evaluate after each of the last k rounds (a bench endpoint that averages the "
                         "last k rounds evaluates only those); 0: none beyond eval_every", ge=0)
    log_to: list[str] = opt([], "experiment trackers that mirror every metric of metrics.jsonl (which stays the source of "
                            "truth): any of 'tensorboard', 'mlflow', 'wandb' (offline); optional extras, see fedlora.engine.tracking",
                            choices=("tensorboard", "mlflow", "wandb"))
    checkpoint_every: int = opt(1, "write a resumable checkpoint every k rounds (the last round always)", ge=1)
    keep_checkpoints: int = opt(2, "checkpoints kept (checkpoint.pt, checkpoint.1.pt, ...): a corrupt newest one falls back "
                                "to the previous", ge=1)
    mode: str = opt("sync", "'sync' rounds, or 'async': buffered asynchronous aggregation on the simulated clock "
                    "(FedBuff; clients_per_round clients in flight, `rounds` aggregations); see fedlora.engine.asynchronous",
                    choices=("sync", "async"))
    buffer_size: int = opt(0, "async: updates per aggregation (0: half of clients_per_round, at least 1)", ge=0)
    staleness_exponent: float = opt(0.5, "async: an update tau versions stale is weighted by (1 + tau)^-a", ge=0)
    deadline: float = opt(0.0, "round deadline in simulated seconds (0: none): a client whose local steps and transfers "
                          "do not fit is a straggler (see `stragglers`); see fedlora.engine.clock", ge=0)
    stragglers: str = opt("drop", "a straggler is dropped from the round ('drop') or trains the steps that fit the "
                          "deadline ('partial')", choices=("drop", "partial"))
    threads: int = opt(0, "torch CPU threads; 0: auto, torch's default lowered to the cores not busy with other "
                       "processes when the run starts (1-minute load average), since oversubscribed threads spin-wait "
                       "(measured 2-5x slower); set a number to fix it (results may differ in the last bits between counts)", ge=0)


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: the base model, shared by every simulated client (one copy per process)."""

    name: str = opt("bundled:smollm2", "'bundled:smollm2' (offline SmolLM2-135M-Instruct), a Hugging Face id or local "
                    "folder, or 'tiny' (random 2-layer Llama for tests)")
    dtype: str = opt("auto", "weights dtype; 'auto': bf16 on GPUs and CPUs with native bf16, else fp32",
                     choices=("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"))
    device: str = opt("auto", "'auto' (cuda if visible), 'cpu', 'cuda', 'cuda:0', ...")
    quantization: str = opt("none", "the frozen base's precision: 'none' (model.dtype), 'nf4' (4-bit NormalFloat, QLoRA) or "
                            "'int8' (LLM.int8()), through transformers' BitsAndBytesConfig (needs bitsandbytes: pip install "
                            "'fedlora[quantization]'); LoRA factors stay float32, exports load on the full-precision base",
                            choices=("none", "nf4", "int8"))
    target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                    "module kinds (last path component) that carry LoRA adapters")


@dataclass(frozen=True)
class DataSection:
    """``[data]``: where examples come from and how they are split among clients."""

    source: str = opt("bundled", "'bundled' (offline multi-task benchmark), 'jsonl' (files with instruction/input/"
                      "output/task fields), 'hf' (a datasets id, data file or saved folder) or 'client_folder' (FlexLoRA's "
                      "per-client folder of local_training_<id>.json / local_test_<id>.json files)",
                      choices=("bundled", "jsonl", "hf", "client_folder"))
    train_path: str = opt("", "jsonl/hf: training data (file, folder or hub id); client_folder: the folder; required for those sources")
    heldout_clients: int = opt(0, "client_folder: clients that never train; their test files are the held-out (unseen-task) "
                               "evaluation", ge=0)
    client_eval_file: str = opt("test", "client_folder: which file of each client is evaluated, 'test' or 'eval'",
                                choices=("test", "eval"))
    eval_path: str = opt("", "jsonl/hf: evaluation data; empty: `max_eval_per_task` examples per task are split off train")
    heldout_path: str = opt("", "jsonl/hf: examples of unseen tasks, evaluated only (held-out Rouge-L)")
    split: str = opt("train", "hf: the split to read")
    instruction_field: str = opt("instruction", "hf: column of the instruction")
    input_field: str = opt("input", "hf: column of the input (empty string: none)")
    output_field: str = opt("output", "hf: column of the reference answer")
    task_field: str = opt("task", "hf: column of the task name (empty string: one task named after the dataset)")
    tasks: list[str] = opt([], "only these tasks (empty: all); bundled task names are in fedlora.data.BUNDLED_TASKS")
    heldout_tasks: list[str] | None = opt(None, "tasks kept out of training and evaluated as unseen tasks; "
                                          "default: bundled -> ['bbc_lede', 'word_sentiment'], others -> none")
    heldout_related: list[str] = opt([], "held-out tasks that are siblings of a training task (same labels or answer format), "
                                     "as 'heldout=training' pairs, e.g. ['word_sentiment=rt_sentiment']: the verdicts report "
                                     "them apart from the unrelated held-out tasks, whose transfer is the harder test")
    partition: str = opt("task", "how training examples go to clients: 'task' (whole tasks, FlexLoRA's setting), "
                         "'dirichlet' (task mixtures) or 'iid'", choices=("task", "dirichlet", "iid"))
    concentration: float = opt(0.5, "dirichlet: concentration (small: about one task per client; large: near IID)", gt=0)
    num_clients: int = opt(8, "number of simulated clients", ge=1)
    max_train_per_task: int = opt(1000, "training examples kept per task (client_folder: per client) (0: all)", ge=0)
    max_eval_per_task: int = opt(20, "evaluation (and held-out) examples per task (client_folder: per client)", ge=1)


@dataclass(frozen=True)
class ClientsSection:
    """``[clients]``: client resources (LoRA ranks or memory budgets) and sampling per round."""

    allocation: str = opt("auto", "how plans are made: 'flexlora' (each client its own rank), 'uniform' (every client "
                          "at `uniform_rank`, default the minimum rank: FedIT's bucket effect), 'fedpilot' (module subsets "
                          "under memory budgets), 'auto' (fedpilot for strategy fedpilot, uniform for fedit/ffa, else flexlora)",
                          choices=ALLOCATIONS)
    rank_distribution: str = opt("uniform", "FlexLoRA resource distribution of ranks over `rank_levels`", choices=RANK_DISTRIBUTIONS)
    rank_levels: list[int] = opt([4, 8, 16, 32], "rank levels the distribution draws from (smallest first)")
    ranks: list[int] = opt([], "explicit rank per client (length data.num_clients); overrides rank_distribution")
    uniform_rank: int = opt(0, "allocation 'uniform': the rank of every client (0: the minimum of the client ranks)", ge=0)
    alpha_ratio: float = opt(2.0, "LoRA alpha = alpha_ratio * rank (scale alpha / rank = alpha_ratio)", gt=0)
    clients_per_round: int | float = opt(1.0, "clients trained per round: an int is a count, a float in (0, 1] a "
                                         "fraction of all clients (at least one)", gt=0)
    budget_distribution: str = opt("uniform", "fedpilot: distribution of memory budgets over `budget_levels` levels",
                                   choices=RANK_DISTRIBUTIONS)
    budget_low: str | int = opt("", "fedpilot: smallest memory budget, e.g. '600MiB' (required unless `budgets` is set)")
    budget_high: str | int = opt("", "fedpilot: largest memory budget, e.g. '2GiB'")
    budget_levels: int = opt(4, "fedpilot: number of budget levels between budget_low and budget_high", ge=1)
    budgets: list[str | int] = opt([], "fedpilot: explicit memory budget per client ('1GiB' strings or byte counts)")
    fedpilot_rank: int = opt(8, "fedpilot: LoRA rank of every selected module", ge=1)
    importance_steps: int = opt(2, "fedpilot: batches of the short local pass that scores module importance", ge=1)
    importance_mix: float = opt(0.5, "fedpilot: share of the server's global module importance in the module values "
                                "from round 2 on (0: local importance only)", ge=0, le=1)
    speed_distribution: str = opt("uniform", "compute heterogeneity: distribution of client speeds over `speed_levels`",
                                  choices=RANK_DISTRIBUTIONS)
    speed_levels: list[float] = opt([1.0], "client speeds in local steps per simulated second, slowest first (one level: "
                                    "every client equally fast); see fedlora.engine.clock", gt=0)
    speeds: list[float] = opt([], "explicit speed per client (length data.num_clients); overrides speed_distribution", gt=0)
    quantization: list[str] = opt([], "base precision per client ('none', 'nf4' or 'int8'; length data.num_clients); empty: "
                                  "every client at model.quantization, which also evaluates. One base is loaded per precision")
    precision_options: list[str] = opt([], "fedpilot: precisions the planner may give a client, most precise first (e.g. "
                                       "['none', 'nf4']): it picks each client's precision and modules jointly under its budget")
    precision_weights: dict = opt({}, "fedpilot with precision_options: weight of the module value per precision (e.g. "
                                  "{nf4 = 0.9}: training over an NF4 base is worth 10% less); 1 when absent")
    link_mb_per_s: float = opt(0.0, "each client's link in MB/s for the simulated clock (0: transfers take no time)", ge=0)


@dataclass(frozen=True)
class StrategySection:
    """``[strategy]``: the federated method; any other key is a constructor argument of that method."""

    name: str = opt("flexlora", "fedit | flexlora | hetlora | flora | ffa | fedpilot | fedex | rolora | fedsvd | lorafair | fedmomentum | slora | fedsa | feddpa | fedra | fedhello | fedrot | fedprox | "
                    "local (no aggregation: each client alone, the floor; evaluated as the mean over the clients' own models)",
                    choices=("fedit", "flexlora", "hetlora", "flora", "ffa", "fedpilot", "fedex", "rolora", "fedsvd", "lorafair", "fedmomentum", "slora", "fedsa", "feddpa",
                             "fedra", "fedhello", "fedrot", "fedprox", "local"))
    norm_bound: float = opt(100.0, "reject an update whose scale-aware norm exceeds this many times the round's median "
                            "(with >= 3 updates; 0 disables); see fedlora.strategies.guard", ge=0)
    params: dict = opt({}, "method arguments (e.g. HetLoRA `gamma`, `regularization`, `prune`), written as plain keys")


@dataclass(frozen=True)
class TrainSection:
    """``[train]``: local training of every sampled client (fresh optimizer per client and round)."""

    local_steps: int = opt(10, "optimizer steps per client per round", ge=1)
    batch_size: int = opt(4, "examples per step", ge=1)
    lr: float = opt(3e-4, "learning rate of the LoRA parameters", gt=0)
    max_length: int = opt(256, "max tokens per training example (the prompt is cut first)", ge=8)
    weight_decay: float = opt(0.0, "weight decay on the LoRA parameters", ge=0)
    grad_clip: float = opt(1.0, "max global gradient norm; 0 disables clipping", ge=0)
    optimizer: str = opt("adamw", "local optimizer", choices=("adamw", "sgd"))
    grad_checkpointing: bool = opt(False, "recompute activations in backward (less memory, ~30% slower)")
    dropout: float = opt(0.0, "LoRA dropout", ge=0, le=0.99)
    lockstep: bool = opt(False, "train the round's clients in one batched forward/backward per step, each row through its "
                         "own client's adapter (same result as one after another; a GPU optimisation: no gain measured on "
                         "a 2-core CPU); cases it does not cover train sequentially, with a message")
    group_by_length: bool = opt(False, "batches of similar lengths (sorted within windows of 16 batches of each shuffled "
                                "epoch), so less padding is computed; changes which examples share a batch")


@dataclass(frozen=True)
class EvalSection:
    """``[eval]``: evaluation of the global adapter (seen-task eval split and held-out tasks)."""

    max_new_tokens: int = opt(32, "generation budget per answer", ge=1)
    batch_size: int = opt(8, "examples per evaluation batch", ge=1)
    max_length: int = opt(256, "max prompt tokens (and prompt + answer for teacher forcing)", ge=8)
    generate: bool = opt(True, "generate answers of generation tasks (Rouge-L); false: likelihood accuracy, teacher-forced "
                         "Rouge-L and loss only")
    at_start: bool = opt(True, "evaluate the base model before training (round 0); a bench's 'no-train' method measures it once")
    seen: bool = opt(True, "evaluate the eval split of the training tasks")
    seen_per_task: int = opt(0, "evaluate at most this many examples per seen task (0: all of data.max_eval_per_task)", ge=0)
    heldout: bool = opt(True, "evaluate the held-out (unseen) tasks")


@dataclass(frozen=True)
class PrivacySection:
    """``[privacy]``: client-level differential privacy (DP-FedAvg) for FedIT and FFA-LoRA (fedlora.strategies.dp)."""

    clip_norm: float = opt(0.0, "L2 bound C of each client's update in the averaged factors (0: privacy off)", ge=0)
    noise_multiplier: float = opt(1.0, "Gaussian noise std over C (sigma); privacy/epsilon is reported each round", ge=0)
    delta: float = opt(1e-5, "the delta of the reported (epsilon, delta)", gt=0, le=0.1)


SECTIONS: dict[str, type] = {"run": RunSection, "model": ModelSection, "data": DataSection, "clients": ClientsSection,
                             "strategy": StrategySection, "train": TrainSection, "eval": EvalSection,
                             "privacy": PrivacySection}  # fmt: skip


@dataclass(frozen=True)
class Config:
    """A whole, validated run config (one attribute per TOML section)."""

    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    clients: ClientsSection = field(default_factory=ClientsSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


# ----------------------------------------------------------------------------- field checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if tp is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


_SINGULAR = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}
_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def _describe(tp: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return f"a list of {_describe(args[0], plural=True)}"
    if args:
        return " or ".join(_describe(a, plural) for a in args if a is not type(None))
    return (_PLURAL if plural else _SINGULAR).get(tp, _type_name(tp))


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list", dict: "a table"}
    return kinds.get(type(value), type(value).__name__)


def _suggest(word: str, options: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the option closest to ``word`` (spelling, or an option that the word
    starts or ends with, as in ``lr_typo`` for ``lr``), else ``""``."""
    opts = [str(o) for o in options]
    close = difflib.get_close_matches(str(word), opts, n=1, cutoff=0.6)
    if not close:
        w = str(word).lower()
        close = sorted((o for o in opts if len(o) >= 2 and (w.startswith(o.lower() + "_") or w.endswith("_" + o.lower()))),
                       key=len, reverse=True)[:1]  # fmt: skip
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_value(key: str, value: Any, tp: Any, meta: Mapping) -> str | None:
    """One problem with ``value`` for field ``key``, or None."""
    if not _matches(value, tp):
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        bad = next((v for v in value if not _matches(v, item)), None) if item is not None and isinstance(value, list) else None
        found = f"{bad!r} is {_kind(bad)}" if bad is not None else f"got {_kind(value)}"
        return f"{key} = {value!r}: must be {_describe(tp)}; {found}"
    choices = meta.get("choices")
    if choices and isinstance(value, list):
        bad = [v for v in value if v not in choices]
        if bad:
            return f"{key} = {value!r}: {bad[0]!r} is not one of {', '.join(map(repr, choices))}{_suggest(bad[0], choices)}"
    elif choices and value not in choices:
        return f"{key} = {value!r}: must be one of {', '.join(map(repr, choices))}{_suggest(value, choices)}"
    numbers = value if isinstance(value, list) else [value]
    for v in numbers:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if not math.isfinite(v):
            return f"{key} = {value!r}: must be finite"
        for bound, text, ok in (("ge", ">=", lambda b: v >= b), ("gt", ">", lambda b: v > b), ("le", "<=", lambda b: v <= b)):
            if meta.get(bound) is not None and not ok(meta[bound]):
                return f"{key} = {value!r}: must be {text} {meta[bound]}"
    return None


def _build_section(name: str, cls: type, raw: Any, errors: list[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(f"[{name}] must be a table (a [{name}] section), got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    if cls is StrategySection:
        own = ("name", "norm_bound")
        raw = {**{k: raw[k] for k in own if k in raw}, "name": raw.get("name", StrategySection.name),
               "params": {k: v for k, v in raw.items() if k not in own}}  # fmt: skip
    values = {}
    for key, value in raw.items():
        if key not in known:
            errors.append(f"{name}.{key}: unknown key{_suggest(key, list(known))} (keys of [{name}]: {', '.join(known)})")
            continue
        problem = _check_value(f"{name}.{key}", value, hints[key], known[key].metadata)
        if problem:
            errors.append(problem)
        else:
            values[key] = float(value) if hints[key] is float else value
    return cls(**values)


# ----------------------------------------------------------------------------- cross-field checks


def _strategy_errors(s: StrategySection) -> list[str]:
    from fedlora.catalogue import STRATEGY_NAMES, method_facts

    if s.name not in STRATEGY_NAMES:
        return []
    try:
        allowed = list(method_facts(s.name).arguments)
    except FileNotFoundError:
        return [f"strategy.name = {s.name!r}: its module is not available in this installation"]
    errors = []
    for key in s.params:
        if key not in allowed:
            listed = ", ".join(allowed) if allowed else "none"
            errors.append(f"strategy.{key}: unknown argument of strategy {s.name!r}{_suggest(key, allowed + ['name'])} "
                          f"(its arguments: {listed})")
    return errors


def _async_errors(cfg: "Config") -> list[str]:
    if cfg.run.mode != "async":
        return []
    from fedlora.catalogue import ASYNC_METHODS

    name, errors = cfg.strategy.name, []
    base = str(cfg.strategy.params.get("base", "fedit")).lower() if name == "fedprox" else name
    if name not in ASYNC_METHODS or base not in ASYNC_METHODS:
        errors.append(f"run.mode = 'async' works with strategies {', '.join(ASYNC_METHODS)} (their rounds only move the factors a "
                      f"client starts from, so a stale update can be rebased), not {name!r}; use run.mode = 'sync'")
    if cfg.run.deadline > 0:
        errors.append("run.deadline applies to synchronous rounds; in run.mode = 'async' slow clients never block, so set run.deadline = 0")
    if cfg.train.lockstep:
        errors.append("train.lockstep trains a synchronous round's clients together; run.mode = 'async' dispatches them one at a "
                      "time, so set train.lockstep = false (or run.mode = 'sync')")
    if cfg.privacy.clip_norm > 0:
        errors.append("privacy.clip_norm with run.mode = 'async': DP accounting assumes synchronous rounds; use run.mode = 'sync'")
    return errors


MERGING_METHODS = ("flora", "fedex", "fedmomentum", "slora")
"""Methods that fold part of each round into the frozen base weights (``Payload.base_delta``)."""


def client_precisions(cfg: "Config") -> set[str]:
    """Every base precision a client of ``cfg`` may train over."""
    c = cfg.clients
    return {cfg.model.quantization, *c.quantization, *c.precision_options}


def _quantization_errors(cfg: "Config") -> list[str]:
    """Per-client precisions that cannot work, and a quantized base under a method that merges into it (its weights
    are packed integers): refuse, never ignore."""
    c, errors, known = cfg.clients, [], ("none", "nf4", "int8")
    for key in ("quantization", "precision_options"):
        bad = [q for q in getattr(c, key) if q not in known]
        if bad:
            errors.append(f"clients.{key}: {bad} are not base precisions; use {', '.join(known)}")
    if c.quantization and len(c.quantization) != cfg.data.num_clients:
        errors.append(f"clients.quantization has {len(c.quantization)} entries for data.num_clients = {cfg.data.num_clients}; "
                      "give one per client (or none: every client at model.quantization)")
    if c.precision_options and (c.quantization or resolved_allocation(cfg) != "fedpilot"):
        errors.append("clients.precision_options lets Fed-pilot's planner choose each client's precision: it needs "
                      "clients.allocation = 'fedpilot' and no clients.quantization list")
    unknown = sorted(set(c.precision_weights) - set(c.precision_options))
    if unknown:
        errors.append(f"clients.precision_weights names {unknown}, not among clients.precision_options {c.precision_options}")
    name = cfg.strategy.name
    base = str(cfg.strategy.params.get("base", "")).lower() if name == "fedprox" else ""
    quantized = sorted(client_precisions(cfg) - {"none"})
    if quantized and {name, base} & set(MERGING_METHODS):
        errors.append(f"a {'/'.join(quantized)} base (model.quantization or clients.quantization/precision_options) with "
                      f"strategy {name!r}: it merges part of every round into the frozen base weights, which a quantized base "
                      f"stores packed and cannot take; keep every base at 'none' or use a method that keeps its state in the "
                      f"LoRA factors (not {', '.join(MERGING_METHODS)})")
    return errors


def needs_one_rank(cfg: "Config") -> bool:
    """Whether ``strategy.name`` needs one rank per module across clients (its ``heterogeneous_ranks``
    is false; FedProx answers for its ``base`` method)."""
    from fedlora.catalogue import STRATEGY_NAMES, method_facts

    name = cfg.strategy.name
    if name == "fedprox":
        name = str(cfg.strategy.params.get("base", "fedit")).lower()
    if name not in STRATEGY_NAMES:
        return False
    try:
        return not method_facts(name).heterogeneous_ranks
    except FileNotFoundError:
        return False


def resolved_allocation(cfg: "Config") -> str:
    """``clients.allocation`` with ``auto`` resolved for the strategy."""
    if cfg.clients.allocation != "auto":
        return cfg.clients.allocation
    if cfg.strategy.name == "fedpilot":
        return "fedpilot"
    return "uniform" if needs_one_rank(cfg) else "flexlora"


def _clients_errors(cfg: "Config") -> list[str]:
    c, n, errors = cfg.clients, cfg.data.num_clients, []
    if c.speeds and len(c.speeds) != n:
        errors.append(f"clients.speeds has {len(c.speeds)} values for data.num_clients = {n}: give exactly one speed per client")
    if not c.speed_levels:
        errors.append("clients.speed_levels is empty: list at least one speed (e.g. [1.0]) or set clients.speeds")
    if c.ranks and len(c.ranks) != n:
        errors.append(f"clients.ranks has {len(c.ranks)} values for data.num_clients = {n}: give exactly one rank per client")
    for key in ("ranks", "rank_levels"):
        if any(r < 1 for r in getattr(c, key)):
            errors.append(f"clients.{key} = {getattr(c, key)}: ranks must be >= 1")
    if not c.rank_levels and not c.ranks:
        errors.append("clients.rank_levels is empty: list at least one rank (e.g. [4, 8, 16, 32]) or set clients.ranks")
    per = c.clients_per_round
    if isinstance(per, float) and not 0 < per <= 1:
        errors.append(f"clients.clients_per_round = {per}: a float is a fraction in (0, 1]; write an int for a count")
    if isinstance(per, int) and per > n:
        errors.append(f"clients.clients_per_round = {per}: more than data.num_clients = {n}")
    allocation = resolved_allocation(cfg)
    if needs_one_rank(cfg) and allocation != "uniform":
        errors.append(f"clients.allocation = {c.allocation!r}: strategy {cfg.strategy.name!r} needs one rank for all "
                      "clients; use 'uniform' (every client at the minimum rank, the bucket effect) or 'auto'")
    if allocation == "fedpilot":
        if cfg.strategy.name != "fedpilot":
            errors.append(f"clients.allocation = 'fedpilot' trains module subsets, which only strategy 'fedpilot' "
                          f"aggregates; got strategy.name = {cfg.strategy.name!r}")
        if not c.budgets and not (c.budget_low and c.budget_high):
            errors.append("clients.budget_low/budget_high: fedpilot needs memory budgets; set both (e.g. '600MiB', '2GiB') "
                          "or list clients.budgets")
        if c.budgets and len(c.budgets) != n:
            errors.append(f"clients.budgets has {len(c.budgets)} values for data.num_clients = {n}: one budget per client")
        errors.extend(_budget_errors(c))
    elif cfg.strategy.name == "fedpilot":
        errors.append(f"strategy.name = 'fedpilot' needs clients.allocation = 'fedpilot' or 'auto', got {c.allocation!r}")
    return errors


def _budget_errors(c: ClientsSection) -> list[str]:
    from fedlora.units import parse_bytes

    errors = []
    for key, values in (("budget_low", [c.budget_low]), ("budget_high", [c.budget_high]), ("budgets", c.budgets)):
        for v in values:
            if v == "":
                continue
            try:
                parse_bytes(v)
            except ValueError as err:
                errors.append(f"clients.{key}: {err}")
    return errors


def _data_errors(d: DataSection) -> list[str]:
    errors = []
    if d.source in ("jsonl", "hf", "client_folder") and not d.train_path:
        errors.append(f"data.train_path is empty: data.source = {d.source!r} needs a training file, folder or dataset id")
    if d.source == "client_folder":
        for key in ("eval_path", "heldout_path"):
            if getattr(d, key):
                errors.append(f"data.{key} = {getattr(d, key)!r}: source 'client_folder' reads each client's own files; "
                              "remove it (use data.client_eval_file to choose test or eval files)")
    elif d.heldout_clients:
        errors.append(f"data.heldout_clients = {d.heldout_clients}: only read for source 'client_folder'; use "
                      "data.heldout_tasks for the other sources")
    for pair in d.heldout_related:
        held, sep, train = str(pair).partition("=")
        if not sep or not held or not train:
            errors.append(f"data.heldout_related: {pair!r} must be 'heldout_task=training_task', e.g. 'word_sentiment=rt_sentiment'")
        elif d.heldout_tasks is not None and held not in d.heldout_tasks:
            errors.append(f"data.heldout_related: {held!r} is not one of data.heldout_tasks {d.heldout_tasks}")
    if d.source == "bundled":
        for key in ("train_path", "eval_path", "heldout_path"):
            if getattr(d, key):
                errors.append(f"data.{key} = {getattr(d, key)!r}: only read for source 'jsonl' or 'hf'; "
                              "remove it or set data.source")
    return errors


# ----------------------------------------------------------------------------- public API


def parse_config(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Validate a nested dict (as read from TOML) into a :class:`Config`; raise :class:`ConfigError` with every problem."""
    errors: list[str] = []
    sections = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            errors.append(f"[{name}]: unknown section{_suggest(name, list(SECTIONS))} (sections: {', '.join(SECTIONS)})")
            continue
        sections[name] = _build_section(name, SECTIONS[name], value, errors)
    cfg = Config(**sections)
    if not errors:
        errors.extend(_data_errors(cfg.data) + _clients_errors(cfg))
    if not any(e.startswith("strategy.name") for e in errors):
        errors.extend(_strategy_errors(cfg.strategy))
    errors.extend(_async_errors(cfg))
    errors.extend(_quantization_errors(cfg))
    if cfg.privacy.clip_norm > 0 and cfg.strategy.name not in ("fedit", "ffa"):
        errors.append(f"privacy.clip_norm = {cfg.privacy.clip_norm}: client-level DP is implemented for strategy 'fedit' and "
                      f"'ffa' (their server averages a clipped sum), not {cfg.strategy.name!r}; set privacy.clip_norm = 0 or "
                      "change strategy.name (docs/privacy.md says why)")
    if errors:
        raise ConfigError(errors, source)
    return cfg


def parse_overrides(items: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["train.lr=1e-3", "model.name=tiny"]`` -> ``[(["train", "lr"], 0.001), ...]``.

    Values are TOML literals (``3``, ``1e-3``, ``true``, ``[4, 8]``, ``"text"``); anything that is
    not valid TOML is taken as a plain string (so ``model.name=tiny`` needs no quotes).
    """
    out, errors = [], []
    for item in items:
        key, sep, text = item.partition("=")
        path = [p.strip() for p in key.strip().split(".")]
        if not sep or len(path) != 2 or not all(path):
            errors.append(f"--set {item!r}: write section.key=value, e.g. --set train.lr=1e-3")
            continue
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out.append((path, value))
    if errors:
        raise ConfigError(errors, "overrides")
    return out


def apply_overrides(raw: Mapping[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with ``--set`` overrides applied (validation happens in :func:`parse_config`)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for (section, key), value in parse_overrides(items):
        target = out.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = value
    return out


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read, override and validate a TOML run config."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file; pass the path of a TOML run config (see examples/)"], str(path)) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{path}: not valid TOML: {err}"], str(path)) from None
    return parse_config(apply_overrides(raw, overrides), str(path))


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict of a config, strategy params flattened into ``[strategy]`` (None values left out)."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = dataclasses.asdict(getattr(cfg, name))
        if name == "strategy":
            section = {"name": section["name"], "norm_bound": section["norm_bound"], **section["params"]}
        out[name] = {k: v for k, v in section.items() if v is not None}
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a TOML value")


def dumps_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text of a two-level dict of plain values (what :func:`config_to_dict` returns)."""
    blocks = []
    for section, values in data.items():
        lines = [f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
