"""Jacobians of labelled pixels and the per-label perturbation directions (spec 5.1-5.3).

The Jacobian of a pixel's channel-mean colour with respect to the fine `rgb_linear.weight` has a
closed form in quantities of the forward pass (models/jacobians.py), so the Jacobians of any
number of labelled pixels come from one render pass of their rays, not from one full backward
pass per pixel as in the original. Rendering is deterministic (evaluation mode) unless
--noisy_propagation asks for the original's training-mode renders (noise, jitter).

Direction rules, per label l with labelled pixels P_l (one of them is required):
- --mean_gradient: one direction, the mean Jacobian over P_l;
- --mean_response: every pixel's Jacobian is a direction; their responses are averaged later;
- --gradient_kmeans: cosine k-means (--n_clusters) over the Jacobians of P_l when |P_l| is larger,
  keeping the member closest (cosine) to each centre; else every Jacobian;
- --adaptive_selection: propagation/selection.py.
--random_channel takes the Jacobian of one random colour channel (drawn per label) instead of the
channel mean.
"""
from typing import NamedTuple

import numpy as np
import torch

from models.jacobians import rgb_layer_jacobian
from models.rays import rays_from_pixels
from propagation.responses import Directions
from utils.errors import InputError


class LabelledPixels(NamedTuple):
    """Every labelled pixel of the labelled frame(s), grouped by label."""
    label_ids: np.ndarray     # [L] sorted evaluation-space class ids (the original's points_label)
    label_idx: torch.Tensor   # [P] index into label_ids
    view: torch.Tensor        # [P] index of the labelled frame (0..V-1)
    v: torch.Tensor           # [P] row
    u: torch.Tensor           # [P] column
    rays: torch.Tensor        # [P, 11]

    def of_label(self, l):
        return (self.label_idx == l).nonzero().flatten()


def labelled_pixels(labels, poses, intr, near, far, convention="opencv"):
    """LabelledPixels of evaluation-space label maps [V, H, W] (-1 = unlabelled) seen from poses [V,4,4]."""
    labels = torch.as_tensor(labels)
    view, v, u = (labels >= 0).nonzero(as_tuple=True)
    values = labels[view, v, u]
    label_ids = np.unique(values.cpu().numpy()).astype(np.int64)
    if len(label_ids) == 0:
        raise InputError("the seeds label no pixel of the labelled frame(s); nothing to propagate")
    idx = torch.searchsorted(torch.from_numpy(label_ids), values.cpu())
    poses = torch.as_tensor(poses, dtype=torch.float32)
    rays = rays_from_pixels(poses[view], v, u, intr, near, far, convention)
    return LabelledPixels(label_ids, idx, view, v, u, rays)


def pixel_jacobians(renderer, rays, train=False, channel=None, chunk=4096, generator=None,
                    dtype=torch.float64):
    """([R, 3, F] Jacobians as `dtype`, depth [R]) of rays [R, 11], one render pass (no autograd).

    channel: None (channel mean) or an int / [R] long tensor (--random_channel)."""
    dev = renderer.device
    jac, depth = [], []
    with torch.no_grad():
        for i in range(0, rays.shape[0], chunk):
            r = rays[i:i + chunk].to(dev)
            out = renderer.render_rays(r, train, keep_fine=True, generator=generator, coarse_rgb=False)
            ch = None
            if channel is not None:
                ch = torch.as_tensor(channel, device=dev, dtype=torch.long)
                ch = ch.expand(r.shape[0]) if ch.dim() == 0 else ch[i:i + chunk]
            jac.append(rgb_layer_jacobian(out["fine"], ch).to(dtype))
            depth.append(out["depth"])
    return torch.cat(jac, 0), torch.cat(depth, 0)


