"""--propagate_2d / --propagate_3d: `propagate(opts, scene, renderer, rng)`, main.py's entry.

Flow: checkpoint loaded -> seeds (datasets/seeds.py, in opts.seeds.seed_dir) -> labelled pixels
of the labelled frame(s) -> directions per label (the rule opts.propagation.rule, registry
propagation.directions.DIRECTION_RULES) -> optional aggregator (--train_agg) -> every test view:
one render pass, all responses, labels, confusion -> PNGs, video, metrics.json / metrics.md.
"""
import os
import time

import numpy as np
import torch

from datasets.seed_maps import seed_labels
from models.checkpoints import restore_checkpoint
from models.render_views import render_chunk_size
from propagation.aggregator import train_aggregator
from propagation.directions import RuleInputs, choose_directions, gradient_pixel_images
from propagation.export import export_classes, export_labels
from propagation.pixels import all_rays, labelled_pixels, pixel_jacobians
from propagation.responses import cumulative_mixers, mixing_matrix, perturbation_matrices, view_responses
from propagation.testviews import TestPlan, propagate_views
from utils.background import BackgroundWriter
from utils.errors import InputError
from utils.image_io import write_png
from utils.label_outputs import (ViewOutputWriter, class_names, finish_metrics, scaled_labels, seed_class_confusion,
                                 split_name, summary_line, valid_colour_map, view_set)

MAX_SPATIAL_POINTS = 2048
WRITERS = 4          # threads writing the test views' PNGs


def aggregator_targets(labels, label_ids, num_classes):
    """[V*H*W] long: the index into label_ids of every pixel's label, -1 where unlabelled."""
    num_labels = len(label_ids)
    lut = torch.full((num_classes + 1,), -1, dtype=torch.long)
    lut[torch.as_tensor(label_ids)] = torch.arange(num_labels)
    flat = labels.reshape(-1)
    return torch.where(flat >= 0, lut[flat.clamp(min=0, max=num_classes)], torch.full_like(flat, -1))


