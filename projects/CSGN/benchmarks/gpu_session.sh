#!/usr/bin/env bash
# One prepared GPU session, in order of importance, each step bounded by its own time limit so
# that a failure or a slow step leaves the others' results:
#   1. real-size CSGN (ViT-B/16 + RN50, random weights, bf16) trained on SynthCC through
#      tools/train.py: throughput of each stage (stage-1 cache, prompt learning, stage 2, eval);
#   2. bench_train.py: the three CLIP models on random tensors and fed by the SynthCC pipeline,
#      with a torch.profiler table of the eager stage-2 step;
#   3. bench_data.py: the training loader's images/s per worker count on the GPU host's CPUs;
#   4. the CUDA-only tests (bf16 / fp16 stages, channels_last + compile, evaluator on GPU);
#   5. if time is left: bench_train.py --compile;
#   6. the candidates the profile named: channels_last for the RN50 models, and CUDA graphs
#      (compile mode 'reduce-overhead') for the ViT.
#
#   bash projects/CSGN/benchmarks/gpu_session.sh OUT_DIR
#   STEPS="channels_last cudagraphs" bash projects/CSGN/benchmarks/gpu_session.sh OUT_DIR
#
# Results land in OUT_DIR (logs, JSON, markdown). STEPS (names below) runs only those steps.
# Without a GPU, SMOKE=1 runs the same steps with tiny towers on the CPU (to check the script).
set -u
out=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
budget=${BUDGET_S:-540}  # seconds for the whole session
started=$SECONDS

device=cuda
train_extra=()
bench_extra=(--steps 30 --workers 8 --profile 5)
data_extra=(data.height 256 data.width 128 train.batch_size 64)
workers=(0 2 4 8 12)
tests=(tests/test_cuda.py tests/test_ranking.py)
if [ "${SMOKE:-0}" = 1 ]; then
  device=cpu
  train_extra=(runtime.device cpu clip.vit_arch csgn-tiny-vit clip.resnet_arch csgn-tiny-rn
    data.height 128 data.width 64 cc_data.synthcc_preset tiny data.workers 0
    stage1.max_epoch 1 train.max_epoch 1 train.batch_size 16 stage1.batch_size 16)
  bench_extra=(--tiny --steps 2 --batch 16 --height 128 --width 64 --workers 0 --profile 1
    --models csgn --preset tiny)
  data_extra=(cc_data.synthcc_preset tiny)
  workers=(0)
  tests=(tests/test_cuda.py)
fi

# step NAME LIMIT_S COMMAND...: run with a time limit, output into OUT_DIR/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then
    return
  fi
  local left=$((budget - (SECONDS - started)))
  if [ "$left" -lt 20 ]; then
    echo "=== $name: skipped, ${left}s left of the session budget"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s) at $((SECONDS - started))s"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0))s"
  tail -n 8 "$out/$name.log"
}

if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
fi
python -c "import torch, torchreid, open_clip; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

save=/tmp/csgn_realsize
step train_realsize 240 python tools/train.py \
  --config-file projects/CSGN/configs/synthcc_realsize.yaml \
  data.save_dir "$save" runtime.checkpoint_period 0 "${train_extra[@]}"
cp "$save"/train.log-* "$out/train_realsize_log.txt" 2>/dev/null
cp "$save/throughput.json" "$out/train_realsize_throughput.json" 2>/dev/null

step bench_train 180 python projects/CSGN/benchmarks/bench_train.py --device "$device" \
  --data configs/csgn_synthcc.yaml --out "$out" "${bench_extra[@]}"

step bench_data 90 python projects/CSGN/benchmarks/bench_data.py --workers "${workers[@]}" \
  --batches 30 --tag gpu_host --out "$out" "${data_extra[@]}"

step tests_cuda 200 python -m pytest -q -p no:cacheprovider "${tests[@]}"

if [ "$device" = cuda ]; then
  step bench_train_compile 200 python projects/CSGN/benchmarks/bench_train.py --device cuda \
    --compile --models clipreid_vitb16 csgn --steps 30 --tag _compile --out "$out"
  step channels_last 120 python projects/CSGN/benchmarks/bench_train.py --device cuda \
    --channels-last --models clipreid_rn50 csgn --steps 30 --tag _channels_last --out "$out"
  step cudagraphs 200 python projects/CSGN/benchmarks/bench_train.py --device cuda --compile \
    --compile-mode reduce-overhead --models clipreid_vitb16 --steps 30 --tag _cudagraphs \
    --out "$out"
fi

echo "=== session done in $((SECONDS - started))s"
