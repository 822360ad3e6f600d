"""Command-line flags and YAML configuration.

The parser is generated from the option table (utils/option_table.py plus the registries' flags
that main.py adds). Merging follows the original exactly: every original flag, default included,
overwrites the key of the same name in the `experiment`, `train` and `render` sections. This
project's flags (`keeps_yaml`) are None when not given and then leave the YAML alone, so that
e.g. `--N_iters` only overrides the YAML when given.

YAML values such as `1024*1024` or `250e3` are strings to PyYAML; they are turned into numbers by
a small arithmetic evaluator (no `eval`), except for the string-typed options.
"""
import argparse
import ast
import copy
import operator
import os

import yaml

from utils.atomic import write_text_atomic
from utils.declarations import HelpFormatter, add_flags, did_you_mean, yaml_keys_text
from utils.errors import InputError
from utils.option_table import GROUPS, OPTIONS

SECTIONS_OVERRIDDEN = ("experiment", "train", "render")
# YAML keys whose values stay strings even if they look like numbers.
STRING_KEYS = frozenset(o.name for o in OPTIONS.values() if o.type is str)
# The original's flags are written over the YAML even when None (--ckpt_path). A registry's flags
# are the original's store_true flags (never None) or this project's (None when not given).
ORIGINAL_FLAGS = frozenset(o.name for o in OPTIONS.values() if o.flag and not o.keeps_yaml)

# The original's flag order, then this project's: the merged sections (and the saved
# exp_config.yaml) list flags in it; flags not listed follow in the parser's order.
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line (an InputError, exit 2) instead of the usage text,
    with the closest flag for an unknown one."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            flags = [o for a in self._actions for o in a.option_strings]
            unknown = [w for w in message.split(":", 1)[1].split() if w.startswith("-")]
            message += next((did_you_mean(w.split("=")[0], flags) for w in unknown
                             if did_you_mean(w.split("=")[0], flags)), "")
        raise InputError(f"{message} (see {self.prog} --help)")


def build_parser(options=OPTIONS):
    """The command line of the option table `options` ({name: Option}; main.py passes the core
    table plus the registries' flags): one flag per declared flag, its default and help from the
    declaration, grouped as utils.option_table.GROUPS; the YAML keys without a flag in the epilog."""
    p = ArgumentParser(
        prog="main.py", description="JacobiNeRF: NeRF training, Jacobi shaping, label propagation.\n"
        "Every flag, its default included, overrides the YAML key of the same name (experiment/train/render);\n"
        "a flag whose default names the YAML's key leaves it alone when not given.",
        epilog=yaml_keys_text(options), formatter_class=HelpFormatter)
    return add_flags(p, options, GROUPS)


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

    try:
        return ev(tree)
    except (ZeroDivisionError, OverflowError) as exc:      # '0/0', '1e308**2': not a number
        raise ValueError(f"not a number: {text!r} ({exc})") from None


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


def numify(config):
    """A config's arithmetic strings as numbers (string-typed keys stay strings)."""
    return {s: _numify(s, s, v) for s, v in config.items()}


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
    config = numify(config)
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
    merged = {k: v for k, v in flags.items() if v is not None or k in ORIGINAL_FLAGS}
    for section in SECTIONS_OVERRIDDEN:
        config[section].update(copy.deepcopy(merged))
    config["experiment"]["gpu"] = str(gpu)
    if flags.get("N_iters") is not None:
        config["train"]["N_iters"] = flags["N_iters"]
    return config


def given_flags(parser, argv):
    """The flags `argv` gives explicitly (argparse fills in the others' defaults, so parse again
    with every default suppressed)."""
    defaults = {a.dest: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for a in parser._actions:
            a.default = defaults[a.dest]


def shadowed_keys(yaml_config, args, given):
    """[(key, its sections, YAML value, value in force)] of the YAML keys that a flag's default overwrote
    (the original's merge rule: every original flag, default included, overwrites its key in
    experiment/train/render; so do the registries' store_true flags): keys of flags not given whose
    YAML value differs; one entry per key."""
    flags = vars(args) if not isinstance(args, dict) else dict(args)
    found = {}
    for section in SECTIONS_OVERRIDDEN:
        for key, value in (yaml_config.get(section) or {}).items():
            if key not in flags or key in given or (key == "gpu" and section == "experiment"):
                continue                   # experiment.gpu holds unless --gpu is given (merge_flags)
            now = flags[key]
            if (now is not None or key in ORIGINAL_FLAGS) and now != value:
                entry = found.setdefault(key, [key, [], value, now])
                entry[1].append(section)
    return [tuple(e) for e in found.values()]


def shadowed_note(shadowed):
    """The one warning line that lists the shadowed keys, or None."""
    if not shadowed:
        return None
    items = ", ".join(f"{'/'.join(sections)}.{key} {value!r} -> {now!r}" for key, sections, value, now in shadowed)
    flags = " ".join(f"--{key}" for key, _, _, _ in shadowed)
    return (f"warning: flag defaults override these YAML keys (the original's rule: every flag, default included, "
            f"overwrites its key in experiment/train/render): {items}; give the flags to set them ({flags})")


def save_resolved_config(config, save_dir):
    """Write the resolved config dict as `exp_config.yaml` (as the original does)."""
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, "exp_config.yaml")
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return path
