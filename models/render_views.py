"""Render a set of views to disk: rgb / depth / disparity PNGs, videos, PSNR against ground truth."""
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.background import BackgroundWriter, HostCopy
from utils.colormaps import depth_to_rgb
from utils.image_io import to8b, write_png, write_video


def render_chunk_size(renderer):
    """Rays per no-gradient render call of whole views (propagation, the Semantic-NeRF readout):
    about 4M coarse + fine points on CUDA, 128k on the CPU, at least 256 rays."""
    s = renderer.opts.n_samples + renderer.opts.n_importance
    points = 1 << 22 if renderer.device.type == "cuda" else 1 << 17
    return max(256, points // s)


def scaled_images(images, factor):
    """GT images [N, H, W, 3] down-scaled like the original (bilinear F.interpolate)."""
    if factor == 1:
        return images
    x = images.permute(0, 3, 1, 2)
    x = F.interpolate(x, scale_factor=1.0 / factor, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


def psnr(mse):
    """-10 log10(mse) in dB, the MSE floored at 1e-12."""
    return float(-10.0 * np.log10(max(float(mse), 1e-12)))


@torch.no_grad()
def render_views(renderer, cameras, gt_rgb, out_dir=None, factor=1, train_mode=False, progress=True, writers=4):
    """Render every view of `cameras` at 1/factor resolution; optionally write PNGs and videos.

    gt_rgb: [N, H, W, 3] full-resolution ground truth (down-scaled here like the original).
    Returns dict(rgb [N,h,w,3], depth [N,h,w], disp, psnr (mean of per-view PSNR), mse (pooled),
    psnr_per_view).

    With `out_dir`, each view's rgb, depth and vis_depth PNGs are written by `writers` background
    threads while the next view renders (utils/background.py: the view is copied to the host
    without a device sync); the disparity PNGs (normalised by the largest disparity of all views)
    and the videos follow the last view. The files are those of `write_renders` (writers=0: written
    in the caller, the reference tests/test_background_writes.py compares with)."""
    cams = cameras.scaled(factor)
    h, w = cams.height, cams.width
    gt = scaled_images(gt_rgb, factor)
    copies, frames = [], []
    it = range(len(cams))
    if progress:
        it = tqdm(it, desc=f"render {len(cams)} views", leave=False, dynamic_ncols=True)
    with BackgroundWriter(writers, enabled=out_dir is not None and writers > 0) as pool:
        for i in it:
            rays = cams.image_rays(i, device=renderer.device)
            out = renderer.render_chunked(rays, train=train_mode, keys=("rgb", "depth", "disp"))
            copies.append(HostCopy([out["rgb"].reshape(h, w, 3).clamp(0, 1), out["depth"].reshape(h, w),
                                    out["disp"].reshape(h, w)]))
            if out_dir is not None:
                frames.append(pool.submit(_write_view, out_dir, i, copies[-1], cams.near, cams.far))
        views = [c.get() for c in copies]
        rgb, depth, disp = (torch.stack([v[k] for v in views]) for k in range(3))
        if out_dir is not None:
            _write_disparities(pool, out_dir, disp)
            written = [f.result() for f in frames]
            pool.submit(write_video, os.path.join(out_dir, "rgb.mp4"), [f[0] for f in written])
            pool.submit(write_video, os.path.join(out_dir, "dep.mp4"), [f[1] for f in written])
    per_view = ((rgb - gt) ** 2).mean(dim=(1, 2, 3))
    return dict(rgb=rgb, depth=depth, disp=disp, psnr=float(np.mean([psnr(m) for m in per_view])),
                mse=float(per_view.mean()), psnr_per_view=[psnr(m) for m in per_view])


def _write_view(out_dir, i, copy, near, far):
    rgb, depth, _ = copy.get()
    return write_view_renders(out_dir, i, rgb, depth, near, far)


def write_view_renders(out_dir, i, rgb, depth, near, far):
    """rgb_<i>.png, depth_<i>.png and vis_depth_<i>.png of one view (CPU tensors rgb [h, w, 3] in
    [0, 1], depth [h, w]); returns the (rgb, vis_depth) uint8 frames of the videos."""
    os.makedirs(out_dir, exist_ok=True)
    rgb8 = to8b(rgb.numpy())
    write_png(os.path.join(out_dir, f"rgb_{i:03d}.png"), rgb8)
    d = depth.numpy()
    write_png(os.path.join(out_dir, f"depth_{i:03d}.png"), np.clip(d * 1000.0, 0, 65535).astype(np.uint16))
    vis = depth_to_rgb(d, near, far)
    write_png(os.path.join(out_dir, f"vis_depth_{i:03d}.png"), vis)
    return rgb8, vis


def _write_disparities(pool, out_dir, disp):
    """disp_<i>.png of every view, normalised by the largest disparity of all (jobs of `pool`)."""
    disp_max = float(disp.max()) or 1.0
    for i in range(disp.shape[0]):
        pool.submit(lambda i=i: write_png(os.path.join(out_dir, f"disp_{i:03d}.png"), to8b(disp[i].numpy() / disp_max)))


def write_renders(out_dir, rgb, depth, disp, near, far, pool=None):
    """Write rgb_<i>.png (8-bit), depth_<i>.png (16-bit millimetres), vis_depth_<i>.png (colour
    map over [near, far]), disp_<i>.png (normalised by the largest disparity) and rgb.mp4 /
    dep.mp4 for rgb [N, h, w, 3], depth and disp [N, h, w] (CPU tensors). `pool`: a
    utils.background.BackgroundWriter to write with (else written here)."""
    os.makedirs(out_dir, exist_ok=True)
    own = pool is None
    pool = BackgroundWriter(enabled=False) if own else pool
    frames = [pool.submit(write_view_renders, out_dir, i, rgb[i], depth[i], near, far) for i in range(rgb.shape[0])]
    _write_disparities(pool, out_dir, disp)
    written = [f.result() for f in frames]
    pool.submit(write_video, os.path.join(out_dir, "rgb.mp4"), [f[0] for f in written])
    pool.submit(write_video, os.path.join(out_dir, "dep.mp4"), [f[1] for f in written])
