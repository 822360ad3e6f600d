#!/usr/bin/env bash
# GPU measurements in one call: named steps run in order, each under a timeout cut to what is left
# of BUDGET seconds, a log per step in $OUT/<step>.log (with its command and "rc=... wall=...s");
# the tables of every log are printed at the end.
#
#   bash bench/device_run.sh STEP [STEP ...]
#   bash bench/device_run.sh tests nerf_step shaping_step
#   bash bench/device_run.sh 'nerf_step --variants tf32:graph,mixed:graph --steps 50' 'pipeline --stages plain,shape'
#
# A STEP is a name from the list below, optionally followed (in the same shell word) by arguments
# appended to its command (argparse: a repeated flag takes the last value).
#   tests            CUDA equality tests: graph replay = eager, precisions, loss scale, fused inference
#   nerf_step        bench/nerf_step.py: the plain step, graph vs eager, per precision
#   shaping_step     bench/shaping_step.py: the shaping step, fast vs the literal loops
#   render_variants  bench/render_variants.py: where render time goes
#   render_view      bench/render_skip_write.py: one 320x240 view on the float16 engine
#   propagation      bench/propagation.py --quiet: label propagation stages and scaling
#   dino_extract     bench/dino_extract.py --cap_s 100
#   profile          bench/profile_step.py: a step's CUDA kernels (add --what agg|render, --precision P)
#   save_time        bench/save_time.py: one checkpoint of the paper's network
#   psnr             test PSNR after 2000 plain steps, --precision mixed against fp32 (seed 0; add
#                    --psnr_steps N --psnr_seeds 0,1 --psnr_precisions ...)            [scene]
#   pipeline         bench/pipeline.py: the README's stages at reduced length, projected  [scene]
#   semantic_precision  bench/semantic_precision.py: Semantic-NeRF joint, mixed against fp32, two seeds,
#                    test PSNR and 2D/3D mIoU (runs in parallel on the GPU)                  [scene]
#   oracle           python -m experiments.oracle
#   commands         bash bench/gpu_commands.sh: the paper's commands through main.py
#   estimate         python -m experiments.reproduce $PLAN --estimate (default experiments/replica.yaml):
#                    the projected time of a reproduction plan on this GPU (calibration runs included)
#   tests_perf       CUDA tests of issue 20's paths: graph replay of the aggregator step, encoding into the
#                    float16 buffer, background writes, checks and log vectors (about 1 min)
#   render_engine    bench/render_engine.py: one 320x240 view per engine variant (diff against the slow twin,
#                    fp16 against fp32) and 30 views written in the caller vs in the background (about 40 s)
#   aggregator_block bench/aggregator_block.py: ops, us/step, 200k projection and labels vs eager of the
#                    eager, previous graphed and device aggregator steps, fp32 and tf32 (about 1 min)
#   startup          bench/startup.py: start-up of a stage uncached / cold / warm frame cache, frames and
#                    frames + descriptors, 2 fresh processes each (about 1.5 min)               [scene]
#   long_plain       bench/long_run.py: 50k plain steps through main.py, --precision mixed, a checkpoint
#                    every 100 steps; the rate in 5k-step windows (about 6 min: a call of its own) [scene]
# [scene]: the 900-frame 320x240 synthetic room of bench/pipeline.py in $WORK, generated on the CPU
# in the background while the steps before run (about 30 s on 16 cores).
#
# Environment: OUT (logs; /tmp/bench_out), BUDGET (seconds for all steps; 540, under a 600 s call),
# WORK (the pipeline's scene and runs; /tmp/jnerf_pipe), PLAN (the estimate step's YAML).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
W=${WORK:-/tmp/jnerf_pipe}
export PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${BUDGET:-540} ))
[ $# -gt 0 ] || { sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 2; }

step_command() {  # name -> "timeout command..." (words), or nothing for an unknown name
  case "$1" in
    tests) echo 120 python -m pytest -q -rP tests/test_graphs.py tests/test_precision.py tests/test_loss_scale.py \
                    tests/test_fused_inference.py ;;
    nerf_step) echo 150 python bench/nerf_step.py ;;
    shaping_step) echo 150 python bench/shaping_step.py ;;
    render_variants) echo 120 python bench/render_variants.py ;;
    render_view) echo 60 python bench/render_skip_write.py ;;
    propagation) echo 330 python bench/propagation.py --quiet ;;
    dino_extract) echo 150 python bench/dino_extract.py --cap_s 100 ;;
    profile) echo 60 python bench/profile_step.py ;;
    save_time) echo 30 python bench/save_time.py ;;
    psnr) echo 300 python bench/nerf_step.py --variants none --psnr_steps 2000 --data "$W/room" \
                   --psnr_precisions mixed,fp32 --psnr_seeds 0 --own_engine_only ;;
    semantic_precision) echo 420 python bench/semantic_precision.py --work "$W" ;;
    pipeline) echo 560 python bench/pipeline.py --work "$W" --precision mixed --json "$OUT/pipeline.json" \
                       --deadline "$DEADLINE" ;;
    oracle) echo 200 python -m experiments.oracle ;;
    commands) echo 600 env OUT="$OUT" bash bench/gpu_commands.sh ;;
    estimate) echo 600 python -m experiments.reproduce "${PLAN:-experiments/replica.yaml}" --estimate ;;
    tests_perf) echo 150 python -m pytest -q -rs tests/test_aggregator_step.py tests/test_fused_inference.py \
                    tests/test_background_writes.py tests/test_host_overhead.py tests/test_frame_cache.py ;;
    render_engine) echo 120 python bench/render_engine.py ;;
    aggregator_block) echo 150 python bench/aggregator_block.py ;;
    startup) echo 200 python bench/startup.py --work "$W" --repeats 2 ;;
    long_plain) echo 590 python bench/long_run.py --work "$W" --steps 50000 --timeout 480 ;;
  esac
}

for spec in "$@"; do      # refuse an unknown step before anything runs
  [ -n "$(step_command ${spec%% *})" ] || { echo "error: unknown step '${spec%% *}' (bash $0 lists them)" >&2; exit 2; }
done

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/device.txt" 2>&1

SCENE=
for spec in "$@"; do
  case "${spec%% *}" in psnr|pipeline|startup|long_plain|semantic_precision)
    python bench/pipeline.py --work "$W" --prepare_only > "$OUT/scene.log" 2>&1 & SCENE=$!; break ;;
  esac
done

for spec in "$@"; do
  name=${spec%% *}; extra=; [ "$spec" != "$name" ] && extra=${spec#* }
  set -- $(step_command "$name"); t=$1; shift
  case "$name" in psnr|pipeline|startup|long_plain|semantic_precision) [ -n "$SCENE" ] && { wait "$SCENE"; SCENE=; } ;; esac
  t0=$(date +%s); left=$(( DEADLINE - t0 )); [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -le 5 ]; then echo "skipped: no time left" >> "$OUT/$name.log"; continue; fi
  echo "\$ $* $extra" >> "$OUT/$name.log"
  # shellcheck disable=SC2086  # extra arguments split into words on purpose
  timeout "$t" "$@" $extra >> "$OUT/$name.log" 2>&1
  echo "rc=$? wall=$(( $(date +%s) - t0 ))s" >> "$OUT/$name.log"
done
wait
cat "$OUT/device.txt"
for f in "$OUT"/*.log; do echo "=== $f"; grep -E '^\||^###|^\$|rc=|Error|error|passed|failed|skipped' "$f" | tail -60; done
