"""Training-ray sampling (spec 3.7 step 1).

Rays are built on the fly from (frame, row, column) indices and the frame's pose, so no ray
table is stored. Modes, as the original:
- default ("batching"): consecutive slices of one random permutation of all training pixels,
  reshuffled when exhausted;
- `--no_batching`: one random training image per step, N distinct random pixels of it;
- `--sample_fixed`: image 0, N evenly spaced pixels;
- `--from_unmasked_only`: like no_batching but only among frames whose labels are given.

Permutations come from a CPU generator seeded with (base seed, epoch), so a checkpoint only
needs the base seed, the epoch and the position to resume the exact same stream.
"""
from typing import NamedTuple, Optional

import torch

from models.rays import rays_from_pixels


class Batch(NamedTuple):
    rays: torch.Tensor            # [B, 11]
    rgb: torch.Tensor             # [B, 3]
    frame: torch.Tensor           # [B] training-frame index (CPU)
    v: torch.Tensor               # [B] row (CPU)
    u: torch.Tensor               # [B] column (CPU)
    features: Optional[torch.Tensor] = None   # [B, D] descriptors
    labels: Optional[torch.Tensor] = None     # [B] semantic labels (0 = void)


class RayBatcher:
    def __init__(self, scene, n_rays, device, mode="batching", frames=None, with_features=False,
                 labels=None, base_seed=None, keep_on_cpu=False, convention="opencv"):
        self.scene = scene
        self.n = int(n_rays)
        self.device = torch.device(device)
        self.mode = mode
        self.H, self.W = scene.height, scene.width
        self.num_frames = len(scene.train)
        self.frames = torch.as_tensor(frames if frames is not None else range(self.num_frames)).long()
        if self.frames.numel() == 0:
            raise ValueError("no frames to sample rays from")
        data_device = torch.device("cpu") if keep_on_cpu else self.device
        self.rgb = scene.train.rgb.to(data_device)
        self.poses = scene.train.poses.to(self.device)
        self.labels = labels.to(data_device) if labels is not None else None
        self.features = scene.train.features if with_features else None
        self.convention = convention
        self.base_seed = int(base_seed if base_seed is not None else torch.randint(0, 2**31 - 1, ()).item())
        self.gen = torch.Generator().manual_seed(self.base_seed)
        self.epoch, self.pos, self.perm = 0, 0, None

    # -- index streams ----------------------------------------------------------------------
    def _permutation(self):
        gen = torch.Generator().manual_seed(self.base_seed * 1000003 + self.epoch)
        return torch.randperm(self.num_frames * self.H * self.W, generator=gen)

    def _indices(self):
        hw = self.H * self.W
        if self.mode == "fixed":
            pix = torch.linspace(0, hw - 1, self.n).round().long()
            return torch.zeros_like(pix), pix
        if self.mode in ("no_batching", "unmasked"):
            frame = self.frames[torch.randint(len(self.frames), (), generator=self.gen)]
            pix = torch.randperm(hw, generator=self.gen)[:self.n]
            return frame.expand(pix.shape), pix
        if self.perm is None:
            self.perm = self._permutation()
        if self.pos + self.n > self.perm.numel():
            self.epoch, self.pos = self.epoch + 1, 0
            self.perm = self._permutation()
        flat = self.perm[self.pos:self.pos + self.n]
        self.pos += self.n
        return flat // hw, flat % hw

    def next(self):
        frame, pix = self._indices()
        v, u = pix // self.W, pix % self.W
        rays = self.ray_batch(frame, v, u)
        idx = (frame.to(self.rgb.device), v.to(self.rgb.device), u.to(self.rgb.device))
        rgb = self.rgb[idx].to(self.device, non_blocking=True)
        feats = self.features.gather(frame, v, u, self.device) if self.features is not None else None
        labels = self.labels[idx].to(self.device) if self.labels is not None else None
        return Batch(rays, rgb, frame, v, u, feats, labels)

    def ray_batch(self, frame, v, u):
        dev = self.device
        return rays_from_pixels(self.poses[frame.to(dev)], v.to(dev), u.to(dev), self.scene.intrinsics,
                                self.scene.near, self.scene.far, self.convention)

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self):
        return {"base_seed": self.base_seed, "epoch": self.epoch, "pos": self.pos,
                "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.base_seed, self.epoch, self.pos = int(state["base_seed"]), int(state["epoch"]), int(state["pos"])
        self.gen.set_state(state["gen"])
        self.perm = self._permutation() if self.mode == "batching" else None
