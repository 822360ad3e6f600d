"""Typed, validated run options: the merged flags + YAML turned into small frozen dataclasses.

`build_options(config, ...)` is called once, by `main.py`, on the merged configuration (every
flag, its default included, already copied over the YAML keys of the same name in the
`experiment`, `train` and `render` sections). Every value is checked here, before any data is
read; a bad one raises `InputError` naming the flag (or the YAML key) and what was expected.
The packages below take these objects (or plain arguments) and never see the flag dictionary.

Registries that live higher up (Jacobian parameter subsets in `models.jacobians`, direction rules
in `propagation.directions`, dataset loaders in `datasets.registry`) are passed in by `main.py`
as plain names, so this module imports nothing from the packages above it.
"""
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Tuple

from utils.errors import InputError, NotSupportedError

PROPAGATION_MODES = ("propagate_3d", "perturb_gradient", "propagate_2d")
MODES = ("train", "shape", "render_only") + PROPAGATION_MODES + ("semantic_nerf",)
TRAINING_MODES = ("train", "shape", "semantic_nerf")    # modes that train (N_iters, --resume)
DEFAULT_WGT_SEM = 4e-2                # Semantic-NeRF's Replica weight of the label loss (models.semantic.WGT_SEM)
PRECISIONS = ("fp32", "tf32", "fp16", "mixed")
CONVENTIONS = ("opencv", "opengl")
DEFAULT_AGG_STEPS = 200000        # the original's aggregator length
SHAPING_FLAGS = ("contrastive_2d", "contrastive_3d", "from_label")


# ---------------------------------------------------------------------------------- the groups

@dataclass(frozen=True)
class DataOptions:
    dataset_type: str = "replica"         # loader name (datasets.registry)
    dataset_dir: str = ""                 # the scene folder (experiment.dataset_dir)
    width: int = 320                      # image width the frames are resized to
    height: int = 240                     # image height
    training_mode: bool = False           # test set = frame 0 only (--training_mode)
    load_dino: bool = False               # read dino/dino_<i>.pth descriptors
    load_lseg: bool = False               # read lseg/lseg_<i>.pth descriptors
    high_res_dino: bool = False           # read dino_1/ descriptors already at H x W
    feature_dim: int = 384                # descriptor width; PCA when smaller than the files'
    load_on_cpu: bool = False             # keep descriptors in (pinned) host memory
    sample_step: Optional[int] = None     # ScanNet: step between training frames
    near: float = 0.1                     # render.depth_range[0]
    far: float = 10.0                     # render.depth_range[1]
    convention: str = "opencv"            # camera axes of the poses: opencv | opengl

    @property
    def features(self) -> Optional[str]:
        """'lseg', 'dino' or None: which descriptors the loader reads."""
        return "lseg" if self.load_lseg else ("dino" if self.load_dino else None)


@dataclass(frozen=True)
class ModelOptions:
    netdepth: int = 8                     # coarse trunk layers
    netwidth: int = 256                   # coarse trunk width
    netdepth_fine: int = 8                # fine trunk layers
    netwidth_fine: int = 256              # fine trunk width
    multires: int = 10                    # position encoding frequencies
    multires_views: int = 4               # view-direction encoding frequencies
    i_embed: int = 0                      # -1: no positional encoding
    n_samples: int = 64                   # coarse samples per ray (--N_samples)
    n_importance: int = 128               # fine samples per ray (--N_importance)
    perturb: float = 1.0                  # stratified jitter in training renders
    raw_noise_std: float = 1.0            # density noise in training renders
    white_bkgd: bool = False              # composite onto white
    chunk: int = 1024 * 1024              # rays per render call
    netchunk: int = 1024 * 1024           # points per MLP call
    near: float = 0.1                     # ray start
    far: float = 10.0                     # ray end
    precision: str = "fp32"               # fp32 | tf32 | fp16 | mixed (CUDA only; the CPU runs fp32)


