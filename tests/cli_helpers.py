"""Run main.py in-process with a config that points at a test folder."""
import os

import yaml

import main as jnerf_main

SMALL_FLAGS = ["--N_rays", "32", "--N_samples", "8", "--N_importance", "8"]


def write_config(tmp_path, dataset_dir, width=16, height=12, netwidth=16, n_iters=3, **sections):
    with open("configs/synthetic_room.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["experiment"].update(dataset_dir=str(dataset_dir), width=width, height=height)
    cfg["model"].update(netwidth=netwidth, netwidth_fine=netwidth)
    cfg["train"]["N_iters"] = n_iters
    cfg["logging"].update(step_save_ckpt=100, step_log_tfb=1)
    for name, values in sections.items():
        cfg[name].update(values)
    path = os.path.join(str(tmp_path), "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def run_main(capsys, config, save_dir, *flags):
    rc = jnerf_main.main(["--config_file", config, "--save_dir", str(save_dir), *SMALL_FLAGS, *flags])
    out = capsys.readouterr()
    return rc, out.out, out.err
