#!/usr/bin/env bash
# Device calls of the float16-training work (--precision mixed); one call each, logs in $OUT.
#   bash bench/device_mixed.sh a   # CUDA equality tests, step benches, kernel profiles (step, aggregator,
#                                  # render), checkpoint save time, a 2000-step PSNR pilot, a short pipeline
#   bash bench/device_mixed.sh b   # the pipeline at reduced length, --precision mixed
#   bash bench/device_mixed.sh c   # the precision check: PSNR fp32 vs mixed, STEPS (default 7500) x 2 seeds
set -u
OUT=${OUT:-/tmp/mixed_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
W=${WORK:-/tmp/jnerf_pipe}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/device.txt" 2>&1
DEADLINE=$(( $(date +%s) + ${BUDGET:-540} ))
run() {  # name, timeout, command...   (cut to what is left before DEADLINE)
  local name=$1 t=$2; shift 2
  local t0=$(date +%s)
  local left=$(( DEADLINE - t0 )); [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -le 5 ]; then echo "skipped: no time left" >> "$OUT/$name.log"; return; fi
  echo "\$ $*" >> "$OUT/$name.log"
  timeout "$t" "$@" >> "$OUT/$name.log" 2>&1; echo "rc=$? wall=$(( $(date +%s) - t0 ))s" >> "$OUT/$name.log"
}
python bench/pipeline.py --work "$W" --prepare_only > "$OUT/scene.log" 2>&1 &
SCENE=$!
case "${1:-a}" in
  a)
    run tests 90 python -m pytest -q -rP tests/test_graphs.py tests/test_precision.py tests/test_loss_scale.py \
        tests/test_fused_inference.py
    run bench 60 python bench/nerf_step.py --variants tf32:graph,mixed:graph,bf16:graph --steps 50 --warmup 10
    run profile 25 python bench/profile_step.py --what step --precision mixed
    run profile 25 python bench/profile_step.py --what step --precision tf32 --rows 12
    run profile 20 python bench/profile_step.py --what agg --steps 20
    run profile 20 python bench/profile_step.py --what agg --steps 20 --precision fp32 --rows 8
    run profile 20 python bench/profile_step.py --what render --precision fp16 --steps 2
    run save 30 python bench/save_time.py
    wait $SCENE
    run psnr 110 python bench/nerf_step.py --variants none --psnr_steps 2000 --data "$W/room" \
        --psnr_precisions mixed,fp32 --psnr_seeds 0 --own_engine_only
    run pipeline 200 python bench/pipeline.py --work "$W" --precision mixed --plain_steps 300 --shape_steps 100 \
        --agg_steps 2000 --stages plain,shape,2d_dense,perturb --json "$OUT/pipeline_a.json" --deadline $DEADLINE ;;
  b)
    wait $SCENE
    run pipeline 560 python bench/pipeline.py --work "$W" --precision mixed --plain_steps ${PLAIN:-2000} \
        --shape_steps 300 --agg_steps ${AGG:-20000} --json "$OUT/pipeline_b.json" --deadline $DEADLINE ;;
  c)
    # one run at a time: processes sharing the GPU are time-sliced, so four at once took longer than
    # the four in a row (the recorded fp32 runs of 7500 steps were rerun alone, about 185 s each)
    wait $SCENE
    S=${STEPS:-7500}
    for seed in 0 1; do for prec in fp32 mixed; do
      run "psnr_${prec}_$seed" 300 python bench/nerf_step.py --variants none --psnr_steps "$S" --data "$W/room" \
          --psnr_precisions $prec --psnr_seeds $seed --own_engine_only
    done; done ;;
esac
wait
for f in "$OUT"/*.log; do echo "=== $f"; grep -E '^\||^###|rc=|Error|error|passed|failed|skipped|save' "$f" | tail -60; done