@dataclass(frozen=True)
class LoggingOptions:
    step_log_print: int = 1               # progress-bar refresh period
    step_log_tfb: int = 1                 # TensorBoard scalar period
    step_save_ckpt: int = 100             # checkpoint period
    step_val: int = 5000                  # test-view render period
    step_vis_train: int = 5000            # training-view render period


@dataclass(frozen=True)
class TrainOptions:
    n_iters: int = 200000                 # last step (train.N_iters or --N_iters)
    n_rays: int = 1024                    # rays per step (--N_rays)
    lrate: float = 5e-4                   # initial learning rate
    lrate_decay: float = 250000.0         # steps for a 10x decay
    wgt_img: float = 1.0                  # weight of the photometric loss
    batching: str = "batching"            # ray sampler: batching | no_batching | fixed | unmasked
    fix_density: bool = False             # freeze alpha_linear of both networks
    load_on_cpu: bool = False             # gather rays from host memory
    keep_ckpts: Optional[int] = None      # keep the newest N checkpoints (+ the final one); None = all
    cuda_graph: bool = True               # on CUDA, capture the step as a CUDA graph where possible
    logging: LoggingOptions = field(default_factory=LoggingOptions)


@dataclass(frozen=True)
class ShapingOptions:
    target: str = "2d"                    # Jacobians of pixels (2d) or back-projected points (3d)
    subset: str = "rgb"                   # shaped parameters (models.jacobians registry)
    supervision: str = "features"         # positives from: features | labels | alternate
    start: int = 10000                    # --contrastive_starting_step
    every: int = 5000                     # --contrastive_step
    label_step: int = 2                   # --finetune_label_step (with --sample_alter)
    wgt_contrastive: float = 0.1          # weight of the contrastive term
    wgt_gradient: float = 0.1             # weight of the Jacobian-norm term
    pos_threshold: float = 0.8            # initial similarity threshold for positives
    nocs_pos_threshold: float = 0.9       # threshold on rendered NOCS similarity
    adaptive_threshold: bool = False      # adapt the threshold to the positive ratio
    pos_ratio_lower: float = 0.05         # adaptive: lower positive ratio
    pos_ratio_upper: float = 0.15         # adaptive: upper positive ratio
    pos_threshold_lower: float = 0.5      # adaptive: lowest threshold
    pos_threshold_upper: float = 0.9      # adaptive: highest threshold
    pos_order: bool = False               # single positive: the most similar ray
    dot_product: bool = False             # --nce_dot_product: raw dot product instead of cosine
    absolute: bool = False                # --contrastive_abs: absolute cosine
    norm_loss: bool = False               # --gradient_norm_loss (implied by --nce_dot_product)
    random_channel: bool = False          # Jacobian of one random colour channel per ray
    concat_color: bool = False            # append colour to the supervision feature
    spatial: Optional[str] = None         # None | xyz (--spatial) | embedding (--spatial_embedding)
    render_nocs: bool = False             # NOCS similarity as an extra positive condition
    unmasked: bool = False                # draw rays only from frames that keep labels


@dataclass(frozen=True)
class SeedOptions:
    seed_dir: str = ""                    # where seeds are written / read (default <save_dir>/seeds)
    sparse_views: bool = False            # labels on a subset of training frames
    sparse_ratio: float = 0.0             # fraction of training frames whose labels are dropped
    label_map_ids: Tuple[int, ...] = ()   # global ids of the labelled frames
    random_sample: bool = False           # random instead of evenly spaced labelled frames
    label_propagation: bool = False       # simulated clicks / regions
    partial_perc: float = 0.0             # 0: one click per class; p: p-percent regions
    user_click: bool = False              # num_click random pixels per class
    num_click: int = 3                    # clicks per class with --user_click
    visualise_save: bool = False          # write the seeds
    load_saved: bool = False              # read seeds written earlier
    instance: bool = False                # --test_instance: instance ids instead of classes
    rng_seed: Optional[int] = None        # --seed, recorded in seeds.json


