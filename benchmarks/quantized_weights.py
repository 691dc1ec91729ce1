"""The memory model's frozen-base bytes against what a loaded model stores, for each base precision.

    python benchmarks/quantized_weights.py [--model bundled:smollm2] [--dtype bfloat16]

Loads the model at ``model.quantization`` none / int8 / nf4 (bitsandbytes), counts every tensor it holds
(parameters, buffers, and bitsandbytes' scales and code tables) and prints it beside
``MemoryModel.weight_bytes()`` with the relative error. The activations and dequantization workspace of a
training step with a quantized base are not checked here (``benchmarks/memory_model.py`` measures peaks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_quantized_base import _stored_bytes  # noqa: E402  (the same count the tests use)

from fedlora.allocation.memory import MemoryModel  # noqa: E402
from fedlora.config import ModelSection  # noqa: E402
from fedlora.engine.build import build_spec, load_base_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:smollm2")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    print(f"{'quantization':<13}{'predicted B':>14}{'stored B':>14}{'error':>9}")
    for quantization in ("none", "int8", "nf4"):
        section = ModelSection(name=args.model, dtype=args.dtype, quantization=quantization)
        model, _ = load_base_model(section)
        spec = build_spec(model, section)
        predicted = MemoryModel(spec, batch_size=1, seq_len=1, quantization=quantization).weight_bytes()
        stored = _stored_bytes(model)
        print(f"{quantization:<13}{predicted:>14,}{stored:>14,}{100 * (predicted - stored) / stored:>+8.3f}%")
        del model


if __name__ == "__main__":
    main()
