"""Propagate to every test view: one render pass per view, responses of all directions from it,
post-processing and labels on the device, confusion matrix accumulated on the device.

Nothing is copied to the host inside the view loop (no per-view sync), so on CUDA the GPU runs
ahead; label maps stay on the device until the loop ends and PNGs are written afterwards.
"""
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from tqdm import tqdm

from propagation.aggregator import aggregate
from propagation.postprocess import labels_2d, labels_3d, normalise_per_image, spatial_weights
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
    seconds: float = 0.0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def propagate_views(renderer, cameras, plan, confusion=None, confusion_wo=None, gt=None, progress=True):
    """Label every view of `cameras` (models.cameras.Cameras, at the resolution to label).

    gt: [T, h, w] evaluation labels; `confusion` (and `confusion_wo` for the plain argmax next to
    an aggregator) accumulate (gt, labels) per view (utils.metrics.ConfusionAccumulator)."""
    dev = renderer.device
    height, width = cameras.height, cameras.width
    res = TestResult()
    _sync(dev)
    t0 = time.perf_counter()
    want_depth = plan.seed_points is not None
    gt_dev = gt.to(dev) if gt is not None else None
    for i in tqdm(range(len(cameras)), desc=f"propagate {plan.kind.upper()}", leave=False,
                  dynamic_ncols=True, disable=not progress):
        rays = cameras.image_rays(i, dev, torch.float32)
        if plan.kind == "2d" and plan.noisy_2d:
            outs, depth = rerender_responses_2d(renderer, rays, plan.M, [plan.mixer], plan.no_abs,
                                                plan.chunk, True, want_depth=want_depth)
        else:
            outs, depth = view_responses(renderer, rays, plan.M, [plan.mixer], plan.kind, plan.no_abs,
                                         plan.chunk, False, want_depth=want_depth)
        resp = outs[0].T.reshape(-1, height, width)                   # [K, h, w]
        wo = None
        if plan.kind == "2d":
            if plan.aggregator is not None:
                idx = aggregate(plan.aggregator, outs[0]).argmax(-1).reshape(height, width)
                wo = resp.argmax(0)
            else:
                spatial = None
                if want_depth:
                    pts = rays[:, 0:3] + depth[:, None].to(rays.dtype) * rays[:, 3:6]
                    spatial = spatial_weights(pts, plan.seed_points).T.reshape(-1, height, width)
                idx = labels_2d(resp, spatial)
        else:
            if plan.normalize_2d:
                resp = normalise_per_image(resp)
            if plan.aggregator is not None:
                flat = resp.reshape(resp.shape[0], -1).T
                idx = aggregate(plan.aggregator, flat).argmax(-1).reshape(height, width)
                wo = resp.argmax(0)
            else:
                idx = labels_3d(resp)
        lab = (plan.channel_labels if plan.aggregator is None else plan.agg_labels)[idx].to(torch.int32)
        res.labels.append(lab)
        if wo is not None:
            res.labels_wo.append(plan.channel_labels[wo].to(torch.int32))
        if confusion is not None:
            confusion.add(gt_dev[i], lab)
            if wo is not None and confusion_wo is not None:
                confusion_wo.add(gt_dev[i], res.labels_wo[-1])
    _sync(dev)
    res.seconds = time.perf_counter() - t0
    return res
