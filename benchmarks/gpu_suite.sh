#!/usr/bin/env bash
# The benchmarks on a CUDA device, on randomly initialised models of the published shapes
# (src/circuit_insights/models/shapes.py; no weights or tokenizers are fetched), with the
# GemmaScope transcoder width (16,384 features). Each benchmark prints its own baseline ratio.
#
#   bash benchmarks/gpu_suite.sh [MODEL] [LOG]      # MODEL default gemma-2-2b; LOG default stdout
#
# PYTHON (default python3) is the interpreter, DEVICE (default cuda) the torch device; src/ must
# be importable (PYTHONPATH=src); BENCH_TIMEOUT (default 420) bounds each benchmark in seconds.
set -uo pipefail
model="${1:-gemma-2-2b}"
log="${2:-/dev/stdout}"
python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
export PYTHONUNBUFFERED=1
run() {
    echo "### $*" | tee -a "$log"
    timeout "${BENCH_TIMEOUT:-420}" "$python" "$@" 2>&1 | grep -v Warning | tee -a "$log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$python" -c "import torch; print('torch', torch.__version__)"; } | tee -a "$log"
deep=$("$python" -c "from circuit_insights.models.shapes import PUBLISHED_SHAPES as s; c = s['$model']; print(c.get('num_hidden_layers', c.get('n_layer')) - 1)")
mid=$((deep * 3 / 5))
for dtype in float32 bfloat16; do
    run benchmarks/bench_cache.py --model "random:$model" --device "$device" --dtype "$dtype" \
        --layer "$deep" --features 16384 --contexts 1024 --batch-size 64 --calibration-contexts 32 \
        --shard-size 4096 --repeats 2
done
run benchmarks/bench_attribution.py --model "random:$model" --device "$device" --layer "$mid" \
    --d-transcoder 16384 --contexts 32 --features-per-context 4 --batch-size 16 --repeats 2
run benchmarks/bench_weightlens.py --model "random:$model" --device "$device" --layer "$mid" \
    --features 16384 --loop-features 64 --upstream-layers 2
run benchmarks/bench_fade.py --model "random:$model" --device "$device" --layer "$mid" \
    --features 16384 --prompts 50 --prompt-tokens 64 --tokens 30 --batch 50
