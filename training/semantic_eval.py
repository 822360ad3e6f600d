"""Evaluation of the Semantic-NeRF baseline on the test views, in 2D and 3D, with the label maps,
metrics and files of label propagation (utils/label_outputs.py), so `propagation.compare` puts
its rows in the same table.

One deterministic (evaluation-mode) render pass per test view, in ray chunks, gives both readouts:
- 2D: a pixel's label is argmax_c of the fine rendered logits S(r) = sum_i w_i s(x_i);
- 3D: every fine sample point x_i of the pass (the points whose responses 3D propagation renders)
  is labelled argmax_c s(x_i) by the fine network's raw logits, and a pixel's label is the point
  label with the largest rendered weight, argmax_l sum_i w_i [argmax_c s(x_i) = l]
  (models.semantic.point_vote_labels), as 3D propagation renders its point responses.
Predictions range over all C classes of the label space (Semantic-NeRF's argmax); the metrics,
as propagation's, count only ground-truth pixels of the seeded classes (seed_class_confusion).

Files: <save_dir>/semantic_2d/ as a 2D propagation run's folder (per view <i>_label.png,
<i>_vis_label.png, <i>_error_map.png, vis_label.mp4, metrics.json, metrics.md) and
<save_dir>/semantic_3d/ as a 3D one's (the PNGs, with <i>_gt_label.png, in test_render/).
"""
import os
import time

import torch

from models.render_views import render_chunk_size
from models.semantic import point_vote_labels, predict_labels
from utils.label_outputs import (class_names, finish_metrics, scaled_labels, seed_class_confusion, summary_line,
                                 valid_colour_map, view_set, write_view_outputs)

KINDS = ("2d", "3d")


@torch.no_grad()
def label_views(renderer, heads, cameras, chunk=None):
    """(2D labels, 3D labels): lists of [h, w] int32 maps (on the renderer's device) of every view
    of `cameras` (at the resolution to label)."""
    dev = renderer.device
    chunk = chunk or render_chunk_size(renderer)
    num_classes = heads[1].num_classes
    labels = {k: [] for k in KINDS}
    for i in range(len(cameras)):
        rays = cameras.image_rays(i, dev, torch.float32)
        parts = {k: [] for k in KINDS}
        for s in range(0, rays.shape[0], chunk):
            out = renderer.render_rays(rays[s:s + chunk], train=False, heads=heads, colour=False, keep_points=True)
            parts["2d"].append(predict_labels(out["logits"]))
            parts["3d"].append(point_vote_labels(out["weights"], out["point_logits"], num_classes))
        for k in KINDS:
            labels[k].append(torch.cat(parts[k]).reshape(cameras.height, cameras.width).to(torch.int32))
    return labels["2d"], labels["3d"]


def evaluate_semantic(renderer, heads, scene, save_dir, given, instance=False, test_viz_factor=1, info=None,
                      split="test"):
    """Label every test view in 2D and 3D, write <save_dir>/semantic_2d and semantic_3d (module doc)
    and return {'2d': metrics, '3d': metrics}. A scene without ground-truth labels gets its label
    maps and no metrics (one 'metrics skipped' line; metrics_skipped in the dicts). given: the
    seeded classes (evaluation ids); info: fields copied into both metrics dicts (protocol,
    checkpoint, seeds, ...)."""
    dev = renderer.device
    was_training = renderer.training
    renderer.eval()
    for h in heads:
        h.eval()
    cams = scene.cameras(scene.test).scaled(test_viz_factor)
    scored = scene.has_labels or instance
    gt = scaled_labels(scene.eval_labels(scene.test, instance), test_viz_factor) if scored else None
    if not scored:
        print(f"[semantic] metrics skipped: the scene has no ground-truth labels ({scene.root}); the label maps "
              "are still written", flush=True)
    num_classes = heads[1].num_classes
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    maps = dict(zip(KINDS, label_views(renderer, heads, cams)))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    colours = valid_colour_map(scene, instance)
    names = class_names(scene, instance)
    gt_np = gt.numpy() if scored else None
    protocol = (info or {}).get("protocol", "")
    results = {}
    for kind in KINDS:
        confusion = seed_class_confusion(num_classes, given, dev) if scored else None
        for i, lab in enumerate(maps[kind] if scored else ()):
            confusion.add(gt[i].to(dev), lab)
        folder = os.path.join(save_dir, f"semantic_{kind}")
        out_dir = folder if kind == "2d" else os.path.join(folder, "test_render")
        t1 = time.perf_counter()
        write_view_outputs(out_dir, torch.stack(maps[kind]).cpu().numpy(), gt_np, colours, "", write_gt=kind == "3d")
        metrics = confusion.metrics() if scored else dict(metrics_skipped="the scene has no ground-truth labels")
        metrics.update(
            mode=f"semantic_nerf_{kind}", method="Semantic-NeRF", **(info or {}),
            label_space="instance" if instance else "semantic",
            readout=("argmax of the fine rendered logits" if kind == "2d" else
                     "argmax of the fine raw logits at the fine sample points, rendered as a weighted vote"),
            predicted_classes=f"all {num_classes} classes of the label space",
            given_classes=[int(c) for c in given],
            given_class_names=[names[c] for c in given if 0 <= c < len(names)],
            test_views=int(len(scene.test)), resolution=[cams.height, cams.width], outputs=out_dir,
            views=view_set(split, scene.test.ids, cams.height, cams.width),
            class_names=names, deterministic=True, device=str(dev),
            timings=dict(test_views_both_readouts=seconds, writing=time.perf_counter() - t1))
        metrics["scene"] = scene.identity()      # propagation.compare refuses to mix scenes
        title = f"Semantic-NeRF {kind.upper()}" + (f" ({protocol})" if protocol else "")
        table = finish_metrics(folder, metrics, None, names, title)
        if scored:
            print(f"[semantic] {title}: {summary_line(metrics)}\n{table}", flush=True)
        else:
            print(f"[semantic] {title}: label maps in {out_dir}", flush=True)
        results[kind] = metrics
    renderer.train(was_training)
    return results
