"""Ray casting one view of a synthetic room (see `datasets/synthetic/__init__.py`).

Pinhole camera, hfov 90 deg: fx = fy = W/2, cx = (W-1)/2, cy = (H-1)/2; pixel (u, v) looks along
R_wc ((u-cx)/fx, (v-cy)/fy, 1), so the ray parameter of a hit is its z-depth. Depth and labels
come from the pixel-centre ray; pixels on an object or colour edge get the mean colour of
ss x ss sub-pixel rays (anti-aliasing).
"""
import numpy as np

import datasets.synthetic.geometry as geo


# ------------------------------------------------------------------------------------------------
# camera
# ------------------------------------------------------------------------------------------------
def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    """Camera-to-world 4x4 with OpenCV axes (x right, y down, z forward) looking at target."""
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], 1)
    pose[:3, 3] = eye
    return pose


def pixel_directions(height, width, offsets=((0.0, 0.0),), pixels=None):
    """Camera-frame directions [P, S, 3] (z = 1) of sub-pixel samples (dv, du) of the pixels
    `pixels` (flat row-major indices; default all, in row-major order)."""
    fx = fy = width / 2.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    if pixels is None:
        pixels = np.arange(height * width)
    v, u = np.divmod(pixels, width)
    off = np.asarray(offsets, float)
    vv = v[:, None] + off[None, :, 0]
    uu = u[:, None] + off[None, :, 1]
    return np.stack([(uu - cx) / fx, (vv - cy) / fy, np.ones_like(uu)], -1)


def _shade_rays(room, pose, dirs):
    d = dirs.reshape(-1, 3) @ pose[:3, :3].T
    o = pose[:3, 3]
    hits = geo.cast(room, o, d)
    col, nrm, emissive, p = geo.surface(room, o, d, hits)
    return geo.shade(room, col, nrm, emissive, p), hits


def edge_pixels(obj, rgb, contrast=0.05):
    """[H, W] bool: pixels whose object or colour differs from a 4-neighbour (both sides marked)."""
    mask = np.zeros(obj.shape, bool)
    for ax in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        diff = (obj[tuple(a)] != obj[tuple(b)]) | (np.abs(rgb[tuple(a)] - rgb[tuple(b)]).max(-1) > contrast)
        mask[tuple(a)] |= diff
        mask[tuple(b)] |= diff
    return mask


def render_frame(room, pose, height, width, ss=3):
    """Ray cast one view. Returns rgb float32 [H, W, 3] in [0, 1], z-depth [H, W] (metres) and
    the object index [H, W] (into room.all_objects), depth and labels from the centre rays.

    Anti-aliasing (ss > 1, odd): pixels on an object or colour edge (`edge_pixels`) get the mean
    colour of an ss x ss grid of sub-pixel rays (centre included); the others keep the centre's.
    """
    rgb, hits = _shade_rays(room, pose, pixel_directions(height, width))
    depth = hits.t.reshape(height, width)
    obj = hits.obj.reshape(height, width)
    rgb = rgb.reshape(height, width, 3)
    if ss > 1:
        idx = np.nonzero(edge_pixels(obj, rgb).ravel())[0]
        off = (np.arange(ss) - (ss - 1) / 2) / ss
        offsets = [(dv, du) for dv in off for du in off if (dv, du) != (0.0, 0.0)]
        if len(idx):
            sub, _ = _shade_rays(room, pose, pixel_directions(height, width, offsets, idx))
            flat = rgb.reshape(-1, 3)
            flat[idx] = (flat[idx] + sub.reshape(len(idx), len(offsets), 3).sum(1)) / (ss * ss)
    return rgb.astype(np.float32), depth, obj
