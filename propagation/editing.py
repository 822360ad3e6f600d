"""--perturb_gradient: scene editing / selection along a clicked pixel's gradient.

For each of --N_rays pixels of one training view (a random view and random distinct pixels;
--sample_fixed: view 0 and evenly spaced pixels) the fine rgb_linear.weight is moved by
t * diag(r, g, b)/255 * J (J: the pixel's Jacobian, t = --perturb_t, r/g/b = --perturb_r/g/b;
--t_iter sweeps t = 0.00 .. 0.99 with r = g = b = 255) and every test view is rendered with the
edited weight. **There are --N_rays edits (1024 by default, as the original), each rendering all
test views: pass --N_rays 1 for a single edit.**

Outputs (the original's layout):
  <save_dir>/perturbed/            the training view (rgb/depth/disp PNGs), and per edit j
                                   `<j>_rgb_visualize_perturbed.png` (the pixel in black) and
                                   `<j>_visualize_perturbed.png` (a white image with a black dot)
  <save_dir>/unperturbed_test/     the unedited test renders (rgb, depth, disp, vis_depth)
  <save_dir>/gradient/perturbed_test_<j>/   (with --t_iter: gradient_<0..99>/perturbed_test_<j>/)
      rgb_<k:03d>.png              the edited render of test view k
      <k>_rgb_difference.png       the unedited render with pixels whose grey level moved by more
                                   than 1e-3 set to black
      <k>_heatmap.png              |grey-level change| (signed with --no_abs) smoothed by a Gaussian
                                   (sigma 1, 'nearest' border, as scipy.ndimage.gaussian_filter),
                                   on the viridis ramp between its min and max (utils.colormaps)
The edited colours of a test view come from one render pass per group of edits (exact: only
the last layer changes, propagation/responses.py); depth and disparity do not change under an
rgb_linear edit, so they are written once, in unperturbed_test/; renders are deterministic
unless --noisy_propagation (then each edit re-renders in training mode). docs/PROPAGATION.md,
decisions 1 and 23, compares this with the original.
"""
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoints import restore_checkpoint
from models.render_views import render_chunk_size, write_renders
from propagation.pixels import pixel_jacobians
from propagation.responses import head_colour_deltas, perturbation_matrices, perturbed_weight, render_chunks
from utils.atomic import write_json_atomic
from utils.background import BackgroundWriter, HostCopy
from utils.colormaps import depth_to_rgb
from utils.image_io import to8b, write_png
from utils.metrics import to_jsonable

GROUP_BYTES = 256 << 20
PENDING_BYTES = 1 << 30     # edited views copied to the host and waiting for the writers, at most about


def gaussian_filter_nearest(x, sigma=1.0, truncate=4.0):
    """scipy.ndimage.gaussian_filter(x, sigma, mode='nearest') for [..., H, W] tensors."""
    radius = int(truncate * sigma + 0.5)
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    shape = x.shape
    y = x.reshape(-1, 1, shape[-2], shape[-1])
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return y.reshape(shape)


def heatmap_image(diff):
    """[H, W] float -> [H, W, 3] uint8 on the viridis ramp between the map's min and max."""
    d = np.asarray(diff, dtype=np.float64)
    lo, hi = float(d.min()), float(d.max())
    return depth_to_rgb(d, lo, hi if hi > lo else lo + 1.0)


def choose_pixels(num_train, hw, n, fixed, rng):
    """(training view index, [n] flat pixel indices), as the original's sampling_index / sample_fixed."""
    if fixed:
        return 0, np.array([int(i * hw / n) for i in range(n)], dtype=np.int64)
    if n > hw:
        n = hw
    return int(rng.integers(num_train)), np.sort(rng.choice(hw, size=n, replace=False))


def render_rgb(renderer, rays, chunk, train):
    return renderer.render_chunked(rays, train=train, chunk=chunk, keys=("rgb", "depth", "disp"))


