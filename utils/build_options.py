"""The merged flags + YAML turned into `RunOptions`, every value checked before any data is read.

`build_options` is called once, by main.py, on the merged configuration (every original flag, its
default included, already copied over the YAML keys of the same name in `experiment`, `train` and
`render`). Values are read by declaration (`utils.declarations.Values`: type, range, choices and
default come from the option table); what is checked here is what one declaration cannot say:
flag combinations and the options of the chosen mode. A bad value raises `InputError` naming the
flag or the YAML key.

The registries above utils (modes, Jacobian subsets, direction rules, loaders) are passed in by
main.py, so this module imports nothing from the packages above it.
"""
import dataclasses
import math
import os
from typing import Mapping, Optional, Sequence

from utils.declarations import Option, OptionGroup, Values
from utils.errors import InputError, NotSupportedError
from utils.modes import Mode, select_mode
from utils.options import (DataOptions, EditOptions, ExportOptions, LoggingOptions, ModelOptions, PropagationOptions,
                           RunOptions, SeedOptions, SemanticOptions, ShapingOptions, TrainOptions, UserLabelOptions)
from utils.precision import PRECISIONS


def build_options(config: Mapping, options: Mapping[str, Option], modes: Mapping[str, Mode],
                  subset_flags: Mapping[str, str], rule_flags: Sequence[str],
                  loaders: Mapping[str, Optional[OptionGroup]], given=None) -> RunOptions:
    """RunOptions of the merged `config`, every value validated.

    options: the option table in force (utils.option_table.OPTIONS plus the registries' flags);
    modes: main.MODES; subset_flags: flag -> Jacobian subset name and rule_flags: the direction-rule
    flags, both in the original's precedence order; loaders: dataset type -> its own OptionGroup;
    given: the flags given on the command line (errors of values from the YAML then name the key).
    Every value the config holds is checked, also those the chosen mode does not read.
    """
    v = Values(config, options, given)
    v.check_all()
    save_dir = v.get("save_dir")
    mode = select_mode(v.is_set, modes)
    trains = modes[mode].trains
    ckpt_path = v.get("ckpt_path")
    if not trains and not ckpt_path:
        raise InputError(f"--{mode} needs --ckpt_path (the original silently starts training instead)")
    resume = v.get("resume")
    if resume and not trains:
        raise InputError(f"--resume continues a training run; it has no meaning with --{mode}")
    overwrite = v.get("overwrite")
    if resume and overwrite:
        raise InputError("--resume and --overwrite are exclusive (continue the run in --save_dir, or clear it)")
    seed = v.get("seed")

    data = _data_options(v, loaders)
    if v.is_set("gt_feature_sim") and data.features is None:
        raise InputError("--gt_feature_sim needs descriptors: add --load_dino (or --load_lseg)")
    model = _model_options(v)
    shaping = _shaping_options(v, subset_flags) if mode == "shape" else None
    if shaping is not None and not ckpt_path and not resume:
        _check_fine_tune(shaping)
    train = _train_options(v, trains, shaping)
    test_viz_factor = v.get("test_viz_factor")
    if data.height // test_viz_factor < 1 or data.width // test_viz_factor < 1:
        raise InputError(f"--test_viz_factor {test_viz_factor}: larger than the image "
                         f"({data.width}x{data.height})")

    seeds = None
    if modes[mode].seeds or (shaping is not None and (shaping.supervision != "features" or shaping.unmasked)):
        seeds = _seed_options(v, save_dir, seed)
    elif v.is_set("clicks") or v.is_set("scribbles"):
        flag = "--clicks" if v.is_set("clicks") else "--scribbles"
        what = "Jacobi shaping with --gt_feature_sim" if mode == "shape" else f"--{mode}" if modes[mode].flags \
            else "plain NeRF training"
        raise InputError(f"{flag} gives the labels that --propagate_2d/--propagate_3d, --semantic_nerf and "
                         f"label-supervised shaping (--sample_semantic, --from_label) start from; {what} uses no "
                         "labels")
    propagation = _propagation_options(v, mode, subset_flags, rule_flags, save_dir) \
        if mode in ("propagate_2d", "propagate_3d") else None
    if propagation is None and (v.is_set("label_all_frames") or _given(v, "label_upsample")):
        flag = "--label_all_frames" if v.is_set("label_all_frames") else "--label_upsample"
        raise InputError(f"{flag} labels every frame after a propagation; it needs --propagate_2d or --propagate_3d")
    edit = _edit_options(v, subset_flags) if mode == "perturb_gradient" else None
    semantic = _semantic_options(v, ckpt_path, resume) if mode == "semantic_nerf" else None
    notes = ()
    if semantic is not None and data.training_mode:
        # a comparison is scored on the test split; frame 0 is a training view (and a scene loaded
        # without its test frames can number its classes differently from the seeds' scene)
        data = dataclasses.replace(data, training_mode=False)
        notes += ("note: --training_mode is ignored by --semantic_nerf: its labels are scored on the scene's test "
                  "split, as every other method's",)
    if v.is_set("load_saved") and v.is_set("visualise_save"):
        raise InputError("--load_saved and --visualise_save are exclusive (load seeds, or make and save them)")
    _check_label_map_ids(v)

    return RunOptions(mode=mode, save_dir=save_dir, data=data, model=model, train=train, ckpt_path=ckpt_path,
                      resume=resume, overwrite=overwrite, seed=seed, gpu=v.get("gpu"),
                      precision=PRECISIONS[v.get("precision")], test_viz_factor=test_viz_factor, shaping=shaping,
                      seeds=seeds, propagation=propagation, edit=edit, semantic=semantic, notes=notes,
                      config=config)


