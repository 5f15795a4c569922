#!/usr/bin/env bash
# One prepared GPU session for issue #15 (throughput of the whole pipeline), in order of
# importance, each step bounded by its own time limit so that a failure or a slow step leaves
# the others' results:
#   1. bench_train: eager stage-2 step of the three CLIP models on random tensors AND fed by the
#      SynthCC pipeline in the same run (loader-fed steady state vs the bare step), stage 1 at
#      batch 64 and at 512 (one text pass per distinct identity), a profile of 3 eager steps;
#   2. compiled stage 2 (torch.compile) and CUDA graphs (mode 'reduce-overhead') for
#      clipreid_vitb16 and csgn;
#   3. bench_extract: evaluation feature extraction of csgn over a 20,000-image gallery, bf16,
#      batch 512, 12 loader workers;
#   4. channels_last for the RN50 tower (clipreid_rn50, csgn);
#   5. real-size CSGN trained on SynthCC through tools/train.py: every phase's throughput, the
#      warm-up window apart from steady state, the epoch-to-epoch flow;
#   6. the CUDA-only tests.
#
#   bash projects/CSGN/benchmarks/gpu_session.sh OUT_DIR
#   STEPS="bench_extract channels_last" bash projects/CSGN/benchmarks/gpu_session.sh OUT_DIR
#
# Results land in OUT_DIR (logs, JSON, markdown). STEPS (names below) runs only those steps.
# Without a GPU, SMOKE=1 runs the same steps with tiny towers and tiny sizes on the CPU (to check
# the script before device time is spent on it).
set -u
out=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
budget=${BUDGET_S:-540}  # seconds for the whole session
started=$SECONDS

device=cuda
train_extra=()
bench_extra=(--steps 30 --workers 8 --profile 3)
stage1_big=(--stage1-batch 512 --steps 20 --models clipreid_vitb16 csgn)
extract_extra=(--images 20000 --batch 512 --workers 12)
tests=(tests/end_to_end/test_cuda.py tests/evaluation/test_ranking.py)
if [ "${SMOKE:-0}" = 1 ]; then
  device=cpu
  train_extra=(runtime.device cpu clip.vit_arch csgn-tiny-vit clip.resnet_arch csgn-tiny-rn
    data.height 128 data.width 64 cc_data.synthcc_preset tiny data.workers 0
    stage1.max_epoch 1 train.max_epoch 2 train.batch_size 16 stage1.batch_size 16)
  bench_extra=(--tiny --steps 2 --batch 16 --height 128 --width 64 --workers 0 --profile 1
    --models csgn --preset tiny)
  stage1_big=(--tiny --stage1-batch 64 --steps 2 --batch 16 --height 128 --width 64
    --models csgn)
  extract_extra=(--tiny --images 64 --batch 32 --workers 0 --warmup 1)
  tests=(tests/end_to_end/test_cuda.py)
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

step bench_train 180 python projects/CSGN/benchmarks/bench_train.py --device "$device" \
  --data configs/csgn_synthcc.yaml --out "$out" "${bench_extra[@]}"

step stage1_batch512 60 python projects/CSGN/benchmarks/bench_train.py --device "$device" \
  --tag _stage1_512 --out "$out" "${stage1_big[@]}"

if [ "$device" = cuda ]; then
  step bench_train_compile 150 python projects/CSGN/benchmarks/bench_train.py --device cuda \
    --compile --models clipreid_vitb16 csgn --steps 30 --tag _compile --out "$out"
  step cudagraphs 150 python projects/CSGN/benchmarks/bench_train.py --device cuda --compile \
    --compile-mode reduce-overhead --models clipreid_vitb16 csgn --steps 30 --tag _cudagraphs \
    --out "$out"
fi

step bench_extract 90 python projects/CSGN/benchmarks/bench_extract.py --device "$device" \
  --out "$out" "${extract_extra[@]}"

if [ "$device" = cuda ]; then
  step channels_last 90 python projects/CSGN/benchmarks/bench_train.py --device cuda \
    --channels-last --models clipreid_rn50 csgn --steps 30 --tag _channels_last --out "$out"
fi

save=/tmp/csgn_realsize
step train_realsize 150 python tools/train.py \
  --config-file projects/CSGN/configs/synthcc_realsize.yaml \
  data.save_dir "$save" runtime.checkpoint_period 0 "${train_extra[@]}"
cp "$save"/train.log-* "$out/train_realsize_log.txt" 2>/dev/null
cp "$save/throughput.json" "$out/train_realsize_throughput.json" 2>/dev/null

step tests_cuda 120 python -m pytest -q -p no:cacheprovider "${tests[@]}"

echo "=== session done in $((SECONDS - started))s"
