#!/usr/bin/env bash
# The fast-path measurements of docs/PERFORMANCE.md in one device call (device time is scarce).
# Logs go to $OUT/<name>.log; the tables are printed at the end.
#   bash bench/device_fast.sh a   # CUDA equality tests, step/render benches, the pipeline at reduced
#                                 # length (bf16, CUDA graphs), the precision comparisons on its checkpoints
#   bash bench/device_fast.sh b   # PSNR after 2000 plain steps, fp32 against bf16, two seeds
set -u
OUT=${OUT:-/tmp/fast_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
W=${WORK:-/tmp/jnerf_pipe}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/device.txt"
DEADLINE=$(( $(date +%s) + ${BUDGET:-540} ))   # every step ends by then (the call's limit is 600 s)
run() {  # name, timeout, command...   (the timeout is cut to what is left before DEADLINE)
  local name=$1 t=$2; shift 2
  local t0=$(date +%s)
  local left=$(( DEADLINE - t0 )); [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -le 5 ]; then echo "skipped: no time left" > "$OUT/$name.log"; return; fi
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$? wall=$(( $(date +%s) - t0 ))s" >> "$OUT/$name.log"
}
# the scene (CPU) is generated while the GPU runs the tests and benches
python bench/pipeline.py --work "$W" --prepare_only > "$OUT/scene.log" 2>&1 &
SCENE=$!
case "${1:-a}" in
  a)
    run tests 120 python -m pytest -q -rP tests/test_graphs.py tests/test_precision.py tests/test_fused_inference.py
    run nerf_step 100 python bench/nerf_step.py --steps 50 --warmup 10
    run shaping_step 80 python bench/shaping_step.py --rays 64 --steps 40 --warmup 10
    wait $SCENE
    run pipeline 400 python bench/pipeline.py --work "$W" --precision fp16 --json "$OUT/pipeline.json" \
        --deadline $DEADLINE ;;
  b)
    wait $SCENE
    # the plain and shaped checkpoints (bf16, as in a), then the precision checks on them:
    # shaping in fp32 against bf16; propagation fp32 against bf16 (its float16 engine), half size
    run ckpts 150 python bench/pipeline.py --work "$W" --precision fp16 --stages plain,shape --deadline $DEADLINE
    run shape_fp32 60 python bench/pipeline.py --work "$W" --precision fp32 --stages shape --tag _fp32
    run prop_fp32 100 python bench/pipeline.py --work "$W" --precision fp32 --stages 3d_sparse,2d_sparse \
        --tag _a32 --extra "--test_viz_factor 2" --deadline $DEADLINE
    run prop_bf16 60 python bench/pipeline.py --work "$W" --precision fp16 --stages 3d_sparse,2d_sparse \
        --tag _a16 --extra "--test_viz_factor 2" --deadline $DEADLINE
    run agreement 30 python bench/label_agreement.py "$W/p3s_a32" "$W/p3s_a16" "$W/p2s_a32" "$W/p2s_a16"
    python - "$W" >> "$OUT/agreement.log" 2>&1 <<'PY'
import json, os, sys
w = sys.argv[1]
print("| shaping run | steps | ms/step | final tau | mean pos ratio | last contrastive | last gradient loss | test PSNR |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for d in ("shape", "shape_fp32"):
    p = os.path.join(w, d, "metrics.json")
    if os.path.isfile(p):
        m = json.load(open(p)); s = m["shaping"]
        print(f"| {d} | {m['steps']} | {1e3 * m['seconds_per_step']:.2f} | {s['pos_threshold_final']:.3f} | "
              f"{s['mean_pos_ratio']:.4f} | {s['last'].get('contrastive_loss', float('nan')):.4f} | "
              f"{s['last'].get('gradient_loss', float('nan')):.4f} | {m['test_psnr']:.2f} |")
PY
    run nerf_psnr 250 python bench/nerf_step.py --variants bf16:graph --steps 30 --psnr_steps 2000 \
        --data "$W/room" --psnr_precisions fp32,bf16 --psnr_seeds 0,1 ;;
esac
wait
for f in "$OUT"/*.log; do echo "=== $f"; grep -E '^\||rc=|Error|error|passed|failed' "$f" | tail -40; done
