"""Training-ray sampling: N rays per step as (frame, row, column) indices of the training images.

Rays are built on the fly from the indices and the training `Cameras`, so no ray table is
stored. Modes (`TrainOptions.batching`), as the original:
- "batching" (default): consecutive slices of one random permutation of all training pixels,
  reshuffled when exhausted;
- "no_batching" (`--no_batching`): one random training image per step, N distinct random
  pixels of it;
- "fixed" (`--sample_fixed`): image 0, N evenly spaced pixels;
- "unmasked" (`--from_unmasked_only`, `--from_unmasked`): like no_batching but only among the
  given frames (those whose labels are kept);
- "pixels" (`--semantic_sampler labelled`): only the given pixels (frame, v, u), min(N, P) of the
  P per step: all of them when P <= N, else consecutive slices of a permutation of them;
- "semantic_nerf" (Semantic-NeRF's own sampler, the baseline's default): one random training
  frame per step and N pixels of it drawn with replacement, as its trainer does.

Permutations come from a CPU generator seeded with (base seed, epoch), so a checkpoint only
needs the base seed, the epoch and the position to resume the exact same stream.
"""
from dataclasses import replace
from typing import NamedTuple

import torch


class Batch(NamedTuple):
    rays: torch.Tensor            # [B, 11] (models/rays.py layout)
    rgb: torch.Tensor             # [B, 3] ground-truth colour
    frame: torch.Tensor           # [B] training-frame index (CPU)
    v: torch.Tensor               # [B] row (CPU)
    u: torch.Tensor               # [B] column (CPU)


class RayBatcher:
    """Draws `n_rays` training rays per `next()` from the images `rgb` [N, H, W, 3] seen by
    `cameras` (models.cameras.Cameras of the training split)."""

    def __init__(self, cameras, rgb, n_rays, device, mode, frames=None, base_seed=None,
                 keep_on_cpu=False, pixels=None):
        self.n = int(n_rays)
        self.device = torch.device(device)
        self.mode = mode
        self.H, self.W = cameras.height, cameras.width
        self.num_frames = len(cameras)
        self.frames = torch.as_tensor(frames if frames is not None else range(self.num_frames)).long()
        if self.frames.numel() == 0:
            raise ValueError("no frames to sample rays from")
        if mode == "pixels":          # (frame, flat pixel index) of the given pixels
            frame, v, u = (torch.as_tensor(t).long() for t in pixels)
            if frame.numel() == 0:
                raise ValueError("no labelled pixel to sample rays from")
            self.pixels = (frame, v * self.W + u)
            self.n = min(self.n, int(frame.numel()))
        self.cameras = replace(cameras, poses=cameras.poses.to(self.device))   # poses moved once
        self.rgb = rgb.to(torch.device("cpu") if keep_on_cpu else self.device)
        self.base_seed = int(base_seed if base_seed is not None else torch.randint(0, 2**31 - 1, ()).item())
        self.gen = torch.Generator().manual_seed(self.base_seed)
        self.epoch, self.pos, self.perm = 0, 0, None

    # -- index streams ----------------------------------------------------------------------
    def _permutation(self):
        gen = torch.Generator().manual_seed(self.base_seed * 1000003 + self.epoch)
        count = self.pixels[0].numel() if self.mode == "pixels" else self.num_frames * self.H * self.W
        return torch.randperm(count, generator=gen)

    def indices(self):
        """(frame [N], flat pixel index v * W + u [N]) of the next batch, CPU long tensors."""
        hw = self.H * self.W
        if self.mode == "fixed":
            pix = torch.linspace(0, hw - 1, self.n).round().long()
            return torch.zeros_like(pix), pix
        if self.mode in ("no_batching", "unmasked"):
            frame = self.frames[torch.randint(len(self.frames), (), generator=self.gen)]
            pix = torch.randperm(hw, generator=self.gen)[:self.n]
            return frame.expand(pix.shape), pix
        if self.mode == "semantic_nerf":
            frame = self.frames[torch.randint(len(self.frames), (), generator=self.gen)]
            return frame.expand(self.n), torch.randint(hw, (self.n,), generator=self.gen)
        if self.mode == "pixels" and self.n == self.pixels[0].numel():
            return self.pixels
        if self.perm is None:
            self.perm = self._permutation()
        if self.pos + self.n > self.perm.numel():
            self.epoch, self.pos = self.epoch + 1, 0
            self.perm = self._permutation()
        flat = self.perm[self.pos:self.pos + self.n]
        self.pos += self.n
        if self.mode == "pixels":
            return self.pixels[0][flat], self.pixels[1][flat]
        return flat // hw, flat % hw

    def next(self):
        frame, pix = self.indices()
        v, u = pix // self.W, pix % self.W
        rays = self.ray_batch(frame, v, u)
        idx = (frame.to(self.rgb.device), v.to(self.rgb.device), u.to(self.rgb.device))
        rgb = self.rgb[idx].to(self.device, non_blocking=True)
        return Batch(rays, rgb, frame, v, u)

    def ray_batch(self, frame, v, u):
        """Rays [B, 11] on the training device of pixels (v[b], u[b]) of training frames frame[b]."""
        dev = self.device
        return self.cameras.pixel_rays(frame.to(dev), v.to(dev), u.to(dev))

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self):
        return {"base_seed": self.base_seed, "epoch": self.epoch, "pos": self.pos,
                "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.base_seed, self.epoch, self.pos = int(state["base_seed"]), int(state["epoch"]), int(state["pos"])
        if "gen" in state:        # (absent from the fine-tune protocol's earlier sampler state)
            self.gen.set_state(state["gen"])
        self.perm = self._permutation() if self.mode in ("batching", "pixels") else None
