#!/usr/bin/env bash
# One GPU check, under 8 minutes: the GPU tests, the throughput benchmark (MiniLM at its default
# size and at a realistic one), the hand-written anchor, one GPU shared by workers against batched
# trials, and a profile of where a trial's time goes, each step time-boxed, all on CUDA
# (GPU_CHECK_SEARCH=1 adds the MiniLM search-quality benchmark, ~90 s more; GPU_CHECK_COMPILE=1
# times [train] compile against plain, up to 150 s more). Figures land in one
# folder: $OUT if set (the device tool's result folder), else benchmarks/results/gpu. A step that
# fails or runs out of time is logged and the next one runs.
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

# Each step writes its figures straight into $out: a run cut short still returns what it made.
step gpu_tests 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_gpu_engine.py
step throughput 130 python3 benchmarks/bench_throughput.py --device cuda --tasks minilm \
  --trials 32 --ks 8,32 --sweep-trials 0 --out "$out/throughput_cuda.json"
step realistic 100 python3 benchmarks/bench_throughput.py --device cuda --tasks minilm \
  --size realistic --trials 8 --ks 8 --modes plain --sweep-trials 0 \
  --out "$out/throughput_realistic_cuda.json"
step vs_plain 60 python3 benchmarks/bench_vs_plain.py --device cuda --out "$out/vs_plain_cuda.json"
step gpu_share 100 python3 benchmarks/bench_gpu_share.py --device cuda --trials 12 --k 4 \
  --workers 4 --out "$out/gpu_share_cuda.json"
step profile 50 python3 benchmarks/profile_trial.py --device cuda --size default --trials 3 --k 8 \
  --chunks 1 --out "$out/profile_trial_cuda.json"
if [ "${GPU_CHECK_COMPILE:-0}" = 1 ]; then  # [train] compile against plain (compiling: ~1 min)
  step compile 150 python3 benchmarks/bench_throughput.py --device cuda --tasks minilm \
    --trials 8 --ks "" --modes plain,compiled --sweep-trials 0 --out "$out/compile_cuda.json"
fi
if [ "${GPU_CHECK_SEARCH:-0}" = 1 ]; then  # ~90 s more: over the 8 minutes with the steps above
  step search_quality 130 python3 benchmarks/bench_search_quality.py --tasks minilm --trials 30 \
    --device cuda --out "$out/search_quality_cuda.json" \
    --note "benchmarks/gpu_check.sh on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
fi
say "figures in $out"
