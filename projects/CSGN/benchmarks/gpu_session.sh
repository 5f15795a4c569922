#!/usr/bin/env bash
# One prepared GPU session for issue #21 (the whole LTCC recipe at the GPU's speed), in order of
# importance, each step bounded by its own time limit and all of them by BUDGET_S, so that a
# failure or a slow step leaves the others' results:
#   1. bench_train: clipreid_vitb16 and csgn at batch 64, 256x128, bf16: stage 1 eager and with
#      CUDA graphs (identity slots, text cut at the end-of-text token); stage 2 eager and graphed
#      on random input; the graphed step fed by SynthCC with images decoded once on the GPU and
#      augmented there (loader-fed steady state against the bare graphed step, same run); the
#      stage-1 feature pass from the decoded images; a profile of 3 eager steps;
#   2. bench_extract: evaluation extraction of csgn over 20,000 in-memory JPEGs decoded once onto
#      the GPU, bf16, batch 512, forward from a CUDA graph (decoding timed apart);
#   3. ltcc_size: configs/csgn_ltcc.yaml's recipe on the LTCC-size SynthCC preset through
#      tools/train.py with the defaults' fast path (data.cache, runtime.compile and
#      runtime.channels_last 'auto'): every phase timed in throughput.json. By default a
#      shortened schedule (LTCC_EPOCHS="20 4": prompt epochs, stage-2 epochs; evaluation at the
#      end); FULL=1 runs the whole schedule (120 + 60 epochs, evaluation every 10), which needs
#      a session of its own;
#   4. tests_cuda: the CUDA-graph and decoded-image tests (tests/end_to_end/test_cuda.py);
#   5. csgn_compiled: csgn's stage-2 step under torch.compile mode 'reduce-overhead' (compile
#      time apart), against the graphed step of step 1.
#
#   bash projects/CSGN/benchmarks/gpu_session.sh OUT_DIR
#   STEPS="bench_extract ltcc_size" bash projects/CSGN/benchmarks/gpu_session.sh OUT_DIR
#   FULL=1 STEPS=ltcc_size BUDGET_S=840 bash projects/CSGN/benchmarks/gpu_session.sh OUT_DIR
#
# Everything lands in OUT_DIR (logs, JSON, markdown, session.log with each step's exit code and
# seconds). STEPS (names above) runs only those steps. Without a GPU, SMOKE=1 runs the same
# steps with tiny towers and tiny sizes on the CPU (to check the script before device time is
# spent on it: about 3 minutes on a 2-core CPU).
set -u
out=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
budget=${BUDGET_S:-480}  # seconds for the whole session
data_root=${DATA_ROOT:-/tmp/csgn_session_data}  # generated SynthCC trees
started=$SECONDS
read -r stage1_epochs stage2_epochs <<<"${LTCC_EPOCHS:-20 4}"

device=cuda
bench=(--steps 30 --workers 8 --profile 3 --graphs --models clipreid_vitb16 csgn)
extract=(--images 20000 --batch 512 --workers 12 --graphs)
ltcc=(data.workers 16)
tests=(tests/end_to_end/test_cuda.py -k "graphed or graphs")
compiled=(--compile reduce-overhead --models csgn --steps 20)
if [ "${SMOKE:-0}" = 1 ]; then
  device=cpu
  tiny=(--tiny --batch 16 --height 128 --width 64 --models csgn)
  bench=(--steps 2 --workers 0 --profile 1 --preset tiny --cache on --graphs "${tiny[@]}")
  extract=(--tiny --images 64 --batch 32 --workers 0 --warmup 1 --graphs)
  ltcc=(runtime.device cpu clip.vit_arch csgn-tiny-vit clip.resnet_arch csgn-tiny-rn
    data.height 128 data.width 64 cc_data.synthcc_preset tiny data.workers 0 data.cache on
    train.batch_size 16 stage1.batch_size 16 test.batch_size 64)
  stage1_epochs=1 stage2_epochs=1
  tests=(tests/end_to_end/test_cuda.py)
  compiled=(--steps 1 "${tiny[@]}")
fi
schedule=(stage1.max_epoch "$stage1_epochs" train.max_epoch "$stage2_epochs")
if [ "${FULL:-0}" = 1 ]; then
  schedule=()
fi

log() { echo "$*" | tee -a "$out/session.log"; }

# step NAME LIMIT_S COMMAND...: run with a time limit, output into OUT_DIR/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then
    return
  fi
  local left=$((budget - (SECONDS - started)))
  if [ "$left" -lt 20 ]; then
    log "=== $name: skipped, ${left}s left of the session budget"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "=== $name (limit ${limit}s) at $((SECONDS - started))s"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  log "=== $name: exit $? after $((SECONDS - t0))s"
  tail -n 6 "$out/$name.log"
}

if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
fi
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())" | tee "$out/versions.txt"
# a machine that receives a copy of the working tree may hold stale git metadata: pass the
# commit in GIT_COMMIT there
echo "commit ${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}" >>"$out/versions.txt"

step bench_train 150 python projects/CSGN/benchmarks/bench_train.py --device "$device" \
  --data configs/csgn_synthcc.yaml --data-root "$data_root" --out "$out" "${bench[@]}"

step bench_extract 75 python projects/CSGN/benchmarks/bench_extract.py --device "$device" \
  --out "$out" "${extract[@]}"

save="$out/ltcc_size_run"
step ltcc_size 180 python tools/train.py \
  --config-file projects/CSGN/configs/synthcc_ltcc_size.yaml \
  data.root "$data_root" data.save_dir "$save" "${schedule[@]}" \
  "${ltcc[@]}"
rm -rf "$save/checkpoints"  # gigabytes of random weights

step tests_cuda 75 python -m pytest -q -p no:cacheprovider "${tests[@]}"

step csgn_compiled 150 python projects/CSGN/benchmarks/bench_train.py --device "$device" \
  --tag _compiled --out "$out" "${compiled[@]}"

log "=== session done in $((SECONDS - started))s"
