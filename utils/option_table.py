"""The option table: every flag of main.py and every YAML key it reads, declared once.

Names, defaults and meanings of the flags are the original's; `keeps_yaml` marks this project's
flags (unset, they leave the YAML alone). The registries add their own flags in main.py (Jacobian
subsets into "shaped", direction rules into "rules", a loader's own options group; `--dataset_type`'s
choices are the loaders). Order: the --help order; the merged YAML follows `config.FLAG_ORDER`.
"""
from dataclasses import field

from utils.declarations import Option, int_like, option_table
from utils.precision import DEFAULT_PRECISION, PRECISIONS, precision_help

GROUPS = {
    "run": "run and output",
    "data": "data",
    "model": "model and rendering",
    "training": "training",
    "shaping": "Jacobi shaping (docs/SHAPING.md)",
    "shaped": "Jacobi shaping: the shaped parameters, the first given wins (models/jacobians.py)",
    "seeds": "seeds: the given labels (docs/PROPAGATION.md)",
    "propagation": "label propagation (docs/PROPAGATION.md)",
    "rules": "label propagation: the direction rule, the first given wins (propagation/directions.py)",
    "semantic": "Semantic-NeRF baseline: trained on the seeds (docs/SEMANTIC_NERF.md)",
    "editing": "scene editing along a pixel's gradient",
    "logging": "logging",
}


def _device_index(text):
    """--gpu: empty or CUDA device indices ('0'; '1,2' uses the first), checked on a CPU too."""
    parts = [p.strip() for p in str(text).split(",")] if str(text).strip() else []
    return None if all(p.isdigit() for p in parts) else "a CUDA device index such as 0 (empty: experiment.gpu, else 0)"


def _flag(name, type, default, help, group, **kw):
    return Option(name, type, default, help, group, **kw)


def _key(section, name, type, default, help, group, **kw):
    """A YAML key without a flag."""
    return Option(name, type, default, help, group, section=section, flag=False, **kw)


def _new(name, type, default, help, group, **kw):
    """A flag of this project: unset, it leaves the YAML key alone."""
    return Option(name, type, default, help, group, keeps_yaml=True, **kw)


