#!/usr/bin/env bash
# The GPU check in at most 8 minutes: one table (benchmarks/gpu_check.py's docstring says what each row is).
# On a CUDA machine it measures SmolLM2-135M; elsewhere it says so and runs the CPU parts on the tiny model.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # OUT_DIR/gpu_check.json and gpu_check.log (default: runs/gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device here; running the CPU parts only (tiny model)"
fi
timeout 480 "$PY" benchmarks/gpu_check.py --json "$OUT/gpu_check.json" 2>&1 | grep -v "^Failed to load CPU gemm_4bit_forward" | tee "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
[ "$status" = 124 ] && echo "gpu_check: stopped at the 8-minute limit; the rows above are what finished"
exit "$status"
