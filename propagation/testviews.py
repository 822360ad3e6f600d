"""Propagate to every test view: one render pass per view, responses of all directions from it,
post-processing and labels on the device, confusion matrix accumulated on the device.

Nothing waits for the device inside the view loop (no per-view sync), so on CUDA the GPU runs
ahead; each view's label maps are handed to `on_view` (propagation/run.py: copied to the host
asynchronously and written by a background pool while the next views are computed), or kept on
the device until the loop ends.
"""
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from tqdm import tqdm

from propagation.aggregator import aggregate
from propagation.postprocess import normalise_per_image, postprocess_2d, spatial_weights
from propagation.responses import rerender_responses_2d, view_responses


@dataclass
class TestPlan:
    kind: str                         # '2d' | '3d'
    M: torch.Tensor                   # [D, 3, F] perturbation matrices (device, compute dtype)
    mixer: torch.Tensor               # [D, K]
    channel_labels: torch.Tensor      # [K] evaluation label id of each channel (device)
    agg_labels: Optional[torch.Tensor] = None          # [L] label id of each aggregator output
    no_abs: bool = False
    normalize_2d: bool = False
    noisy_2d: bool = False            # re-render per direction in training mode (--noisy_propagation)
    aggregator: Optional[torch.nn.Module] = None
    seed_points: Optional[List[torch.Tensor]] = None   # --spatial: per channel [n_k, 3]
    chunk: int = 8192


@dataclass
class TestResult:
    labels: List[torch.Tensor] = field(default_factory=list)     # per view [h, w] int32 (device)
    labels_wo: List[torch.Tensor] = field(default_factory=list)  # plain argmax with an aggregator
    confidence: List[torch.Tensor] = field(default_factory=list)  # per view [h, w] uint8: 255 x confidence
    seconds: float = 0.0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class ViewResult:
    labels: torch.Tensor                   # [h, w] int32 evaluation label ids
    scores: torch.Tensor                   # [K', h, w]: labels = score_labels[argmax over K']
    score_labels: torch.Tensor             # [K'] evaluation label id of each score channel
    labels_wo: Optional[torch.Tensor] = None   # plain argmax next to an aggregator


def view_scores(renderer, rays, plan, height, width):
    """Label one view from its rays [h*w, 11]: the responses of every direction from one render
    pass, then the post-processing of plan.kind (module docstring of propagation/postprocess.py).

    The scores are what the argmax runs over: 2D the post-processed responses (times the spatial
    weights after a softmax with --spatial), 3D the rendered responses (normalised with
    --normalize_2d), with an aggregator its softmax (the labels come from its logits)."""
    want_depth = plan.seed_points is not None
    if plan.kind == "2d" and plan.noisy_2d:
        outs, depth = rerender_responses_2d(renderer, rays, plan.M, [plan.mixer], plan.no_abs,
                                            plan.chunk, True, want_depth=want_depth)
    else:
        outs, depth = view_responses(renderer, rays, plan.M, [plan.mixer], plan.kind, plan.no_abs,
                                     plan.chunk, False, want_depth=want_depth)
    resp = outs[0].T.reshape(-1, height, width)                   # [K, h, w]
    wo = None
    if plan.kind == "3d" and plan.normalize_2d:
        resp = normalise_per_image(resp)
    if plan.aggregator is not None:
        flat = outs[0] if plan.kind == "2d" else resp.reshape(resp.shape[0], -1).T
        logits = aggregate(plan.aggregator, flat)
        idx = logits.argmax(-1).reshape(height, width)
        wo = resp.argmax(0)
        scores = torch.softmax(logits, -1).T.reshape(-1, height, width)
        score_labels = plan.agg_labels
    else:
        if plan.kind == "2d":
            scores = postprocess_2d(resp)
            if want_depth:
                pts = rays[:, 0:3] + depth[:, None].to(rays.dtype) * rays[:, 3:6]
                spatial = spatial_weights(pts, plan.seed_points).T.reshape(-1, height, width)
                scores = torch.softmax(scores, dim=-3) * spatial
        else:
            scores = resp
        idx = scores.argmax(dim=-3)
        score_labels = plan.channel_labels
    lab = score_labels[idx].to(torch.int32)
    return ViewResult(lab, scores, score_labels, None if wo is None else plan.channel_labels[wo].to(torch.int32))


def confidence(scores):
    """[h, w] in [0, 1]: the winning score's relative margin over the runner-up, (s1 - s2) / s1
    (1: only one label responds; 0: a tie or no response). Scale-free, so 2D post-processed
    responses, 3D rendered responses and aggregator probabilities read alike."""
    s = scores.float().clamp(min=0)
    if s.shape[0] == 1:
        return (s[0] > 0).float()
    top = torch.topk(s, 2, dim=0).values
    return torch.where(top[0] > 0, (top[0] - top[1]) / top[0].clamp(min=1e-30), torch.zeros_like(top[0]))


def confidence_uint8(scores):
    """`confidence` as uint8 0..255 (what the PNGs hold; a quarter of the device memory)."""
    return torch.round(confidence(scores) * 255).to(torch.uint8)


def propagate_views(renderer, cameras, plan, confusion=None, confusion_wo=None, gt=None, progress=True,
                    on_view=None):
    """Label every view of `cameras` (models.cameras.Cameras, at the resolution to label).

    gt: [T, h, w] evaluation labels, or None (a scene without labels: no confusion); `confusion`
    (and `confusion_wo` for the plain argmax next to an aggregator) accumulate (gt, labels) per view
    (utils.metrics.ConfusionAccumulator). on_view(i, labels, confidence, labels_wo): called with
    each view's device tensors as soon as they are queued (utils.label_outputs.ViewOutputWriter
    writes them while the next view is computed); the result then keeps no label maps."""
    dev = renderer.device
    height, width = cameras.height, cameras.width
    res = TestResult()
    _sync(dev)
    t0 = time.perf_counter()
    gt_dev = gt.to(dev) if gt is not None else None
    for i in tqdm(range(len(cameras)), desc=f"propagate {plan.kind.upper()}", leave=False,
                  dynamic_ncols=True, disable=not progress):
        rays = cameras.image_rays(i, dev, torch.float32)
        view = view_scores(renderer, rays, plan, height, width)
        conf = confidence_uint8(view.scores)
        if on_view is not None:
            on_view(i, view.labels, conf, view.labels_wo)
        else:
            res.labels.append(view.labels)
            res.confidence.append(conf)
            if view.labels_wo is not None:
                res.labels_wo.append(view.labels_wo)
        if confusion is not None and gt_dev is not None:
            confusion.add(gt_dev[i], view.labels)
            if view.labels_wo is not None and confusion_wo is not None:
                confusion_wo.add(gt_dev[i], view.labels_wo)
    _sync(dev)
    res.seconds = time.perf_counter() - t0
    return res