B = bool
OPTIONS = option_table(
    # run and output
    _flag("config_file", str, "./configs/replica_room0_config.yaml", "YAML config file", "run"),
    _flag("save_dir", str, "", "the folder for checkpoints, renders and metrics", "run", required=True),
    _flag("ckpt_path", str, None, "checkpoint to load", "run"),
    _flag("resume", B, False, "continue a training run from its step and optimizer state: --ckpt_path, or the "
          "latest checkpoint in --save_dir", "run"),
    _new("overwrite", B, False, "clear --save_dir's earlier run first (its seeds/ folder is kept); without it such "
         "a folder is refused", "run"),
    _new("keep_ckpts", int, None, "keep the newest N checkpoints plus the final one (None: all)", "run", low=1),
    _flag("render_only", B, False, "render the test views of --ckpt_path and exit", "run"),
    _flag("gpu", str, "", "CUDA device index; ignored without CUDA", "run", check=_device_index),
    _new("seed", int, None, "seed every random draw; None = unseeded, as the original", "run", low=0),
    _new("precision", str, DEFAULT_PRECISION, precision_help(), "run", choices=tuple(PRECISIONS)),
    _new("no_cuda_graph", B, False, "on CUDA, run every training step eagerly (otherwise each step is one "
         "CUDA-graph replay where the configuration allows it; same arithmetic, docs/PERFORMANCE.md)", "run"),
    _flag("demo", B, False, "run the whole pipeline on the built-in synthetic scene", "run"),
    _key("experiment", "scene_file", str, None, "unused, kept for key compatibility", "run"),
    _key("experiment", "enable_depth", B, None, "unused, kept for key compatibility", "run"),
    _key("experiment", "endpoint_feat", B, None, "unused, kept for key compatibility", "run"),

    # data
    _flag("dataset_type", str, "replica", "dataset layout", "data"),
    _flag("training_mode", B, False, "test set = frame 0 only (test images not loaded)", "data"),
    _flag("load_dino", B, False, "load dino/dino_<i>.pth descriptors", "data"),
    _flag("load_lseg", B, False, "load lseg/lseg_<i>.pth descriptors (512-d)", "data"),
    _flag("high_res_dino", B, False, "read dino_1/ descriptors that are already H x W", "data"),
    _flag("feature_dim", int, 384, "descriptor width; PCA when smaller than the file's", "data", low=1),
    _flag("load_on_cpu", B, False, "keep images and descriptors in host memory, gather per batch", "data"),
    _key("experiment", "dataset_dir", str, None, "the scene folder", "data", required=True),
    _key("experiment", "width", int, None, "image width the frames are resized to", "data", required=True, low=1),
    _key("experiment", "height", int, None, "image height", "data", required=True, low=1),
    _key("experiment", "convention", str, "opencv", "camera axes of the poses", "data",
         choices=("opencv", "opengl")),
    _key("render", "depth_range", list, [0.1, 10.0], "[near, far] of every ray: the scene's depth range", "data",
         item=float),

    # model and rendering
    _flag("N_samples", int, 64, "coarse samples per ray", "model", section="render", low=1),
    _flag("N_importance", int, 128, "fine samples per ray", "model", section="render"),
    _flag("test_viz_factor", int, 1, "down-scaling of test/visualisation renders", "model", section="render", low=1),
    _key("model", "netdepth", int, None, "coarse trunk layers", "model", required=True, low=1),
    _key("model", "netwidth", int, None, "coarse trunk width", "model", required=True, low=1),
    _key("model", "netdepth_fine", int, None, "fine trunk layers", "model", required=True, low=1),
    _key("model", "netwidth_fine", int, None, "fine trunk width", "model", required=True, low=1),
    _key("model", "chunk", int, 1024 * 1024, "rays per render call", "model", low=1),
    _key("model", "netchunk", int, 1024 * 1024, "points per MLP call", "model", low=1),
    _key("render", "use_viewdirs", B, True, "view-dependent colour (false is not supported)", "model"),
    _key("render", "i_embed", int, 0, "-1: no positional encoding", "model"),
    _key("render", "multires", int, 10, "position encoding frequencies", "model", low=0),
    _key("render", "multires_views", int, 4, "view-direction encoding frequencies", "model", low=0),
    _key("render", "perturb", float, 1.0, "stratified jitter in training renders", "model", low=0.0),
    _key("render", "raw_noise_std", float, 1.0, "density noise in training renders", "model", low=0.0),
    _key("render", "white_bkgd", B, False, "composite onto white", "model"),

    # training
    _new("N_iters", int, None, "training steps", "training", section="train", required=True, low=1, parse=int_like),
    _flag("N_rays", int, 1024, "rays per training step (--perturb_gradient: edits)", "training", section="render",
          low=1),
    _flag("lrate", float, 5e-4, "initial learning rate", "training", section="train", positive=True),
    _flag("lrate_decay", float, 250e3, "steps for a 10x learning-rate decay", "training", section="train",
          positive=True, parse=int_like),
    _flag("wgt_img", float, 1, "weight of the photometric loss", "training", section="train"),
    _flag("no_batching", B, False, "take each batch from one random training image instead of all pixels of all "
          "images", "training", section="render"),
    _flag("fix_density", B, False, "freeze alpha_linear of both networks", "training"),
    _flag("sample_fixed", B, False, "rays (or --perturb_gradient pixels) from image 0, evenly spaced", "training"),
    _key("logging", "step_log_print", int, 1, "progress-bar refresh period", "logging", low=1),
    _key("logging", "step_log_tfb", int, 1, "TensorBoard scalar period", "logging", low=1),
    _key("logging", "step_save_ckpt", int, 100, "checkpoint period", "logging", low=1),
    _key("logging", "step_val", int, 5000, "test-view render period", "logging", low=1),
    _key("logging", "step_vis_train", int, 5000, "training-view render period", "logging", low=1),

    # Jacobi shaping
    _flag("contrastive_2d", B, False, "shape Jacobians of rendered pixel colours", "shaping"),
    _flag("contrastive_3d", B, False, "shape Jacobians of back-projected 3D points", "shaping"),
    _flag("from_label", B, False, "oracle: positives from ground-truth labels", "shaping"),
    _flag("contrastive_abs", B, False, "absolute cosine in the contrastive loss", "shaping"),
    _flag("wgt_contrastive", float, 0.1, "weight of the contrastive term", "shaping"),
    _flag("wgt_gradient", float, 0.1, "weight of the Jacobian-norm term", "shaping"),
    _flag("contrastive_step", int, 5000, "shaping term on steps divisible by this", "shaping", low=1),
    _flag("contrastive_starting_step", int, 10000, "shaping term from this step on", "shaping", low=0),
    _flag("gt_feature_sim", B, False, "positives from descriptor cosine similarity (the paper's)", "shaping"),
    _flag("sample_semantic", B, False, "positives from equal ground-truth labels", "shaping"),
    _flag("sample_alter", B, False, "alternate label and descriptor supervision", "shaping"),
    _flag("finetune_label_step", int, 2, "with --sample_alter: label steps are its multiples", "shaping", low=1),
    _flag("nce_dot_product", B, False, "raw dot product instead of cosine (adds the norm term)", "shaping"),
    _flag("gradient_norm_loss", B, False, "add the Jacobian-norm term mean (|J|-1)^2", "shaping"),
    _flag("pos_order", B, False, "single positive: the most similar ray", "shaping"),
    _flag("pos_threshold", float, 0.8, "similarity threshold for positives", "shaping"),
    _flag("neg_threshold", float, 0.8, "accepted for compatibility; unused, as in the original", "shaping"),
    _flag("adaptive_threshold", B, False, "adapt the threshold to keep the positive ratio in range", "shaping"),
    _flag("pos_ratio_upper", float, 0.15, "adaptive: upper positive ratio", "shaping", low=0.0, high=1.0),
    _flag("pos_threshold_upper", float, 0.9, "adaptive: highest threshold", "shaping"),
    _flag("pos_ratio_lower", float, 0.05, "adaptive: lower positive ratio", "shaping", low=0.0, high=1.0),
    _flag("pos_threshold_lower", float, 0.5, "adaptive: lowest threshold", "shaping"),
    _flag("concat_color", B, False, "append colour to the supervision feature", "shaping"),
    _flag("spatial", B, False, "shaping: append the 3D point to the descriptor; 2D propagation: weight responses "
          "by distance", "shaping"),
    _flag("spatial_embedding", B, False, "shaping: append the encoded 3D point to the descriptor", "shaping"),
    _flag("render_nocs", B, False, "extra positive condition on rendered NOCS similarity", "shaping"),
    _flag("nocs_pos_threshold", float, 0.9, "threshold of the NOCS condition", "shaping"),
    _flag("from_unmasked", B, False, "with label supervision: rays only from frames that keep labels", "shaping"),
    _flag("from_unmasked_only", B, False, "rays only from frames that keep labels", "shaping"),
    _flag("random_channel", B, False, "Jacobian of one random colour channel instead of the channel mean (shaping "
          "and propagation)", "shaping"),
    _new("shaping_lr", str, "restart", "learning rate of shaping from --ckpt_path: restart = --lrate at step 0 (the "
         "original's); continue = from the rate the checkpoint's run had reached, decayed by --lrate_decay (from a "
         "checkpoint of step P on the same flags: step s at lrate * 0.1^((P + s) / lrate_decay); docs/SHAPING.md)",
         "shaping", choices=("restart", "continue")),
    _new("shaping_optimizer", str, "fresh", "Adam state of shaping from --ckpt_path: fresh (the original's) or "
         "restore = the checkpoint's moments and step counters (docs/SHAPING.md)", "shaping",
         choices=("fresh", "restore")),

    # seeds
    _new("seed_dir", str, None, "folder of saved seeds (None: <save_dir>/seeds)", "seeds"),
    _flag("visualise_save", B, False, "save the generated seeds (to --seed_dir)", "seeds"),
    _flag("load_saved", B, False, "load seeds saved by an earlier --visualise_save run", "seeds"),
    _flag("sparse_views", B, False, "labels on a sparse subset of training frames", "seeds"),
    _flag("sparse_ratio", float, 0, "fraction of training frames whose labels are dropped", "seeds",
          low=0.0, high=1.0),
    _flag("label_map_ids", list, [], "global ids of the labelled frames (with --sparse_views, without click flags)",
          "seeds"),
    _flag("random_sample", B, False, "random instead of evenly spaced labelled frames", "seeds"),
    _flag("label_propagation", B, False, "replace label maps by simulated clicks/regions", "seeds"),
    _flag("partial_perc", float, 0, "0: one click per class; p: p-percent sub-regions", "seeds",
          low=0.0, high=100.0),
    _flag("user_click", B, False, "--num_click random pixels per class", "seeds"),
    _flag("num_click", int, 3, "clicks per class with --user_click", "seeds", low=1),
    _flag("test_instance", B, False, "propagate instance ids instead of semantic classes", "seeds"),
    _new("clicks", str, None, "your labels instead of simulated ones: a YAML/JSON file of {frame, x, y, label} "
         "clicks on training frames (docs/OWN_SCENE.md); checked before any work", "seeds"),
    _new("scribbles", str, None, "your labels instead of simulated ones: a folder of painted label PNGs named like "
         "the frames, class ids, 0 = unlabelled (with --clicks: both)", "seeds"),

    # label propagation
    _flag("propagate_2d", B, False, "propagate the seeds to every test view (rendered responses)", "propagation"),
    _flag("propagate_3d", B, False, "propagate the seeds to the 3D sample points", "propagation"),
    _flag("num_comb", int, 20, "adaptive selection: pixel draws per label per round", "propagation", low=1),
    _flag("num_iters", int, 5, "adaptive selection: rounds", "propagation", low=1),
    _flag("n_clusters", int, 10, "--gradient_kmeans: clusters per label", "propagation", low=1),
    _flag("train_agg", B, False, "train the response aggregator (needs --adaptive_selection)", "propagation"),
    _new("agg_steps", int, 200000, "aggregator training steps (the original's length)", "propagation", low=1,
         parse=int_like),
    _flag("merge_instance", B, False, "one response channel per direction instead of per label", "propagation"),
    _flag("normalize_2d", B, False, "3D: divide each label's rendered response by its maximum", "propagation"),
    _flag("no_abs", B, False, "signed responses instead of absolute ones", "propagation"),
    _flag("visualize_gradients", B, False, "--gradient_kmeans: write the kept pixels", "propagation"),
    # this project's, but written over the YAML like the original's flags (as it always was)
    _flag("noisy_propagation", B, False, "render propagation in training mode (noise, jitter) like the original; "
          "default deterministic", "propagation"),
    _flag("perturb_t", float, 0.1, "step along a direction (propagation and editing)", "propagation"),
    _new("label_all_frames", str, None, "also label every frame of the scene, at its own resolution, into DIR "
         "(given without DIR: <save_dir>/all_frames): labels/ (uint16 ids), labels_vis/, confidence/, "
         "classes.json, summary.md; resumable", "propagation", const=True),
    _new("label_upsample", str, "guided", "--label_all_frames: render grid to a frame's own pixels: guided (scores "
         "refined by a guided filter on the frame's grey levels) or nearest", "propagation",
         choices=("guided", "nearest")),

    # the Semantic-NeRF baseline
    _new("semantic_nerf", B, False, "train Semantic-NeRF (NeRF + semantic heads, jointly, from scratch) on the "
         "seeds, then label the test views in 2D and 3D (<save_dir>/semantic_2d, semantic_3d)", "semantic"),
    _new("semantic_finetune", B, False, "the cheap protocol: train only the semantic heads on the frozen NeRF of "
         "--ckpt_path (implies --semantic_nerf)", "semantic"),
    _new("wgt_sem", float, 4e-2, "weight of the label cross-entropy (Semantic-NeRF's Replica weight, "
         "models.semantic.WGT_SEM)", "semantic", positive=True),
    _new("semantic_sampler", str, "frame", "the baseline's training rays: frame = Semantic-NeRF's own sampler (one "
         "random training frame per step, N_rays pixels of it drawn with replacement); pooled = the plain trainer's "
         "(all pixels of all frames, or --no_batching etc.); labelled = only the labelled pixels (the fine-tune "
         "protocol's earlier sampler)", "semantic", choices=("frame", "pooled", "labelled")),

    # scene editing
    _flag("perturb_gradient", B, False, "edit the scene along --N_rays pixels' gradients", "editing"),
    _flag("perturb_r", int, 255, "red scale of the edit", "editing", low=0, high=255),
    _flag("perturb_g", int, 255, "green scale of the edit", "editing", low=0, high=255),
    _flag("perturb_b", int, 255, "blue scale of the edit", "editing", low=0, high=255),
    _flag("t_iter", B, False, "sweep t = 0.00 .. 0.99 with r = g = b = 255", "editing"),
)


def default(name):
    """Option `name`'s default as the dataclasses hold it."""
    return OPTIONS[name].value


def declared(name, convert=None):
    """A dataclass field filled from option `name`: its default is the option's (through `convert`),
    none for a required option; the link stays in the field's metadata (tests/test_options.py)."""
    meta = {"option": name, "convert": convert}
    opt = OPTIONS[name]
    if opt.required:
        return field(metadata=meta)
    return field(default=opt.value if convert is None else convert(opt.value), metadata=meta)
