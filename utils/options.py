"""Typed run options: small frozen dataclasses, built once by `utils.build_options` from the merged
flags + YAML and passed down; the packages below never see the flag dictionary.

A field filled from one option takes its default from the option table (`declared`, which keeps
the link for tests/test_options.py); a required option's field has none. Fields derived from
several flags (the mode, the ray sampler, the shaping target, ...) say so.
"""
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

from utils.option_table import declared, default
from utils.precision import PRECISIONS, Precision


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    dataset_type: str = declared("dataset_type")       # loader name (datasets.registry)
    dataset_dir: str = declared("dataset_dir")         # the scene folder
    width: int = declared("width")                     # image width the frames are resized to
    height: int = declared("height")                   # image height
    training_mode: bool = declared("training_mode")    # test set = frame 0 only
    load_dino: bool = declared("load_dino")            # read dino/dino_<i>.pth descriptors
    load_lseg: bool = declared("load_lseg")            # read lseg/lseg_<i>.pth descriptors
    high_res_dino: bool = declared("high_res_dino")    # read dino_1/ descriptors already at H x W
    feature_dim: int = declared("feature_dim")         # descriptor width; PCA when smaller than the files'
    load_on_cpu: bool = declared("load_on_cpu")        # keep descriptors in (pinned) host memory
    near: float = declared("depth_range", lambda r: float(r[0]))   # the scene's depth range (render.depth_range)
    far: float = declared("depth_range", lambda r: float(r[1]))
    convention: str = declared("convention")           # camera axes of the poses: opencv | opengl
    loader: Any = None                                 # the loader's own options (its registry entry declares them)

    @property
    def features(self) -> Optional[str]:
        """'lseg', 'dino' or None: which descriptors the loader reads."""
        return "lseg" if self.load_lseg else ("dino" if self.load_dino else None)


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    netdepth: int = declared("netdepth")               # coarse trunk layers
    netwidth: int = declared("netwidth")               # coarse trunk width
    netdepth_fine: int = declared("netdepth_fine")     # fine trunk layers
    netwidth_fine: int = declared("netwidth_fine")     # fine trunk width
    multires: int = declared("multires")               # position encoding frequencies
    multires_views: int = declared("multires_views")   # view-direction encoding frequencies
    i_embed: int = declared("i_embed")                 # -1: no positional encoding
    n_samples: int = declared("N_samples")             # coarse samples per ray
    n_importance: int = declared("N_importance")       # fine samples per ray
    perturb: float = declared("perturb")               # stratified jitter in training renders
    raw_noise_std: float = declared("raw_noise_std")   # density noise in training renders
    white_bkgd: bool = declared("white_bkgd")          # composite onto white
    chunk: int = declared("chunk")                     # rays per render call
    netchunk: int = declared("netchunk")               # points per MLP call


@dataclass(frozen=True)
class LoggingOptions:
    step_log_print: int = declared("step_log_print")   # progress-bar refresh period
    step_log_tfb: int = declared("step_log_tfb")       # TensorBoard scalar period
    step_save_ckpt: int = declared("step_save_ckpt")   # checkpoint period
    step_val: int = declared("step_val")               # test-view render period
    step_vis_train: int = declared("step_vis_train")   # training-view render period


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    n_iters: int = declared("N_iters")                 # last step (train.N_iters or --N_iters; 0 for modes that do not train)
    n_rays: int = declared("N_rays")                   # rays per step
    lrate: float = declared("lrate")                   # initial learning rate
    lrate_decay: float = declared("lrate_decay")       # steps for a 10x decay
    wgt_img: float = declared("wgt_img")               # weight of the photometric loss
    batching: str = "batching"                         # ray sampler: batching | no_batching | fixed | unmasked (from 4 flags)
    fix_density: bool = declared("fix_density")        # freeze alpha_linear of both networks
    load_on_cpu: bool = declared("load_on_cpu")        # gather rays from host memory
    keep_ckpts: Optional[int] = declared("keep_ckpts")   # keep the newest N checkpoints (+ the final one); None = all
    cuda_graph: bool = declared("no_cuda_graph", lambda v: not v)   # on CUDA, capture the step as a CUDA graph where possible
    logging: LoggingOptions = field(default_factory=LoggingOptions)


