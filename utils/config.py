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

from utils.atomic import write_text_atomic
from utils.errors import InputError

SECTIONS_OVERRIDDEN = ("experiment", "train", "render")
# YAML keys whose values stay strings even if they look like numbers.
STRING_KEYS = {"gpu", "scene_file", "save_dir", "dataset_dir", "ckpt_path", "convention", "name"}
NEW_FLAGS = {"seed", "seed_dir", "N_iters", "noisy_propagation", "agg_steps", "precision", "demo",
             "sample_step", "weights", "overwrite", "keep_ckpts", "semantic_nerf", "semantic_finetune", "wgt_sem",
             "no_cuda_graph"}

# The original's flag order: the merged sections (and the saved exp_config.yaml) list flags in it.
FLAG_ORDER = ('config_file', 'test_instance', 'training_mode', 'resume', 'save_dir', 'ckpt_path', 'render_only',
              'no_batching', 'dataset_type', 'lrate', 'lrate_decay', 'N_rays', 'N_importance',
              'N_samples', 'test_viz_factor', 'wgt_img', 'load_dino', 'load_lseg', 'high_res_dino',
              'feature_dim', 'load_on_cpu', 'contrastive_2d', 'contrastive_abs', 'contrastive_3d',
              'wgt_contrastive', 'wgt_gradient', 'contrastive_step', 'contrastive_starting_step',
              'spatial', 'spatial_embedding', 'concat_color', 'sample_semantic', 'nce_dot_product',
              'gradient_norm_loss', 'gt_feature_sim', 'pos_order', 'neg_threshold', 'pos_threshold',
              'nocs_pos_threshold', 'adaptive_threshold', 'pos_ratio_upper', 'pos_threshold_upper',
              'pos_ratio_lower', 'pos_threshold_lower', 'render_nocs', 'rgb_layer', 'rgb_pts_layer',
              'density_layer', 'pts_layer', 'all_para', 'from_label', 'sample_alter',
              'finetune_label_step', 'from_unmasked', 'from_unmasked_only', 'sample_fixed',
              'fix_density', 'propagate_3d', 'propagate_2d', 'normalize_2d', 'no_abs', 'random_channel',
              'train_agg', 'mean_response', 'mean_gradient', 'gradient_kmeans', 'merge_instance',
              'adaptive_selection', 'num_comb', 'visualize_gradients', 'num_iters', 'n_clusters',
              'perturb_t', 'perturb_r', 'perturb_g', 'perturb_b', 't_iter', 'sparse_views',
              'sparse_ratio', 'label_map_ids', 'random_sample', 'label_propagation', 'partial_perc',
              'user_click', 'num_click', 'visualise_save', 'load_saved', 'gpu', 'perturb_gradient',
              'seed', 'seed_dir', 'N_iters', 'noisy_propagation', 'agg_steps', 'precision',
              'sample_step', 'demo', 'semantic_nerf', 'semantic_finetune', 'wgt_sem')


