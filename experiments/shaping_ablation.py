"""`python -m experiments.shaping_ablation`: where the PSNR of Jacobi shaping goes, and a shaping
that keeps it (docs/SHAPING.md, "Shaping that keeps the picture").

On one scene (the synthetic room by default; `--variant 1` the bedroom; or `--dataset_dir D
--config C`), for every seed: a plain NeRF, then from its last checkpoint one shaping run per
variant (the paper's command with a few flags changed, `VARIANTS`), and for every row (the plain
NeRF and each variant) the test PSNR over all test views (`--render_only`) and one-click 2D and
3D label propagation (`--propagate_2d` / `--propagate_3d --mean_gradient` from one click per
class: `--sparse_views --sparse_ratio 0.995 --label_propagation --partial_perc 0`; the clicks are
saved once per seed, by the plain row's 2D stage, and read by every other row). Then in the out
folder: ablation.md and ablation.json (experiments/ablation_table.py), ablation.png, and
commands.sh (every stage's main.py command).

Every stage is a `main.py` command run as a subprocess, `--jobs N` at a time (experiments/jobs.py);
the markers are the reproduction runner's, so a second call skips what is finished and an
interrupted training stage continues from its checkpoint. Sizes come from experiments/
shaping_ablation.yaml (the GPU run), then `--sizes FILE`, then the flags of the same names.
"""
import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

import yaml

from datasets.synthetic import generate_scene, scene_complete
from experiments.ablation_table import collect, write_outputs
from experiments.jobs import Job, run_jobs
from experiments.layout import KEEP_FLAGS, merge_into, slug
from experiments.stages import Stage
from utils.atomic import write_text_atomic
from utils.errors import InputError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SIZES = os.path.join(ROOT, "experiments", "shaping_ablation.yaml")
SCENE_CONFIGS = {0: "configs/synthetic_room.yaml", 1: "configs/synthetic_bedroom.yaml"}

# The paper's shaping command (docs/SHAPING.md) without its save_dir, checkpoint and steps.
PAPER = ("--load_dino", "--load_on_cpu", "--feature_dim", "384", "--contrastive_2d", "--contrastive_starting_step", "0",
         "--contrastive_step", "1", "--wgt_img", "1", "--wgt_contrastive", "1e-2", "--wgt_gradient", "1e-2",
         "--rgb_layer", "--pos_threshold", "0.8", "--neg_threshold", "0.8", "--adaptive_threshold",
         "--gt_feature_sim", "--gradient_norm_loss", "--N_rays", "64", "--contrastive_abs", "--training_mode")
# one click per class on one training frame
CLICK = ("--sparse_views", "--sparse_ratio", "0.995", "--label_propagation", "--partial_perc", "0")
NO_TERMS = ("--wgt_contrastive", "0", "--wgt_gradient", "0")


@dataclass(frozen=True)
class Variant:
    title: str
    flags: Optional[Tuple[str, ...]]      # added to the paper's command (later flags win); None: no shaping
    what: str                             # what the row isolates


VARIANTS = {
    "plain": Variant("plain NeRF", None, "the NeRF every variant shapes (no shaping)"),
    "paper": Variant("the paper's command", (), "the original: the learning rate restarts at --lrate, a fresh "
                     "Adam, the contrastive and the gradient-norm term"),
    "restart_only": Variant("restart alone", NO_TERMS, "the paper's fine-tune without the shaping terms: the "
                            "restart, the fresh Adam and the 64-ray photometric steps"),
    "continue_lr": Variant("lr continued", ("--shaping_lr", "continue"), "the paper's command on the plain run's "
                           "learning-rate schedule, continued"),
    "restore_adam": Variant("Adam restored", ("--shaping_optimizer", "restore"), "the paper's command from the "
                            "plain run's Adam moments and step counters"),
    "contrastive_only": Variant("contrastive term alone", ("--wgt_gradient", "0"), "the paper's command without "
                                "the gradient-norm term"),
    "gradient_only": Variant("gradient-norm term alone", ("--wgt_contrastive", "0"), "the paper's command without "
                             "the contrastive term"),
    "keep": Variant("lr continued + Adam restored (recommended)", KEEP_FLAGS, "the paper's command continuing "
                    "the plain run: its schedule and its Adam state"),
    "keep_photometric": Variant("lr continued + Adam restored, no shaping terms", KEEP_FLAGS + NO_TERMS,
                                "the floor of `keep`: its fine-tune without the shaping terms"),
    "restore_low_lr": Variant("Adam restored, lr 2e-5", ("--shaping_optimizer", "restore", "--lrate", "2e-5"),
                              "a learning-rate choice: the restart at a quarter of the rate the plain run ended "
                              "at, from its Adam state"),
}

