#!/usr/bin/env bash
# One GPU window, prepared on the CPU: run from the repository root on the
# lent machine with the wheels of gpu_wheels.sh carried in .whl/. Every
# output goes to $OUT (the device tool's folder; runs/gpu_session here).
#
#   bash experiments/benchmarks/gpu_session.sh check   # ~6 min: GPU tests,
#        # then the default job and easy-VQA (wall time and accuracy)
#   bash experiments/benchmarks/gpu_session.sh step    # ~6 min: the CLIP
#        # B/16 step suite against open_clip eager and torch.compile
#
# Each stage fits one device call (10 min); each command has its own
# timeout, so a hang costs its stage, not the window.
set -uo pipefail
cd "$(dirname "$0")/../.."
stage=${1:-check}
OUT=${OUT:-runs/gpu_session}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/$stage.log") 2>&1
export PYTHONUNBUFFERED=1 MMTX_DATA_DIR=/tmp/mmtx_data
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, jax.devices())"

run() {   # run SECONDS NAME CMD...: timed, logged, never stops the stage
  local limit=$1 name=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "=== $name: rc=$? in $((SECONDS - start)) s"
}

case "$stage" in
  check)
    run 240 gpu-tests python3 -m pytest tests/test_gpu.py tests/test_layers.py \
        tests/test_attention_kernels.py \
        tests/test_losses.py tests/test_generation.py tests/test_train.py \
        -q -p no:cacheprovider -n 4 --junitxml="$OUT/pytest.xml"
    run 150 default-job python3 -m mmtx.main --workdir=/tmp/runs/default \
        --progress=false
    cp /tmp/runs/default/metrics.jsonl "$OUT/default_metrics.jsonl"
    run 120 easy-vqa python3 -m mmtx.main --config=configs/easy_vqa.py \
        --workdir=/tmp/runs/easy_vqa --progress=false
    cp /tmp/runs/easy_vqa/metrics.jsonl "$OUT/easy_vqa_metrics.jsonl"
    ;;
  step)
    run 330 clip-step python3 experiments/benchmarks/clip_step.py --suite \
        --peer open_clip --time_budget_s 270 --json "$OUT/clip_step.json"
    ;;
  *)
    echo "gpu_session.sh: stage must be 'check' or 'step', got '$stage'" >&2
    exit 2
    ;;
esac