def _int_like(text):
    """argparse type accepting '250000' as well as '250e3' (the original's default is 250e3)."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def build_parser(dataset_types=("replica", "scannet"), subsets=(), rules=()):
    """The command line. Flag names, defaults and meanings are the original's (plus NEW_FLAGS).

    dataset_types: loader names (datasets.registry); subsets: (flag, help) of the Jacobian
    parameter subsets (models.jacobians registry); rules: (flag, help) of the propagation
    direction rules (propagation.directions registry), each in precedence order. main.py passes
    the registries, so adding an entry there adds its flag here.
    """
    p = argparse.ArgumentParser(
        prog="main.py", description="JacobiNeRF: NeRF training, Jacobi shaping, label propagation. Every flag, "
        "its default included, overrides the YAML key of the same name (experiment/train/render).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    g = p.add_argument_group("run and output").add_argument
    g("--config_file", type=str, default="./configs/replica_room0_config.yaml", help="YAML config file")
    g("--save_dir", type=str, default="", help="output folder (checkpoints, renders, metrics)")
    g("--ckpt_path", type=str, default=None, help="checkpoint to load")
    g("--resume", action="store_true", help="continue a training run from its step and optimizer state: "
      "--ckpt_path, or the latest checkpoint in --save_dir")
    g("--overwrite", action="store_true", default=None,
      help="clear --save_dir's earlier run first (its seeds/ folder is kept); without it such a folder is refused")
    g("--keep_ckpts", type=int, default=None, help="keep the newest N checkpoints plus the final one (unset: all)")
    g("--render_only", action="store_true", help="render the test views of --ckpt_path and exit")
    g("--gpu", type=str, default="", help="CUDA device index; ignored without CUDA")
    g("--seed", type=int, default=None, help="seed every random draw; unset = unseeded, as the original")
    g("--precision", type=str, default=None, choices=["fp32", "tf32", "fp16", "mixed"],
      help="on CUDA: fp32 (unset = fp32); tf32 matmuls; fp16 = tf32 for training plus a float16 engine for "
           "renders and propagation; mixed = fp16 plus float16 training passes on float32 weights with a "
           "dynamic loss scale (docs/PERFORMANCE.md). CPU: always fp32, the choice is ignored")
    g("--no_cuda_graph", action="store_true", default=None,
      help="on CUDA, run every training step eagerly (default: each step is one CUDA-graph replay where the "
           "configuration allows it; same arithmetic, docs/PERFORMANCE.md)")
    g("--demo", action="store_true", help="run the whole pipeline on the built-in synthetic scene")

    g = p.add_argument_group("data").add_argument
    g("--dataset_type", type=str, default="replica", choices=list(dataset_types), help="dataset layout")
    g("--training_mode", action="store_true", help="test set = frame 0 only (test images not loaded)")
    g("--sample_step", type=int, default=None, help="ScanNet frame step (unset: experiment.sample_step)")
    g("--load_dino", action="store_true", help="load dino/dino_<i>.pth descriptors")
    g("--load_lseg", action="store_true", help="load lseg/lseg_<i>.pth descriptors (512-d)")
    g("--high_res_dino", action="store_true", help="read dino_1/ descriptors that are already H x W")
    g("--feature_dim", type=int, default=384, help="descriptor width; PCA when smaller than the file's")
    g("--load_on_cpu", action="store_true", default=False,
      help="keep images and descriptors in host memory, gather per batch")

    g = p.add_argument_group("model and rendering").add_argument
    g("--N_samples", type=int, default=64, help="coarse samples per ray")
    g("--N_importance", type=int, default=128, help="fine samples per ray")
    g("--test_viz_factor", type=int, default=1, help="down-scaling of test/visualisation renders")

    g = p.add_argument_group("training").add_argument
    g("--N_iters", type=_int_like, default=None, help="training steps (unset: the YAML's train.N_iters)")
    g("--N_rays", type=int, default=1024, help="rays per training step (--perturb_gradient: edits)")
    g("--lrate", type=float, default=5e-4, help="initial learning rate")
    g("--lrate_decay", type=_int_like, default=250e3, help="steps for a 10x learning-rate decay")
    g("--wgt_img", type=float, default=1, help="weight of the photometric loss")
    g("--no_batching", action="store_true", default=False,
      help="take each batch from one random training image instead of all pixels of all images")
    g("--fix_density", action="store_true", help="freeze alpha_linear of both networks")
    g("--sample_fixed", action="store_true",
      help="rays (or --perturb_gradient pixels) from image 0, evenly spaced")

    g = p.add_argument_group("Jacobi shaping (docs/SHAPING.md)").add_argument
    g("--contrastive_2d", action="store_true", help="shape Jacobians of rendered pixel colours")
    g("--contrastive_3d", action="store_true", help="shape Jacobians of back-projected 3D points")
    g("--from_label", action="store_true", help="oracle: positives from ground-truth labels")
    for flag, text in subsets:
        g(f"--{flag}", action="store_true", help=f"shaped parameters: {text}")
    g("--contrastive_abs", action="store_true", help="absolute cosine in the contrastive loss")
    g("--wgt_contrastive", type=float, default=0.1, help="weight of the contrastive term")
    g("--wgt_gradient", type=float, default=0.1, help="weight of the Jacobian-norm term")
    g("--contrastive_step", type=int, default=5000, help="shaping term on steps divisible by this")
    g("--contrastive_starting_step", type=int, default=10000, help="shaping term from this step on")
    g("--gt_feature_sim", action="store_true", help="positives from descriptor cosine similarity (the paper's)")
    g("--sample_semantic", action="store_true", help="positives from equal ground-truth labels")
    g("--sample_alter", action="store_true", help="alternate label and descriptor supervision")
    g("--finetune_label_step", type=int, default=2, help="with --sample_alter: label steps are its multiples")
    g("--nce_dot_product", action="store_true", help="raw dot product instead of cosine (adds the norm term)")
    g("--gradient_norm_loss", action="store_true", help="add the Jacobian-norm term mean (|J|-1)^2")
    g("--pos_order", action="store_true", help="single positive: the most similar ray")
    g("--pos_threshold", type=float, default=0.8, help="similarity threshold for positives")
    g("--neg_threshold", type=float, default=0.8, help="accepted for compatibility; unused, as in the original")
    g("--adaptive_threshold", action="store_true", help="adapt the threshold to keep the positive ratio in range")
    g("--pos_ratio_upper", type=float, default=0.15, help="adaptive: upper positive ratio")
    g("--pos_threshold_upper", type=float, default=0.9, help="adaptive: highest threshold")
    g("--pos_ratio_lower", type=float, default=0.05, help="adaptive: lower positive ratio")
    g("--pos_threshold_lower", type=float, default=0.5, help="adaptive: lowest threshold")
    g("--concat_color", action="store_true", help="append colour to the supervision feature")
    g("--spatial", action="store_true",
      help="shaping: append the 3D point to the descriptor; 2D propagation: weight responses by distance")
    g("--spatial_embedding", action="store_true", help="shaping: append the encoded 3D point to the descriptor")
    g("--render_nocs", action="store_true", help="extra positive condition on rendered NOCS similarity")
    g("--nocs_pos_threshold", type=float, default=0.9, help="threshold of the NOCS condition")
    g("--from_unmasked", action="store_true", default=False,
      help="with label supervision: rays only from frames that keep labels")
    g("--from_unmasked_only", action="store_true", default=False, help="rays only from frames that keep labels")
    g("--random_channel", action="store_true",
      help="Jacobian of one random colour channel instead of the channel mean (shaping and propagation)")

    g = p.add_argument_group("seeds: the given labels (docs/PROPAGATION.md)").add_argument
    g("--seed_dir", type=str, default=None, help="folder of saved seeds (unset: <save_dir>/seeds)")
    g("--visualise_save", action="store_true", help="save the generated seeds (to --seed_dir)")
    g("--load_saved", action="store_true", help="load seeds saved by an earlier --visualise_save run")
    g("--sparse_views", action="store_true", help="labels on a sparse subset of training frames")
    g("--sparse_ratio", type=float, default=0, help="fraction of training frames whose labels are dropped")
    g("--label_map_ids", nargs="*", type=int, default=[],
      help="global ids of the labelled frames (with --sparse_views, without click flags)")
    g("--random_sample", action="store_true", help="random instead of evenly spaced labelled frames")
    g("--label_propagation", action="store_true", help="replace label maps by simulated clicks/regions")
    g("--partial_perc", type=float, default=0, help="0: one click per class; p: p-percent sub-regions")
    g("--user_click", action="store_true", help="--num_click random pixels per class")
    g("--num_click", type=int, default=3, help="clicks per class with --user_click")
    g("--test_instance", action="store_true", help="propagate instance ids instead of semantic classes")

    g = p.add_argument_group("label propagation (docs/PROPAGATION.md)").add_argument
    g("--propagate_2d", action="store_true", help="propagate the seeds to every test view (rendered responses)")
    g("--propagate_3d", action="store_true", help="propagate the seeds to the 3D sample points")
    for flag, text in rules:
        g(f"--{flag}", action="store_true", help=f"direction rule: {text}")
    g("--num_comb", type=int, default=20, help="adaptive selection: pixel draws per label per round")
    g("--num_iters", type=int, default=5, help="adaptive selection: rounds")
    g("--n_clusters", type=int, default=10, help="--gradient_kmeans: clusters per label")
    g("--train_agg", action="store_true", help="train the response aggregator (needs --adaptive_selection)")
    g("--agg_steps", type=_int_like, default=None, help="aggregator training steps (unset: 200000, the original's)")
    g("--merge_instance", action="store_true", help="one response channel per direction instead of per label")
    g("--normalize_2d", action="store_true", help="3D: divide each label's rendered response by its maximum")
    g("--no_abs", action="store_true", help="signed responses instead of absolute ones")
    g("--visualize_gradients", action="store_true", help="--gradient_kmeans: write the kept pixels")
    g("--noisy_propagation", action="store_true",
      help="render propagation in training mode (noise, jitter) like the original; default deterministic")
    g("--perturb_t", type=float, default=0.1, help="step along a direction (propagation and editing)")

    g = p.add_argument_group("Semantic-NeRF baseline: trained on the seeds (docs/SEMANTIC_NERF.md)").add_argument
    g("--semantic_nerf", action="store_true", default=None,
      help="train Semantic-NeRF (NeRF + semantic heads, jointly, from scratch) on the seeds, then label the test "
           "views in 2D and 3D (<save_dir>/semantic_2d, semantic_3d)")
    g("--semantic_finetune", action="store_true", default=None,
      help="the cheap protocol: train only the semantic heads on the frozen NeRF of --ckpt_path (implies --semantic_nerf)")
    g("--wgt_sem", type=float, default=None, help="weight of the label cross-entropy (unset: 4e-2, Semantic-NeRF's)")

    g = p.add_argument_group("scene editing along a pixel's gradient").add_argument
    g("--perturb_gradient", action="store_true", help="edit the scene along --N_rays pixels' gradients")
    g("--perturb_r", type=int, default=255, help="red scale of the edit (0..255)")
    g("--perturb_g", type=int, default=255, help="green scale of the edit (0..255)")
    g("--perturb_b", type=int, default=255, help="blue scale of the edit (0..255)")
    g("--t_iter", action="store_true", help="sweep t = 0.00 .. 0.99 with r = g = b = 255")
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
    if path and os.path.isdir(path):
        raise InputError(f"--config_file: {path} is a folder; expected a YAML file such as "
                         "configs/replica_room0_config.yaml")
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
    rank = {k: i for i, k in enumerate(FLAG_ORDER)}
    flags = dict(sorted(flags.items(), key=lambda kv: rank.get(kv[0], len(rank))))
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


def save_resolved_config(config, save_dir):
    """Write the resolved config dict as `exp_config.yaml` (as the original does)."""
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, "exp_config.yaml")
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return path
