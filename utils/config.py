"""Command-line flags and YAML configuration.

The flags are those of the original `main.py` (same names, defaults and
meanings) plus a few new ones, all listed in `NEW_FLAGS`. Merging follows the
original exactly: every original flag, default included, overwrites the key of
the same name in the `experiment`, `train` and `render` sections. New flags
whose value is `None` leave the YAML alone, so that e.g. `--N_iters` only
overrides the YAML when given.

YAML values such as `1024*1024` or `250e3` are strings to PyYAML; they are
turned into numbers by a small arithmetic evaluator (no `eval`).
"""
import argparse
import ast
import copy
import operator
import os

import yaml

from utils.errors import InputError

SECTIONS_OVERRIDDEN = ("experiment", "train", "render")
# YAML keys whose values stay strings even if they look like numbers.
STRING_KEYS = {"gpu", "scene_file", "save_dir", "dataset_dir", "ckpt_path", "convention", "name"}
NEW_FLAGS = {"seed", "seed_dir", "N_iters", "noisy_propagation", "agg_steps", "precision", "demo",
             "sample_step", "weights"}


def _int_like(text):
    """argparse type accepting '250000' as well as '250e3' (the original's default is 250e3)."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def build_parser():
    p = argparse.ArgumentParser(
        description="JacobiNeRF: NeRF training, Jacobi shaping, label propagation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    # general and data
    a("--config_file", type=str, default="./configs/replica_room0_config.yaml", help="YAML config file")
    a("--test_instance", action="store_true", help="propagate instance ids instead of semantic classes")
    a("--training_mode", action="store_true", help="test set = frame 0 only (test images not loaded)")
    a("--resume", action="store_true", help="with --ckpt_path: continue from its step and optimizer state")
    a("--save_dir", type=str, default="", help="output folder")
    a("--ckpt_path", type=str, default=None, help="checkpoint to load")
    a("--render_only", action="store_true", help="render the test views and exit")
    a("--no_batching", action="store_true", default=False,
      help="take each batch from one random training image instead of all pixels of all images")
    a("--dataset_type", type=str, default="replica", choices=["replica", "scannet"])
    a("--lrate", type=float, default=5e-4)
    a("--lrate_decay", type=_int_like, default=250e3, help="steps for a 10x learning-rate decay")
    a("--N_rays", type=int, default=1024, help="rays per training step")
    a("--N_importance", type=int, default=128, help="fine samples per ray")
    a("--N_samples", type=int, default=64, help="coarse samples per ray")
    a("--test_viz_factor", type=int, default=1, help="down-scaling of test/visualisation renders")
    a("--wgt_img", type=float, default=1, help="weight of the photometric loss")
    # pre-extracted features
    a("--load_dino", action="store_true", help="load dino/dino_<i>.pth descriptors")
    a("--load_lseg", action="store_true", help="load lseg/lseg_<i>.pth descriptors (512-d)")
    a("--high_res_dino", action="store_true", help="read dino_1/ descriptors that are already H x W")
    a("--feature_dim", type=int, default=384, help="descriptor width; PCA when smaller than the file's")
    a("--load_on_cpu", action="store_true", default=False,
      help="keep images and descriptors in host memory, gather per batch")
    # J-NeRF shaping
    a("--contrastive_2d", action="store_true", help="shape Jacobians of rendered pixel colours")
    a("--contrastive_abs", action="store_true", help="absolute cosine in the contrastive loss")
    a("--contrastive_3d", action="store_true", help="shape Jacobians of back-projected 3D points")
    a("--wgt_contrastive", type=float, default=0.1)
    a("--wgt_gradient", type=float, default=0.1)
    a("--contrastive_step", type=int, default=5000, help="shaping term on steps divisible by this")
    a("--contrastive_starting_step", type=int, default=10000, help="shaping term from this step on")
    a("--spatial", action="store_true")
    a("--spatial_embedding", action="store_true")
    a("--concat_color", action="store_true", help="append colour to the supervision feature")
    a("--sample_semantic", action="store_true", help="positives from equal ground-truth labels")
    a("--nce_dot_product", action="store_true", help="raw dot product instead of cosine")
    a("--gradient_norm_loss", action="store_true", help="add mean (|J|-1)^2")
    a("--gt_feature_sim", action="store_true", help="positives from descriptor cosine similarity")
    a("--pos_order", action="store_true", help="single positive: the most similar ray")
    a("--neg_threshold", type=float, default=0.8, help="accepted for compatibility; unused, as in the original")
    a("--pos_threshold", type=float, default=0.8)
    a("--nocs_pos_threshold", type=float, default=0.9)
    a("--adaptive_threshold", action="store_true")
    a("--pos_ratio_upper", type=float, default=0.15)
    a("--pos_threshold_upper", type=float, default=0.9)
    a("--pos_ratio_lower", type=float, default=0.05)
    a("--pos_threshold_lower", type=float, default=0.5)
    a("--render_nocs", action="store_true")
    # which parameters are shaped
    a("--rgb_layer", action="store_true", help="fine rgb_linear.weight (the paper's choice)")
    a("--rgb_pts_layer", action="store_true", help="fine rgb_linear.weight and pts_linears.6.weight")
    a("--density_layer", action="store_true", help="fine alpha_linear.weight")
    a("--pts_layer", action="store_true", help="fine pts_linears.6.weight")
    a("--all_para", action="store_true", help="all fine-network parameters")
    # other shaping options
    a("--from_label", action="store_true", help="oracle: positives from ground-truth labels")
    a("--sample_alter", action="store_true", help="alternate label and descriptor supervision")
    a("--finetune_label_step", type=int, default=2)
    a("--from_unmasked", action="store_true", default=False)
    a("--from_unmasked_only", action="store_true", default=False)
    a("--sample_fixed", action="store_true", help="image 0, evenly spaced pixels")
    a("--fix_density", action="store_true", help="freeze alpha_linear of both networks")
    # label propagation
    a("--propagate_3d", action="store_true")
    a("--propagate_2d", action="store_true")
    a("--normalize_2d", action="store_true")
    a("--no_abs", action="store_true")
    a("--random_channel", action="store_true")
    a("--train_agg", action="store_true")
    a("--mean_response", action="store_true")
    a("--mean_gradient", action="store_true")
    a("--gradient_kmeans", action="store_true")
    a("--merge_instance", action="store_true")
    a("--adaptive_selection", action="store_true")
    a("--num_comb", type=int, default=20)
    a("--visualize_gradients", action="store_true")
    a("--num_iters", type=int, default=5)
    a("--n_clusters", type=int, default=10)
    a("--perturb_t", type=float, default=0.1)
    a("--perturb_r", type=int, default=255)
    a("--perturb_g", type=int, default=255)
    a("--perturb_b", type=int, default=255)
    a("--t_iter", action="store_true")
    # sparse views
    a("--sparse_views", action="store_true", help="labels on a sparse subset of training frames")
    a("--sparse_ratio", type=float, default=0, help="fraction of training frames whose labels are dropped")
    a("--label_map_ids", nargs="*", type=int, default=[], help="global ids of the labelled frames")
    a("--random_sample", action="store_true", help="random instead of evenly spaced labelled frames")
    # sparse pixels
    a("--label_propagation", action="store_true", help="replace label maps by simulated clicks/regions")
    a("--partial_perc", type=float, default=0, help="0: one click per class; p: p-percent sub-regions")
    a("--user_click", action="store_true", help="num_click random pixels per class")
    a("--num_click", type=int, default=3)
    # misc
    a("--visualise_save", action="store_true", help="save the generated seeds (to --seed_dir)")
    a("--load_saved", action="store_true", help="load seeds saved by an earlier --visualise_save run")
    a("--gpu", type=str, default="", help="CUDA device id; ignored without CUDA")
    a("--perturb_gradient", action="store_true", help="scene editing along a pixel's gradient")
    # new in this implementation (see README)
    a("--seed", type=int, default=None, help="seed every random draw (default: unseeded, as the original)")
    a("--seed_dir", type=str, default=None, help="folder of saved seeds (default: <save_dir>/seeds)")
    a("--N_iters", type=_int_like, default=None, help="training steps (default: the YAML's train.N_iters)")
    a("--noisy_propagation", action="store_true",
      help="render propagation in training mode (noise, jitter) like the original; default deterministic")
    a("--agg_steps", type=_int_like, default=None, help="aggregator training steps (default 200000)")
    a("--precision", type=str, default=None, choices=["fp32", "tf32", "fp16"],
      help="on CUDA: fp32 (default); tf32 matmuls; fp16 = tf32 for training plus a float16 engine for "
           "renders and propagation (see docs/PERFORMANCE.md). CPU: always fp32")
    a("--sample_step", type=int, default=None, help="ScanNet frame step (default: experiment.sample_step)")
    a("--demo", action="store_true", help="run the whole pipeline on the built-in synthetic scene")
    return p


# --- safe arithmetic for YAML strings -------------------------------------------------------
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
           ast.Mod: operator.mod}
_UNOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def parse_number(text):
    """Evaluate a numeric literal or arithmetic expression such as '1024*1024' or '250e3'.

    Only number literals, + - * / // % ** and parentheses are allowed. Returns an int
    when the result is integral and no float literal was involved, else a float.
    Raises ValueError for anything else.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    if not isinstance(text, str):
        raise ValueError(f"not a number: {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a number: {text!r}") from exc

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError(f"exponent too large in {text!r}")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
            return _UNOPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not a number: {text!r}")

    return ev(tree)


