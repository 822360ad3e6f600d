"""From response maps to label indices, batched in torch.

2D, per image and per channel (the original's numpy/OpenCV loop, for all channels at once):
  1. clip at 0.8 (values above 0.8 become 0.8; with --no_abs negative values stay);
  2. 3x3 Gaussian blur, kernel [1/4, 1/2, 1/4] outer itself (OpenCV's GaussianBlur with ksize 3
     and sigma 0), border reflect-101 (OpenCV's default), over H and W;
  3. divide by (max + 1e-7);
  4. all zeros when std < 0.05 and mean < 0.01 ("this label is not in the view");
then argmax over channels (a softmax over channels comes first only where it changes the result:
--spatial multiplies it by distance weights; docs/PROPAGATION.md, decision 19).

3D: optional per-image max normalisation (--normalize_2d), then argmax.
"""
import torch
import torch.nn.functional as F

CLIP = 0.8
STD_THRESHOLD = 0.05
MEAN_THRESHOLD = 0.01
EPS = 1e-7


def _pad_dim(x, dim):
    """Pad one pixel on both sides of dim (-2 or -1) of a [N, 1, H, W] tensor, reflect-101; a
    dimension of size 1 reflects onto itself (OpenCV's rule), i.e. replicate."""
    pad = (0, 0, 1, 1) if dim == -2 else (1, 1, 0, 0)
    mode = "reflect" if x.shape[dim] > 1 else "replicate"
    return F.pad(x, pad, mode=mode)


def gaussian_blur3(x):
    """3x3 Gaussian blur of [..., H, W], identical to cv2.GaussianBlur(x, (3, 3), 0) on each
    [H, W] image (separable [1/4, 1/2, 1/4], reflect-101 border)."""
    shape = x.shape
    h, w = shape[-2:]
    y = x.reshape(-1, 1, h, w)
    y = _pad_dim(y, -2)
    y = 0.25 * y[:, :, :-2] + 0.5 * y[:, :, 1:-1] + 0.25 * y[:, :, 2:]
    y = _pad_dim(y, -1)
    y = 0.25 * y[..., :-2] + 0.5 * y[..., 1:-1] + 0.25 * y[..., 2:]
    return y.reshape(shape)


def postprocess_2d(resp, clip=CLIP):
    """The original's per-image post-processing of [..., H, W] response maps (module doc)."""
    x = torch.clamp(resp, max=clip)
    x = gaussian_blur3(x)
    x = x / (x.amax(dim=(-2, -1), keepdim=True) + EPS)
    std = x.std(dim=(-2, -1), correction=0, keepdim=True)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    invisible = (std < STD_THRESHOLD) & (mean < MEAN_THRESHOLD)
    return torch.where(invisible, torch.zeros_like(x), x)


def labels_2d(resp, spatial=None):
    """Label indices [..., H, W] from raw responses [..., K, H, W].

    spatial: optional [..., K, H, W] weights (already a softmax over K); then the index is
    argmax(softmax(post-processed) * spatial), as the original's --spatial.
    """
    p = postprocess_2d(resp)
    if spatial is None:
        return p.argmax(dim=-3)
    return (torch.softmax(p, dim=-3) * spatial).argmax(dim=-3)


def normalise_per_image(resp):
    """--normalize_2d for 3D: each channel of [..., K, H, W] divided by its max over the image + 1e-7."""
    return resp / (resp.amax(dim=(-2, -1), keepdim=True) + EPS)


def labels_3d(resp, normalize_2d=False):
    """Label indices [..., H, W] from rendered 3D responses [..., K, H, W]."""
    if normalize_2d:
        resp = normalise_per_image(resp)
    return resp.argmax(dim=-3)


def spatial_weights(points, seed_points, block=4096):
    """[N, K] softmax over K of 1 / (distance to channel k's nearest seed point + 1e-7).

    points [N, 3] (back-projected test pixels); seed_points: list of K tensors [n_k, 3].
    """
    n = points.shape[0]
    inv = torch.empty(n, len(seed_points), dtype=points.dtype, device=points.device)
    for k, sp in enumerate(seed_points):
        sp = sp.to(points)
        for i in range(0, n, block):
            d = torch.cdist(points[i:i + block], sp).amin(dim=1)
            inv[i:i + block, k] = 1.0 / (d + EPS)
    return torch.softmax(inv, dim=1)