def _depth_range(v):
    value = v.raw("depth_range")
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"render.depth_range {value!r}: expected [near, far]")
    try:
        near, far = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise InputError(f"render.depth_range {value!r}: expected two numbers [near, far]") from None
    if not (math.isfinite(near) and math.isfinite(far)) or near < 0 or near >= far:
        raise InputError(f"render.depth_range {value!r}: expected 0 <= near < far")
    return near, far


def _data_options(v, loaders):
    near, far = _depth_range(v)
    dataset_type = v.get("dataset_type")
    dataset_dir = v.get("dataset_dir")
    if v.is_set("load_dino") and v.is_set("load_lseg"):
        raise InputError("--load_dino and --load_lseg are exclusive")
    convention = v.get("convention")
    group = loaders.get(dataset_type)
    loader = None
    if group is not None:       # the loader's own options, read only when it is chosen
        why = f" for --dataset_type {dataset_type}"
        loader = group.values(**{o.name: v.get(o.name, why=why) for o in group.options})
    return DataOptions(
        dataset_type=dataset_type, dataset_dir=dataset_dir, width=v.get("width"), height=v.get("height"),
        training_mode=v.get("training_mode"), load_dino=v.get("load_dino"), load_lseg=v.get("load_lseg"),
        high_res_dino=v.get("high_res_dino"), feature_dim=v.get("feature_dim"), load_on_cpu=v.get("load_on_cpu"),
        near=near, far=far, convention=convention, loader=loader)


def _model_options(v):
    if not v.get("use_viewdirs"):
        raise NotSupportedError("render.use_viewdirs: false is not supported (the shaped layer "
                                "rgb_linear exists only in the view-dependent network)")
    n_importance = v.get("N_importance")
    if n_importance <= 0:
        raise NotSupportedError("--N_importance 0 is not supported: shaping and propagation act on "
                                "the fine network (the original crashes here too)")
    n_samples = v.get("N_samples")
    if n_samples < 3:
        raise NotSupportedError("--N_samples must be at least 3 (importance sampling needs inner bins)")
    names = ("netdepth", "netwidth", "netdepth_fine", "netwidth_fine", "multires", "multires_views", "i_embed",
             "perturb", "raw_noise_std", "white_bkgd", "chunk", "netchunk")
    return ModelOptions(n_samples=n_samples, n_importance=n_importance, **{k: v.get(k) for k in names})


