"""Every bad input stops with one clear line naming the file or flag, and leaves no success marker."""
import os

import numpy as np
import pytest
import torch

from tests.cli_helpers import run_main, write_config
from tests.tiny_scene import write_tiny_replica


def assert_clean_failure(rc, err, save_dir, *needles):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert rc != 0
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    if os.path.isdir(save_dir):
        assert "metrics.json" not in os.listdir(save_dir)
        assert not os.path.isdir(os.path.join(save_dir, "checkpoints"))


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_tiny_replica(str(root), n_frames=11, dino_grid=(5, 7))
    return root


def test_missing_dataset_folder(tmp_path, capsys):
    cfg = write_config(tmp_path, tmp_path / "nowhere")
    rc, _, err = run_main(capsys, cfg, tmp_path / "out")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "nowhere", "does not exist")


def test_missing_trajectory(tmp_path, data, capsys):
    os.remove(data / "traj_w_c.txt")
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "traj_w_c.txt", "missing camera trajectory")


def test_pose_rows_do_not_match_frames(tmp_path, data, capsys):
    poses = np.loadtxt(data / "traj_w_c.txt")
    np.savetxt(data / "traj_w_c.txt", poses[:-2])
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "traj_w_c.txt", "9 poses for 11 frames")


def test_frame_missing_from_one_folder(tmp_path, data, capsys):
    os.remove(data / "semantic_class" / "semantic_class_5.png")
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "semantic_class_5.png", "missing")


def test_unreadable_png(tmp_path, data, capsys):
    (data / "rgb" / "rgb_10.png").write_bytes(b"\x89PNG broken")
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "rgb_10.png", "unreadable")


def test_descriptor_with_wrong_channel_count(tmp_path, data, capsys):
    torch.save(torch.zeros(1, 1, 35, 100), data / "dino" / "dino_5.pth")
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out", "--load_dino")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "dino_5.pth", "100 channels; expected 384")


def test_checkpoint_path_missing_or_not_a_checkpoint(tmp_path, data, capsys):
    cfg = write_config(tmp_path, data)
    rc, _, err = run_main(capsys, cfg, tmp_path / "out", "--ckpt_path", str(tmp_path / "none.ckpt"))
    assert_clean_failure(rc, err, str(tmp_path / "out"), "none.ckpt", "does not exist")
    (tmp_path / "bad.ckpt").write_text("hello")
    rc, _, err = run_main(capsys, cfg, tmp_path / "out2", "--ckpt_path", str(tmp_path / "bad.ckpt"))
    assert_clean_failure(rc, err, str(tmp_path / "out2"), "bad.ckpt", "not a readable checkpoint")


def test_flag_combinations(tmp_path, data, capsys):
    cfg = write_config(tmp_path, data)
    rc, _, err = run_main(capsys, cfg, tmp_path / "o", "--propagate_2d")
    assert_clean_failure(rc, err, str(tmp_path / "o"), "--propagate_2d needs --ckpt_path")
    rc, _, err = run_main(capsys, cfg, tmp_path / "o", "--resume")
    assert_clean_failure(rc, err, str(tmp_path / "o"), "--resume: no checkpoint in", "to continue from")
    rc, _, err = run_main(capsys, cfg, tmp_path / "o", "--gt_feature_sim", "--contrastive_2d")
    assert_clean_failure(rc, err, str(tmp_path / "o"), "--gt_feature_sim needs descriptors")
    rc, _, err = run_main(capsys, cfg, "")
    assert rc != 0 and "--save_dir is required" in err


def test_depth_that_is_8_bit_or_rgb(tmp_path, data, capsys):
    import imageio.v3 as iio
    iio.imwrite(data / "depth" / "depth_5.png", np.full((12, 16), 40, np.uint8))
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "depth_5.png", "uint8 depth; expected uint16 millimetres")
    iio.imwrite(data / "depth" / "depth_5.png", np.full((12, 16, 3), 40, np.uint8))
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out2")
    assert_clean_failure(rc, err, str(tmp_path / "out2"), "depth_5.png", "3-channel image")


def test_frame_of_another_size(tmp_path, data, capsys):
    import imageio.v3 as iio
    iio.imwrite(data / "rgb" / "rgb_5.png", np.zeros((24, 32, 3), np.uint8))
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "rgb_5.png is 32x24", "one size")
    iio.imwrite(data / "rgb" / "rgb_5.png", np.zeros((12, 16, 3), np.uint8))
    iio.imwrite(data / "semantic_class" / "semantic_class_5.png", np.zeros((12, 15), np.uint8))
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out2")
    assert_clean_failure(rc, err, str(tmp_path / "out2"), "semantic_class_5.png is 15x12", "rgb_5.png is 16x12")


def test_config_size_with_another_aspect_ratio(tmp_path, data, capsys):
    rc, _, err = run_main(capsys, write_config(tmp_path, data, width=16, height=16), tmp_path / "out")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "16x16 has another aspect ratio than the frames (16x12")


def test_non_finite_descriptors(tmp_path, data, capsys):
    t = torch.zeros(1, 1, 35, 384)
    t[0, 0, 3, 7] = float("nan")
    torch.save(t, data / "dino" / "dino_5.pth")
    rc, _, err = run_main(capsys, write_config(tmp_path, data), tmp_path / "out", "--load_dino")
    assert_clean_failure(rc, err, str(tmp_path / "out"), "dino_5.pth", "1 non-finite descriptor values")
