#!/usr/bin/env bash
# GPU benchmark, about 8 minutes on one H100:  bash benchmarks/gpu.sh
#  - training images/s per architecture at 224 px, AMP (bfloat16) + channels_last,
#    against the published anchor (ResNet50 with AMP: about 2,470 img/s on one A100);
#  - the attack job's images/s (crafting and probing, 15 models).
# Prints the card's name; run from the repository root after `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" -m benchmarks.gpu "$@"