@dataclass(frozen=True)
class PropagationOptions:
    kind: str = "2d"                      # 2d | 3d
    rule: str = "mean_gradient"           # direction rule (propagation.directions registry)
    instance: bool = False                # --test_instance
    train_agg: bool = False               # train the response aggregator
    agg_steps: int = DEFAULT_AGG_STEPS    # aggregator steps
    normalize_2d: bool = False            # normalise 2D responses per direction
    no_abs: bool = False                  # signed responses
    random_channel: bool = False          # one random colour channel per label
    merge_instance: bool = False          # one response channel per direction
    num_comb: int = 20                    # adaptive selection: combinations per round
    num_iters: int = 5                    # adaptive selection: rounds
    n_clusters: int = 10                  # --gradient_kmeans clusters
    perturb_t: float = 0.1                # perturbation step
    noisy: bool = False                   # --noisy_propagation: training-mode renders
    visualize_gradients: bool = False     # write the k-means pixels
    spatial: bool = False                 # weight 2D responses by distance to the seeds


@dataclass(frozen=True)
class EditOptions:
    n_pixels: int = 1024                  # --N_rays: edits, one per sampled pixel
    sample_fixed: bool = False            # view 0 and evenly spaced pixels
    perturb_t: float = 0.1                # step along the gradient
    colour: Tuple[int, int, int] = (255, 255, 255)   # --perturb_r/g/b
    t_iter: bool = False                  # sweep t = 0.00 .. 0.99
    no_abs: bool = False                  # signed heat maps
    noisy: bool = False                   # --noisy_propagation


@dataclass(frozen=True)
class SemanticOptions:
    """The Semantic-NeRF baseline (--semantic_nerf / --semantic_finetune, docs/SEMANTIC_NERF.md);
    its seeds and label space (--test_instance) are RunOptions.seeds."""
    protocol: str = "joint"               # joint: NeRF + heads from scratch; finetune: heads on a frozen --ckpt_path
    wgt_sem: float = DEFAULT_WGT_SEM      # weight of the label cross-entropy (coarse + fine)


@dataclass(frozen=True)
class RunOptions:
    mode: str                             # train | shape | render_only | propagate_2d | propagate_3d | perturb_gradient | semantic_nerf
    save_dir: str                         # output folder
    data: DataOptions
    model: ModelOptions
    train: TrainOptions
    ckpt_path: Optional[str] = None       # checkpoint to load
    resume: bool = False                  # continue the checkpoint's run (latest in save_dir if no ckpt_path)
    overwrite: bool = False               # clear save_dir's earlier run first (its seeds/ kept)
    seed: Optional[int] = None            # seeds every random draw; None = unseeded
    gpu: str = ""                         # CUDA device index
    test_viz_factor: int = 1              # down-scaling of test renders
    shaping: Optional[ShapingOptions] = None
    seeds: Optional[SeedOptions] = None
    propagation: Optional[PropagationOptions] = None
    edit: Optional[EditOptions] = None
    semantic: Optional[SemanticOptions] = None
    config: Mapping = field(default_factory=dict, compare=False, repr=False)   # the resolved YAML


# ---------------------------------------------------------------------------------- value checks

def _name(key, section=None):
    """How a value is named in messages: '--flag' for flags, 'section.key' for YAML-only keys."""
    return f"--{key}" if section is None else f"{section}.{key}"