@dataclass(frozen=True)
class ShapingOptions:
    target: str = "2d"                                 # Jacobians of pixels (2d) or back-projected points (3d)
    subset: str = "rgb"                                # shaped parameters (models.jacobians registry)
    supervision: str = "features"                      # positives from: features | labels | alternate
    start: int = declared("contrastive_starting_step")
    every: int = declared("contrastive_step")
    label_step: int = declared("finetune_label_step")  # with --sample_alter
    wgt_contrastive: float = declared("wgt_contrastive")   # weight of the contrastive term
    wgt_gradient: float = declared("wgt_gradient")     # weight of the Jacobian-norm term
    pos_threshold: float = declared("pos_threshold")   # initial similarity threshold for positives
    nocs_pos_threshold: float = declared("nocs_pos_threshold")   # threshold on rendered NOCS similarity
    adaptive_threshold: bool = declared("adaptive_threshold")    # adapt the threshold to the positive ratio
    pos_ratio_lower: float = declared("pos_ratio_lower")         # adaptive: lower positive ratio
    pos_ratio_upper: float = declared("pos_ratio_upper")         # adaptive: upper positive ratio
    pos_threshold_lower: float = declared("pos_threshold_lower")   # adaptive: lowest threshold
    pos_threshold_upper: float = declared("pos_threshold_upper")   # adaptive: highest threshold
    pos_order: bool = declared("pos_order")            # single positive: the most similar ray
    dot_product: bool = declared("nce_dot_product")    # raw dot product instead of cosine
    absolute: bool = declared("contrastive_abs")       # absolute cosine
    norm_loss: bool = declared("gradient_norm_loss")   # the Jacobian-norm term (also implied by --nce_dot_product)
    random_channel: bool = declared("random_channel")  # Jacobian of one random colour channel per ray
    concat_color: bool = declared("concat_color")      # append colour to the supervision feature
    spatial: Optional[str] = None                      # None | xyz (--spatial) | embedding (--spatial_embedding)
    render_nocs: bool = declared("render_nocs")        # NOCS similarity as an extra positive condition
    unmasked: bool = False                             # draw rays only from frames that keep labels (2 flags)
    lr_schedule: str = declared("shaping_lr")          # from --ckpt_path: restart (the original's) | continue its schedule
    optimizer_state: str = declared("shaping_optimizer")   # from --ckpt_path: fresh (the original's) | restore its Adam state


@dataclass(frozen=True)
class UserLabelOptions:
    """The user's own labels (datasets/clicks.py `with_user_labels`); given, they are the seeds
    instead of labels simulated from the ground truth."""
    clicks: Optional[str] = declared("clicks")         # YAML/JSON file of {frame, x, y, label}
    scribbles: Optional[str] = declared("scribbles")   # folder of painted label PNGs

    @property
    def given(self) -> bool:
        return bool(self.clicks or self.scribbles)


@dataclass(frozen=True)
class SeedOptions:
    seed_dir: str = ""                                 # where seeds are written / read (default <save_dir>/seeds)
    sparse_views: bool = declared("sparse_views")      # labels on a subset of training frames
    sparse_ratio: float = declared("sparse_ratio")     # fraction of training frames whose labels are dropped
    label_map_ids: Tuple[int, ...] = declared("label_map_ids")   # global ids of the labelled frames
    random_sample: bool = declared("random_sample")    # random instead of evenly spaced labelled frames
    label_propagation: bool = declared("label_propagation")   # simulated clicks / regions
    partial_perc: float = declared("partial_perc")     # 0: one click per class; p: p-percent regions
    user_click: bool = declared("user_click")          # num_click random pixels per class
    num_click: int = declared("num_click")             # clicks per class with --user_click
    visualise_save: bool = declared("visualise_save")  # write the seeds
    load_saved: bool = declared("load_saved")          # read seeds written earlier
    instance: bool = declared("test_instance")         # instance ids instead of classes
    rng_seed: Optional[int] = declared("seed")         # --seed, recorded in seeds.json
    user: UserLabelOptions = field(default_factory=UserLabelOptions)   # --clicks / --scribbles


