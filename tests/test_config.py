"""Flags + YAML merge exactly as the original, and safe arithmetic parsing."""
from types import SimpleNamespace

import pytest
import yaml

from main import parser as build_parser
from utils.config import load_yaml_config, merge_flags, parse_number
from utils.errors import InputError


def Settings(cfg):
    """Attribute access to the merged sections (s.exp.N_rays, s.train.lrate, ...)."""
    return SimpleNamespace(**{{"experiment": "exp"}.get(k, k): SimpleNamespace(**v) for k, v in cfg.items()})

ORIGINAL_FLAGS_WITH_DEFAULTS = {
    "config_file": "./configs/replica_room0_config.yaml", "save_dir": "", "ckpt_path": None,
    "dataset_type": "replica", "lrate": 5e-4, "lrate_decay": 250000, "N_rays": 1024,
    "N_importance": 128, "N_samples": 64, "test_viz_factor": 1, "wgt_img": 1, "feature_dim": 384,
    "wgt_contrastive": 0.1, "wgt_gradient": 0.1, "contrastive_step": 5000, "contrastive_starting_step": 10000,
    "neg_threshold": 0.8, "pos_threshold": 0.8, "nocs_pos_threshold": 0.9, "pos_ratio_upper": 0.15,
    "pos_threshold_upper": 0.9, "pos_ratio_lower": 0.05, "pos_threshold_lower": 0.5,
    "finetune_label_step": 2, "num_comb": 20, "num_iters": 5, "n_clusters": 10, "perturb_t": 0.1,
    "perturb_r": 255, "perturb_g": 255, "perturb_b": 255, "sparse_ratio": 0, "label_map_ids": [],
    "partial_perc": 0, "num_click": 3, "gpu": "",
}
STORE_TRUE = """test_instance training_mode resume render_only no_batching load_dino load_lseg high_res_dino
load_on_cpu contrastive_2d contrastive_abs contrastive_3d spatial spatial_embedding concat_color sample_semantic
nce_dot_product gradient_norm_loss gt_feature_sim pos_order adaptive_threshold render_nocs rgb_layer rgb_pts_layer
density_layer pts_layer all_para from_label sample_alter from_unmasked from_unmasked_only sample_fixed fix_density
propagate_3d propagate_2d normalize_2d no_abs random_channel train_agg mean_response mean_gradient gradient_kmeans
merge_instance adaptive_selection visualize_gradients t_iter sparse_views random_sample label_propagation
user_click visualise_save load_saved perturb_gradient""".split()


def write_yaml(tmp_path, **over):
    cfg = {
        "experiment": {"dataset_dir": "/data", "save_dir": "/yaml/save", "ckpt_path": "None", "gpu": "1",
                       "feature_dim": 128, "load_on_cpu": True, "width": 320, "height": 240, "custom": 5},
        "model": {"netdepth": 8, "netwidth": 256, "chunk": "1024*1024", "netchunk": "32*32*1"},
        "render": {"N_rays": "32*32*1", "N_samples": 32, "N_importance": 16, "perturb": 1,
                   "no_batching": True, "depth_range": [0.1, 10.0], "raw_noise_std": 1},
        "train": {"lrate": "5e-4", "lrate_decay": "250e3", "N_iters": 200000},
        "logging": {"step_log_tfb": 1, "step_save_ckpt": 100, "N_rays": 7},
    }
    for k, v in over.items():
        cfg[k].update(v)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_every_original_flag_exists_with_its_default():
    args = vars(build_parser().parse_args([]))
    for name, default in ORIGINAL_FLAGS_WITH_DEFAULTS.items():
        assert args[name] == default, name
    for name in STORE_TRUE:
        assert args[name] is False, name


def test_flags_and_their_defaults_override_yaml_sections(tmp_path):
    path = write_yaml(tmp_path)
    args = build_parser().parse_args(["--config_file", path, "--N_rays", "64"])
    s = Settings(merge_flags(load_yaml_config(path), args))
    # defaults override the YAML in experiment/train/render, exactly as the original
    assert s.exp.save_dir == "" and s.exp.ckpt_path is None
    assert s.exp.feature_dim == 384 and s.exp.load_on_cpu is False
    assert s.render.N_rays == 64 and s.render.N_samples == 64 and s.render.N_importance == 128
    assert s.render.no_batching is False
    assert s.train.lrate == 5e-4 and s.train.lrate_decay == 250000
    # every flag lands in all three sections
    assert s.train.N_rays == 64 and s.exp.N_rays == 64
    # keys with no flag of the same name are kept; model/logging are never touched
    assert s.exp.custom == 5 and s.train.N_iters == 200000 and s.logging.N_rays == 7
    assert s.model.chunk == 1048576 and s.model.netchunk == 1024
    # the YAML's gpu is used when --gpu is not given; --gpu wins otherwise
    assert s.exp.gpu == "1"
    s2 = Settings(merge_flags(load_yaml_config(path), build_parser().parse_args(["--gpu", "0"])))
    assert s2.exp.gpu == "0"


def test_new_flags_override_only_when_given(tmp_path):
    path = write_yaml(tmp_path)
    s = Settings(merge_flags(load_yaml_config(path), build_parser().parse_args([])))
    assert s.train.N_iters == 200000 and not hasattr(s.exp, "seed")
    s = Settings(merge_flags(load_yaml_config(path), build_parser().parse_args(["--N_iters", "1e4", "--seed", "3"])))
    assert s.train.N_iters == 10000 and s.exp.seed == 3


def test_arithmetic_strings_are_parsed_without_eval(tmp_path):
    assert parse_number("1024*1024") == 1048576
    assert parse_number("32*32*1") == 1024
    assert parse_number("5e-4") == 5e-4
    assert parse_number("250e3") == 250000.0
    assert parse_number("(2+3)**2 - 1") == 24
    for bad in ("__import__('os').system('true')", "1024*x", "[1]", "True", "2**1000", "0/0", "1e308**2"):
        with pytest.raises(ValueError):
            parse_number(bad)
    path = write_yaml(tmp_path, train={"lrate": "__import__('os')"})
    cfg = load_yaml_config(path)
    assert cfg["train"]["lrate"] == "__import__('os')"   # left as a string, never executed
    assert cfg["experiment"]["gpu"] == "1"                # string keys stay strings
    assert cfg["experiment"]["ckpt_path"] is None


def test_lrate_decay_accepts_scientific_notation():
    assert build_parser().parse_args(["--lrate_decay", "250e3"]).lrate_decay == 250000


def test_bad_config_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_yaml_config(str(tmp_path / "missing.yaml"))
    p = tmp_path / "bad.yaml"
    p.write_text("experiment: {}\n")
    with pytest.raises(InputError, match="no 'model:' section"):
        load_yaml_config(str(p))


def test_shipped_configs_parse():
    for name in ("configs/replica_room0_config.yaml",):
        cfg = load_yaml_config(name)
        assert cfg["model"]["chunk"] == 1048576 and cfg["render"]["N_rays"] == 1024
        assert cfg["train"]["lrate"] == 5e-4 and cfg["train"]["lrate_decay"] == 250000