class _Reader:
    """Typed reads of one merged section with the error naming the flag or key."""

    def __init__(self, values, section, flags):
        self.values, self.section, self.flags = values, section, flags

    def label(self, key):
        return _name(key, None if key in self.flags else self.section)

    def raw(self, key, default=None, required=False):
        if key not in self.values or self.values[key] is None:
            if required:
                raise InputError(f"config key {self.section}.{key} is missing (the model needs it; see "
                                 "configs/replica_room0_config.yaml)")
            return default
        return self.values[key]

    def flag(self, key):
        return bool(self.raw(key, False))

    def number(self, key, default=None, required=False):
        value = self.raw(key, default, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{self.label(key)} {value!r}: expected a number")
        return value

    def integer(self, key, default=None, required=False, minimum=None):
        value = self.number(key, default, required)
        if value is None:
            return None
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise InputError(f"{self.label(key)} {value!r}: expected an integer")
            value = int(value)
        if minimum is not None and value < minimum:
            raise InputError(f"{self.label(key)} {value}: expected at least {minimum}")
        return value

    def real(self, key, default=None, required=False, positive=False, low=None, high=None):
        value = self.number(key, default, required)
        if value is None:
            return None
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"{self.label(key)} {value}: expected a finite number")
        if positive and value <= 0:
            raise InputError(f"{self.label(key)} {value}: expected a number > 0")
        if low is not None and value < low or high is not None and value > high:
            raise InputError(f"{self.label(key)} {value}: expected a value in [{low}, {high}]")
        return value


# ---------------------------------------------------------------------------------- building

def build_options(config: Mapping, flag_names: Sequence[str], subset_flags: Mapping[str, str],
                  rule_flags: Sequence[str], dataset_types: Sequence[str]) -> RunOptions:
    """RunOptions of the merged `config`, every value validated.

    flag_names: the command-line flags (messages name `--flag` for them, `section.key` otherwise);
    subset_flags: flag -> Jacobian subset name, in the original's precedence order;
    rule_flags: direction-rule flags in the original's precedence order;
    dataset_types: the registered loader names.
    """
    flags = set(flag_names)
    exp = _Reader(config["experiment"], "experiment", flags)
    ren = _Reader(config["render"], "render", flags)
    mod = _Reader(config["model"], "model", flags)
    tra = _Reader(config["train"], "train", flags)
    log = _Reader(config.get("logging") or {}, "logging", flags)

    save_dir = exp.raw("save_dir") or ""
    if not save_dir:
        raise InputError("--save_dir is required (the folder for checkpoints, renders and metrics)")
    mode = _mode(exp)
    ckpt_path = exp.raw("ckpt_path")
    if mode not in TRAINING_MODES and not ckpt_path:
        raise InputError(f"--{mode} needs --ckpt_path (the original silently starts training instead)")
    resume = exp.flag("resume")
    if resume and mode not in TRAINING_MODES:
        raise InputError(f"--resume continues a training run; it has no meaning with --{mode}")
    overwrite = exp.flag("overwrite")
    if resume and overwrite:
        raise InputError("--resume and --overwrite are exclusive (continue the run in --save_dir, or clear it)")
    seed = exp.integer("seed", minimum=0)

    near, far = _depth_range(ren)
    data = _data_options(exp, near, far, dataset_types)
    if exp.flag("gt_feature_sim") and data.features is None:
        raise InputError("--gt_feature_sim needs descriptors: add --load_dino (or --load_lseg)")
    model = _model_options(ren, mod, exp, near, far)
    shaping = _shaping_options(exp, subset_flags) if mode == "shape" else None
    train = _train_options(exp, ren, tra, log, mode, shaping)
    test_viz_factor = ren.integer("test_viz_factor", 1, minimum=1)
    if data.height // test_viz_factor < 1 or data.width // test_viz_factor < 1:
        raise InputError(f"--test_viz_factor {test_viz_factor}: larger than the image "
                         f"({data.width}x{data.height})")

    seeds = None
    if mode in ("propagate_2d", "propagate_3d", "semantic_nerf") \
            or (shaping is not None and shaping.supervision != "features") \
            or (shaping is not None and shaping.unmasked):
        seeds = _seed_options(exp, save_dir, seed)
    propagation = _propagation_options(exp, mode, subset_flags, rule_flags) \
        if mode in ("propagate_2d", "propagate_3d") else None
    edit = _edit_options(exp, ren, subset_flags) if mode == "perturb_gradient" else None
    semantic = _semantic_options(exp, ckpt_path, resume) if mode == "semantic_nerf" else None
    if exp.flag("load_saved") and exp.flag("visualise_save"):
        raise InputError("--load_saved and --visualise_save are exclusive (load seeds, or make and save them)")

    return RunOptions(mode=mode, save_dir=str(save_dir), data=data, model=model, train=train,
                      ckpt_path=ckpt_path, resume=resume, overwrite=overwrite, seed=seed, gpu=str(exp.raw("gpu", "") or ""),
                      test_viz_factor=test_viz_factor, shaping=shaping, seeds=seeds, propagation=propagation,
                      edit=edit, semantic=semantic, config=config)