def perturb_gradient(opts, scene, renderer, rng):
    """Run the edits of opts.edit (module doc) with the checkpoint opts.ckpt_path; write the
    outputs into opts.save_dir; return the metrics dict."""
    edit, save_dir = opts.edit, opts.save_dir
    step = int(restore_checkpoint(opts.ckpt_path, renderer.eval())["global_step"])
    t0 = time.perf_counter()
    dev = renderer.device
    factor = opts.test_viz_factor
    train_cams = scene.cameras(scene.train).scaled(factor)
    test_cams = scene.cameras(scene.test).scaled(factor)
    h, w = train_cams.height, train_cams.width
    chunk = render_chunk_size(renderer)
    view, pix = choose_pixels(len(scene.train), h * w, edit.n_pixels, edit.sample_fixed, rng)
    n = len(pix)
    edits_t = [k / 100.0 for k in range(100)] if edit.t_iter else [edit.perturb_t]
    total = n * len(edits_t)
    print(f"[perturb_gradient] {n} pixel(s) of training view {scene.train.ids[view]} x {len(edits_t)} step(s) t "
          f"= {total} edit(s), each rendering all {len(scene.test)} test views"
          + (f". NOTE: one edit per sampled pixel (--N_rays {n}); pass --N_rays 1 for a single edit"
             if n > 1 else ""), flush=True)

    train_rays = train_cams.image_rays(view, dev)
    pert_dir = os.path.join(save_dir, "perturbed")
    out = render_rgb(renderer, train_rays, chunk, edit.noisy)
    train_rgb = out["rgb"].reshape(h, w, 3).clamp(0, 1).cpu()
    write_renders(pert_dir, train_rgb[None], out["depth"].reshape(1, h, w).cpu(), out["disp"].reshape(1, h, w).cpu(),
                  scene.near, scene.far)

    jac, _ = pixel_jacobians(renderer, train_rays[torch.as_tensor(pix, device=dev)], edit.noisy, None, chunk)
    rgb8 = to8b(train_rgb.numpy())
    for j, p in enumerate(pix.tolist()):
        marked = rgb8.copy().reshape(-1, 3)
        marked[p] = 0
        write_png(os.path.join(pert_dir, f"{j}_rgb_visualize_perturbed.png"), marked.reshape(h, w, 3))
        dot = np.full(h * w, 255, np.uint8)
        dot[p] = 0
        write_png(os.path.join(pert_dir, f"{j}_visualize_perturbed.png"), dot.reshape(h, w))

    edits = [(j, ti) for j in range(n) for ti in range(len(edits_t))]
    group = max(1, GROUP_BYTES // (h * w * 3 * 4))
    dtype = renderer.fine.rgb_linear.weight.dtype
    base = []            # per test view: HostCopy of its unedited rgb, depth, disp (the first group's renders)
    # one render pass per test view and group of edits gives the unedited view and every edit of the
    # group (deterministic renders); each view's results are copied to the host without a device sync
    # and written by the pool while the GPU renders the next views (at most about PENDING_BYTES of
    # edited views waiting)
    workers = min(16, (os.cpu_count() or 4))
    view_bytes = min(group, len(edits)) * h * w * 3 * 4
    with BackgroundWriter(workers, max_pending=max(2, min(4 * workers, PENDING_BYTES // view_bytes))) as pool:
        for g0 in range(0, len(edits), group):
            chunk_edits = edits[g0:g0 + group]
            deltas = torch.stack([jac[j] * edits_t[ti] for j, ti in chunk_edits])          # t * J, float64
            M = perturbation_matrices(deltas, 1.0, edit.colour, dtype=dtype, device=dev)
            for k in range(len(test_cams)):
                rays = test_cams.image_rays(k, dev)
                if edit.noisy:      # the original's training-mode renders: each render its own draw
                    if g0 == 0:
                        base.append(HostCopy(list(render_rgb(renderer, rays, chunk, True).values())))
                    edited = edited_colours(renderer, rays, M, chunk, True)
                else:
                    edited, unedited = edited_colours_and_view(renderer, rays, M, chunk)
                    if g0 == 0:
                        base.append(HostCopy([unedited["rgb"], unedited["depth"], unedited["disp"]]))
                copy = HostCopy([edited.clamp(0, 1).reshape(len(chunk_edits), h, w, 3)])
                pool.submit(write_edits, save_dir, k, copy, base[k], chunk_edits, edit.t_iter, edit.no_abs, h, w)
        views = [b.get() for b in base]
        write_renders(os.path.join(save_dir, "unperturbed_test"),
                      torch.stack([v[0].reshape(h, w, 3).clamp(0, 1) for v in views]),
                      torch.stack([v[1].reshape(h, w) for v in views]), torch.stack([v[2].reshape(h, w) for v in views]),
                      scene.near, scene.far, pool=pool)
    seconds = time.perf_counter() - t0
    metrics = dict(mode="perturb_gradient", checkpoint=opts.ckpt_path, checkpoint_step=step,
                   training_view=int(scene.train.ids[view]), pixels=[divmod(int(p), w) for p in pix],
                   t=edits_t, colour=list(edit.colour), edits=total, test_views=len(scene.test),
                   deterministic=not edit.noisy, seconds=seconds, outputs=save_dir)
    write_json_atomic(os.path.join(save_dir, "metrics.json"), to_jsonable(metrics))
    print(f"[perturb_gradient] {total} edit(s) x {len(scene.test)} test views in {seconds:.1f} s; outputs in "
          f"{save_dir}", flush=True)
    return metrics


def edited_colours(renderer, rays, M, chunk, noisy):
    """[D, N, 3] colours C'_d of all rays under each edit W <- W + M[d]: C + (C'_d - C) from one
    render pass (exact), or with `noisy` one training-mode re-render per edit."""
    if noisy:
        outs = []
        for d in range(M.shape[0]):
            with perturbed_weight(renderer, M[d]):
                outs.append(renderer.render_chunked(rays, train=True, chunk=chunk, keys=("rgb",))["rgb"])
        return torch.stack(outs)
    out = torch.empty(M.shape[0], rays.shape[0], 3, dtype=M.dtype, device=M.device)
    for i, r in render_chunks(renderer, rays, chunk):
        delta = head_colour_deltas(r["fine"], M)                                  # [B, D, 3]
        out[:, i:i + delta.shape[0]] = (r["rgb"][:, None, :] + delta).permute(1, 0, 2)
    return out


def edited_colours_and_view(renderer, rays, M, chunk):
    """(edited colours [D, N, 3] as `edited_colours`, the unedited {rgb, depth, disp} of the rays)
    from one deterministic render pass."""
    out = torch.empty(M.shape[0], rays.shape[0], 3, dtype=M.dtype, device=M.device)
    view = {k: torch.empty(rays.shape[0], *((3,) if k == "rgb" else ()), dtype=M.dtype, device=M.device)
            for k in ("rgb", "depth", "disp")}
    for i, r in render_chunks(renderer, rays, chunk):
        delta = head_colour_deltas(r["fine"], M)                                  # [B, D, 3]
        b = delta.shape[0]
        out[:, i:i + b] = (r["rgb"][:, None, :] + delta).permute(1, 0, 2)
        for k, v in view.items():
            v[i:i + b] = r[k]
    return out, view


def write_edits(save_dir, k, copy, base, chunk_edits, t_iter, no_abs, h, w):
    """Write test view k under every edit of a group (`write_edit`), once its host copies have landed."""
    edited = copy.get()[0]
    base_k = base.get()[0].reshape(h, w, 3).clamp(0, 1)
    for i, (j, ti) in enumerate(chunk_edits):
        folder = f"gradient_{ti}" if t_iter else "gradient"
        write_edit(os.path.join(save_dir, folder, f"perturbed_test_{j}"), k, edited[i], base_k, no_abs)


def write_edit(path, k, edited, base, no_abs):
    """Write one edited test view: rgb, rgb_difference, heatmap."""
    os.makedirs(path, exist_ok=True)
    write_png(os.path.join(path, f"rgb_{k:03d}.png"), to8b(edited.numpy()))
    diff = edited.mean(-1) - base.mean(-1)
    if not no_abs:
        diff = diff.abs()
    marked = to8b(base.numpy())
    marked[(diff > 1e-3).numpy()] = 0
    write_png(os.path.join(path, f"{k}_rgb_difference.png"), marked)
    heat = gaussian_filter_nearest(diff.to(torch.float64)).numpy()
    write_png(os.path.join(path, f"{k}_heatmap.png"), heatmap_image(heat))
