"""Typed options: every flag value is validated before any data is read, with one `error:` line
that names the flag (or the YAML key), exit code 2, no traceback and nothing written."""
import os

import pytest

import main as jnerf_main
from tests.cli_helpers import SMALL_FLAGS, write_config
from utils.option_table import default

# (extra flags, YAML section overrides, text the one error line must contain)
BAD_VALUES = [
    (["--N_rays", "0"], {}, "--N_rays 0: expected at least 1"),
    (["--N_iters", "0"], {}, "--N_iters 0: expected at least 1"),
    (["--N_iters", "-3"], {}, "--N_iters -3: expected at least 1"),
    (["--N_samples", "0"], {}, "--N_samples 0: expected at least 1"),
    (["--lrate", "nan"], {}, "--lrate nan: expected a finite number"),
    (["--lrate", "0"], {}, "--lrate 0.0: expected a number > 0"),
    (["--lrate=-1e-3"], {}, "--lrate -0.001: expected a number > 0"),
    (["--lrate_decay", "0"], {}, "--lrate_decay 0.0: expected a number > 0"),
    (["--test_viz_factor", "0"], {}, "--test_viz_factor 0: expected at least 1"),
    (["--test_viz_factor", "100"], {}, "--test_viz_factor 100: larger than the image"),
    (["--seed", "-1"], {}, "--seed -1: expected at least 0"),
    (["--feature_dim", "0"], {}, "--feature_dim 0: expected at least 1"),
    ([], {"render": {"depth_range": [2.0, 1.0]}}, "render.depth_range [2.0, 1.0]: expected 0 <= near < far"),
    ([], {"render": {"depth_range": [0.1]}}, "render.depth_range [0.1]: expected [near, far]"),
    ([], {"model": {"netwidth": None}}, "config key model.netwidth is missing"),
    ([], {"logging": {"step_save_ckpt": 0}}, "logging.step_save_ckpt 0: expected at least 1"),
    ([], {"experiment": {"convention": "blender"}}, "experiment.convention 'blender'"),
    (["--propagate_2d", "--ckpt_path", "x.ckpt", "--rgb_layer", "--mean_gradient", "--num_comb", "0"], {},
     "--num_comb 0: expected at least 1"),
    (["--propagate_2d", "--ckpt_path", "x.ckpt", "--rgb_layer", "--adaptive_selection", "--num_iters", "0"], {},
     "--num_iters 0: expected at least 1"),
    (["--propagate_2d", "--ckpt_path", "x.ckpt", "--rgb_layer", "--gradient_kmeans", "--n_clusters", "0"], {},
     "--n_clusters 0: expected at least 1"),
    (["--propagate_2d", "--ckpt_path", "x.ckpt", "--rgb_layer", "--mean_gradient", "--agg_steps", "0"], {},
     "--agg_steps 0: expected at least 1"),
    (["--propagate_2d", "--ckpt_path", "x.ckpt", "--rgb_layer", "--mean_gradient", "--sparse_views",
      "--sparse_ratio", "1.5"], {}, "--sparse_ratio 1.5: expected a value in [0.0, 1.0]"),
    (["--propagate_2d", "--ckpt_path", "x.ckpt", "--rgb_layer", "--mean_gradient", "--label_propagation",
      "--partial_perc", "120"], {}, "--partial_perc 120.0: expected a value in [0.0, 100.0]"),
    (["--propagate_2d", "--ckpt_path", "x.ckpt", "--rgb_layer", "--mean_gradient", "--user_click",
      "--num_click", "0"], {}, "--num_click 0: expected at least 1"),
    (["--perturb_gradient", "--ckpt_path", "x.ckpt", "--rgb_layer", "--perturb_r", "300"], {},
     "--perturb_r 300: expected a value in [0, 255]"),
    (["--contrastive_2d", "--rgb_layer", "--from_label", "--contrastive_step", "0"], {},
     "--contrastive_step 0: expected at least 1"),
    (["--contrastive_2d", "--rgb_layer", "--from_label", "--pos_ratio_lower", "0.5", "--pos_ratio_upper", "0.2"], {},
     "--pos_ratio_lower 0.5 is above --pos_ratio_upper 0.2"),
    (["--contrastive_2d", "--rgb_layer", "--from_label", "--pos_ratio_upper", "2"], {},
     "--pos_ratio_upper 2.0: expected a value in [0.0, 1.0]"),
    (["--contrastive_2d", "--from_label"], {}, "shaping needs the shaped parameters"),
    (["--contrastive_2d", "--rgb_layer", "--gt_feature_sim"], {}, "--gt_feature_sim"),
    (["--render_only", "--propagate_2d"], {}, "choose one of --render_only, --propagate_2d per run"),
    (["--render_only"], {}, "--render_only needs --ckpt_path"),
    (["--resume", "--overwrite"], {}, "--resume and --overwrite are exclusive"),
    (["--resume", "--render_only", "--ckpt_path", "x.ckpt"], {}, "--resume continues a training run"),
    (["--load_dino", "--load_lseg"], {}, "--load_dino and --load_lseg are exclusive"),
]


@pytest.mark.parametrize("flags,sections,needle", BAD_VALUES, ids=[" ".join(b[0]) or b[2][:30] for b in BAD_VALUES])
def test_bad_value_stops_before_any_data_is_read(tmp_path, capsys, flags, sections, needle):
    # the dataset folder does not exist: the flag error must come first
    cfg = write_config(tmp_path, tmp_path / "no_such_dataset", **sections)
    save_dir = tmp_path / "out"
    rc = jnerf_main.main(["--config_file", cfg, "--save_dir", str(save_dir), *SMALL_FLAGS, *flags])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err
    assert not save_dir.exists()


def test_good_values_build_typed_options(tmp_path):
    cfg = write_config(tmp_path, tmp_path / "data", n_iters=7)
    _, opts = jnerf_main.parse_options(["--config_file", cfg, "--save_dir", str(tmp_path / "o"), "--N_rays", "32",
                                        "--propagate_3d", "--ckpt_path", "c.ckpt", "--rgb_layer", "--density_layer",
                                        "--adaptive_selection", "--mean_gradient", "--train_agg"])
    assert opts.mode == "propagate_3d"
    assert opts.train.n_rays == 32 and opts.train.n_iters == 7 and opts.train.lrate == 5e-4
    assert opts.model.netwidth == 16 and opts.model.n_samples == 64 and (opts.data.near, opts.data.far) == (0.1, 10.0)
    # precedence as the original: adaptive_selection beats mean_gradient
    assert opts.propagation.rule == "adaptive_selection" and opts.propagation.agg_steps == default("agg_steps")
    assert opts.seeds.seed_dir == os.path.join(str(tmp_path / "o"), "seeds")
    assert opts.shaping is None and opts.edit is None
    _, opts = jnerf_main.parse_options(["--config_file", cfg, "--save_dir", "s", "--contrastive_2d", "--all_para",
                                        "--pts_layer", "--sample_semantic", "--contrastive_step", "1"])
    # subsets: the first flag in the registry's precedence order wins (all_para before pts)
    assert opts.mode == "shape" and opts.shaping.subset == "all_para" and opts.shaping.supervision == "labels"
    assert opts.seeds is not None and opts.shaping.every == 1


def test_options_are_frozen(tmp_path):
    cfg = write_config(tmp_path, tmp_path / "data")
    _, opts = jnerf_main.parse_options(["--config_file", cfg, "--save_dir", "s"])
    with pytest.raises(Exception):
        opts.train.n_rays = 3
