#!/usr/bin/env bash
# Wall time of the reproduction runner on one GPU against two (torchrun, one process per GPU),
# same YAML, same scenes, the scene data generated once beforehand (not timed).
#   bash experiments/gpu_timing.sh            (YAML=experiments/gpu_timing.yaml by default)
# Writes $OUT/summary.txt (device, wall times, per-process stage times, whether the two
# results.json are equal), the two logs and the one-GPU results.md.
set -u
OUT=${OUT:-/tmp/gpu_timing_out}; YAML=${YAML:-experiments/gpu_timing.yaml}; WORK=${WORK:-/tmp/gpu_timing}
mkdir -p "$OUT" "$WORK/data"
export PYTHONUNBUFFERED=1
command -v python > /dev/null || { mkdir -p "$WORK/bin"; ln -sf "$(command -v python3)" "$WORK/bin/python"; export PATH="$WORK/bin:$PATH"; }
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'GPUs', torch.cuda.device_count())"
} > "$OUT/summary.txt" 2>&1
# the scene data, generated once (in parallel) before the timed runs: datasets.synthetic's own CLI
python -c "
import os, sys
from experiments.reproduce import load_plan
from experiments.layout import slug
plan = load_plan(sys.argv[1], data_root=sys.argv[2])
for s in plan.scenes:
    if s.synthetic:
        p = dict(variant=0, frames=150, width=80, height=60, seed=0); p.update(s.synthetic)
        print(os.path.join(plan.data_root, slug(s.name)), p['variant'], p['frames'], p['width'], p['height'], p['seed'])
" "$YAML" "$WORK/data" > "$WORK/scenes.txt"
g0=$(date +%s)
while read -r dir variant frames width height seed; do
  python -m datasets.synthetic --out "$dir" --variant "$variant" --frames "$frames" --width "$width" \
    --height "$height" --seed "$seed" --no_stats --workers 4 > "$dir.log" 2>&1 &
done < "$WORK/scenes.txt"
wait
echo "scene data: $(( $(date +%s) - g0 )) s" >> "$OUT/summary.txt"
t0=$(date +%s.%N)
CUDA_VISIBLE_DEVICES=0 python -m experiments.reproduce "$YAML" --out_dir "$WORK/one" --data_root "$WORK/data" \
  > "$OUT/one_gpu.log" 2>&1; rc1=$?
t1=$(date +%s.%N)
python -m torch.distributed.run --nproc_per_node 2 -m experiments.reproduce "$YAML" --out_dir "$WORK/two" --data_root "$WORK/data" \
  > "$OUT/two_gpus.log" 2>&1; rc2=$?
t2=$(date +%s.%N)
python - "$WORK" "$t0" "$t1" "$t2" "$rc1" "$rc2" <<'EOF' >> "$OUT/summary.txt" 2>&1
import glob, json, os, sys
work, t0, t1, t2 = sys.argv[1], *map(float, sys.argv[2:5])
print(f"one GPU: {t1 - t0:.1f} s (rc {sys.argv[5]}); two GPUs (torchrun): {t2 - t1:.1f} s (rc {sys.argv[6]}); "
      f"speed-up {(t1 - t0) / max(t2 - t1, 1e-9):.2f}x")
for run in ("one", "two"):
    for path in sorted(glob.glob(os.path.join(work, run, "timings", "process_*.json"))):
        t = json.load(open(path))
        print(f"{run}: process {t['process']} of {t['processes']} on {t['device']}: scenes {t['scenes']}, "
              f"{t['wall_s']:.1f} s; failed {t['failed']}")
        for scene, stages in t["stages"].items():
            print(f"   {scene}: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
a, b = (os.path.join(work, r, "results.json") for r in ("one", "two"))
if os.path.isfile(a) and os.path.isfile(b):
    print("results.json equal:", json.load(open(a)) == json.load(open(b)))
EOF
cp "$WORK/one/results.md" "$OUT/results_one_gpu.md" 2>/dev/null
cp "$WORK/two/results.md" "$OUT/results_two_gpus.md" 2>/dev/null
cat "$OUT/summary.txt"
