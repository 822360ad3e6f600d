#!/usr/bin/env bash
# The paper's commands, as written (plus --gpu 0 and small N_iters), through main.py on a GPU
# machine, on the built-in synthetic room; then the demo. Prints one line per command with its
# exit code and wall time. Usage: bash bench/gpu_commands.sh   (logs under $OUT/commands/)
set -u
OUT=${OUT:-/tmp/gpu_commands}; L=$OUT/commands; mkdir -p "$L"
W=$(mktemp -d); D=$W/room; CFG=$W/room.yaml
python -m datasets.synthetic --out "$D" --frames 100 --width 160 --height 120 > "$L/00_scene.log" 2>&1
sed -E "s#^( *)dataset_dir:.*#\1dataset_dir: $D#; s#^( *)width: .*#\1width: 160#; s#^( *)height: .*#\1height: 120#" configs/synthetic_room.yaml > "$CFG"
n=0
cmd() {  # label, main.py arguments...
  local label=$1; shift; n=$((n+1))
  local t0=$SECONDS
  python main.py "$@" > "$L/$(printf %02d $n)_$label.log" 2>&1; local rc=$?
  printf '| %s | %s | %d s |\n' "$label" "$rc" "$((SECONDS - t0))"
}
echo "| command | exit code | wall |"; echo "|---|---|---|"
C="--config_file $CFG --gpu 0"
cmd plain $C --save_dir $W/plain --N_iters 1000 --precision tf32
P=$W/plain/checkpoints/001000.ckpt
cmd resume $C --save_dir $W/plain --ckpt_path $P --resume --N_iters 1100
cmd render_only $C --save_dir $W/render --ckpt_path $P --render_only
cmd shaping_paper $C --load_dino --load_on_cpu --feature_dim 384 --save_dir $W/jnerf --ckpt_path $P --contrastive_2d --contrastive_starting_step 0 --contrastive_step 1 --wgt_img 1 --wgt_contrastive 1e-2 --wgt_gradient 1e-2 --rgb_layer --pos_threshold 0.8 --neg_threshold 0.8 --adaptive_threshold --gt_feature_sim --gradient_norm_loss --N_rays 64 --contrastive_abs --training_mode --N_iters 500
J=$W/jnerf/checkpoints/000500.ckpt
cmd seeds_visualise_save $C --sparse_views --sparse_ratio 0.995 --label_propagation --partial_perc 0 --visualise_save --propagate_3d --ckpt_path $J --save_dir $W/p3s0 --rgb_layer --mean_gradient
cmd 3d_sparse $C --sparse_views --sparse_ratio 0.995 --label_propagation --partial_perc 0 --load_saved --propagate_3d --ckpt_path $J --save_dir $W/p3s0 --rgb_layer --mean_gradient
cmd 2d_sparse $C --sparse_views --sparse_ratio 0.995 --label_propagation --partial_perc 0 --load_saved --propagate_2d --ckpt_path $J --save_dir $W/p2s --seed_dir $W/p3s0/seeds --rgb_layer --mean_gradient
cmd 3d_dense $C --sparse_views --sparse_ratio 0.995 --propagate_3d --ckpt_path $J --save_dir $W/p3d --rgb_layer --adaptive_selection --num_comb 20 --num_iters 5 --train_agg --agg_steps 20000
cmd 2d_dense $C --sparse_views --sparse_ratio 0.995 --propagate_2d --ckpt_path $J --save_dir $W/p2d --rgb_layer --adaptive_selection --num_comb 20 --num_iters 5 --train_agg --agg_steps 20000
cmd perturb_gradient $C --ckpt_path $J --perturb_gradient --rgb_layer --N_rays 1 --perturb_r 255 --perturb_g 0 --perturb_b 0 --save_dir $W/edit
cmd demo --demo --save_dir $W/demo
python - "$W" <<'PY'
import json, sys, os, glob
w = sys.argv[1]
for d in ("p3s0", "p2s", "p3d", "p2d"):
    p = os.path.join(w, d, "metrics.json")
    if os.path.isfile(p):
        m = json.load(open(p))
        print(f"{d}: {m['mode']} mIoU {100*m['miou']:.2f} views {m['test_views']} timings {m.get('timings')}")
PY
tail -n 30 "$L"/*_demo.log
