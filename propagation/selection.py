"""--adaptive_selection: greedy choice of one direction per label per round on the labelled
frame(s), with all candidate responses of a round computed from one cached render pass.

Round i of num_iters, with L labels and K = num_comb:
1. for every label draw K of its labelled pixels uniformly with replacement; candidate k pairs
   the k-th draw of every label;
2. the Jacobians J of all L * K drawn pixels come from one render pass of their rays;
3. every candidate direction's 2D response R [N, L*K] on the labelled view(s) (N pixels) comes
   from the cached pass of the labelled view(s) (compositing weights, logits, rgb_linear inputs);
4. candidate k's response for label l is (S_l + R_lk) / i, S_l the sum of the raw responses of
   the label's directions selected in the i - 1 earlier rounds; it is post-processed like a test
   view (propagation/postprocess.py) and labelled by argmax; the candidate's score is its mIoU
   against the labelled frame(s) (void and classes absent from the seeds ignored, nan-mean of
   the per-frame mIoU);
5. the best candidate's L directions are selected (candidate 0 when no candidate has a finite
   score).
docs/PROPAGATION.md (decisions 9-12) compares this with the original's loop.
"""
import math

import torch

from propagation.pixels import label_channels, pixel_jacobians
from propagation.postprocess import postprocess_2d
from propagation.responses import Directions, perturbation_matrices, render_chunks, \
    rerender_responses_2d, responses_2d
from utils.metrics import class_ious, confusion_counts


def batched_miou(true, preds, num_classes, valid_class):
    """mIoU (nan-mean of the class IoUs, the original's first output) of each prediction.

    true [V, H, W] long (evaluation labels, -1 = void); preds [K, V, H, W] long;
    valid_class [C] bool: GT pixels of other classes (and void) are ignored.
    Returns [K] float64: the nan-mean over views of each view's mIoU."""
    k, v = preds.shape[:2]
    t = true.reshape(1, v, -1)
    p = preds.reshape(k, v, -1)
    conf = confusion_counts(t.expand(k, -1, -1).reshape(k * v, -1), p.reshape(k * v, -1), num_classes,
                            valid_class).reshape(k, v, num_classes, num_classes).to(torch.float64)
    iou = class_ious(conf)                                # NaN where 0/0
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
    """[N, D] raw 2D responses of the labelled view(s) to every candidate direction M [D, 3, F]:
    from the cached pass, or with `noisy` by re-rendering per direction in training mode."""
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
                       generator=None, log=print):
    """Run the rounds (module doc). Returns (Directions [L * num_iters] ordered label-major,
    round-minor; info dict with the per-round best mIoU `round_miou`, the cumulative mean
    responses after each round `cumulative` [num_iters, N, L] and the selected directions'
    own responses `per_direction` [N, L * num_iters], the aggregator's training data).

    pixels: LabelledPixels of the labelled frame(s) (the candidates are drawn from them);
    view_rays [V*H*W, 11]: every ray of the labelled frame(s); true [V, H, W] evaluation labels;
    opts: PropagationOptions (num_comb, num_iters, perturb_t, no_abs, random_channel, noisy).
    """
    num_labels = len(pixels.label_ids)
    num_comb, num_iters = opts.num_comb, opts.num_iters
    t, no_abs, noisy = opts.perturb_t, opts.no_abs, opts.noisy
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
        channels = label_channels(num_labels, opts.random_channel, rng)
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
    return Directions(deltas, owner, num_labels), info
