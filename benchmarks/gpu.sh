#!/usr/bin/env bash
# The GPU check of the study's training path (about 3 minutes on one H100):
#   bash benchmarks/gpu.sh            (--smoke: the same code on the CPU at a tiny size)
# One table: per architecture at the study's sizes, the site's training step through its
# own loader (img/s), the same step on tensors already on the GPU (the compute bound), their
# ratio and the peak GPU memory; then the attack job over the study's 15 models.
# Prints the card's name; run from the repository root after `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" -m benchmarks.gpu "$@"
