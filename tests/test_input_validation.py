"""No input ignored (issue 18), hand-written cases of main.py's validation: the YAML config's keys
(unknown, misplaced: refused with "did you mean"; the original's and exp_config.yaml accepted), every
value checked whatever the mode, the YAML keys a flag default shadows listed once, one-line argparse
errors, --gpu on a CPU, --label_map_ids where it would be ignored."""
import glob

import pytest
import yaml

import main as jnerf_main
from tests.cli_helpers import SMALL_FLAGS, write_config
from tests.test_reliability import one_line
from utils.errors import InputError

ORIGINAL_CONFIG_KEYS = {      # configs/replica_room0_config.yaml of the original, key for key
    "experiment": ["scene_file", "save_dir", "dataset_dir", "ckpt_path", "convention", "width", "height", "gpu",
                   "feature_dim", "load_on_cpu", "enable_depth", "endpoint_feat"],
    "model": ["netdepth", "netwidth", "netdepth_fine", "netwidth_fine", "chunk", "netchunk"],
    "render": ["N_rays", "N_samples", "N_importance", "perturb", "use_viewdirs", "i_embed", "multires",
               "multires_views", "raw_noise_std", "test_viz_factor", "no_batching", "depth_range", "white_bkgd"],
    "train": ["lrate", "lrate_decay", "N_iters"],
    "logging": ["step_log_print", "step_log_tfb", "step_save_ckpt", "step_val", "step_vis_train"],
}


def parse(cfg, *flags, notes=None):
    return jnerf_main.parse_options(["--config_file", cfg, "--save_dir", "unused", *flags], notes)[1]


def edited(tmp_path, change):
    cfg = write_config(tmp_path, tmp_path / "no_data")
    data = yaml.safe_load(open(cfg))
    change(data)
    with open(cfg, "w") as f:
        yaml.safe_dump(data, f)
    return cfg


def test_the_original_keys_and_every_shipped_config_are_accepted(tmp_path):
    for name in sorted(glob.glob("configs/*.yaml")):
        extra = {"scannet": ["--dataset_type", "scannet"], "nerfstudio": ["--dataset_type", "nerfstudio"]}
        flags = next((v for k, v in extra.items() if k in name), [])
        notes = []
        assert parse(name, *flags, notes=notes).mode == "train" and notes == [], name
    data = yaml.safe_load(open("configs/replica_room0_config.yaml"))
    assert {s: sorted(v) for s, v in data.items()} == {s: sorted(v) for s, v in ORIGINAL_CONFIG_KEYS.items()}


@pytest.mark.parametrize("change,needle", [
    (lambda c: c["render"].update(N_sample=8), "unknown key render.N_sample (did you mean N_samples?)"),
    (lambda c: c["model"].update(net_width=8), "unknown key model.net_width (did you mean netwidth?)"),
    (lambda c: c.update(logginng={}), "unknown section 'logginng:' (did you mean logging?)"),
    (lambda c: c["experiment"].update(N_iters=7), "experiment.N_iters is not read from 'experiment:'; N_iters belongs "
                                                  "in 'train:'"),
    (lambda c: c["model"].update(width=7), "model.width is not read from 'model:'; width belongs in 'experiment:'"),
], ids=["key", "model key", "section", "misplaced flag key", "misplaced key"])
def test_an_unknown_or_misplaced_yaml_key_is_refused_naming_it(tmp_path, capsys, change, needle):
    cfg = edited(tmp_path, change)
    save = tmp_path / "out"
    rc = jnerf_main.main(["--config_file", cfg, "--save_dir", str(save), *SMALL_FLAGS])
    one_line(rc, capsys.readouterr().err, 2, f"--config_file {cfg}: ", needle)
    assert not save.exists()


def test_a_runs_exp_config_is_accepted_as_a_config(tmp_path):
    cfg = write_config(tmp_path, tmp_path / "data")
    opts = parse(cfg, "--seed", "4", "--N_iters", "9")
    saved = tmp_path / "exp_config.yaml"
    saved.write_text(yaml.safe_dump(opts.config, sort_keys=False))    # what save_resolved_config writes
    again = parse(str(saved), "--seed", "4")
    assert again.train.n_iters == 9 and again.seed == 4


