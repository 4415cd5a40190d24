#!/usr/bin/env bash
# One GPU check, under 8 minutes: the GPU tests, the throughput benchmark (MiniLM at its default
# size and at a realistic one), the hand-written anchor and the MiniLM search-quality benchmark,
# each step time-boxed, all on CUDA. Figures land in one folder: $OUT if set (the device tool's
# result folder), else benchmarks/results/gpu. A step that fails or runs out of time is logged and
# the next one runs.
#
# On an offline GPU machine whose Python has torch and transformers, first build the carry here
# (../shared/gpu/prepare-carry.sh: optuna, sqlalchemy and their needs as wheels, MiniLM as fp16,
# the Rotten Tomatoes file) and send .gpu/ with the checkout; this script installs it.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
work=$(mktemp -d)
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
say() { echo "$*" | tee -a "$log"; }

if [ -d .gpu/whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl >>"$log" 2>&1
  export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
python3 -c "import torch, optuna, transformers; print('torch', torch.__version__, 'optuna', optuna.__version__, 'transformers', transformers.__version__)" 2>&1 | tee -a "$log"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  say "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$work/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$work/$name.log" >>"$log"
  say "== $name: exit $rc after $((SECONDS - t0)) s"
}

step gpu_tests 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_gpu_engine.py
step throughput 130 python3 benchmarks/bench_throughput.py --device cuda --tasks minilm \
  --trials 32 --ks 8,32 --sweep-trials 0 --out "$work/throughput_cuda.json"
step realistic 110 python3 benchmarks/bench_throughput.py --device cuda --tasks minilm \
  --size realistic --trials 8 --ks 8 --modes plain --sweep-trials 0 \
  --out "$work/throughput_realistic_cuda.json"
if [ -f benchmarks/bench_vs_plain.py ]; then
  step vs_plain 70 python3 benchmarks/bench_vs_plain.py --device cuda --out "$work/vs_plain_cuda.json"
fi
step search_quality 130 python3 benchmarks/bench_search_quality.py --tasks minilm --trials 30 \
  --device cuda --out "$work/search_quality_cuda.json" \
  --note "benchmarks/gpu_check.sh on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

for f in throughput_cuda throughput_realistic_cuda vs_plain_cuda search_quality_cuda; do
  [ -f "$work/$f.json" ] && cp "$work/$f.json" "$out/"
done
say "figures in $out"
