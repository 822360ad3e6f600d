"""The oracle experiment: does Jacobi shaping help propagation when its positives are perfect?

    python -m experiments.oracle [--oracle_dir DIR] [--width 80 --height 60 ...]

On the built-in synthetic room: a plain NeRF, oracle shaping from it (--from_label: positives
from ground-truth labels instead of descriptors), and sparse 2D/3D propagation of one click per
class through both checkpoints; prints the comparison tables. Every stage is a main.py command;
finished stages are reused when --oracle_dir is given again. On CUDA the shaped checkpoint is also
propagated through the float16 inference engine. Results are in docs/PROPAGATION.md.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch
import yaml

import main as jnerf_main
from datasets.synthetic import generate_scene, scene_complete
from propagation.compare import compare_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic_room.yaml")
SPARSE = ["--sparse_views", "--sparse_ratio", "0.995", "--label_propagation", "--partial_perc", "0",
          "--rgb_layer", "--mean_gradient"]


def _run(argv):
    rc = jnerf_main.main(argv)
    if rc != 0:
        raise SystemExit(f"error: stage failed (exit code {rc}): python main.py {' '.join(argv)}")


def oracle_comparison(args):
    """The synthetic room, a plain NeRF, oracle (--from_label) shaping from it, and sparse
    2D/3D propagation of one click per class through both checkpoints: the comparison table."""
    root = args.oracle_dir or tempfile.mkdtemp(prefix="jnerf_oracle_")
    data = os.path.join(root, "data")
    if not scene_complete(data):
        generate_scene(data, frames=args.oracle_frames, width=args.width, height=args.height, seed=0, dino=False)
    with open(CONFIG) as f:
        cfg = yaml.safe_load(f)
    cfg["experiment"].update(dataset_dir=data, width=args.width, height=args.height)
    cfg["model"].update(netwidth=args.oracle_width, netwidth_fine=args.oracle_width)
    cfg["logging"].update(step_save_ckpt=10**9, step_log_tfb=10**9, step_val=10**9, step_vis_train=10**9)
    config = os.path.join(root, "config.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(cfg, f)
    common = ["--config_file", config, "--seed", str(args.oracle_seed), "--N_samples", str(args.n_samples),
              "--N_importance", str(args.n_importance)]
    if torch.cuda.is_available():
        common += ["--precision", "tf32"]
    plain = os.path.join(root, "plain")
    plain_ckpt = os.path.join(plain, "checkpoints", f"{args.oracle_plain:06d}.ckpt")
    t0 = time.perf_counter()
    if not os.path.isfile(plain_ckpt):
        _run(common + ["--save_dir", plain, "--N_rays", str(args.oracle_plain_rays), "--N_iters",
                                         str(args.oracle_plain), "--lrate", str(args.oracle_lr)])
    shaped = os.path.join(root, f"oracle_{args.oracle_shape}_{args.oracle_rays}_{args.oracle_shape_lr}")
    shaped_ckpt = os.path.join(shaped, "checkpoints", f"{args.oracle_shape:06d}.ckpt")
    if not os.path.isfile(shaped_ckpt):
        _run(common + [
            "--save_dir", shaped, "--ckpt_path", plain_ckpt, "--contrastive_2d", "--from_label", "--rgb_layer",
            "--contrastive_starting_step", "0", "--contrastive_step", "1", "--N_rays", str(args.oracle_rays),
            "--wgt_contrastive", str(args.oracle_wc), "--wgt_gradient", "1e-2", "--gradient_norm_loss",
            "--contrastive_abs", "--N_iters", str(args.oracle_shape), "--lrate", str(args.oracle_shape_lr)])
    seeds = os.path.join(root, "seeds")
    sparse = SPARSE + ["--seed_dir", seeds]
    runs = {}
    for dim in ("2d", "3d"):
        for name, ckpt in (("plain NeRF", plain_ckpt), ("oracle-shaped", shaped_ckpt)):
            out = os.path.join(shaped if name != "plain NeRF" else plain, f"propagate_{dim}")
            flags = sparse + (["--load_saved"] if os.path.isdir(seeds) else ["--visualise_save"])
            _run(common + flags + [f"--propagate_{dim}", "--ckpt_path", ckpt, "--save_dir", out])
            with open(os.path.join(out, "metrics.json")) as f:
                runs[f"{dim.upper()} {name}"] = json.load(f)
    if torch.cuda.is_available():   # the shaped checkpoint again through the float16 inference engine
        half = [a if a != "tf32" else "fp16" for a in common]
        for dim in ("2d", "3d"):
            out = os.path.join(shaped, f"propagate_{dim}_fp16")
            _run(half + sparse + ["--load_saved", f"--propagate_{dim}", "--ckpt_path", shaped_ckpt,
                                                    "--save_dir", out])
            with open(os.path.join(out, "metrics.json")) as f:
                runs[f"{dim.upper()} oracle-shaped, --precision fp16"] = json.load(f)
    psnr = {}
    for k, d in (("plain", plain), ("shaped", shaped)):
        with open(os.path.join(d, "metrics.json")) as f:
            psnr[k] = json.load(f)["test_psnr"]
    print(f"\n## Oracle comparison on the synthetic room ({args.oracle_frames} frames, {args.width}x{args.height}, "
          f"width {args.oracle_width}, plain {args.oracle_plain} steps (PSNR {psnr['plain']:.2f}), oracle shaping "
          f"{args.oracle_shape} steps (PSNR {psnr['shaped']:.2f}); {time.perf_counter() - t0:.0f} s)\n")
    print(compare_runs({k: v for k, v in runs.items() if k.startswith("2D")}, per_class=False))
    print(compare_runs({k: v for k, v in runs.items() if k.startswith("3D")}, per_class=False))



def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.oracle", description=__doc__.split("\n")[0])
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--n_samples", type=int, default=64)
    p.add_argument("--n_importance", type=int, default=128)
    p.add_argument("--oracle_dir", default=None, help="folder of the runs (reused when it exists)")
    p.add_argument("--oracle_frames", type=int, default=150, help="frames of the synthetic room")
    p.add_argument("--oracle_width", type=int, default=128, help="network width")
    p.add_argument("--oracle_plain", type=int, default=3000, help="plain NeRF steps")
    p.add_argument("--oracle_shape", type=int, default=1000, help="oracle shaping steps")
    p.add_argument("--oracle_rays", type=int, default=128, help="rays per shaping step")
    p.add_argument("--oracle_plain_rays", type=int, default=1024, help="rays per plain NeRF step")
    p.add_argument("--oracle_lr", type=float, default=5e-4, help="learning rate of the plain NeRF")
    p.add_argument("--oracle_shape_lr", type=float, default=5e-4, help="learning rate of the shaping")
    p.add_argument("--oracle_wc", type=float, default=1.0, help="--wgt_contrastive of the oracle shaping")
    p.add_argument("--oracle_seed", type=int, default=0, help="--seed of every stage")
    oracle_comparison(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
