#!/usr/bin/env bash
# All GPU benchmarks in one device call (device time is scarce): logs go to $OUT/<name>.log,
# the tables are printed at the end.  Usage: bash bench/device_all.sh [group]   group: a (default) | b
set -u
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
run() {  # name, timeout, command...
  local name=$1 t=$2; shift 2
  local t0=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$? wall=$(( $(date +%s) - t0 ))s" >> "$OUT/$name.log"
}
case "${1:-a}" in
  a)
    run nerf_step 150 python bench/nerf_step.py
    run render_variants 120 python bench/render_variants.py
    run shaping_step 150 python bench/shaping_step.py
    run dino_extract 150 python bench/dino_extract.py --cap_s 100 ;;
  b)
    run render_variants 100 python bench/render_variants.py
    run nerf_step 100 python bench/nerf_step.py
    run shaping_step 100 python bench/shaping_step.py
    run propagation 330 python bench/propagation.py --quiet ;;
  d)
    run nerf_psnr 240 python bench/nerf_step.py --psnr_steps 2000
    run propagation 200 python bench/propagation.py --quiet --skip_dense --scaling
    run oracle 200 python -m experiments.oracle ;;
  c)
    run shaping_step 150 python bench/shaping_step.py --steps 60
    run nerf_psnr 300 python bench/nerf_step.py --psnr_steps 2000 ;;
esac
for f in "$OUT"/*.log; do echo "=== $f"; grep -E '^\||rc=|Error|error' "$f" | tail -40; done
