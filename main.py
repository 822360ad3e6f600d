"""JacobiNeRF command line: flags + YAML config -> train | shape | propagate 2D/3D | render | perturb.

The flags are the original's (see utils/config.py and the README); dispatch follows the
original's order: --render_only, --propagate_3d, --perturb_gradient, --propagate_2d, else
training (plain, or Jacobi shaping when a shaping flag is set). `--demo` runs the whole
pipeline on the built-in synthetic scene.
"""
import os
import sys
import time

import torch

from utils.config import parse_settings, save_resolved_config
from utils.errors import InputError, NotSupportedError

PROPAGATION_MODES = ("propagate_3d", "perturb_gradient", "propagate_2d")
SHAPING_FLAGS = ("contrastive_2d", "contrastive_3d", "from_label")


def validate_flags(exp):
    """Flag combinations that cannot work stop here, before any data is read."""
    if not exp.get("save_dir"):
        raise InputError("--save_dir is required (the folder for checkpoints, renders and metrics)")
    modes = [m for m in ("render_only",) + PROPAGATION_MODES if exp.get(m)]
    if len(modes) > 1:
        raise InputError(f"choose one of --{', --'.join(modes)} per run")
    for m in modes:
        if not exp.get("ckpt_path"):
            raise InputError(f"--{m} needs --ckpt_path (the original silently starts training instead)")
    if exp.get("resume") and not exp.get("ckpt_path"):
        raise InputError("--resume needs --ckpt_path (the checkpoint to continue from)")
    if exp.get("load_dino") and exp.get("load_lseg"):
        raise InputError("--load_dino and --load_lseg are exclusive")
    if exp.get("gt_feature_sim") and not (exp.get("load_dino") or exp.get("load_lseg")):
        raise InputError("--gt_feature_sim needs descriptors: add --load_dino (or --load_lseg)")
    if exp.get("load_saved") and exp.get("visualise_save"):
        raise InputError("--load_saved and --visualise_save are exclusive (load seeds, or make and save them)")


def configure_device(settings):
    from models.factory import select_device
    device = select_device(settings)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        tf32 = (settings.exp.get("precision") or "fp32") in ("tf32", "fp16")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return device


def run(args, settings):
    from datasets.loading import load_scene
    from models.factory import build_renderer
    from utils.seeding import seed_everything

    exp = settings.exp
    validate_flags(exp)
    save_dir = exp["save_dir"]
    rng = seed_everything(exp.get("seed"))
    device = configure_device(settings)
    shaping = any(exp.get(f) for f in SHAPING_FLAGS) and not any(exp.get(m) for m in PROPAGATION_MODES)
    mode = next((m for m in ("render_only",) + PROPAGATION_MODES if exp.get(m)), "shape" if shaping else "train")
    print(f"[jnerf] mode: {mode}; device: {device}; save_dir: {save_dir}", flush=True)

    scene = load_scene(settings, features=bool(exp.get("load_dino") or exp.get("load_lseg")))
    renderer = build_renderer(settings, device)
    os.makedirs(save_dir, exist_ok=True)
    save_resolved_config(settings, save_dir)

    if mode == "render_only":
        from training.modes import run_render_only
        return run_render_only(settings, scene, renderer, save_dir)
    if mode in PROPAGATION_MODES:
        from training.modes import run_propagation
        return run_propagation(mode, settings, scene, renderer, save_dir, rng)
    from training.modes import run_training
    return run_training(settings, scene, renderer, save_dir, rng, shaping)


def main(argv=None):
    t0 = time.time()
    try:
        args, settings = parse_settings(argv)
        if args.demo:
            from training.demo import run_demo
            run_demo(args)
        else:
            run(args, settings)
    except NotSupportedError as exc:
        print(f"error: not supported: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"[jnerf] done in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
