"""Names and folders of a reproduction run (experiments/reproduce.py), shared with its tables
(experiments/results.py):

    <out_dir>/<scene>/config.yaml, plain/, jnerf/, jnerf_keep/, seeds/
    <out_dir>/<scene>/<label space>/<regime>/propagate_<dim>_<plain|jnerf|jnerf_keep>/metrics.json
    <out_dir>/<scene>/<label space>/<regime>/semantic_<joint|finetune>/semantic_<dim>/metrics.json
    <out_dir>/results.md, results.json, miou_vs_sparsity.png, timings/process_<i>.json
"""
import json
import os
import re

METHODS = {"plain": "plain NeRF", "jnerf": "JacobiNeRF", "semantic_joint": "Semantic-NeRF (joint)",
           "semantic_finetune": "Semantic-NeRF (fine-tune)",
           "jnerf_keep": "JacobiNeRF (lr continued, Adam restored)"}
DEFAULT_METHODS = ("plain", "jnerf", "semantic_joint", "semantic_finetune")   # a plan without `methods`
# Jacobi shaping from the plain checkpoint, propagated like it. jnerf_keep is the jnerf stage with the
# options that keep the picture (docs/SHAPING.md) unless the plan gives its stage
SHAPING_METHODS = ("jnerf", "jnerf_keep")
KEEP_FLAGS = ("--shaping_lr", "continue", "--shaping_optimizer", "restore")
LABEL_SPACES, DIMS = ("semantic", "instance"), ("2d", "3d")
TRAINING_KINDS = ("plain", "jnerf", "semantic_joint", "semantic_finetune", "jnerf_keep")   # stages that train
METRIC_NAMES = {"miou": "mIoU", "miou_validclass": "mIoU (valid)", "total_accuracy": "acc",
                "class_average_accuracy": "class acc", "class_average_accuracy_validclass": "class acc (valid)"}


def slug(text):
    """A folder name: letters and digits, the rest '_', lower case."""
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_").lower() or "x"


def scene_dir(out_dir, scene_name):
    return os.path.join(out_dir, slug(scene_name))


def seed_dir(out_dir, scene_name):
    return os.path.join(scene_dir(out_dir, scene_name), "seeds")


def regime_dir(out_dir, scene_name, space, regime_name):
    return os.path.join(scene_dir(out_dir, scene_name), space, slug(regime_name))


def cell_metrics(out_dir, scene_name, space, regime_name, method, dim):
    """The metrics.json of one table cell (method in METHODS, dim '2d' | '3d')."""
    base = regime_dir(out_dir, scene_name, space, regime_name)
    if method == "plain" or method in SHAPING_METHODS:
        return os.path.join(base, f"propagate_{dim}_{method}", "metrics.json")
    return os.path.join(base, method, f"semantic_{dim}", "metrics.json")


def read_json(path):
    """The JSON of `path`, or None when it is missing or unreadable (a stage not finished, or cut
    while writing)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def merge_into(dst, src):
    """Merge mapping `src` into `dst` in place, section by section (YAML config overrides); returns dst."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge_into(dst[k], v)
        else:
            dst[k] = v
    return dst