def _train_options(v, trains, shaping):
    n_iters = v.get("N_iters", required=trains, why=" to train")   # checked in every mode, as before
    unmasked = v.is_set("from_unmasked_only") or (shaping is not None and shaping.unmasked)
    batching = ("fixed" if v.is_set("sample_fixed") else "unmasked" if unmasked
                else "no_batching" if v.is_set("no_batching") else "batching")
    logging = LoggingOptions(**{f.name: v.get(f.name) for f in dataclasses.fields(LoggingOptions)})
    return TrainOptions(
        n_iters=0 if n_iters is None else n_iters, n_rays=v.get("N_rays"), lrate=v.get("lrate"),
        lrate_decay=v.get("lrate_decay"), wgt_img=v.get("wgt_img"), batching=batching,
        fix_density=v.get("fix_density"), load_on_cpu=v.get("load_on_cpu"), keep_ckpts=v.get("keep_ckpts"),
        cuda_graph=not v.get("no_cuda_graph"), logging=logging)


def _shaping_flag(v):
    """The flag that chose Jacobi shaping (messages name it)."""
    return next((f"--{f}" for f in ("contrastive_2d", "contrastive_3d", "from_label") if v.is_set(f)), "shaping")


def supervision_mode(v):
    """'features' | 'labels' | 'alternate' from the supervision flags (docs/SHAPING.md)."""
    feats, labels = v.is_set("gt_feature_sim"), v.is_set("sample_semantic")
    if v.is_set("sample_alter"):
        return "alternate"
    if feats and labels:
        raise InputError("--gt_feature_sim and --sample_semantic both choose the positives; pass one, "
                         "or --sample_alter to alternate between them")
    if feats:
        return "features"
    if labels or v.is_set("from_label"):
        return "labels"
    raise InputError(f"{_shaping_flag(v)}: shaping needs a supervision for positives: --gt_feature_sim (descriptor "
                     "similarity, the paper's) or --sample_semantic / --from_label (ground-truth labels, the oracle)")


def _shaping_options(v, subset_flags):
    every = v.get("contrastive_step")
    subset = next((name for flag, name in subset_flags.items() if v.is_set(flag)), None)
    if subset is None:
        raise InputError(f"{_shaping_flag(v)}: shaping needs the shaped parameters: "
                         + ", ".join(f"--{f}" for f in subset_flags) + " (--rgb_layer is the paper's)")
    mode = supervision_mode(v)
    uses_features, uses_labels = mode in ("features", "alternate"), mode in ("labels", "alternate")
    extras = [f for f in ("spatial", "spatial_embedding", "concat_color", "render_nocs") if v.is_set(f)]
    if extras and not uses_features:
        raise InputError(f"--{extras[0]} modifies descriptor similarities; with label supervision it has "
                         "no effect (add --gt_feature_sim or --sample_alter)")
    if v.is_set("render_nocs") and (v.is_set("spatial") or v.is_set("spatial_embedding")):
        raise InputError("--render_nocs replaces --spatial/--spatial_embedding (the original ignores them); "
                         "pass one of them")
    if uses_features and not (v.is_set("load_dino") or v.is_set("load_lseg")):
        what = "--sample_alter alternates descriptor and label supervision" if mode == "alternate" \
            else "--gt_feature_sim"
        raise InputError(f"{what}: it needs descriptors; add --load_dino (or --load_lseg)")
    lower, upper = v.get("pos_ratio_lower"), v.get("pos_ratio_upper")
    if lower > upper:
        raise InputError(f"--pos_ratio_lower {lower} is above --pos_ratio_upper {upper}")
    t_lower, t_upper = v.get("pos_threshold_lower"), v.get("pos_threshold_upper")
    if t_lower > t_upper:
        raise InputError(f"--pos_threshold_lower {t_lower} is above --pos_threshold_upper {t_upper}")
    unmasked = v.is_set("from_unmasked_only") or (v.is_set("from_unmasked") and uses_labels)
    # the label step matters (and is checked) only when supervision alternates
    label_step = v.get("finetune_label_step") if mode == "alternate" else ShapingOptions.label_step
    return ShapingOptions(
        target="3d" if v.is_set("contrastive_3d") and not v.is_set("contrastive_2d") else "2d",
        subset=subset, supervision=mode, start=v.get("contrastive_starting_step"), every=every,
        label_step=label_step, wgt_contrastive=v.get("wgt_contrastive"), wgt_gradient=v.get("wgt_gradient"),
        pos_threshold=v.get("pos_threshold"), nocs_pos_threshold=v.get("nocs_pos_threshold"),
        adaptive_threshold=v.get("adaptive_threshold"), pos_ratio_lower=lower, pos_ratio_upper=upper,
        pos_threshold_lower=t_lower, pos_threshold_upper=t_upper, pos_order=v.get("pos_order"),
        dot_product=v.get("nce_dot_product"), absolute=v.get("contrastive_abs"),
        norm_loss=v.get("gradient_norm_loss") or v.get("nce_dot_product"),
        random_channel=v.get("random_channel"), concat_color=v.get("concat_color"),
        spatial="embedding" if v.is_set("spatial_embedding") else "xyz" if v.is_set("spatial") else None,
        render_nocs=v.get("render_nocs"), unmasked=unmasked, lr_schedule=v.get("shaping_lr"),
        optimizer_state=v.get("shaping_optimizer"))