SIZE_KEYS = {"frames": int, "width": int, "height": int, "netdepth": int, "netwidth": int, "N_samples": int,
             "N_importance": int, "plain_iters": int, "plain_rays": int, "shape_iters": int, "lrate": float,
             "lrate_decay": float, "seeds": list, "jobs": int, "flags": list, "plain_flags": list,
             "shape_flags": list, "score_flags": list, "config_overrides": dict, "variants": list}
NULLABLE = ("lrate", "lrate_decay")


# ---------------------------------------------------------------------------------- sizes

def _read_sizes(path):
    if not os.path.isfile(path):
        raise InputError(f"--sizes {path} does not exist")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"--sizes {path} is not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"--sizes {path}: expected a mapping of sizes ({', '.join(SIZE_KEYS)})")
    bad = [k for k in raw if k not in SIZE_KEYS]
    if bad:
        raise InputError(f"--sizes {path}: unknown key {bad[0]!r} (known: {', '.join(SIZE_KEYS)})")
    return raw


def check_sizes(sizes, where):
    """The sizes with their types checked (InputError naming the key)."""
    out = {}
    for key, kind in SIZE_KEYS.items():
        if key not in sizes:
            raise InputError(f"{where}: the size {key} is missing")
        value = sizes[key]
        if value is None and key in NULLABLE:
            out[key] = None
            continue
        try:
            if kind is list:
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise TypeError
                value = [int(v) for v in value] if key == "seeds" else [str(v) for v in value]
            elif kind is dict:
                if not isinstance(value, dict):
                    raise TypeError
            else:
                if isinstance(value, bool):
                    raise TypeError
                value = kind(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: {key} {value!r}: expected {kind.__name__}") from None
        out[key] = value
    for key in ("frames", "width", "height", "netdepth", "netwidth", "N_samples", "N_importance", "plain_iters",
                "plain_rays", "shape_iters", "jobs"):
        if out[key] < 1:
            raise InputError(f"{where}: {key} {out[key]}: expected at least 1")
    if not out["seeds"] or len(set(out["seeds"])) != len(out["seeds"]):
        raise InputError(f"{where}: seeds {out['seeds']}: expected distinct seeds")
    unknown = [v for v in out["variants"] if v not in VARIANTS]
    if unknown or "plain" not in out["variants"]:
        raise InputError(f"{where}: variants {out['variants']}: expected 'plain' and some of {', '.join(VARIANTS)}")
    return out


def load_sizes(sizes_file=None, overrides=None):
    """The default sizes (experiments/shaping_ablation.yaml), then `sizes_file`'s keys, then `overrides`."""
    sizes = _read_sizes(DEFAULT_SIZES)
    where = DEFAULT_SIZES
    if sizes_file:
        sizes.update(_read_sizes(sizes_file))
        where = sizes_file
    sizes.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return check_sizes(sizes, where if not overrides else f"{where} and the flags")


# ---------------------------------------------------------------------------------- the scene

def scene_name(variant, dataset_dir):
    if dataset_dir:
        return os.path.basename(os.path.normpath(dataset_dir))
    from datasets.synthetic.variants import VARIANTS as ROOMS
    if variant not in ROOMS:
        raise InputError(f"--variant {variant}: unknown (known: {', '.join(str(k) for k in sorted(ROOMS))})")
    return ROOMS[variant].name


def prepare_scene(out_dir, sizes, variant=0, dataset_dir=None, config=None, data_root=None):
    """(config path, scene name): the scene's data (a synthetic room generated once) and its config
    (<out_dir>/config.yaml: the scene config, dataset_dir, the network sizes, config_overrides),
    rewritten only when it changes (a change reruns the stages)."""
    name = scene_name(variant, dataset_dir)
    if dataset_dir:
        if not os.path.isdir(dataset_dir):
            raise InputError(f"--dataset_dir {dataset_dir} does not exist")
        data = dataset_dir
        config = config or os.path.join(ROOT, "configs", "replica_room0_config.yaml")
    else:
        data = os.path.join(data_root or os.path.join(out_dir, "data"), slug(name))
        params = dict(variant=variant, frames=sizes["frames"], width=sizes["width"], height=sizes["height"], seed=0)
        if not scene_complete(data, **params):
            print(f"[ablation] generating the synthetic {name} {params} in {data}", flush=True)
            generate_scene(data, stats=False, **params)
        config = config or os.path.join(ROOT, SCENE_CONFIGS.get(variant, SCENE_CONFIGS[0]))
    if not os.path.isfile(config):
        raise InputError(f"--config {config} does not exist")
    with open(config) as f:
        cfg = yaml.safe_load(f)
    exp = cfg.setdefault("experiment", {})
    if not dataset_dir:
        exp.update(width=sizes["width"], height=sizes["height"])
    exp["dataset_dir"] = os.path.abspath(data)
    w, d = sizes["netwidth"], sizes["netdepth"]
    cfg.setdefault("model", {}).update(netdepth=d, netwidth=w, netdepth_fine=d, netwidth_fine=w)
    merge_into(cfg, json.loads(json.dumps(sizes["config_overrides"])))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "config.yaml")
    text = yaml.safe_dump(cfg, sort_keys=False)
    if not os.path.isfile(path) or open(path).read() != text:
        write_text_atomic(path, text)
    return path, name


