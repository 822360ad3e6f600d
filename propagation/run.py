"""Entry point of the propagation modes of main.py (spec 5, 6, 7.1).

    run_mode('propagate_2d' | 'propagate_3d' | 'perturb_gradient', settings, scene, renderer,
             save_dir, rng)

Flow of --propagate_2d / --propagate_3d:
  flags checked -> checkpoint loaded -> seeds (propagation/seeds.py, --seed_dir) -> Jacobians of
  the labelled pixels (one render pass) -> directions per label (--mean_gradient,
  --mean_response, --gradient_kmeans, --adaptive_selection) -> optional aggregator (--train_agg)
  -> every test view: one render pass, all responses, labels -> PNGs, video, metrics.
"""
import os
import time

import numpy as np
import torch

from models.rays import image_rays
from propagation.directions import direction_rule, gradient_pixel_images, label_directions, labelled_pixels, \
    pixel_jacobians
from propagation.outputs import DeviceConfusion, class_names, finish_metrics, summary_line, valid_colour_map, \
    write_view_outputs
from propagation.responses import cumulative_mixers, mixing_matrix, perturbation_matrices, view_responses
from propagation.testviews import TestPlan, propagate_views, scaled_labels
from training.checkpoints import apply_checkpoint, load_checkpoint
from utils.errors import InputError, NotSupportedError
from utils.image_io import write_png

OTHER_LAYERS = ("density_layer", "all_para", "pts_layer", "rgb_pts_layer")
MAX_SPATIAL_POINTS = 2048


def check_flags(exp, mode):
    """Flag combinations that cannot work, refused before any work is done."""
    flag = f"--{mode}"
    if not exp.get("rgb_layer"):
        other = [f"--{k}" for k in OTHER_LAYERS if exp.get(k)]
        if other:
            raise NotSupportedError(f"{flag} with {other[0]}: propagation perturbs only the fine rgb_linear "
                                    "weight; pass --rgb_layer (the original crashes on the other layers)")
        raise InputError(f"{flag} needs --rgb_layer (the shaped layer whose perturbations propagate labels)")
    if mode == "perturb_gradient":
        return
    if direction_rule(exp) is None:
        raise InputError(f"{flag} needs a direction rule: --mean_gradient (sparse clicks), --adaptive_selection "
                         "(dense), --gradient_kmeans or --mean_response")
    if exp.get("train_agg") and not exp.get("adaptive_selection"):
        raise InputError("--train_agg needs --adaptive_selection (the aggregator is trained on the selected "
                         "directions' responses, as in the original)")
    if exp.get("spatial") and mode == "propagate_3d":
        raise NotSupportedError("--spatial with --propagate_3d is not supported (the original crashes on a "
                                "shape mismatch); use it with --propagate_2d")
    if exp.get("spatial") and exp.get("train_agg"):
        raise InputError("--spatial cannot be combined with --train_agg (the original multiplies an empty "
                         "list there); drop one of them")
    for key in ("num_comb", "num_iters", "n_clusters"):
        if int(exp.get(key, 1)) < 1:
            raise InputError(f"--{key} {exp.get(key)}: expected at least 1")


