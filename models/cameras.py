"""Pinhole cameras: poses, intrinsics, image size, depth range and axis convention in one object.

Poses are camera-to-world 4x4 matrices. Pixel (u = column, v = row) has integer coordinates at
its centre; with the OpenCV convention (x right, y down, z forward) its camera-frame direction is
((u - cx)/fx, (v - cy)/fy, 1), not normalised, so rendered depth is z-depth. Rays are packed as
[..., 11] = [o(3), d(3), near, far, viewdir(3)] (models/rays.py).
"""
from dataclasses import dataclass

import torch

from models.rays import image_rays, rays_from_pixels


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float

    def scaled(self, factor):
        """Intrinsics for an image down-scaled by an integer factor (pixel centres at integers)."""
        if factor == 1:
            return self
        return Intrinsics(self.fx / factor, self.fy / factor,
                          (self.cx + 0.5) / factor - 0.5, (self.cy + 0.5) / factor - 0.5)


@dataclass(frozen=True)
class Cameras:
    poses: torch.Tensor          # [N, 4, 4] camera-to-world
    intrinsics: Intrinsics
    height: int
    width: int
    near: float = 0.1
    far: float = 10.0
    convention: str = "opencv"   # opencv | opengl

    def __len__(self):
        return int(self.poses.shape[0])

    def scaled(self, factor):
        """The same cameras rendering images down-scaled by an integer factor."""
        if factor == 1:
            return self
        return Cameras(self.poses, self.intrinsics.scaled(factor), self.height // factor, self.width // factor,
                       self.near, self.far, self.convention)

    def subset(self, index):
        """Cameras of the given view indices (a list or a tensor)."""
        return Cameras(self.poses[torch.as_tensor(index, dtype=torch.long)], self.intrinsics, self.height,
                       self.width, self.near, self.far, self.convention)

    def image_rays(self, i, device=None, dtype=None):
        """All rays of view i, row-major: [H*W, 11]."""
        pose = self.poses[i].to(device=device, dtype=dtype)
        return image_rays(pose, self.height, self.width, self.intrinsics, self.near, self.far, self.convention)

    def pixel_rays(self, view, v, u):
        """Rays [B, 11] of pixels (v[b], u[b]) of views view[b] (tensors on one device)."""
        poses = self.poses.to(v.device)[view]
        return rays_from_pixels(poses, v, u, self.intrinsics, self.near, self.far, self.convention)