# ---------------------------------------------------------------------------------- the stages

def row_dir(out_dir, seed, variant):
    return os.path.join(out_dir, f"seed_{seed}", variant)


def _final_ckpt(save_dir, steps):
    return os.path.join(save_dir, "checkpoints", f"{steps:06d}.ckpt")


def ablation_jobs(out_dir, config, sizes):
    """Every stage of the ablation as a Job, in the order they should start (the long training
    stages first)."""
    lr = (["--lrate", repr(sizes["lrate"])] if sizes["lrate"] is not None else []) + \
        (["--lrate_decay", str(int(sizes["lrate_decay"]))] if sizes["lrate_decay"] is not None else [])
    plains, shapes, writers, scoring = [], [], [], []
    for seed in sizes["seeds"]:
        common = ["--config_file", config, "--seed", str(seed), "--N_samples", str(sizes["N_samples"]),
                  "--N_importance", str(sizes["N_importance"])] + sizes["flags"]
        plain_dir = os.path.join(row_dir(out_dir, seed, "plain"), "train")
        plain_ckpt = _final_ckpt(plain_dir, sizes["plain_iters"])
        plains.append(Job(Stage(
            "plain", f"seed {seed}: plain NeRF", plain_dir,
            common + ["--save_dir", plain_dir, "--N_iters", str(sizes["plain_iters"]), "--N_rays",
                      str(sizes["plain_rays"])] + lr + sizes["plain_flags"],
            [plain_ckpt, os.path.join(plain_dir, "metrics.json")], config, steps=sizes["plain_iters"])))
        seeds = os.path.join(out_dir, f"seed_{seed}", "seeds")
        writer = os.path.join(row_dir(out_dir, seed, "plain"), "propagate_2d")
        for name in sizes["variants"]:
            v = VARIANTS[name]
            base = row_dir(out_dir, seed, name)
            if v.flags is None:
                train_dir, ckpt = plain_dir, plain_ckpt
            else:
                train_dir = os.path.join(base, "train")
                ckpt = _final_ckpt(train_dir, sizes["shape_iters"])
                shapes.append(Job(Stage(
                    "jnerf", f"seed {seed}: {name}: shaping", train_dir,
                    common + ["--save_dir", train_dir, "--ckpt_path", plain_ckpt, "--N_iters", str(sizes["shape_iters"])]
                    + list(PAPER) + lr + sizes["shape_flags"] + list(v.flags),   # the row's flags win
                    [ckpt, os.path.join(train_dir, "metrics.json")], config, deps=[plain_dir],
                    steps=sizes["shape_iters"]), (plain_dir,)))
            psnr = os.path.join(base, "psnr")
            scoring.append(Job(Stage("render", f"seed {seed}: {name}: test PSNR", psnr,
                                     common + ["--render_only", "--ckpt_path", ckpt, "--save_dir", psnr]
                                     + sizes["score_flags"], [os.path.join(psnr, "metrics.json")], config,
                                     deps=[train_dir]), (train_dir,)))
            for dim in ("2d", "3d"):
                d = os.path.join(base, f"propagate_{dim}")
                job = Job(Stage("propagate", f"seed {seed}: {name}: {dim.upper()} propagation", d,
                                common + list(CLICK) + ["--seed_dir", seeds, f"--propagate_{dim}", "--rgb_layer",
                                                        "--mean_gradient", "--ckpt_path", ckpt, "--save_dir", d]
                                + sizes["score_flags"], [os.path.join(d, "metrics.json")], config, seeds=True,
                                deps=[train_dir]), (train_dir,) if d == writer else (train_dir, writer))
                (writers if d == writer else scoring).append(job)
    jobs = plains + shapes + writers + scoring
    for job in jobs:
        job.stage.out_dir = out_dir
    return jobs