def _mode(exp):
    modes = [m for m in ("render_only",) + PROPAGATION_MODES if exp.flag(m)]
    semantic = [f for f in ("semantic_nerf", "semantic_finetune") if exp.flag(f)]
    if semantic:
        modes.append(semantic[0])
    if len(modes) > 1:
        raise InputError(f"choose one of --{', --'.join(modes)} per run")
    if semantic:
        shaping = [f for f in SHAPING_FLAGS if exp.flag(f)]
        if shaping:
            raise InputError(f"--{semantic[0]} trains the Semantic-NeRF baseline; it cannot be combined with "
                             f"Jacobi shaping (--{shaping[0]}): run them separately")
        return "semantic_nerf"
    if modes:
        return modes[0]
    return "shape" if any(exp.flag(f) for f in SHAPING_FLAGS) else "train"


def _depth_range(ren):
    value = ren.raw("depth_range", [0.1, 10.0])
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"render.depth_range {value!r}: expected [near, far]")
    try:
        near, far = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise InputError(f"render.depth_range {value!r}: expected two numbers [near, far]") from None
    if not (math.isfinite(near) and math.isfinite(far)) or near < 0 or near >= far:
        raise InputError(f"render.depth_range {value!r}: expected 0 <= near < far")
    return near, far


def _data_options(exp, near, far, dataset_types):
    dataset_type = str(exp.raw("dataset_type", "replica"))
    if dataset_type not in dataset_types:
        raise InputError(f"--dataset_type {dataset_type!r}: expected one of {', '.join(dataset_types)}")
    dataset_dir = exp.raw("dataset_dir")
    if not dataset_dir:
        raise InputError("experiment.dataset_dir is not set in the YAML config")
    load_dino, load_lseg = exp.flag("load_dino"), exp.flag("load_lseg")
    if load_dino and load_lseg:
        raise InputError("--load_dino and --load_lseg are exclusive")
    convention = str(exp.raw("convention", "opencv"))
    if convention not in CONVENTIONS:
        raise InputError(f"experiment.convention {convention!r}: expected opencv or opengl")
    sample_step = exp.integer("sample_step", minimum=1)
    if dataset_type == "scannet" and sample_step is None:
        raise InputError("--sample_step is required for --dataset_type scannet (or set "
                         "experiment.sample_step in the YAML config): the step between training frames")
    return DataOptions(
        dataset_type=dataset_type, dataset_dir=str(dataset_dir),
        width=exp.integer("width", required=True, minimum=1), height=exp.integer("height", required=True, minimum=1),
        training_mode=exp.flag("training_mode"), load_dino=load_dino, load_lseg=load_lseg,
        high_res_dino=exp.flag("high_res_dino"), feature_dim=exp.integer("feature_dim", 384, minimum=1),
        load_on_cpu=exp.flag("load_on_cpu"), sample_step=sample_step, near=near, far=far, convention=convention)


