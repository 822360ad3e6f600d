"""Where a scene pixel comes from: each frame's original image (size, intrinsics, lens distortion)
and the maps between its pixels and the scene's pixel grid (the config's width x height).

A loader turns an original image into a scene image in two steps:
1. (only when the frame's intrinsics or distortion differ from the scene's common camera)
   resample it into the common pinhole camera `common` = (fx, fy, cx, cy, height, width):
   undistortion and a change of intrinsics in one `cv2.remap` (`resample_to_common`);
2. resize to the config size with half-pixel centres (datasets.scene.resize_image).

Every coordinate here uses the project's pixel convention: pixel (x = column, y = row) has integer
coordinates at its centre (models/cameras.py). The maps run both ways: `scene_coords` takes
original-image pixels (user clicks, scribbles) to the scene grid, and `scene_grid` gives, for every
original pixel, where to sample a scene-resolution map (the per-frame label export).

Distortion: OpenCV's model (k1, k2, p1, p2, k3), the one nerfstudio's OPENCV camera and COLMAP
use. Undistorting a point inverts it by fixed-point iteration (as cv2.undistortPoints) run until
the re-distorted point is within 1e-9 of the input in normalised coordinates.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np


@dataclass(frozen=True)
class FrameSource:
    name: str                                  # output key of the frame (file stem, unique in the scene)
    file: str                                  # the frame's file as the capture lists it
    path: str                                  # the colour image on disk
    height: int                                # original image size
    width: int
    K: Tuple[float, float, float, float]       # (fx, fy, cx, cy) of the original image
    dist: Optional[Tuple[float, ...]] = None   # OpenCV (k1, k2, p1, p2, k3); None = no distortion
    common: Optional[Tuple[float, float, float, float, int, int]] = None   # (fx, fy, cx, cy, h, w); None = K

    @property
    def target(self):
        """(fx, fy, cx, cy, height, width) of the pinhole image step 1 produces."""
        return self.common if self.common is not None else (*self.K, self.height, self.width)

    @property
    def resampled(self):
        """Whether step 1 changes the image (distortion, or other intrinsics or size)."""
        return self.dist is not None or tuple(self.target) != (*self.K, self.height, self.width)

    def to_common(self, x, y):
        """Original pixel coordinates -> coordinates in the common pinhole image (float64 arrays)."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if not self.resampled:
            return x, y
        fx, fy, cx, cy = self.K
        xn, yn = (x - cx) / fx, (y - cy) / fy
        if self.dist is not None:
            xn, yn = undistort_normalised(xn, yn, self.dist)
        tfx, tfy, tcx, tcy, _, _ = self.target
        return xn * tfx + tcx, yn * tfy + tcy

    def scene_coords(self, x, y, hw):
        """Original pixel coordinates -> continuous coordinates in the scene grid `hw` = (H, W)."""
        xc, yc = self.to_common(x, y)
        _, _, _, _, h, w = self.target
        return (xc + 0.5) * hw[1] / w - 0.5, (yc + 0.5) * hw[0] / h - 0.5

    def scene_pixels(self, x, y, hw):
        """Original pixel (integer or not) -> the scene pixel (u, v) whose cell contains it (int64)."""
        u, v = self.scene_coords(x, y, hw)
        return np.floor(u + 0.5).astype(np.int64), np.floor(v + 0.5).astype(np.int64)

    def scene_grid(self, hw):
        """[height, width, 2] float32: the scene-grid (u, v) of every original pixel."""
        yy, xx = np.mgrid[0:self.height, 0:self.width]
        u, v = self.scene_coords(xx.ravel(), yy.ravel(), hw)
        return np.stack([u, v], -1).reshape(self.height, self.width, 2).astype(np.float32)


def camera_matrix(fx, fy, cx, cy):
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def distort_normalised(xn, yn, dist):
    """OpenCV's lens model on normalised coordinates: (k1, k2, p1, p2[, k3])."""
    k1, k2, p1, p2, k3 = (tuple(dist) + (0.0,) * 5)[:5]
    r2 = xn * xn + yn * yn
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = xn * radial + 2 * p1 * xn * yn + p2 * (r2 + 2 * xn * xn)
    yd = yn * radial + p1 * (r2 + 2 * yn * yn) + 2 * p2 * xn * yn
    return xd, yd


def undistort_normalised(xd, yd, dist, iterations=200, tol=1e-9):
    """Inverse of `distort_normalised` by fixed-point iteration (cv2.undistortPoints' scheme)."""
    xd, yd = np.asarray(xd, np.float64), np.asarray(yd, np.float64)
    xn, yn = xd.copy(), yd.copy()
    for _ in range(iterations):
        dx, dy = distort_normalised(xn, yn, dist)
        ex, ey = dx - xd, dy - yd
        if max(np.abs(ex).max(initial=0.0), np.abs(ey).max(initial=0.0)) < tol:
            break
        xn, yn = xn - ex, yn - ey
    return xn, yn


def resample_to_common(image, source, interpolation):
    """Step 1 of the module docstring for one [h, w(, C)] image of `source` (a FrameSource):
    undistort and re-project into the common camera with `cv2.remap` (`interpolation`: a cv2
    INTER_* flag; INTER_NEAREST for labels and depth). Pixels that see outside the original
    image become 0. Returns the image unchanged when nothing differs."""
    if not source.resampled:
        return image
    fx, fy, cx, cy, h, w = source.target
    dist = np.zeros(5) if source.dist is None else np.asarray((tuple(source.dist) + (0.0,) * 5)[:5], np.float64)
    mx, my = cv2.initUndistortRectifyMap(camera_matrix(*source.K), dist, None, camera_matrix(fx, fy, cx, cy),
                                         (int(w), int(h)), cv2.CV_32FC1)
    return cv2.remap(image, mx, my, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
