"""The labelled pixels of the seeds, their rays, and their Jacobians.

The Jacobian of a pixel's channel-mean colour with respect to the fine `rgb_linear.weight`
([3, F]) has a closed form in quantities of the forward pass (models/jacobians.py), so the
Jacobians of any number of labelled pixels come from one render pass of their rays, not from one
full backward pass per pixel as in the original. Rendering is deterministic (evaluation mode)
unless --noisy_propagation asks for the original's training-mode renders (noise, jitter).
"""
from typing import NamedTuple

import numpy as np
import torch

from models.jacobians import rgb_layer_jacobian
from propagation.responses import render_chunks
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
        """[P_l] indices of the pixels of label index l."""
        return (self.label_idx == l).nonzero().flatten()


def labelled_pixels(labels, cameras):
    """LabelledPixels of evaluation-space label maps [V, H, W] (-1 = unlabelled) seen by the V
    `cameras` (models.cameras.Cameras of the labelled frames)."""
    labels = torch.as_tensor(labels)
    view, v, u = (labels >= 0).nonzero(as_tuple=True)
    values = labels[view, v, u]
    label_ids = np.unique(values.cpu().numpy()).astype(np.int64)
    if len(label_ids) == 0:
        raise InputError("the seeds label no pixel of the labelled frame(s); nothing to propagate")
    idx = torch.searchsorted(torch.from_numpy(label_ids), values.cpu())
    return LabelledPixels(label_ids, idx, view, v, u, cameras.pixel_rays(view, v, u))


def all_rays(cameras, device):
    """[V*H*W, 11]: every ray of every view of `cameras`, view-major, row-major."""
    return torch.cat([cameras.image_rays(i, device) for i in range(len(cameras))], 0)


def label_channels(num_labels, random_channel, rng):
    """The colour channel whose Jacobian each label uses: None (the channel mean) for all, or
    with --random_channel one random channel per label (the original draws one per batch of
    Jacobians)."""
    if not random_channel:
        return [None] * num_labels
    return [int(c) for c in rng.integers(0, 3, size=num_labels)]


@torch.no_grad()
def pixel_jacobians(renderer, rays, train=False, channel=None, chunk=4096, generator=None,
                    dtype=torch.float64):
    """(J [R, 3, F] as `dtype`, depth [R]) of rays [R, 11], from one render pass (no autograd):
    J = d C / d W_rgb of the pixel's channel-mean colour C, or of one channel.

    channel: None (channel mean), an int, or an [R] long tensor (--random_channel)."""
    dev = renderer.device
    jac, depth = [], []
    for i, out in render_chunks(renderer, rays, chunk, train, generator):
        ch = None
        if channel is not None:
            ch = torch.as_tensor(channel, device=dev, dtype=torch.long)
            ch = ch.expand(out["depth"].shape[0]) if ch.dim() == 0 else ch[i:i + chunk]
        jac.append(rgb_layer_jacobian(out["fine"], ch).to(dtype))
        depth.append(out["depth"])
    return torch.cat(jac, 0), torch.cat(depth, 0)