def _model_options(ren, mod, exp, near, far):
    if not ren.raw("use_viewdirs", True):
        raise NotSupportedError("render.use_viewdirs: false is not supported (the shaped layer "
                                "rgb_linear exists only in the view-dependent network)")
    n_importance = ren.integer("N_importance", required=True)
    if n_importance <= 0:
        raise NotSupportedError("--N_importance 0 is not supported: shaping and propagation act on "
                                "the fine network (the original crashes here too)")
    n_samples = ren.integer("N_samples", required=True, minimum=1)
    if n_samples < 3:
        raise NotSupportedError("--N_samples must be at least 3 (importance sampling needs inner bins)")
    precision = exp.raw("precision") or "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return ModelOptions(
        netdepth=mod.integer("netdepth", required=True, minimum=1),
        netwidth=mod.integer("netwidth", required=True, minimum=1),
        netdepth_fine=mod.integer("netdepth_fine", required=True, minimum=1),
        netwidth_fine=mod.integer("netwidth_fine", required=True, minimum=1),
        multires=ren.integer("multires", 10, minimum=0), multires_views=ren.integer("multires_views", 4, minimum=0),
        i_embed=ren.integer("i_embed", 0), n_samples=n_samples, n_importance=n_importance,
        perturb=ren.real("perturb", 1.0, low=0.0), raw_noise_std=ren.real("raw_noise_std", 0.0, low=0.0),
        white_bkgd=ren.flag("white_bkgd"), chunk=mod.integer("chunk", 1024 * 1024, minimum=1),
        netchunk=mod.integer("netchunk", 1024 * 1024, minimum=1), near=near, far=far, precision=precision)


def _train_options(exp, ren, tra, log, mode, shaping):
    n_iters = tra.integer("N_iters", required=mode in TRAINING_MODES, minimum=1)
    unmasked = exp.flag("from_unmasked_only") or (shaping is not None and shaping.unmasked)
    batching = ("fixed" if exp.flag("sample_fixed") else "unmasked" if unmasked
                else "no_batching" if ren.flag("no_batching") else "batching")
    every = {k: log.integer(k, d, minimum=1) for k, d in (
        ("step_log_print", 1), ("step_log_tfb", 1), ("step_save_ckpt", 100), ("step_val", 5000),
        ("step_vis_train", 5000))}
    return TrainOptions(
        n_iters=n_iters if n_iters is not None else 0, n_rays=ren.integer("N_rays", required=True, minimum=1),
        lrate=tra.real("lrate", required=True, positive=True),
        lrate_decay=tra.real("lrate_decay", required=True, positive=True),
        wgt_img=tra.real("wgt_img", 1.0), batching=batching, fix_density=exp.flag("fix_density"),
        load_on_cpu=exp.flag("load_on_cpu"), keep_ckpts=exp.integer("keep_ckpts", minimum=1),
        cuda_graph=not exp.flag("no_cuda_graph"),
        logging=LoggingOptions(**every))


def _subset(exp, subset_flags):
    for flag, name in subset_flags.items():
        if exp.flag(flag):
            return name
    return None


def supervision_mode(exp):
    """'features' | 'labels' | 'alternate' from the supervision flags (docs/SHAPING.md)."""
    feats, labels = exp.flag("gt_feature_sim"), exp.flag("sample_semantic")
    if exp.flag("sample_alter"):
        return "alternate"
    if feats and labels:
        raise InputError("--gt_feature_sim and --sample_semantic both choose the positives; pass one, "
                         "or --sample_alter to alternate between them")
    if feats:
        return "features"
    if labels or exp.flag("from_label"):
        return "labels"
    raise InputError("shaping needs a supervision for positives: --gt_feature_sim (descriptor similarity, "
                     "the paper's) or --sample_semantic / --from_label (ground-truth labels, the oracle)")


