"""Data checks a loader can make cheaply (issue 18): poses finite and rigid (a degenerate pose is
named as such, not as a diverging loss), a config size larger than the frames said with its
factor, --N_rays above the pixels a step draws from said with the count."""
import os

import numpy as np
import pytest

from datasets.poses import TOLERANCE, pose_problem
from tests.cli_helpers import run_main, write_config
from tests.test_reliability import one_line
from tests.test_scannet import NAME, _fails, write_tiny_scannet
from tests.tiny_scene import write_tiny_replica

pytestmark = pytest.mark.usefixtures("one_thread")


def rigid(seed):
    """A random rotation (QR of a Gaussian matrix, det +1) and translation."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = q, rng.normal(size=3)
    return m


def test_pose_problem_against_the_definition():
    assert pose_problem(rigid(0)) is None
    noisy = rigid(1)
    noisy[:3, :3] += 1e-5                            # text round-off: far below the tolerance
    assert pose_problem(noisy) is None
    scaled = rigid(2)
    scaled[:3, :3] *= 1.1                            # R^T R = 1.21 I: off by 0.21
    assert pose_problem(scaled) == f"its rotation is not orthonormal (max |R^T R - I| = 0.21 > {TOLERANCE})"
    assert pose_problem(np.zeros((4, 4))) == "it is all zeros (a degenerate pose)"
    mirrored = rigid(3)
    mirrored[:3, 0] *= -1
    assert pose_problem(mirrored) == "its rotation is a reflection (det R = -1)"
    last = rigid(4)
    last[3] = (0, 0, 1, 1)
    assert "last row" in pose_problem(last)
    nan = rigid(5)
    nan[0, 3] = np.nan
    assert "non-finite" in pose_problem(nan)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_tiny_replica(str(root), n_frames=11)
    return root


@pytest.mark.parametrize("how,needle", [("zeros", "all zeros (a degenerate pose)"),
                                        ("scaled", "rotation is not orthonormal")])
def test_a_degenerate_replica_pose_is_named_before_training(tmp_path, data, capsys, how, needle):
    traj = data / "traj_w_c.txt"
    poses = np.loadtxt(traj)
    poses[5] = 0 if how == "zeros" else poses[5] * np.r_[[2.0] * 3, 1, [2.0] * 3, 1, [2.0] * 3, 1, 1, 1, 1, 1]
    np.savetxt(traj, poses)
    save = tmp_path / "run"
    rc, _, err = run_main(capsys, write_config(tmp_path, data), save)
    line = one_line(rc, err, 2, f"{traj}: line 6 (frame rgb_5)", needle)
    assert "loss became" not in line and not (save / "exp_config.yaml").exists()


def test_a_degenerate_scannet_pose_is_named(tmp_path):
    root = tmp_path / NAME
    write_tiny_scannet(root, n_frames=8)
    np.savetxt(root / "renders" / "pose" / "2.txt", np.zeros((4, 4)))
    _fails(root, os.path.join("renders", "pose", "2.txt"), "all zeros (a degenerate pose)")


def test_a_config_larger_than_the_frames_says_by_how_much(tmp_path, data, capsys):
    cfg = write_config(tmp_path, data, width=80, height=60)           # frames are 16x12: 5x
    rc, _, err = run_main(capsys, cfg, tmp_path / "up", "--N_iters", "1")
    assert rc == 0, err
    lines = [l for l in err.splitlines() if "upsamples" in l]
    assert lines == [f"warning: experiment.width x height = 80x60 upsamples the 16x12 frames of {data} 5x "
                     "(interpolated pixels add no detail; the frames' own size is 16x12)"]
    rc, _, err = run_main(capsys, write_config(tmp_path, data, width=8, height=6), tmp_path / "down", "--N_iters", "1")
    assert rc == 0 and "upsamples" not in err


def test_more_rays_than_pixels_says_the_count(tmp_path, data, capsys):
    cfg = write_config(tmp_path, data)
    rc, _, err = run_main(capsys, cfg, tmp_path / "r", "--N_iters", "1", "--N_rays", "100000000")
    assert rc == 0, err
    # 11 frames: training frames 0, 5, 10 of 16x12 pixels
    assert "warning: --N_rays 100000000 is more than the 576 pixels it draws from (3 training views of 16x12): " \
           "each step takes all 576" in err
    rc, _, err = run_main(capsys, cfg, tmp_path / "r2", "--N_iters", "1", "--N_rays", "500", "--no_batching")
    assert rc == 0 and "--N_rays 500 is more than the 192 pixels it draws from (one training view a step" in err