def propagate(opts, scene, renderer, rng):
    """Propagate the seeds to every test view (2D responses, or rendered 3D responses); write the
    label maps and metrics into opts.save_dir; return the metrics dict. With opts.propagation.export
    (--label_all_frames) every frame of the scene is labelled too (propagation/export.py)."""
    p = opts.propagation
    kind, save_dir, export = p.kind, opts.save_dir, p.export
    if export is not None and (scene.frames is None or scene.all_poses is None):
        raise InputError(f"--label_all_frames: the {opts.data.dataset_type} loader does not list the frames of "
                         f"{scene.root}")
    step = int(restore_checkpoint(opts.ckpt_path, renderer.eval())["global_step"])
    t_start = time.perf_counter()
    timings = {}
    dev = renderer.device
    dtype = renderer.fine.rgb_linear.weight.dtype
    chunk = render_chunk_size(renderer)
    num_classes = (len(scene.instance_classes) if p.instance else scene.num_classes) - 1

    seeds, frames, sem_train = seed_labels(opts.seeds, scene, rng)
    cams = scene.cameras(scene.train).subset(frames)
    pixels = labelled_pixels(sem_train, cams)
    label_ids = pixels.label_ids
    num_labels = len(label_ids)
    names = class_names(scene, p.instance)
    print(f"[propagation] {kind.upper()} | seeds '{seeds.folder_name}' in {opts.seeds.seed_dir} | labelled "
          f"frame(s) {[int(scene.train.ids[f]) for f in frames]} | {len(pixels.label_idx)} labelled pixels of "
          f"{num_labels} classes | directions: --{p.rule} | "
          f"{'training-mode (noisy) renders' if p.noisy else 'deterministic renders'}", flush=True)

    # ---- directions
    t0 = time.perf_counter()
    chosen = choose_directions(RuleInputs(renderer, pixels, cams, sem_train, num_classes, p, rng, chunk))
    dirs, selection = chosen.dirs, chosen.selection
    if p.visualize_gradients and chosen.kept_pixels is not None:
        for lid, img in gradient_pixel_images(pixels, chosen.kept_pixels, len(cams), cams.height,
                                              cams.width).items():
            write_png(os.path.join(save_dir, f"{lid}_grad.png"), img)
    timings["directions"] = time.perf_counter() - t0
    M = perturbation_matrices(dirs.deltas, p.perturb_t, dtype=dtype, device=dev)
    label_ids_t = torch.as_tensor(label_ids, device=dev)
    owner = dirs.owner.to(dev)

    # ---- aggregator (options guarantee adaptive selection, hence `selection`)
    model, agg_info = None, None
    if p.train_agg:
        t0 = time.perf_counter()
        if kind == "2d":
            sets = selection["per_direction"][None] if p.merge_instance else selection["cumulative"]
        else:
            mixers = ([torch.eye(dirs.count, dtype=dtype, device=dev)] if p.merge_instance else
                      cumulative_mixers(owner, num_labels, p.num_iters, dtype, dev))
            outs, _ = view_responses(renderer, all_rays(cams, dev), M, mixers, "3d", p.no_abs, chunk, train=p.noisy)
            sets = torch.stack(outs, 0)
        targets = aggregator_targets(sem_train, label_ids, num_classes)
        model, agg_info = train_aggregator(sets, targets.to(dev), num_labels, p.agg_steps, rng=rng, device=dev)
        print(f"[propagation] aggregator: {p.agg_steps} steps on {agg_info['pixels']} labelled pixels x "
              f"{sets.shape[0]} response sets in {agg_info['seconds']:.1f} s, final loss "
              f"{agg_info['final_loss']:.4f}", flush=True)
        timings["aggregator"] = time.perf_counter() - t0

    # ---- test views
    test_cams = scene.cameras(scene.test).scaled(opts.test_viz_factor)
    h, w = test_cams.height, test_cams.width
    scored = scene.has_labels or p.instance
    gt = scaled_labels(scene.eval_labels(scene.test, p.instance), opts.test_viz_factor) if scored else None
    if not scored:
        print(f"[propagation] metrics skipped: the scene has no ground-truth labels ({scene.root}); labels, "
              "overlays and confidence maps are still written", flush=True)
    plan = TestPlan(kind=kind, M=M, mixer=mixing_matrix(owner, num_labels, p.merge_instance, dtype, dev),
                    channel_labels=label_ids_t[owner] if p.merge_instance else label_ids_t,
                    agg_labels=label_ids_t, no_abs=p.no_abs, normalize_2d=p.normalize_2d, noisy_2d=p.noisy,
                    aggregator=model, chunk=chunk)
    if p.spatial:
        plan.seed_points = spatial_seed_points(renderer, pixels, owner if p.merge_instance else None, num_labels,
                                               rng, chunk)
    confusion = seed_class_confusion(num_classes, label_ids, dev) if scored else None
    confusion_wo = seed_class_confusion(num_classes, label_ids, dev) if (model is not None and scored) else None
    # ---- test views, their PNGs written by a background pool while the next views are computed
    out_dir = save_dir if kind == "2d" else os.path.join(save_dir, "test_render")
    with BackgroundWriter(WRITERS) as pool:
        outputs = ViewOutputWriter(out_dir, gt.numpy() if gt is not None else None,
                                   valid_colour_map(scene, p.instance), kind == "3d", pool)
        res = propagate_views(renderer, test_cams, plan, confusion, confusion_wo, gt, on_view=outputs.add)
        timings["test_views"] = res.seconds
        t0 = time.perf_counter()
        outputs.finish()
    timings["writing"] = time.perf_counter() - t0       # what was left to write after the last view
    timings["total"] = time.perf_counter() - t_start

    if export is not None:
        t0 = time.perf_counter()
        about = dict(checkpoint=opts.ckpt_path, checkpoint_step=step, seeds=seeds.folder_name, direction_rule=p.rule)
        exported = export_labels(renderer, scene.all_cameras(), scene.frames, plan, export_classes(scene), export,
                                 about)
        timings["label_all_frames"] = time.perf_counter() - t0
        print(f"[propagation] labels of {exported['frames']} frames ({exported['rendered']} labelled, "
              f"{exported['resumed']} already complete) in {export.out_dir}", flush=True)
    metrics = confusion.metrics() if confusion is not None else dict(
        metrics_skipped="the scene has no ground-truth labels")
    wo = confusion_wo.metrics() if confusion_wo is not None else None
    metrics.update(
        mode=f"propagate_{kind}", checkpoint=opts.ckpt_path, checkpoint_step=step, direction_rule=p.rule,
        label_space="instance" if p.instance else "semantic", seeds=seeds.folder_name,
        seed_dir=opts.seeds.seed_dir, labelled_frames=[int(scene.train.ids[f]) for f in frames],
        given_classes=[int(c) for c in label_ids],
        given_class_names=[names[c] for c in label_ids if 0 <= c < len(names)],
        num_directions=dirs.count, perturb_t=p.perturb_t, deterministic=not p.noisy,
        test_views=int(len(scene.test)), resolution=[h, w], outputs=out_dir, class_names=names,
        views=view_set(split_name(opts.data.training_mode), scene.test.ids, h, w),
        timings=timings, device=str(dev))
    metrics["scene"] = scene.identity()          # propagation.compare refuses to mix scenes
    if selection is not None:
        metrics["adaptive_selection_round_miou"] = selection["round_miou"]
    if agg_info is not None:
        metrics["aggregator"] = agg_info
    if export is not None:
        metrics["label_export"] = exported
    title = f"{kind.upper()} propagation"
    table = finish_metrics(save_dir, metrics, wo, names, title)
    print(f"[propagation] {len(scene.test)} test views in {res.seconds:.2f} s "
          f"({res.seconds / max(1, len(scene.test)):.3f} s/view); outputs in {out_dir}")
    if confusion is not None:
        print(f"[propagation] {summary_line(metrics)}" + (f"\n[propagation] without aggregator: {summary_line(wo)}"
                                                          if wo is not None else ""))
        print(table, flush=True)
    return metrics


def spatial_seed_points(renderer, pixels, owner, num_labels, rng, chunk):
    """--spatial: the 3D points o + depth * d of the labelled pixels' rays (rendered depth), per
    label (or, given `owner`, per direction channel with --merge_instance), at most
    MAX_SPATIAL_POINTS per label (a uniform sample without replacement)."""
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
