"""End-to-end smoke test of plain NeRF training (issue 2): generate a tiny synthetic room, train
a few hundred CPU steps through main.py, and check the test-view PSNR written to metrics.json.

Why the threshold. At 40x30 with 50 frames (10 test views), a width-32 network with 16+16
samples and 300 steps of 512 rays at lr 5e-3 reaches a measured test PSNR of 20.33 dB (torch
2.13 CPU, one thread, --seed 0, reproducible run to run). An untrained network renders a flat
grey-brown image; the same scene rendered as the mean training colour scores 15.70 dB. The
assertions ask for 2 dB below the measured value and 2.5 dB above that baseline (the measured
gap is 4.6 dB): the network has learnt the scene, and small numeric changes do not break the test.
"""
import json

import numpy as np
import pytest
import yaml

import main as jnerf_main

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]   # one_thread: tests/conftest.py

MEASURED = 20.33   # dB, the measured run (see the docstring)
MARGIN = 2.0


def test_plain_nerf_learns_the_synthetic_room(tmp_path):
    from datasets.synthetic import generate_scene
    data = tmp_path / "data"
    generate_scene(str(data), frames=50, width=40, height=30, seed=0, dino=False, workers=1, stats=False)
    with open("configs/synthetic_room.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["experiment"].update(dataset_dir=str(data), width=40, height=30)
    cfg["model"].update(netwidth=32, netwidth_fine=32)
    cfg["logging"].update(step_save_ckpt=10**6, step_log_tfb=50, step_val=10**9, step_vis_train=10**9)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "plain"
    rc = jnerf_main.main(["--config_file", str(config), "--seed", "0", "--N_samples", "16", "--N_importance", "16",
                          "--save_dir", str(out), "--N_rays", "512", "--N_iters", "300", "--lrate", "5e-3"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    psnr = metrics["test_psnr"]
    # the baseline: every test pixel predicted as the mean training colour
    import imageio.v3 as iio
    frames = sorted((data / "rgb").glob("rgb_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    imgs = np.stack([iio.imread(p) for p in frames]).astype(np.float64) / 255.0
    test = imgs[2::5]
    train = imgs[0::5]
    baseline = -10 * np.log10(np.mean((test - train.mean(axis=(0, 1, 2))) ** 2))
    print(f"end-to-end: test PSNR {psnr:.2f} dB, mean-colour baseline {baseline:.2f} dB")
    assert (out / "checkpoints" / "000300.ckpt").is_file()
    # the steady rate leaves out the first 30 of the 301 steps (a tenth): within the loop's time
    steady = metrics["steady_seconds_per_step"]
    assert 0 < steady * (301 - 30) <= metrics["seconds"]
    assert len(list((out / "test_render").rglob("*.png"))) >= 10
    assert psnr >= MEASURED - MARGIN, psnr
    assert psnr >= baseline + 2.5, (psnr, baseline)