def _check_fine_tune(shaping):
    """Shaping from scratch (no --ckpt_path) has no schedule or Adam state to continue."""
    for flag, value, default in (("shaping_lr", shaping.lr_schedule, "restart"),
                                 ("shaping_optimizer", shaping.optimizer_state, "fresh")):
        if value != default:
            raise InputError(f"--{flag} {value} takes the schedule and the optimizer state of --ckpt_path (the "
                             "plain NeRF's checkpoint); give it, or drop the flag")


def _seed_options(v, save_dir, seed):
    names = ("sparse_views", "sparse_ratio", "label_map_ids", "random_sample", "label_propagation", "partial_perc",
             "user_click", "num_click", "visualise_save", "load_saved")
    return SeedOptions(seed_dir=v.get("seed_dir") or os.path.join(save_dir, "seeds"),
                       instance=v.get("test_instance"), rng_seed=seed, user=_user_labels(v),
                       **{k: v.get(k) for k in names})


# Flags that make seeds from the ground truth (or read saved ones): no meaning next to the user's labels.
SIMULATED_SEED_FLAGS = ("sparse_views", "label_map_ids", "label_propagation", "user_click", "load_saved",
                        "test_instance")


def _user_labels(v):
    """--clicks FILE / --scribbles DIR: present, and not mixed with simulated seeds."""
    user = UserLabelOptions(clicks=v.get("clicks"), scribbles=v.get("scribbles"))
    if not user.given:
        return user
    flag = "--clicks" if user.clicks else "--scribbles"
    for other in SIMULATED_SEED_FLAGS:
        if v.is_set(other):
            why = ("clicks and scribbles label semantic classes, not instances" if other == "test_instance" else
                   "your labels replace the seeds simulated from the ground truth (or saved by an earlier run)")
            raise InputError(f"{flag} and --{other} are exclusive: {why}")
    if user.clicks and not os.path.isfile(user.clicks):
        what = "is a folder, not a file" if os.path.isdir(user.clicks) else "does not exist"
        raise InputError(f"--clicks {user.clicks} {what} (expected a YAML or JSON file of clicks "
                         "{frame, x, y, label}, docs/OWN_SCENE.md)")
    if user.scribbles and not os.path.isdir(user.scribbles):
        what = "is a file, not a folder" if os.path.isfile(user.scribbles) else "does not exist"
        raise InputError(f"--scribbles {user.scribbles} {what} (expected a folder of painted label PNGs named "
                         "like the frames)")
    return user


def _given(v, name):
    """Whether option `name` has a value in the merged config (given, or in the YAML), default aside."""
    return (v.config.get(v.options[name].section) or {}).get(name) is not None


def _export_options(v, save_dir):
    """--label_all_frames [DIR] (True without DIR: <save_dir>/all_frames) and --label_upsample."""
    value = v.raw("label_all_frames")
    if value is None or value is False:
        if _given(v, "label_upsample"):
            raise InputError("--label_upsample sets how --label_all_frames upsamples; add --label_all_frames")
        return None
    if value is True:
        out_dir = os.path.join(save_dir, "all_frames")
    elif isinstance(value, str) and value.strip():
        out_dir = value
    else:
        raise InputError(f"--label_all_frames {value!r}: expected a folder (or nothing: <save_dir>/all_frames)")
    if v.is_set("test_instance"):
        raise InputError("--label_all_frames writes semantic classes; --test_instance is not supported with it")
    return ExportOptions(out_dir=out_dir, upsample=v.get("label_upsample"))