def _shaping_options(exp, subset_flags):
    every = exp.integer("contrastive_step", 5000)
    if every < 1:
        raise InputError(f"--contrastive_step {every}: must be at least 1")
    subset = _subset(exp, subset_flags)
    if subset is None:
        raise InputError("shaping needs the shaped parameters: " + ", ".join(f"--{f}" for f in subset_flags)
                         + " (--rgb_layer is the paper's)")
    mode = supervision_mode(exp)
    uses_features, uses_labels = mode in ("features", "alternate"), mode in ("labels", "alternate")
    extras = [f for f in ("spatial", "spatial_embedding", "concat_color", "render_nocs") if exp.flag(f)]
    if extras and not uses_features:
        raise InputError(f"--{extras[0]} modifies descriptor similarities; with label supervision it has "
                         "no effect (add --gt_feature_sim or --sample_alter)")
    if exp.flag("render_nocs") and (exp.flag("spatial") or exp.flag("spatial_embedding")):
        raise InputError("--render_nocs replaces --spatial/--spatial_embedding (the original ignores them); "
                         "pass one of them")
    if uses_features and not (exp.flag("load_dino") or exp.flag("load_lseg")):
        what = "--sample_alter alternates descriptor and label supervision" if mode == "alternate" \
            else "--gt_feature_sim"
        raise InputError(f"{what}: it needs descriptors; add --load_dino (or --load_lseg)")
    ratio = dict(low=0.0, high=1.0)
    lower, upper = exp.real("pos_ratio_lower", 0.05, **ratio), exp.real("pos_ratio_upper", 0.15, **ratio)
    if lower > upper:
        raise InputError(f"--pos_ratio_lower {lower} is above --pos_ratio_upper {upper}")
    t_lower, t_upper = exp.real("pos_threshold_lower", 0.5), exp.real("pos_threshold_upper", 0.9)
    if t_lower > t_upper:
        raise InputError(f"--pos_threshold_lower {t_lower} is above --pos_threshold_upper {t_upper}")
    unmasked = exp.flag("from_unmasked_only") or (exp.flag("from_unmasked") and uses_labels)
    label_step = exp.integer("finetune_label_step", 2)
    if mode == "alternate" and label_step < 1:
        raise InputError(f"--finetune_label_step {label_step}: must be at least 1")
    return ShapingOptions(
        target="3d" if exp.flag("contrastive_3d") and not exp.flag("contrastive_2d") else "2d",
        subset=subset, supervision=mode, start=exp.integer("contrastive_starting_step", 10000, minimum=0),
        every=every, label_step=label_step or 2,
        wgt_contrastive=exp.real("wgt_contrastive", 0.1), wgt_gradient=exp.real("wgt_gradient", 0.1),
        pos_threshold=exp.real("pos_threshold", 0.8), nocs_pos_threshold=exp.real("nocs_pos_threshold", 0.9),
        adaptive_threshold=exp.flag("adaptive_threshold"), pos_ratio_lower=lower, pos_ratio_upper=upper,
        pos_threshold_lower=t_lower, pos_threshold_upper=t_upper, pos_order=exp.flag("pos_order"),
        dot_product=exp.flag("nce_dot_product"), absolute=exp.flag("contrastive_abs"),
        norm_loss=exp.flag("gradient_norm_loss") or exp.flag("nce_dot_product"),
        random_channel=exp.flag("random_channel"), concat_color=exp.flag("concat_color"),
        spatial="embedding" if exp.flag("spatial_embedding") else "xyz" if exp.flag("spatial") else None,
        render_nocs=exp.flag("render_nocs"), unmasked=unmasked)


def _seed_options(exp, save_dir, seed):
    seed_dir = exp.raw("seed_dir") or os.path.join(save_dir, "seeds")
    ids = exp.raw("label_map_ids") or []
    return SeedOptions(
        seed_dir=str(seed_dir), sparse_views=exp.flag("sparse_views"),
        sparse_ratio=exp.real("sparse_ratio", 0.0, low=0.0, high=1.0), label_map_ids=tuple(ids),
        random_sample=exp.flag("random_sample"), label_propagation=exp.flag("label_propagation"),
        partial_perc=exp.real("partial_perc", 0.0, low=0.0, high=100.0), user_click=exp.flag("user_click"),
        num_click=exp.integer("num_click", 3, minimum=1), visualise_save=exp.flag("visualise_save"),
        load_saved=exp.flag("load_saved"), instance=exp.flag("test_instance"), rng_seed=seed)