@dataclass(frozen=True)
class ExportOptions:
    """--label_all_frames [DIR]: labels of every frame at its own resolution (propagation/export.py)."""
    out_dir: str                                       # DIR (from --label_all_frames; default <save_dir>/all_frames)
    upsample: str = declared("label_upsample")         # guided | nearest
    frames: Optional[Tuple[int, ...]] = None           # global frame ids to label; None = every frame (no flag)
    workers: int = 2                                   # PNG writer threads (no flag)
    progress: bool = True                              # the progress bar (no flag)


@dataclass(frozen=True)
class PropagationOptions:
    kind: str = "2d"                                   # 2d | 3d (the mode)
    rule: str = "mean_gradient"                        # direction rule (propagation.directions registry)
    instance: bool = declared("test_instance")
    train_agg: bool = declared("train_agg")            # train the response aggregator
    agg_steps: int = declared("agg_steps")             # aggregator steps
    normalize_2d: bool = declared("normalize_2d")      # normalise 2D responses per direction
    no_abs: bool = declared("no_abs")                  # signed responses
    random_channel: bool = declared("random_channel")  # one random colour channel per label
    merge_instance: bool = declared("merge_instance")  # one response channel per direction
    num_comb: int = declared("num_comb")               # adaptive selection: combinations per round
    num_iters: int = declared("num_iters")             # adaptive selection: rounds
    n_clusters: int = declared("n_clusters")           # --gradient_kmeans clusters
    perturb_t: float = declared("perturb_t")           # perturbation step
    noisy: bool = declared("noisy_propagation")        # training-mode renders
    visualize_gradients: bool = declared("visualize_gradients")   # write the k-means pixels
    spatial: bool = declared("spatial")                # weight 2D responses by distance to the seeds
    export: Optional[ExportOptions] = None             # --label_all_frames: label every frame too


@dataclass(frozen=True)
class EditOptions:
    n_pixels: int = declared("N_rays")                 # edits, one per sampled pixel
    sample_fixed: bool = declared("sample_fixed")      # view 0 and evenly spaced pixels
    perturb_t: float = declared("perturb_t")           # step along the gradient
    colour: Tuple[int, int, int] = (default("perturb_r"), default("perturb_g"), default("perturb_b"))
    t_iter: bool = declared("t_iter")                  # sweep t = 0.00 .. 0.99
    no_abs: bool = declared("no_abs")                  # signed heat maps
    noisy: bool = declared("noisy_propagation")


@dataclass(frozen=True)
class SemanticOptions:
    """The Semantic-NeRF baseline (--semantic_nerf / --semantic_finetune, docs/SEMANTIC_NERF.md);
    its seeds and label space (--test_instance) are RunOptions.seeds."""
    protocol: str = "joint"               # joint: NeRF + heads from scratch; finetune: heads on a frozen --ckpt_path
    wgt_sem: float = declared("wgt_sem")  # weight of the label cross-entropy (coarse + fine)
    sampler: str = declared("semantic_sampler")   # frame (Semantic-NeRF's) | pooled | labelled


@dataclass(frozen=True)
class RunOptions:
    mode: str                             # a key of main.MODES
    save_dir: str                         # output folder
    data: DataOptions
    model: ModelOptions
    train: TrainOptions
    ckpt_path: Optional[str] = declared("ckpt_path")   # checkpoint to load
    resume: bool = declared("resume")     # continue the checkpoint's run (latest in save_dir if no ckpt_path)
    overwrite: bool = declared("overwrite")   # clear save_dir's earlier run first (its seeds/ kept)
    seed: Optional[int] = declared("seed")    # seeds every random draw; None = unseeded
    gpu: str = declared("gpu")            # CUDA device index
    precision: Precision = declared("precision", PRECISIONS.__getitem__)   # what runs on CUDA (utils/precision.py)
    test_viz_factor: int = declared("test_viz_factor")   # down-scaling of test renders
    shaping: Optional[ShapingOptions] = None
    seeds: Optional[SeedOptions] = None
    propagation: Optional[PropagationOptions] = None
    edit: Optional[EditOptions] = None
    semantic: Optional[SemanticOptions] = None
    notes: Tuple[str, ...] = ()           # lines main.py prints at start (warning: / note: ...)
    config: Mapping = field(default_factory=dict, compare=False, repr=False)   # the resolved YAML
