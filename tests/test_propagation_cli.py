"""The paper's four propagation commands, the other direction rules, --perturb_gradient and the
bad inputs, end to end through main.main on a tiny hand-made scene."""
import json
import os

import cv2
import numpy as np
import pytest

from tests.cli_helpers import run_main, write_config
from tests.tiny_models import write_tiny_checkpoint
from tests.tiny_scene import write_tiny_replica
from utils.colormaps import label_colormap

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

SPARSE = ["--sparse_views", "--sparse_ratio", "0.995", "--label_propagation", "--partial_perc", "0"]
DENSE = ["--sparse_views", "--sparse_ratio", "0.995"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    write_tiny_replica(str(root / "data"), n_frames=12, classes=(0, 7, 31, 93))
    config = write_config(root, root / "data")
    ckpt = write_tiny_checkpoint(config, str(root / "ckpt" / "000001.ckpt"))
    return dict(root=root, config=config, ckpt=ckpt)


def run(capsys, world, save_dir, *flags):
    return run_main(capsys, world["config"], save_dir, "--seed", "0", "--ckpt_path", world["ckpt"], *flags)


def metrics_of(save_dir):
    with open(os.path.join(save_dir, "metrics.json")) as f:
        return json.load(f)


def check_view_files(folder, views, suffixes=("",), gt=False):
    for i in range(views):
        for sfx in suffixes:
            lab = cv2.imread(os.path.join(folder, f"{i}_label{sfx}.png"), cv2.IMREAD_UNCHANGED)
            assert lab is not None and lab.dtype == np.uint8 and lab.shape == (12, 16)
            vis = cv2.imread(os.path.join(folder, f"{i}_vis_label{sfx}.png"))[..., ::-1]   # to RGB
            assert np.array_equal(vis, label_colormap(4)[1:][lab])     # RGB order, class colours
            err = cv2.imread(os.path.join(folder, f"{i}_error_map{sfx}.png"), cv2.IMREAD_UNCHANGED)
            assert set(np.unique(err)) <= {0, 255}
        if gt:
            assert os.path.isfile(os.path.join(folder, f"{i}_gt_label.png"))


def test_paper_commands_3d_and_2d_sparse(tmp_path, world, capsys):
    out3 = tmp_path / "sparse3d"
    # the README's --load_saved commands read seeds written by a first run with --visualise_save
    # (into the same folder: --overwrite clears the first run's results and keeps its seeds)
    rc, _, err = run(capsys, world, out3, *SPARSE, "--visualise_save", "--propagate_3d", "--rgb_layer",
                     "--mean_gradient")
    assert rc == 0, err
    first = metrics_of(out3)
    rc, out, err = run(capsys, world, out3, *SPARSE, "--load_saved", "--propagate_3d", "--rgb_layer",
                       "--mean_gradient", "--overwrite")
    assert rc == 0, err
    m3 = metrics_of(out3)
    assert m3["miou"] == first["miou"] and m3["given_classes"] == [0, 1, 2]
    assert "| 3D propagation |" in out and "mIoU" in out
    check_view_files(out3 / "test_render", 2, gt=True)
    assert os.path.isfile(out3 / "metrics.md") and os.path.isfile(out3 / "seeds" / "partial_perc_0.0" / "mask_ids.npy")
    for k in ("miou", "miou_validclass", "total_accuracy", "class_average_accuracy", "ious"):
        assert k in m3

    out2 = tmp_path / "sparse2d"
    rc, _, err = run(capsys, world, out2, *SPARSE, "--load_saved", "--propagate_2d", "--rgb_layer",
                     "--mean_gradient", "--seed_dir", str(out3 / "seeds"))
    assert rc == 0, err
    m2 = metrics_of(out2)
    assert m2["deterministic"] and m2["num_directions"] == 3 and m2["test_views"] == 2
    check_view_files(out2, 2)
    assert not os.path.isdir(out2 / "test_render")


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_paper_commands_dense(tmp_path, world, capsys, dim):
    out = tmp_path / f"dense{dim}"
    rc, text, err = run(capsys, world, out, *DENSE, f"--propagate_{dim}", "--rgb_layer", "--adaptive_selection",
                        "--num_comb", "3", "--num_iters", "2", "--train_agg", "--agg_steps", "20")
    assert rc == 0, err
    m = metrics_of(out)
    assert m["num_directions"] == 3 * 2 and len(m["adaptive_selection_round_miou"]) == 2
    assert m["aggregator"]["steps"] == 20 and "miou" in m["without_aggregator"]
    check_view_files(out if dim == "2d" else out / "test_render", 2, suffixes=("", "_wo"))
    assert "aggregator" in text


def test_other_direction_rules_and_options(tmp_path, world, capsys):
    clicks = ["--sparse_views", "--sparse_ratio", "0.995", "--user_click", "--num_click", "4", "--rgb_layer"]
    rc, _, err = run(capsys, world, tmp_path / "km", *clicks, "--propagate_2d", "--gradient_kmeans",
                     "--n_clusters", "2", "--visualize_gradients", "--merge_instance")
    assert rc == 0, err
    assert metrics_of(tmp_path / "km")["num_directions"] == 6       # 2 kept Jacobians x 3 classes
    assert os.path.isfile(tmp_path / "km" / "0_grad.png")
    rc, _, err = run(capsys, world, tmp_path / "mr", *clicks, "--propagate_2d", "--mean_response", "--spatial",
                     "--no_abs", "--noisy_propagation")
    assert rc == 0, err
    assert metrics_of(tmp_path / "mr")["deterministic"] is False
    rc, _, err = run(capsys, world, tmp_path / "m3", *clicks, "--propagate_3d", "--mean_response",
                     "--normalize_2d", "--merge_instance", "--random_channel")
    assert rc == 0, err


def test_perturb_gradient_edits(tmp_path, world, capsys):
    out = tmp_path / "edit"
    rc, text, err = run(capsys, world, out, "--perturb_gradient", "--rgb_layer", "--N_rays", "1",
                        "--perturb_g", "0", "--perturb_b", "0")
    assert rc == 0, err
    folder = out / "gradient" / "perturbed_test_0"
    for name in ("rgb_000.png", "0_heatmap.png", "0_rgb_difference.png", "1_heatmap.png"):
        assert os.path.isfile(folder / name), name
    assert os.path.isfile(out / "perturbed" / "0_visualize_perturbed.png")
    assert metrics_of(out)["edits"] == 1
    rc, text, err = run(capsys, world, tmp_path / "edit2", "--perturb_gradient", "--rgb_layer", "--N_rays", "2",
                        "--sample_fixed")
    assert rc == 0 and "pass --N_rays 1" in text


# ----------------------------------------------------------------------------- bad input

def assert_clean_failure(rc, err, save_dir, *needles):
    lines = [l for l in err.strip().splitlines() if l.strip() and not l.startswith("warning:")]
    assert rc != 0
    assert len(lines) == 1 and lines[0].startswith("error:"), err   # one line, no traceback
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not os.path.isfile(os.path.join(str(save_dir), "metrics.json"))


def test_propagation_without_checkpoint(tmp_path, world, capsys):
    rc, _, err = run_main(capsys, world["config"], tmp_path / "o", *SPARSE, "--propagate_3d", "--rgb_layer",
                          "--mean_gradient")
    assert_clean_failure(rc, err, tmp_path / "o", "--propagate_3d needs --ckpt_path")


def test_checkpoint_of_the_wrong_architecture(tmp_path, world, capsys):
    wide = write_config(tmp_path, world["root"] / "data", netwidth=32)
    ckpt = write_tiny_checkpoint(wide, str(tmp_path / "wide" / "000001.ckpt"))
    rc, _, err = run_main(capsys, world["config"], tmp_path / "o", "--ckpt_path", ckpt, *SPARSE,
                          "--propagate_2d", "--rgb_layer", "--mean_gradient")
    assert_clean_failure(rc, err, tmp_path / "o", "--ckpt_path", "000001.ckpt", "does not match")


def test_load_saved_with_nothing_saved(tmp_path, world, capsys):
    rc, _, err = run(capsys, world, tmp_path / "o", *SPARSE, "--load_saved", "--propagate_2d", "--rgb_layer",
                     "--mean_gradient")
    assert_clean_failure(rc, err, tmp_path / "o", "--load_saved", "partial_perc_0.0", "--visualise_save")


def test_seeds_of_classes_absent_from_the_scene(tmp_path, world, capsys):
    seeds = tmp_path / "seeds"
    rc, _, err = run(capsys, world, tmp_path / "first", *SPARSE, "--visualise_save", "--propagate_2d",
                     "--rgb_layer", "--mean_gradient", "--seed_dir", str(seeds))
    assert rc == 0, err
    seed_png = seeds / "partial_perc_0.0" / "semantic_class_0.png"
    img = cv2.imread(str(seed_png), cv2.IMREAD_UNCHANGED)
    img[0, 0] = 9                                     # the scene has remapped classes 0..3 only
    cv2.imwrite(str(seed_png), img)
    out = tmp_path / "o"
    rc, _, err = run(capsys, world, out, *SPARSE, "--load_saved", "--propagate_2d", "--rgb_layer",
                     "--mean_gradient", "--seed_dir", str(seeds))
    assert_clean_failure(rc, err, out, "partial_perc_0.0", "[9]", "do not occur in this scene")


def test_flag_combinations_that_cannot_work(tmp_path, world, capsys):
    rc, _, err = run(capsys, world, tmp_path / "o", *SPARSE, "--propagate_2d", "--mean_gradient")
    assert_clean_failure(rc, err, tmp_path / "o", "--rgb_layer")
    rc, _, err = run(capsys, world, tmp_path / "o", *SPARSE, "--propagate_2d", "--rgb_layer")
    assert_clean_failure(rc, err, tmp_path / "o", "--mean_gradient", "--adaptive_selection")
    rc, _, err = run(capsys, world, tmp_path / "o", *SPARSE, "--propagate_2d", "--rgb_layer", "--mean_gradient",
                     "--train_agg")
    assert_clean_failure(rc, err, tmp_path / "o", "--train_agg needs --adaptive_selection")
    rc, _, err = run(capsys, world, tmp_path / "o", *SPARSE, "--propagate_3d", "--rgb_layer", "--mean_gradient",
                     "--spatial")
    assert_clean_failure(rc, err, tmp_path / "o", "--spatial")
