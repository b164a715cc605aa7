#!/usr/bin/env bash
# Run ON the lent GPU machine, in the repository root, after benchmarks/gpu/prepare.sh here:
#   run(command="bash benchmarks/gpu/run.sh", carry=[".gpu-carry"], timeout_s=560)
# One call, about 8 minutes, each step time-boxed so that the others still run; everything goes to $OUT/gpu.txt:
#   0. the machine; the carried wheels installed (no network there);
#   1. the GPU tests (tests/embeddings/test_gpu.py: fp16, channels-last, pinned staging, torch.compile, the service over HTTP);
#   2. benchmarks/gpu.py: the model alone by batch size, CPU decode/resize/hash by threads and processes, nvJPEG;
#   3. benchmarks/scan_batch.py: scan-batch end to end (ViT-B-32, random weights) against the raw model; decoding in
#      threads, then in worker processes (the service's lock against the cores: which feeds the GPU faster);
#   4. benchmarks/serve.py: POST /v1/scan end to end, four photos per request.
# GPU_BENCH_QUICK=1 runs the same steps small, with the tiny model and no install (a check of this script on CPU).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$(mktemp -d)}
LOG="$OUT/gpu.txt"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 COUNTERFEIT_SCAN_LOG_LEVEL=warning
DATA=.gpu-carry/data
exec > >(tee -a "$LOG") 2>&1

if [ "${GPU_BENCH_QUICK:-0}" = 1 ]; then
  MODEL=(COUNTERFEIT_SCAN_MODEL=cs-tiny-vit COUNTERFEIT_SCAN_PRETRAINED= COUNTERFEIT_SCAN_ALLOW_RANDOM_WEIGHTS=true)
  GPU_ARGS=(--model cs-tiny-vit --batches 8,32); BULK=(--repeat 1 --batch-size 32); SERVE=(--requests 40 --half-load-requests 20)
else
  MODEL=(COUNTERFEIT_SCAN_MODEL=ViT-B-32 COUNTERFEIT_SCAN_PRETRAINED= COUNTERFEIT_SCAN_ALLOW_RANDOM_WEIGHTS=true)
  GPU_ARGS=(--model ViT-B-32); BULK=(--repeat 20 --batch-size 256); SERVE=(--requests 600 --half-load-requests 400)
fi
step() { echo; echo "=== $1 ($(date -u +%T))"; }

step "0. machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
echo "cores: $(nproc); $("$PYTHON" -V)"
if [ "${GPU_BENCH_QUICK:-0}" != 1 ]; then
  "$PYTHON" -m pip install --quiet --no-index --no-deps .gpu-carry/wheels/*.whl || echo "install FAILED"
fi
"$PYTHON" -c "import torch, torchvision, faiss, open_clip, fastapi; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"

step "1. GPU tests"
timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider tests/embeddings/test_gpu.py tests/service/test_serving_layout.py
echo "pytest exit: $?"

step "2. where the time goes (benchmarks/gpu.py)"
timeout 120 "$PYTHON" benchmarks/gpu.py --data "$DATA" "${GPU_ARGS[@]}"

# GPU utilisation once a second during the end-to-end runs: a starved GPU (low %) means the CPU side is the limit.
UTIL="$OUT/gpu-util.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$UTIL" 2>/dev/null &
SAMPLER=$!

step "3. scan-batch end to end (benchmarks/scan_batch.py)"
env "${MODEL[@]}" timeout 120 "$PYTHON" benchmarks/scan_batch.py --data "$DATA" "${BULK[@]}" --workers 0
step "3b. the same, decoding in worker processes (COUNTERFEIT_SCAN_DECODE_PROCESSES: all cores but 4)"
env "${MODEL[@]}" COUNTERFEIT_SCAN_DECODE_PROCESSES=$(( $(nproc) > 5 ? $(nproc) - 4 : 1 )) \
  timeout 100 "$PYTHON" benchmarks/scan_batch.py --data "$DATA" "${BULK[@]}" --workers 0

step "4. POST /v1/scan end to end (benchmarks/serve.py)"
timeout 150 "$PYTHON" benchmarks/serve.py --data "$DATA" --concurrency 1,16,64 --photos-per-request 4 "${SERVE[@]}" \
  $(printf -- '--env %s ' "${MODEL[@]}") --env COUNTERFEIT_SCAN_BATCH_MAX_SIZE=256
kill "$SAMPLER" 2>/dev/null
step "GPU utilisation during 3 and 4 (nvidia-smi, once a second; the full series in gpu-util.txt)"
awk -F', ' '{gsub(/ %/, "", $2); n++; s += $2; if ($2 > 50) busy++} END {if (n) printf "%d samples, mean %.0f%%, above 50%%: %d\n", n, s / n, busy}' "$UTIL"
step "done"