def propagation_chunk(renderer):
    """Rays per render call: about 4M fine+coarse points on CUDA, 128k on the CPU."""
    s = renderer.opts.n_samples + renderer.opts.n_importance
    points = 1 << 22 if renderer.device.type == "cuda" else 1 << 17
    return max(256, points // s)


def run_mode(mode, settings, scene, renderer, save_dir, rng):
    exp = settings.exp
    check_flags(exp, mode)
    path = exp["ckpt_path"]
    data = load_checkpoint(path, map_location=renderer.device)
    apply_checkpoint(path, data, renderer)
    renderer.eval()
    step = int(data["global_step"])
    if mode == "perturb_gradient":
        from propagation.editing import run_perturb_gradient
        return run_perturb_gradient(settings, scene, renderer, save_dir, rng, path, step)
    return run_propagation("2d" if mode == "propagate_2d" else "3d", settings, scene, renderer, save_dir, rng,
                           path, step)


def load_seed_labels(settings, scene, save_dir, rng):
    """Seeds -> (seeds, labelled-frame indices, evaluation labels of the labelled frames [V,H,W])."""
    from propagation.seeds import check_seeds, make_seeds
    exp = settings.exp
    instance = bool(exp.get("test_instance"))
    scene.eval_labels(scene.train, instance)          # InputError when there are no instance maps
    labels_train = scene.train.instance if instance else scene.train.semantic
    labels_test = scene.test.instance if instance else scene.test.semantic
    seed_dir = exp.get("seed_dir") or os.path.join(save_dir, "seeds")
    colours = None if instance else scene.colour_map
    seeds = make_seeds(labels_train, exp, rng, seed_dir, train_ids=scene.train.ids, colour_map=colours)
    present = torch.unique(torch.cat([labels_train.reshape(-1), labels_test.reshape(-1)])).numpy()
    check_seeds(seeds, present)
    frames = np.flatnonzero(seeds.mask_ids)
    sem_train = torch.from_numpy(seeds.labels[frames].astype(np.int64) - 1)
    return seeds, frames, sem_train, seed_dir


def run_propagation(kind, settings, scene, renderer, save_dir, rng, ckpt_path, step):
    exp = settings.exp
    t_start = time.perf_counter()
    timings = {}
    instance = bool(exp.get("test_instance"))
    convention = exp.get("convention", "opencv")
    dev = renderer.device
    dtype = renderer.fine.rgb_linear.weight.dtype
    noisy = bool(exp.get("noisy_propagation"))
    merge = bool(exp.get("merge_instance"))
    no_abs = bool(exp.get("no_abs"))
    t = float(exp.get("perturb_t", 0.1))
    rule = direction_rule(exp)
    chunk = propagation_chunk(renderer)
    num_classes = (len(scene.instance_classes) if instance else scene.num_classes) - 1

    seeds, frames, sem_train, seed_dir = load_seed_labels(settings, scene, save_dir, rng)
    poses = scene.train.poses[torch.from_numpy(frames)]
    pixels = labelled_pixels(sem_train, poses, scene.intrinsics, scene.near, scene.far, convention)
    label_ids = pixels.label_ids
    num_labels = len(label_ids)
    names = class_names(scene, instance)
    print(f"[propagation] {kind.upper()} | seeds '{seeds.folder_name}' in {seed_dir} | labelled frame(s) "
          f"{[int(scene.train.ids[f]) for f in frames]} | {len(pixels.label_idx)} labelled pixels of "
          f"{num_labels} classes | directions: --{rule} | "
          f"{'training-mode (noisy) renders' if noisy else 'deterministic renders'}", flush=True)

    def view_rays_of_labelled():
        return torch.cat([image_rays(p.to(dev), scene.height, scene.width, scene.intrinsics, scene.near,
                                     scene.far, convention) for p in poses], 0)

    # ---- directions
    t0 = time.perf_counter()
    selection = None
    if rule == "adaptive_selection":
        from propagation.selection import adaptive_selection
        opts = dict(num_comb=exp.get("num_comb", 20), num_iters=exp.get("num_iters", 5), perturb_t=t,
                    no_abs=no_abs, random_channel=exp.get("random_channel"), noisy=noisy)
        dirs, selection = adaptive_selection(renderer, pixels, view_rays_of_labelled(), sem_train, num_classes,
                                             opts, rng, chunk)
    else:
        dirs, info = label_directions(renderer, pixels, rule, rng, train=noisy,
                                      random_channel=bool(exp.get("random_channel")),
                                      n_clusters=int(exp.get("n_clusters", 10)), chunk=chunk)
        if exp.get("visualize_gradients") and rule == "gradient_kmeans":
            for lid, img in gradient_pixel_images(pixels, info["chosen"], len(frames), scene.height,
                                                  scene.width).items():
                write_png(os.path.join(save_dir, f"{lid}_grad.png"), img)
    timings["directions"] = time.perf_counter() - t0
    M = perturbation_matrices(dirs.deltas, t, dtype=dtype, device=dev)
    label_ids_t = torch.as_tensor(label_ids, device=dev)
    owner = dirs.owner.to(dev)

    # ---- aggregator
    model, agg_info = None, None
    if exp.get("train_agg"):
        from propagation.aggregator import DEFAULT_STEPS, train_aggregator
        t0 = time.perf_counter()
        if kind == "2d":
            sets = selection["per_direction"][None] if merge else selection["cumulative"]
        else:
            mixers = ([torch.eye(dirs.count, dtype=dtype, device=dev)] if merge else
                      cumulative_mixers(owner, num_labels, int(exp.get("num_iters", 5)), dtype, dev))
            outs, _ = view_responses(renderer, view_rays_of_labelled(), M, mixers, "3d", no_abs, chunk, train=noisy)
            sets = torch.stack(outs, 0)
        lut = torch.full((num_classes + 1,), -1, dtype=torch.long)
        lut[torch.as_tensor(label_ids)] = torch.arange(num_labels)
        flat = sem_train.reshape(-1)
        targets = torch.where(flat >= 0, lut[flat.clamp(min=0, max=num_classes)], torch.full_like(flat, -1))
        steps = exp.get("agg_steps")
        steps = DEFAULT_STEPS if steps is None else int(steps)
        model, agg_info = train_aggregator(sets, targets.to(dev), num_labels, steps=steps, rng=rng, device=dev)
        print(f"[propagation] aggregator: {steps} steps on {agg_info['pixels']} labelled pixels x "
              f"{sets.shape[0]} response sets in {agg_info['seconds']:.1f} s, final loss "
              f"{agg_info['final_loss']:.4f}", flush=True)
        timings["aggregator"] = time.perf_counter() - t0

    # ---- test views
    factor = int(settings.render.get_num("test_viz_factor", 1))
    h, w = scene.height // factor, scene.width // factor
    gt = scaled_labels(scene.eval_labels(scene.test, instance), factor)
    plan = TestPlan(kind=kind, M=M, mixer=mixing_matrix(owner, num_labels, merge, dtype, dev),
                    channel_labels=label_ids_t[owner] if merge else label_ids_t, agg_labels=label_ids_t,
                    no_abs=no_abs, normalize_2d=bool(exp.get("normalize_2d")), noisy_2d=noisy,
                    aggregator=model, chunk=chunk)
    if exp.get("spatial"):
        plan.seed_points = spatial_seed_points(renderer, pixels, owner if merge else None, num_labels, rng, chunk)
    confusion = DeviceConfusion(num_classes, label_ids, dev)
    confusion_wo = DeviceConfusion(num_classes, label_ids, dev) if model is not None else None
    res = propagate_views(renderer, scene.test.poses, h, w, scene.intrinsics.scaled(factor), scene.near,
                          scene.far, plan, confusion, confusion_wo, gt, convention)
    timings["test_views"] = res.seconds

    # ---- outputs
    t0 = time.perf_counter()
    out_dir = save_dir if kind == "2d" else os.path.join(save_dir, "test_render")
    colours = valid_colour_map(scene, instance)
    gt_np = gt.numpy()
    labels = torch.stack(res.labels).cpu().numpy()
    write_view_outputs(out_dir, labels, gt_np, colours, "", write_gt=kind == "3d")
    if res.labels_wo:
        write_view_outputs(out_dir, torch.stack(res.labels_wo).cpu().numpy(), gt_np, colours, "_wo",
                           write_gt=False)
    timings["writing"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    metrics = confusion.metrics()
    wo = confusion_wo.metrics() if confusion_wo is not None else None
    metrics.update(
        mode=f"propagate_{kind}", checkpoint=ckpt_path, checkpoint_step=step, direction_rule=rule,
        label_space="instance" if instance else "semantic", seeds=seeds.folder_name, seed_dir=seed_dir,
        labelled_frames=[int(scene.train.ids[f]) for f in frames], given_classes=[int(c) for c in label_ids],
        given_class_names=[names[c] for c in label_ids if 0 <= c < len(names)],
        num_directions=dirs.count, perturb_t=t, deterministic=not noisy, test_views=int(len(scene.test)),
        resolution=[h, w], outputs=out_dir, class_names=names, timings=timings,
        device=str(dev))
    if selection is not None:
        metrics["adaptive_selection_round_miou"] = selection["round_miou"]
    if agg_info is not None:
        metrics["aggregator"] = agg_info
    title = f"{kind.upper()} propagation"
    table = finish_metrics(save_dir, metrics, wo, names, title)
    print(f"[propagation] {len(scene.test)} test views in {res.seconds:.2f} s "
          f"({res.seconds / max(1, len(scene.test)):.3f} s/view); outputs in {out_dir}")
    print(f"[propagation] {summary_line(metrics)}" + (f"\n[propagation] without aggregator: {summary_line(wo)}"
                                                      if wo is not None else ""))
    print(table, flush=True)
    return metrics


def spatial_seed_points(renderer, pixels, owner, num_labels, rng, chunk):
    """--spatial: 3D points of the labelled pixels (rendered depth along their rays), per label
    (or per direction channel with --merge_instance), at most MAX_SPATIAL_POINTS each."""
    _, depth = pixel_jacobians(renderer, pixels.rays, False, None, chunk)
    rays = pixels.rays.to(renderer.device)
    pts = rays[:, 0:3] + depth[:, None].to(rays.dtype) * rays[:, 3:6]
    per_label = []
    for l in range(num_labels):
        idx = pixels.of_label(l)
        if idx.numel() > MAX_SPATIAL_POINTS:
            idx = idx[torch.as_tensor(np.sort(rng.choice(idx.numel(), MAX_SPATIAL_POINTS, replace=False)))]
        per_label.append(pts[idx.to(pts.device)])
    if owner is None:
        return per_label
    return [per_label[int(o)] for o in owner.tolist()]