@pytest.mark.parametrize("change,needle", [
    (lambda c: c["experiment"].update(agg_steps=0), "experiment.agg_steps 0: expected at least 1"),
    (lambda c: c["render"].update(white_bkgd="yes"), "render.white_bkgd 'yes': expected true or false"),
    (lambda c: c["train"].update(N_iters=2.7), "train.N_iters 2.7: expected an integer"),
    (lambda c: c["experiment"].update(gpu="abc"), "--gpu 'abc': expected a CUDA device index"),
    (lambda c: c["model"].update(chunk="0/0"), "model.chunk '0/0': expected a number"),
], ids=["unread value", "bool", "yaml N_iters", "yaml gpu", "zero division"])
def test_every_yaml_value_is_checked_whatever_the_mode(tmp_path, change, needle):
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse(edited(tmp_path, change))


def test_flag_defaults_that_shadow_yaml_keys_are_listed_once_at_start(tmp_path, capsys):
    cfg = edited(tmp_path, lambda c: (c["render"].update(N_rays=2048), c["train"].update(lrate=1e-3)))
    rc = jnerf_main.main(["--config_file", cfg, "--save_dir", str(tmp_path / "out"), "--N_samples", "8"])
    err = capsys.readouterr().err
    warnings = [l for l in err.splitlines() if l.startswith("warning:")]
    assert rc == 2 and len(warnings) == 1 and err.index("warning:") < err.index("error:")   # the data is missing
    assert "render.N_rays 2048 -> 1024" in warnings[0] and "train.lrate 0.001 -> 0.0005" in warnings[0]
    assert "(--lrate --N_rays)" in warnings[0] and "N_samples" not in warnings[0]    # a flag given is no shadow
    notes = []
    assert parse(cfg, "--N_rays", "2048", "--lrate", "1e-3", notes=notes).train.n_rays == 2048 and notes == []


def test_argparse_errors_are_one_line_with_the_closest_flag(tmp_path, capsys):
    cfg = write_config(tmp_path, tmp_path / "data")
    for flags, needle in ((["--N_rays", "abc"], "argument --N_rays: invalid int value: 'abc'"),
                          (["--N_rayz", "5"], "unrecognized arguments: --N_rayz 5 (did you mean --N_rays?)"),
                          (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
                          (["--lrate_decay", "inf"], "argument --lrate_decay: expected an integer, got 'inf'")):
        rc = jnerf_main.main(["--config_file", cfg, "--save_dir", str(tmp_path / "o"), *flags])
        err = capsys.readouterr().err
        one_line(rc, err, 2, needle)
        assert "usage:" not in err


def test_gpu_is_checked_on_a_cpu_too(tmp_path):
    cfg = write_config(tmp_path, tmp_path / "data")
    with pytest.raises(InputError, match="--gpu 'abc': expected a CUDA device index"):
        parse(cfg, "--gpu", "abc")
    assert parse(cfg, "--gpu", "1,2").gpu == "1,2" and parse(cfg, "--gpu", "").gpu == "0"      # the YAML's


@pytest.mark.parametrize("flags,needle", [
    (["--sparse_views", "--label_propagation", "--label_map_ids", "5"],
     "--label_map_ids 5 does not apply to click seeds (--label_propagation)"),
    (["--user_click", "--label_map_ids", "0", "5"], "--label_map_ids 0 5 does not apply to click seeds (--user_click)"),
    (["--label_map_ids", "5"], "--label_map_ids 5 needs --sparse_views"),
])
def test_label_map_ids_where_it_would_be_ignored_is_refused(tmp_path, flags, needle):
    cfg = write_config(tmp_path, tmp_path / "data")
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse(cfg, "--propagate_2d", "--ckpt_path", "x.ckpt", "--rgb_layer", "--mean_gradient", *flags)
    assert parse(cfg, "--propagate_2d", "--ckpt_path", "x.ckpt", "--rgb_layer", "--mean_gradient", "--sparse_views",
                 "--label_map_ids", "5").seeds.label_map_ids == (5,)
