#!/usr/bin/env bash
# One short device call for everything that docs/PERFORMANCE.md's fast-path rows need (device
# time was nearly spent): CUDA equality tests, the step benches (graph vs eager, bf16), the
# pipeline at reduced length (CUDA graphs; the recorded run used --precision bf16, a choice withheld
# since, so this script now runs fp16) and one PSNR comparison fp32 vs bf16.
# Every step is cut to what is left before BUDGET seconds; logs in $OUT (at most 8 files).
set -u
OUT=${OUT:-/tmp/final_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
W=${WORK:-/tmp/jnerf_pipe}
DEADLINE=$(( $(date +%s) + ${BUDGET:-375} ))
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/device.txt" 2>&1
run() {  # name, timeout, command...
  local name=$1 t=$2; shift 2
  local t0=$(date +%s)
  local left=$(( DEADLINE - t0 )); [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -le 5 ]; then echo "skipped: no time left" >> "$OUT/$name.log"; return; fi
  timeout "$t" "$@" >> "$OUT/$name.log" 2>&1; echo "rc=$? wall=$(( $(date +%s) - t0 ))s" >> "$OUT/$name.log"
}
python bench/pipeline.py --work "$W" --prepare_only > "$OUT/device.txt.scene" 2>&1 &
SCENE=$!
run tests 45 python -m pytest -q -rP tests/test_graphs.py -k "replayed or cumprod"
run benches 40 python bench/nerf_step.py --variants tf32:graph,bf16,bf16:graph --steps 30 --warmup 8
run benches 30 python bench/shaping_step.py --fast_only --steps 40 --warmup 8
wait $SCENE; cat "$OUT/device.txt.scene" >> "$OUT/device.txt"; rm -f "$OUT/device.txt.scene"
P="python bench/pipeline.py --work $W --precision fp16 --plain_steps 1000 --shape_steps 300 --agg_steps 10000"
PD=$(( $(date +%s) + 236 )); [ "$PD" -gt "$DEADLINE" ] && PD=$DEADLINE
run pipeline 240 $P --stages plain,shape,3d_sparse,2d_sparse,2d_dense,perturb --json "$OUT/pipeline1.json" --deadline $PD
run psnr 75 python bench/nerf_step.py --variants none --psnr_steps 1000 --data "$W/room" \
    --psnr_precisions bf16,fp32 --psnr_seeds 0 --own_engine_only
run pipeline 60 $P --stages 3d_dense --json "$OUT/pipeline2.json" --deadline $(( DEADLINE - 2 ))
for f in "$OUT"/*.log "$OUT/device.txt"; do echo "=== $f"; grep -E '^\||rc=|Error|error|passed|failed|max \||shaping=|scene' "$f" | tail -45; done
