"""--adaptive_selection: greedy choice of one direction per label per round on the labelled view
(spec 5.7), with all candidate responses of a round computed from one cached render pass.

Round i (num_iters rounds):
1. for every label draw num_comb of its labelled pixels uniformly with replacement (as the
   original); candidate k pairs the k-th draw of every label (as the original);
2. the Jacobians of all L * num_comb drawn pixels come from one render pass of their rays;
3. every candidate direction's 2D response on the labelled view comes from the cached pass of the
   labelled view (its compositing weights, logits and rgb_linear inputs);
4. candidate k's response for label l is the mean of the raw responses of the label's directions
   selected so far and its own candidate; it is post-processed like a test view and labelled by
   argmax; the candidate is scored by mIoU against the labelled frame(s) (the metric of
   utils/metrics.py, classes absent from the seeds and void ignored, mean over labelled frames);
5. the best candidate's L directions are selected.

Decisions against the original (README of docs/PROPAGATION.md): the best candidate of every round
is kept (the original compares with a `max_miou` that is never updated, so it keeps the best one
too, but loops forever when every mIoU is 0 or NaN; here such a round keeps candidate 0 and the
loop always ends); the running mean is a plain mean of the selected directions' responses (the
original's nested average weighs early rounds more, and its in-place clip also clips the stored
responses), so a candidate is scored on exactly the response that test views will see; the 3x3
blur acts over H and W as on the test views (the original's blur of a [1, H, W] array acts along
H only).
"""
import math

import numpy as np
import torch

from propagation.directions import label_channels, pixel_jacobians
from propagation.postprocess import postprocess_2d
from propagation.responses import Directions, perturbation_matrices, render_chunks, \
    rerender_responses_2d, responses_2d


def batched_miou(true, preds, num_classes, valid_class):
    """mIoU (nan-mean IoU, the original's first output) of each prediction.

    true [V, H, W] long (evaluation labels, -1 = void); preds [K, V, H, W] long;
    valid_class [C] bool: GT pixels of other classes (and void) are ignored.
    Returns [K] float64: the mean over views of each view's mIoU (NaN views skipped)."""
    k, v = preds.shape[:2]
    c = int(num_classes)
    t = true.reshape(v, -1)
    keep = (t >= 0) & (t < c)
    keep &= valid_class.to(t.device)[t.clamp(0, c - 1)]
    p = preds.reshape(k, v, -1)
    keep_p = keep[None].expand(k, -1, -1) & (p >= 0) & (p < c)
    base = (torch.arange(k, device=p.device)[:, None, None] * v
            + torch.arange(v, device=p.device)[None, :, None]) * (c * c)
    flat = base + t[None].clamp(0, c - 1) * c + p.clamp(0, c - 1)
    conf = torch.bincount(flat[keep_p], minlength=k * v * c * c).reshape(k, v, c, c).to(torch.float64)
    diag = torch.diagonal(conf, dim1=-2, dim2=-1)
    union = conf.sum(-1) + conf.sum(-2) - diag
    iou = diag / union                                    # NaN where 0/0
    valid = ~torch.isnan(iou)
    miou_view = torch.where(valid, iou, torch.zeros_like(iou)).sum(-1) / valid.sum(-1)   # NaN if none
    ok = ~torch.isnan(miou_view)
    return torch.where(ok, miou_view, torch.zeros_like(miou_view)).sum(1) / ok.sum(1)


class CachedPass:
    """The fine samples of every ray chunk of the labelled view(s), rendered once; re-rendered on
    every use instead when they would not fit `budget_bytes`."""

    def __init__(self, renderer, rays, chunk, train=False, generator=None, budget_bytes=None):
        self.renderer, self.rays, self.chunk = renderer, rays, chunk
        self.train, self.generator = train, generator
        s = renderer.opts.n_samples + renderer.opts.n_importance
        f = renderer.fine.rgb_linear.in_features
        need = rays.shape[0] * s * (f + 5) * 4
        if budget_bytes is None:
            budget_bytes = _memory_budget(renderer.device)
        self.cached = None
        if need <= budget_bytes:
            self.cached = [(i, out["fine"]) for i, out in render_chunks(renderer, rays, chunk, train, generator)]

    def chunks(self):
        if self.cached is not None:
            yield from self.cached
        else:
            for i, out in render_chunks(self.renderer, self.rays, self.chunk, self.train, self.generator):
                yield i, out["fine"]


def _memory_budget(device):
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.4 * free)
    return 2 << 30


