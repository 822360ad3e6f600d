"""Label maps from the NeRF's render grid back to a frame's original pixels (the label export).

Each original pixel has a position (u, v) in the render grid (datasets.sources.FrameSource.
scene_grid: the inverse of the loader's undistortion and resize). Two modes:
- 'nearest': the label (and confidence) of the render pixel nearest to (u, v);
- 'guided' (default): the per-class scores are sampled bilinearly at (u, v), then refined by a
  guided filter (He, Sun and Tang, 2010) with the original frame's grey levels as the guide, so
  label borders follow the colour edges that the smaller render could not resolve; the label is
  the argmax of the filtered scores. Window radius r = round(2 x the upscale factor) (at least 1),
  regulariser eps = 1e-4 (grey levels in [0, 1]: edges of contrast above about 0.01 are kept).
A frame whose original pixels are the render grid itself (same size, no resampling) keeps the
render's labels and confidence exactly.
"""
import torch
import torch.nn.functional as F

GUIDED_EPS = 1e-4


def is_identity(source, hw):
    """Whether the frame's original pixels are exactly the render grid."""
    return not source.resampled and (source.height, source.width) == tuple(hw)


def guided_radius(source, hw):
    return max(1, int(round(2.0 * max(source.width / hw[1], source.height / hw[0]))))


def box_mean(x, r):
    """Mean of [..., H, W] over the (2r+1)^2 window clipped to the image (integral images)."""
    h, w = x.shape[-2:]
    c = F.pad(x.double().cumsum(-2).cumsum(-1), (1, 0, 1, 0))
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    y0, y1 = (rows - r).clamp(min=0), (rows + r + 1).clamp(max=h)
    x0, x1 = (cols - r).clamp(min=0), (cols + r + 1).clamp(max=w)
    s = (c[..., y1[:, None], x1[None, :]] - c[..., y0[:, None], x1[None, :]]
         - c[..., y1[:, None], x0[None, :]] + c[..., y0[:, None], x0[None, :]])
    n = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).to(s.dtype)
    return (s / n).to(x.dtype)


def guided_filter(guide, src, r, eps=GUIDED_EPS):
    """He et al.'s guided filter of every channel of src [K, H, W] with a grey guide [H, W]."""
    guide = guide.to(src.dtype)
    mean_i = box_mean(guide, r)
    var_i = box_mean(guide * guide, r) - mean_i * mean_i
    mean_p = box_mean(src, r)
    cov_ip = box_mean(guide[None] * src, r) - mean_i[None] * mean_p
    a = cov_ip / (var_i[None] + eps)
    b = mean_p - a * mean_i[None]
    return box_mean(a, r) * guide[None] + box_mean(b, r)


def sample_grid(maps, grid, mode):
    """maps [K, h, w] sampled at the render-grid positions grid [H, W, 2] = (u, v): bilinear (edge
    values beyond the border) or nearest (the render pixel whose cell holds (u, v))."""
    k, h, w = maps.shape
    u, v = grid[..., 0].to(maps.device), grid[..., 1].to(maps.device)
    if mode == "nearest":
        iu = torch.floor(u + 0.5).long().clamp(0, w - 1)
        iv = torch.floor(v + 0.5).long().clamp(0, h - 1)
        return maps[:, iv, iu]
    norm = torch.stack([(u + 0.5) / w * 2 - 1, (v + 0.5) / h * 2 - 1], -1).to(torch.float32)
    out = F.grid_sample(maps[None].float(), norm[None], mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0]


def upsample_scores(scores, source, hw, guide=None, mode="guided"):
    """Scores [K, h, w] of the render grid at the frame's original pixels [K, H, W]; 'guided'
    filters them with `guide` (the original frame's grey levels [H, W] in [0, 1])."""
    if is_identity(source, hw):
        return scores
    grid = torch.from_numpy(source.scene_grid(hw))
    up = sample_grid(scores.float(), grid, "nearest" if mode == "nearest" else "bilinear")
    if mode == "guided":
        up = guided_filter(guide.to(up.device), up, guided_radius(source, hw))
    return up


def grey(rgb):
    """Grey levels [H, W] in [0, 1] of an RGB array [H, W, 3] in [0, 1] (Rec. 601 weights)."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def check_mode(mode):
    if mode not in ("guided", "nearest"):
        raise ValueError(f"upsampling mode {mode!r}: expected guided or nearest")
    return mode
