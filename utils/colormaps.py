"""Colour palettes for label maps, depth and error images (numpy only, no imgviz/matplotlib)."""
import numpy as np

# Viridis sampled at 0, 1/8, ..., 1 (a perceptually uniform ramp; linear interpolation between
# nine anchors is visually indistinguishable from the full table for depth images).
_RAMP = np.array([[68, 1, 84], [71, 44, 122], [59, 82, 139], [44, 113, 142], [33, 145, 140],
                  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


def _as_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def label_colormap(n=256):
    """[n, 3] uint8: the PASCAL VOC palette, as imgviz.label_colormap (index 0 = black).

    Bits 0, 1, 2 of the label go to the most significant bit of r, g, b, bits 3, 4, 5 to the
    next one, and so on. imgviz computes this on uint8 ids, so it is only defined up to 256
    labels; above that we keep the classic definition (24 bits of the id), which agrees with
    imgviz on 0..255.
    """
    ids = np.arange(int(n), dtype=np.int64)
    cmap = np.zeros((int(n), 3), dtype=np.int64)
    for j in range(8):                      # j-th group of three bits -> bit 7-j of each channel
        group = ids >> (3 * j)
        for ch in range(3):
            cmap[:, ch] |= ((group >> ch) & 1) << (7 - j)
    return cmap.astype(np.uint8)


def colourise_labels(labels, colour_map, void_colour=(0, 0, 0)):
    """[..., 3] uint8 image of `labels` (any int array, -1 = void) through `colour_map` [C, 3]."""
    labels = _as_numpy(labels).astype(np.int64, copy=False)
    colour_map = np.asarray(colour_map, dtype=np.uint8)
    if labels.size and labels.max() >= len(colour_map):
        raise ValueError(f"label {int(labels.max())} has no colour (colour map has {len(colour_map)} rows)")
    out = colour_map[np.clip(labels, 0, None)]
    out[labels < 0] = np.asarray(void_colour, dtype=np.uint8)
    return out


def depth_to_rgb(depth, near, far):
    """[H, W, 3] uint8: depth mapped linearly from [near, far] onto the viridis ramp (near = dark
    purple, far = yellow). Non-finite depth is black. Replaces imgviz.depth2rgb (jet), which
    is neither perceptual nor available without matplotlib."""
    d = _as_numpy(depth).astype(np.float64)
    span = float(far) - float(near)
    t = np.clip((d - float(near)) / (span if span > 0 else 1.0), 0.0, 1.0)
    finite = np.isfinite(t)
    t = np.where(finite, t, 0.0) * (len(_RAMP) - 1)
    lo = np.minimum(np.floor(t).astype(np.int64), len(_RAMP) - 2)
    w = (t - lo)[..., None]
    rgb = _RAMP[lo] * (1.0 - w) + _RAMP[lo + 1] * w
    rgb[~finite] = 0.0
    return np.round(rgb).astype(np.uint8)


def error_map(pred, gt, void_value=None):
    """[H, W] uint8: 255 where pred != gt on non-void pixels (gt >= 0), 0 elsewhere; void pixels
    get `void_value` (e.g. 128 for grey) when given. The original also marked void pixels as
    errors (its predictions are never -1), which hides the real errors; we do not."""
    pred, gt = _as_numpy(pred), _as_numpy(gt)
    out = np.where((pred != gt) & (gt >= 0), 255, 0).astype(np.uint8)
    if void_value is not None:
        out[gt < 0] = np.uint8(void_value)
    return out
