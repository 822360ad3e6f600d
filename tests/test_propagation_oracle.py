"""Oracle mode on the built-in synthetic room: a plain NeRF, Jacobi shaping with ground-truth label
positives (--from_label) from it, and sparse 2D propagation (one click per class on training
frame 0, the paper's sparse setting) through both checkpoints.

Why these numbers. The scene is the synthetic room at 40x30 with 50 frames (10 training frames,
10 test views); frame 0 sees 13 classes, several of them only a few pixels large, and most test
views see other parts of the room, so the original's per-image post-processing (each label's map
normalised by its own maximum) has to reject many absent labels. A CPU-sized plain NeRF (width
32, 16+16 samples, 300 steps, test PSNR about 20 dB) propagates at about 9-13 % mIoU. Oracle
shaping (300 steps of 128 rays, lr 3e-3, wgt_contrastive 1) makes same-class Jacobians align (in
a 32x24 variant, mean cosine on frame 0: 0.78 within classes vs 0.26 across, from 0.76 vs 0.61)
and lifts sparse 2D mIoU by several points: measured here 10.9 % -> 15.4 %. Small as it is, that
is what a 20 dB NeRF allows with one click for each of 13 classes: in the 32x24 variant the raw
response argmax was right on 44 % of the test pixels after shaping (14 % before), and the
original's per-label normalisation loses much of that at this size, because absent labels are
stretched to the same maximum as present ones. On an H100 the same recipe gave +6.0, +9.4, +4.4
points for seeds 0, 1, 2 (the 3D rule +11.7, +11.9, +5.9); with a well-trained NeRF (80x60, width
128, 3000 steps, 28.7 dB) and 3000 oracle steps the gain is 14.7 % -> 47.2 % (2D) and
6.3 % -> 48.5 % (3D) (bench/propagation.py --oracle, docs/PROPAGATION.md). The assertions below
hold the CPU run (--seed 0) to the values measured with it, with a margin.
"""
import json
import os

import pytest
import yaml

import main as jnerf_main
from datasets.synthetic import generate_scene

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# measured on the CPU with --seed 0 (see the module docstring); the test allows a margin below them
# (torch 2.13 CPU, one thread: plain 10.92 %, shaped 15.36 %, reproducible run to run)
MEASURED_PLAIN, MEASURED_SHAPED = 0.1092, 0.1536
MIN_SHAPED_MIOU = 0.12        # about 3 points below the measured value
MIN_GAIN = 0.02               # the measured gain is 4.4 points


def _config(root, data):
    with open("configs/synthetic_room.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["experiment"].update(dataset_dir=str(data), width=40, height=30)
    cfg["model"].update(netwidth=32, netwidth_fine=32)
    cfg["logging"].update(step_save_ckpt=10**6, step_log_tfb=10**6, step_val=10**9, step_vis_train=10**9)
    path = os.path.join(str(root), "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def _run(argv):
    rc = jnerf_main.main(argv)
    assert rc == 0, argv


def test_oracle_shaping_beats_the_plain_nerf_in_sparse_2d(tmp_path):
    data = tmp_path / "data"
    generate_scene(str(data), frames=50, width=40, height=30, seed=0, dino=False, workers=1, stats=False)
    common = ["--config_file", _config(tmp_path, data), "--seed", "0", "--N_samples", "16", "--N_importance", "16"]
    plain, shaped = tmp_path / "plain", tmp_path / "oracle"
    _run(common + ["--save_dir", str(plain), "--N_rays", "512", "--N_iters", "300", "--lrate", "5e-3"])
    plain_ckpt = str(plain / "checkpoints" / "000300.ckpt")
    _run(common + ["--save_dir", str(shaped), "--ckpt_path", plain_ckpt, "--contrastive_2d", "--from_label",
                   "--rgb_layer", "--contrastive_starting_step", "0", "--contrastive_step", "1", "--N_rays", "128",
                   "--wgt_contrastive", "1", "--wgt_gradient", "1e-2", "--gradient_norm_loss", "--contrastive_abs",
                   "--N_iters", "300", "--lrate", "3e-3"])
    shaped_ckpt = str(shaped / "checkpoints" / "000300.ckpt")
    seeds = str(tmp_path / "seeds")
    sparse = ["--sparse_views", "--sparse_ratio", "0.995", "--label_propagation", "--partial_perc", "0",
              "--rgb_layer", "--mean_gradient", "--propagate_2d", "--seed_dir", seeds]
    miou = {}
    for name, ckpt, flag in (("plain", plain_ckpt, "--visualise_save"), ("shaped", shaped_ckpt, "--load_saved")):
        out = tmp_path / f"propagate_{name}"
        _run(common + sparse + [flag, "--ckpt_path", ckpt, "--save_dir", str(out)])
        with open(out / "metrics.json") as f:
            m = json.load(f)
        assert m["given_classes"] and m["test_views"] == 10
        miou[name] = m["miou"]
    print(f"oracle test: plain {miou['plain']:.4f}, shaped {miou['shaped']:.4f}")
    assert miou["shaped"] >= MIN_SHAPED_MIOU, miou
    assert miou["shaped"] - miou["plain"] >= MIN_GAIN, miou