def _numify(section, key, value):
    if isinstance(value, dict):
        return {k: _numify(section, k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numify(section, key, v) for v in value]
    if isinstance(value, str) and key not in STRING_KEYS:
        try:
            return parse_number(value)
        except ValueError:
            return value
    return value


def load_yaml_config(path):
    """Read a YAML config and turn arithmetic strings into numbers."""
    if not path or not os.path.isfile(path):
        raise InputError(f"--config_file: {path!r} does not exist (expected a YAML file such as "
                         "configs/replica_room0_config.yaml)")
    try:
        with open(path, "r") as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise InputError(f"--config_file: {path} is not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise InputError(f"--config_file: {path} does not hold a mapping of sections")
    for section in ("experiment", "model", "render", "train", "logging"):
        if not isinstance(config.get(section), dict):
            raise InputError(f"--config_file: {path} has no '{section}:' section")
    config = {s: _numify(s, s, v) for s, v in config.items()}
    if config["experiment"].get("ckpt_path") == "None":
        config["experiment"]["ckpt_path"] = None
    return config


def merge_flags(config, args):
    """Merge parsed flags into the config the way the original does (returns a new dict)."""
    config = copy.deepcopy(config)
    flags = vars(args) if not isinstance(args, dict) else dict(args)
    # The original applies --gpu (else the YAML's gpu) before the merge overwrites the key with
    # the flag's default "", so the resolved value is kept here.
    gpu = flags.get("gpu") or config["experiment"].get("gpu", "")
    merged = {k: v for k, v in flags.items() if not (k in NEW_FLAGS and v is None)}
    for section in SECTIONS_OVERRIDDEN:
        config[section].update(copy.deepcopy(merged))
    config["experiment"]["gpu"] = str(gpu)
    if flags.get("N_iters") is not None:
        config["train"]["N_iters"] = flags["N_iters"]
    return config


class Settings:
    """Attribute view of the merged config: `s.exp.rgb_layer`, `s.model.netwidth`, ..."""

    def __init__(self, config):
        self.raw = config
        for section, values in config.items():
            setattr(self, {"experiment": "exp"}.get(section, section), Section(values))


class Section(dict):
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc

    def get_num(self, key, default=None):
        """Numeric value of a key, parsing arithmetic strings; `default` if absent."""
        value = self.get(key, default)
        if value is None:
            return None
        try:
            return parse_number(value)
        except ValueError as exc:
            raise InputError(f"config key '{key}': expected a number, got {value!r}") from exc


def parse_settings(argv=None):
    """Parse argv, read the YAML and merge: the full config path of `main.py`."""
    args = build_parser().parse_args(argv)
    if args.demo:
        return args, None
    config = load_yaml_config(args.config_file)
    return args, Settings(merge_flags(config, args))


def save_resolved_config(settings, save_dir):
    """Write the resolved config as `exp_config.yaml` (as the original does)."""
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, "exp_config.yaml")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(settings.raw, f, sort_keys=False)
    os.replace(tmp, path)
    return path