def _semantic_options(exp, ckpt_path, resume):
    finetune = exp.flag("semantic_finetune")
    if finetune and not ckpt_path and not resume:
        raise InputError("--semantic_finetune trains semantic heads on a trained NeRF, frozen: give its checkpoint "
                         "with --ckpt_path (e.g. a plain NeRF run's <save_dir>/checkpoints/200000.ckpt)")
    return SemanticOptions(protocol="finetune" if finetune else "joint",
                           wgt_sem=exp.real("wgt_sem", DEFAULT_WGT_SEM, positive=True))


def _require_rgb_layer(exp, mode, subset_flags):
    if exp.flag("rgb_layer"):
        return
    other = [f"--{f}" for f in subset_flags if f != "rgb_layer" and exp.flag(f)]
    if other:
        raise NotSupportedError(f"--{mode} with {other[0]}: propagation perturbs only the fine rgb_linear "
                                "weight; pass --rgb_layer (the original crashes on the other layers)")
    raise InputError(f"--{mode} needs --rgb_layer (the shaped layer whose perturbations propagate labels)")


def _propagation_options(exp, mode, subset_flags, rule_flags):
    _require_rgb_layer(exp, mode, subset_flags)
    rule = next((r for r in rule_flags if exp.flag(r)), None)
    if rule is None:
        raise InputError(f"--{mode} needs a direction rule: " + ", ".join(f"--{r}" for r in rule_flags)
                         + " (--mean_gradient for sparse clicks, --adaptive_selection for dense labels)")
    if exp.flag("train_agg") and rule != "adaptive_selection":
        raise InputError("--train_agg needs --adaptive_selection (the aggregator is trained on the selected "
                         "directions' responses, as in the original)")
    if exp.flag("spatial") and mode == "propagate_3d":
        raise NotSupportedError("--spatial with --propagate_3d is not supported (the original crashes on a "
                                "shape mismatch); use it with --propagate_2d")
    if exp.flag("spatial") and exp.flag("train_agg"):
        raise InputError("--spatial cannot be combined with --train_agg (the original multiplies an empty "
                         "list there); drop one of them")
    agg_steps = exp.integer("agg_steps", DEFAULT_AGG_STEPS, minimum=1)
    return PropagationOptions(
        kind="2d" if mode == "propagate_2d" else "3d", rule=rule, instance=exp.flag("test_instance"),
        train_agg=exp.flag("train_agg"), agg_steps=agg_steps, normalize_2d=exp.flag("normalize_2d"),
        no_abs=exp.flag("no_abs"), random_channel=exp.flag("random_channel"),
        merge_instance=exp.flag("merge_instance"), num_comb=exp.integer("num_comb", 20, minimum=1),
        num_iters=exp.integer("num_iters", 5, minimum=1), n_clusters=exp.integer("n_clusters", 10, minimum=1),
        perturb_t=exp.real("perturb_t", 0.1), noisy=exp.flag("noisy_propagation"),
        visualize_gradients=exp.flag("visualize_gradients"), spatial=exp.flag("spatial"))


def _edit_options(exp, ren, subset_flags):
    _require_rgb_layer(exp, "perturb_gradient", subset_flags)
    colour = tuple(exp.integer(k, 255, minimum=0) for k in ("perturb_r", "perturb_g", "perturb_b"))
    for k, c in zip(("perturb_r", "perturb_g", "perturb_b"), colour):
        if c > 255:
            raise InputError(f"--{k} {c}: expected a value in [0, 255]")
    if exp.flag("t_iter"):
        colour = (255, 255, 255)
    return EditOptions(
        n_pixels=ren.integer("N_rays", 1024, minimum=1), sample_fixed=exp.flag("sample_fixed"),
        perturb_t=exp.real("perturb_t", 0.1), colour=colour, t_iter=exp.flag("t_iter"),
        no_abs=exp.flag("no_abs"), noisy=exp.flag("noisy_propagation"))
