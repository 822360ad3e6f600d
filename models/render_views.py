"""Render a set of views to disk: rgb / depth / disparity PNGs, videos, PSNR against ground truth."""
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

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
def render_views(renderer, cameras, gt_rgb, out_dir=None, factor=1, train_mode=False, progress=True):
    """Render every view of `cameras` at 1/factor resolution; optionally write PNGs and videos.

    gt_rgb: [N, H, W, 3] full-resolution ground truth (down-scaled here like the original).
    Returns dict(rgb [N,h,w,3], depth [N,h,w], disp, psnr (mean of per-view PSNR), mse (pooled),
    psnr_per_view).
    """
    cams = cameras.scaled(factor)
    h, w = cams.height, cams.width
    gt = scaled_images(gt_rgb, factor)
    rgbs, depths, disps = [], [], []
    it = range(len(cams))
    if progress:
        it = tqdm(it, desc=f"render {len(cams)} views", leave=False, dynamic_ncols=True)
    for i in it:
        rays = cams.image_rays(i, device=renderer.device)
        out = renderer.render_chunked(rays, train=train_mode, keys=("rgb", "depth", "disp"), out_device="cpu")
        rgbs.append(out["rgb"].reshape(h, w, 3).clamp(0, 1))
        depths.append(out["depth"].reshape(h, w))
        disps.append(out["disp"].reshape(h, w))
    rgb, depth, disp = torch.stack(rgbs), torch.stack(depths), torch.stack(disps)
    per_view = ((rgb - gt) ** 2).mean(dim=(1, 2, 3))
    result = dict(rgb=rgb, depth=depth, disp=disp, psnr=float(np.mean([psnr(m) for m in per_view])),
                  mse=float(per_view.mean()), psnr_per_view=[psnr(m) for m in per_view])
    if out_dir is not None:
        write_renders(out_dir, rgb, depth, disp, cams.near, cams.far)
    return result


def write_renders(out_dir, rgb, depth, disp, near, far):
    """Write rgb_<i>.png (8-bit), depth_<i>.png (16-bit millimetres), vis_depth_<i>.png (colour
    map over [near, far]), disp_<i>.png (normalised by the largest disparity) and rgb.mp4 /
    dep.mp4 for rgb [N, h, w, 3], depth and disp [N, h, w] (CPU tensors)."""
    os.makedirs(out_dir, exist_ok=True)
    vis_depths, rgb8 = [], []
    disp_max = float(disp.max()) or 1.0
    for i in range(rgb.shape[0]):
        rgb8.append(to8b(rgb[i].numpy()))
        write_png(os.path.join(out_dir, f"rgb_{i:03d}.png"), rgb8[-1])
        d = depth[i].numpy()
        write_png(os.path.join(out_dir, f"depth_{i:03d}.png"), np.clip(d * 1000.0, 0, 65535).astype(np.uint16))
        vis = depth_to_rgb(d, near, far)
        vis_depths.append(vis)
        write_png(os.path.join(out_dir, f"vis_depth_{i:03d}.png"), vis)
        write_png(os.path.join(out_dir, f"disp_{i:03d}.png"), to8b(disp[i].numpy() / disp_max))
    write_video(os.path.join(out_dir, "rgb.mp4"), rgb8)
    write_video(os.path.join(out_dir, "dep.mp4"), vis_depths)