def candidate_responses(cache, M, no_abs, noisy, renderer=None, rays=None, chunk=None, generator=None):
    """[N, D] raw 2D responses of the labelled view(s) to every candidate direction."""
    if noisy:
        eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
        outs, _ = rerender_responses_2d(renderer, rays, M, [eye], no_abs, chunk, True, generator)
        return outs[0]
    n = cache.rays.shape[0]
    out = torch.empty(n, M.shape[0], dtype=M.dtype, device=M.device)
    for i, fine in cache.chunks():
        r = responses_2d(fine, M, no_abs)
        out[i:i + r.shape[0]] = r
    return out


def adaptive_selection(renderer, pixels, view_rays, true, num_classes, opts, rng, chunk=8192,
                       generator=None, log=print, keep_candidates=False):
    """Run the rounds. Returns (Directions [L * num_iters] ordered label-major, round-minor,
    info dict with per-round mIoU, the per-round cumulative responses [num_iters, N, L] and the
    selected directions' individual responses [N, D] (for the aggregator)).

    pixels: LabelledPixels of the labelled frame(s) (the candidates are drawn from them);
    view_rays [V*H*W, 11]: every ray of the labelled frame(s); true [V, H, W] evaluation labels;
    opts: dict-like with num_comb, num_iters, perturb_t, no_abs, random_channel, noisy.
    """
    num_labels = len(pixels.label_ids)
    num_comb, num_iters = int(opts["num_comb"]), int(opts["num_iters"])
    t, no_abs, noisy = float(opts["perturb_t"]), bool(opts["no_abs"]), bool(opts["noisy"])
    dtype = renderer.fine.rgb_linear.weight.dtype
    dev = renderer.device
    v, h, w = true.shape
    label_ids = torch.as_tensor(pixels.label_ids, device=dev)
    valid_class = torch.zeros(num_classes, dtype=torch.bool, device=dev)
    valid_class[label_ids[(label_ids >= 0) & (label_ids < num_classes)]] = True
    true_dev = true.to(dev)
    members = [pixels.of_label(l) for l in range(num_labels)]
    cache = None if noisy else CachedPass(renderer, view_rays, chunk, False, generator)

    selected_sum = torch.zeros(v * h * w, num_labels, dtype=dtype, device=dev)
    cumulative, selected_resp, selected_dirs, mious = [], [], [], []
    for i in range(num_iters):
        draws = [m[torch.as_tensor(rng.integers(0, m.numel(), size=num_comb))] for m in members]
        idx = torch.cat(draws)                                        # label-major: l * num_comb + k
        channels = label_channels(num_labels, opts.get("random_channel"), rng)
        if any(c is not None for c in channels):
            ch = torch.tensor([c for c in channels for _ in range(num_comb)], dtype=torch.long)
        else:
            ch = None
        jac, _ = pixel_jacobians(renderer, pixels.rays[idx], noisy, ch, chunk, generator)
        M = perturbation_matrices(jac, t, dtype=dtype, device=dev)
        raw = candidate_responses(cache, M, no_abs, noisy, renderer, view_rays, chunk, generator)
        raw = raw.reshape(-1, num_labels, num_comb)                  # [N, L, K]
        cand = (selected_sum[:, :, None] + raw) / (i + 1)
        maps = cand.permute(2, 1, 0).reshape(num_comb, num_labels, v, h, w).transpose(1, 2)  # [K, V, L, H, W]
        pred = label_ids[postprocess_2d(maps).argmax(dim=2)]          # [K, V, H, W]
        scores = batched_miou(true_dev, pred, num_classes, valid_class)
        finite = torch.nan_to_num(scores, nan=-math.inf)
        best = int(finite.argmax()) if bool(torch.isfinite(finite).any()) else 0
        best_score = float(scores[best])
        mious.append(best_score)
        log(f"[propagation] adaptive selection round {i + 1}/{num_iters}: best of {num_comb} "
            f"candidates mIoU {best_score:.4f}"
            + ("" if math.isfinite(best_score) else " (no scorable pixel; kept candidate 0)"))
        pick = torch.arange(num_labels) * num_comb + best
        selected_dirs.append(jac[pick])
        selected_resp.append(raw[:, :, best])
        selected_sum += raw[:, :, best]
        cumulative.append(selected_sum / (i + 1))
    deltas = torch.stack(selected_dirs, 1).reshape(num_labels * num_iters, *selected_dirs[0].shape[1:])
    owner = torch.arange(num_labels).repeat_interleave(num_iters)
    per_dir = torch.stack(selected_resp, 2).reshape(v * h * w, num_labels * num_iters)  # label-major
    info = dict(round_miou=mious, cumulative=torch.stack(cumulative, 0), per_direction=per_dir)
    return Directions(deltas, owner, num_labels, None), info