def _check_label_map_ids(v):
    """--label_map_ids chooses the frames of dense label maps; elsewhere it would be ignored."""
    ids = v.get("label_map_ids")
    if not ids:
        return
    clicks = next((f for f in ("label_propagation", "user_click") if v.is_set(f)), None)
    if clicks:
        raise InputError(f"--label_map_ids {' '.join(map(str, ids))} does not apply to click seeds (--{clicks}): the "
                         "clicked frames are those --sparse_ratio keeps; drop --label_map_ids, or --" + clicks)
    if not v.is_set("sparse_views"):
        raise InputError(f"--label_map_ids {' '.join(map(str, ids))} needs --sparse_views (without it every "
                         "training frame keeps its labels)")


def _semantic_options(v, ckpt_path, resume):
    finetune = v.is_set("semantic_finetune")
    if finetune and not ckpt_path and not resume:
        raise InputError("--semantic_finetune trains semantic heads on a trained NeRF, frozen: give its checkpoint "
                         "with --ckpt_path (e.g. a plain NeRF run's <save_dir>/checkpoints/200000.ckpt)")
    sampler = v.get("semantic_sampler")
    if sampler != "pooled":
        moved = [f for f in ("no_batching", "sample_fixed", "from_unmasked_only") if v.is_set(f)]
        if moved:
            raise InputError(f"--{moved[0]} chooses the plain trainer's rays; the baseline draws them with "
                             f"--semantic_sampler {sampler}: add --semantic_sampler pooled to use it")
    return SemanticOptions(protocol="finetune" if finetune else "joint", wgt_sem=v.get("wgt_sem"), sampler=sampler)


def _require_rgb_layer(v, mode, subset_flags):
    if v.is_set("rgb_layer"):
        return
    other = [f"--{f}" for f in subset_flags if f != "rgb_layer" and v.is_set(f)]
    if other:
        raise NotSupportedError(f"--{mode} with {other[0]}: propagation perturbs only the fine rgb_linear "
                                "weight; pass --rgb_layer (the original crashes on the other layers)")
    raise InputError(f"--{mode} needs --rgb_layer (the shaped layer whose perturbations propagate labels)")


def _propagation_options(v, mode, subset_flags, rule_flags, save_dir):
    _require_rgb_layer(v, mode, subset_flags)
    rule = next((r for r in rule_flags if v.is_set(r)), None)
    if rule is None:
        raise InputError(f"--{mode} needs a direction rule: " + ", ".join(f"--{r}" for r in rule_flags)
                         + " (--mean_gradient for sparse clicks, --adaptive_selection for dense labels)")
    if v.is_set("train_agg") and rule != "adaptive_selection":
        raise InputError("--train_agg needs --adaptive_selection (the aggregator is trained on the selected "
                         "directions' responses, as in the original)")
    if v.is_set("spatial") and mode == "propagate_3d":
        raise NotSupportedError("--spatial with --propagate_3d is not supported (the original crashes on a "
                                "shape mismatch); use it with --propagate_2d")
    if v.is_set("spatial") and v.is_set("train_agg"):
        raise InputError("--spatial cannot be combined with --train_agg (the original multiplies an empty "
                         "list there); drop one of them")
    names = ("train_agg", "agg_steps", "normalize_2d", "no_abs", "random_channel", "merge_instance", "num_comb",
             "num_iters", "n_clusters", "perturb_t", "visualize_gradients", "spatial")
    return PropagationOptions(kind="2d" if mode == "propagate_2d" else "3d", rule=rule,
                              instance=v.get("test_instance"), noisy=v.get("noisy_propagation"),
                              export=_export_options(v, save_dir), **{k: v.get(k) for k in names})


def _edit_options(v, subset_flags):
    _require_rgb_layer(v, "perturb_gradient", subset_flags)
    colour = tuple(v.get(k) for k in ("perturb_r", "perturb_g", "perturb_b"))
    if v.is_set("t_iter"):
        colour = (255, 255, 255)
    return EditOptions(n_pixels=v.get("N_rays"), sample_fixed=v.get("sample_fixed"), perturb_t=v.get("perturb_t"),
                       colour=colour, t_iter=v.get("t_iter"), no_abs=v.get("no_abs"), noisy=v.get("noisy_propagation"))