def commands_text(jobs):
    lines = ["# every stage of the shaping ablation, in start order (the runner adds --overwrite or --resume,",
             "# --visualise_save or --load_saved, and --gpu)"]
    for job in jobs:
        lines += [f"# {job.stage.title}", f"python main.py {shlex.join(job.stage.argv)}"]
    return "\n".join(lines) + "\n"


def run_ablation(out_dir=None, sizes_file=None, overrides=None, variant=0, dataset_dir=None, config=None,
                 data_root=None, gpus=None, collect_only=False, dry_run=False):
    """Run (or with collect_only only tabulate) the ablation; returns dict(table, ran, skipped, failed)."""
    sizes = load_sizes(sizes_file, overrides)
    name = scene_name(variant, dataset_dir)
    out_dir = out_dir or os.path.join("runs", "shaping_ablation", slug(name))
    config_path = os.path.join(out_dir, "config.yaml")
    result = dict(ran={}, skipped=[], failed={})
    if not collect_only and not dry_run:
        config_path, name = prepare_scene(out_dir, sizes, variant, dataset_dir, config, data_root)
    jobs = ablation_jobs(out_dir, config_path, sizes)
    if dry_run:
        print(commands_text(jobs), end="")
        return dict(result, table=None)
    if not collect_only:
        write_text_atomic(os.path.join(out_dir, "commands.sh"), commands_text(jobs))
        if gpus is None:
            import torch
            gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        result.update(run_jobs(jobs, sizes["jobs"], gpus, log_dir=os.path.join(out_dir, "logs")))
    table = collect(out_dir, name, sizes, VARIANTS, row_dir)
    write_outputs(out_dir, table)
    print(f"\n[ablation] {os.path.join(out_dir, 'ablation.md')}", flush=True)
    if result["failed"]:
        print(f"[ablation] {len(result['failed'])} stages failed: " + "; ".join(result["failed"]), file=sys.stderr)
    return dict(result, table=table)


def _flag_list(text):
    return shlex.split(text) if text is not None else None


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.shaping_ablation", description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default=None, help="output folder (default runs/shaping_ablation/<scene>)")
    p.add_argument("--variant", type=int, default=0, help="the synthetic room to generate: 0 living room, 1 bedroom")
    p.add_argument("--dataset_dir", default=None, help="a dataset folder instead of a synthetic room")
    p.add_argument("--config", default=None, help="its YAML config (default: the synthetic room's, or the Replica "
                   "config for --dataset_dir)")
    p.add_argument("--data_root", default=None, help="where the synthetic room is generated (default <out_dir>/data)")
    p.add_argument("--sizes", default=None, help="a YAML of sizes over experiments/shaping_ablation.yaml")
    p.add_argument("--gpus", type=int, nargs="*", default=None, help="GPU ids the jobs take in turn (default: all)")
    p.add_argument("--collect", action="store_true", help="only write the table of the finished stages")
    p.add_argument("--dry_run", action="store_true", help="print every stage's command and exit")
    for key, kind in SIZE_KEYS.items():
        if key in ("config_overrides",):
            continue
        if kind is list:
            nargs = dict(type=int, nargs="+") if key == "seeds" else dict(nargs="+") if key == "variants" else \
                dict(type=_flag_list, metavar="'FLAGS'")
            p.add_argument(f"--{key}", default=None, help=f"size '{key}' (experiments/shaping_ablation.yaml)", **nargs)
        else:
            p.add_argument(f"--{key}", type=kind, default=None, help=f"size '{key}' (experiments/shaping_ablation.yaml)")
    args = p.parse_args(argv)
    overrides = {k: getattr(args, k) for k in SIZE_KEYS if k != "config_overrides"}
    box = {}

    def go():
        box.update(run_ablation(args.out_dir, args.sizes, overrides, args.variant, args.dataset_dir, args.config,
                                args.data_root, args.gpus, args.collect, args.dry_run))

    rc = run_cli(go)
    return 1 if rc == 0 and box.get("failed") else rc


if __name__ == "__main__":
    sys.exit(main())