def cosine_kmeans(x, k, rng, iters=100, tol=1e-4):
    """Cosine k-means of rows of x [n, d] (torch). Returns centres [k, d].

    As fast_pytorch_kmeans' KMeans(mode='cosine') used by the original: assignment by cosine
    similarity, centres = mean of their members, stop when the centres move by at most `tol`
    (squared). Two deliberate differences: the initial centres are chosen by k-means++ on the
    cosine distance (the original draws them uniformly, which often puts two centres in one
    cluster and leaves another cluster without a representative), and an empty cluster keeps its
    previous centre (the original zeroes it, making its representative an arbitrary pixel)."""
    n = x.shape[0]
    xn = x / x.norm(dim=1, keepdim=True).clamp(min=1e-8)
    picks = [int(rng.integers(n))]
    dist = (1.0 - xn @ xn[picks[0]]).clamp(min=0)
    for _ in range(1, k):
        p = (dist ** 2).double().cpu().numpy()
        total = p.sum()
        nxt = int(rng.choice(n, p=p / total)) if total > 0 else int(rng.integers(n))
        picks.append(nxt)
        dist = torch.minimum(dist, (1.0 - xn @ xn[nxt]).clamp(min=0))
    centres = x[torch.as_tensor(picks, device=x.device)].clone()
    for _ in range(iters):
        cn = centres / centres.norm(dim=1, keepdim=True).clamp(min=1e-8)
        assign = (xn @ cn.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        moved = float(((new - centres) ** 2).sum())
        centres = new
        if moved <= tol:
            break
    return centres


def closest_members(x, centres):
    """Index of the row of x with the highest cosine to each centre (the original's rule, +1e-8)."""
    sim = (x @ centres.T) / (x.norm(dim=1, keepdim=True) * centres.norm(dim=1)[None, :] + 1e-8)
    return sim.argmax(dim=0)


def direction_rule(exp):
    """Which direction rule the flags select, in the original's precedence."""
    if exp.get("adaptive_selection"):
        return "adaptive_selection"
    if exp.get("mean_gradient"):
        return "mean_gradient"
    if exp.get("gradient_kmeans"):
        return "gradient_kmeans"
    if exp.get("mean_response"):
        return "mean_response"
    return None


def label_channels(num_labels, random_channel, rng):
    """--random_channel: one channel per label (the original draws one per Jacobian batch)."""
    if not random_channel:
        return [None] * num_labels
    return [int(c) for c in rng.integers(0, 3, size=num_labels)]


def label_directions(renderer, pixels, rule, rng, train=False, random_channel=False, n_clusters=10,
                     chunk=4096, generator=None):
    """Directions of every label under `rule` ('mean_gradient' | 'mean_response' | 'gradient_kmeans').

    Returns (Directions, info) where info['chosen'] maps label index -> pixel indices (into
    `pixels`) of the kept directions (k-means), for --visualize_gradients.
    """
    num_labels = len(pixels.label_ids)
    channels = label_channels(num_labels, random_channel, rng)
    deltas, owners, where, chosen = [], [], [], {}
    for l in range(num_labels):
        idx = pixels.of_label(l)
        jac, _ = pixel_jacobians(renderer, pixels.rays[idx], train, channels[l], chunk, generator)
        if rule == "mean_gradient":
            deltas.append(jac.mean(0, keepdim=True))
            where.append(None)
        elif rule == "gradient_kmeans" and n_clusters < idx.numel():
            flat = jac.reshape(jac.shape[0], -1).to(torch.float32)
            centres = cosine_kmeans(flat, n_clusters, rng)
            keep = closest_members(flat, centres)
            deltas.append(jac[keep])
            chosen[l] = idx[keep.cpu()]
            where.extend(_pixel_tuples(pixels, idx[keep.cpu()]))
        else:      # mean_response, or k-means with no more pixels than clusters
            deltas.append(jac)
            chosen[l] = idx
            where.extend(_pixel_tuples(pixels, idx))
        owners.append(torch.full((deltas[-1].shape[0],), l, dtype=torch.long))
    dirs = Directions(torch.cat(deltas, 0), torch.cat(owners, 0), num_labels,
                      where if all(w is not None for w in where) else None)
    return dirs, dict(chosen=chosen, channels=channels)


def _pixel_tuples(pixels, idx):
    return [(int(pixels.view[i]), int(pixels.v[i]), int(pixels.u[i])) for i in idx.tolist()]


def gradient_pixel_images(pixels, chosen, num_views, height, width):
    """--visualize_gradients: {label id: uint8 image [V*H, W]} with the kept pixels at 255
    (the labelled frames stacked vertically)."""
    images = {}
    for l, idx in chosen.items():
        img = np.zeros((num_views, height, width), dtype=np.uint8)
        img[pixels.view[idx].numpy(), pixels.v[idx].numpy(), pixels.u[idx].numpy()] = 255
        images[int(pixels.label_ids[l])] = img.reshape(num_views * height, width)
    return images
