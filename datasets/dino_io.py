"""Per-frame descriptor files (`dino/dino_<i>.pth`) and their up-sampling to the image grid.

File format (the original's, kept so that its files load unchanged): a float tensor of shape
[1, 1, rows*cols, D], patches in row-major order. The patch grid is not in the tensor, so
this project writes a sidecar `descriptor_meta.json` in the same folder (`{"grid": [rows,
cols], ...}`). Files without a sidecar (the original's) get their grid inferred from the
token count and the image aspect ratio (10591 tokens at 4:3 -> 89 x 119). A tensor saved as
[rows, cols, D] or [1, rows, cols, D] carries its grid itself and is accepted too.

Up-sampling reproduces OpenCV's INTER_AREA rule for enlargement, per axis:
  s = n_in / n_out; i0 = floor(j*s); f = (j+1) - (i0+1)/s; f = 0 if f <= 0 else frac(f);
  out[j] = (1-f)*in[i0] + f*in[min(i0+1, n_in-1)]
It is separable and linear, so one output pixel is a fixed blend of at most 2x2 grid cells.
`DescriptorStore` keeps only the coarse grids (optionally float16) and computes the
descriptors of any pixel set on demand, which equals up-sampling the whole map first.
"""
import json
import math
import os

import torch

from utils.atomic import atomic_path, write_json_atomic
from utils.errors import InputError

META_NAME = "descriptor_meta.json"


def save_descriptor(path, grid, meta=None):
    """Write a [rows, cols, D] descriptor grid in the original's [1,1,rows*cols,D] float32 format.

    The write is atomic (temporary file, then rename). If `meta` is given, the folder's sidecar
    is (re)written with it and the grid shape.
    """
    grid = torch.as_tensor(grid)
    if grid.dim() != 3:
        raise ValueError(f"expected a [rows, cols, D] grid, got shape {tuple(grid.shape)}")
    rows, cols, dim = grid.shape
    # clone: torch.save of a view would write the whole underlying storage
    tensor = grid.detach().to("cpu", torch.float32).reshape(1, 1, rows * cols, dim).clone()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(tensor, tmp)
    if meta is not None:
        write_meta(os.path.dirname(os.path.abspath(path)), dict(meta, grid=[int(rows), int(cols)],
                                                                dim=int(dim)))


def write_meta(folder, meta):
    write_json_atomic(os.path.join(folder, META_NAME), meta)


def read_meta(folder):
    path = os.path.join(folder, META_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
        rows, cols = (int(v) for v in meta["grid"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: unreadable descriptor sidecar (expected JSON with "
                         f"\"grid\": [rows, cols]): {exc}") from exc
    meta["grid"] = [rows, cols]
    return meta


def infer_grid(num_tokens, image_hw):
    """The (rows, cols) factorisation of `num_tokens` closest to the image aspect ratio."""
    aspect = image_hw[0] / image_hw[1]
    best = None
    for rows in range(1, int(math.isqrt(num_tokens)) + 1):
        if num_tokens % rows:
            continue
        for r, c in ((rows, num_tokens // rows), (num_tokens // rows, rows)):
            err = abs(math.log((r / c) / aspect))
            if best is None or err < best[0]:
                best = (err, r, c)
    return best[1], best[2]


def load_descriptor(path, image_hw, grid_hw=None):
    """Load one descriptor file as a [rows, cols, D] float32 CPU tensor.

    `grid_hw` is the sidecar's grid; without it the grid comes from the tensor's own shape
    or is inferred from the token count and `image_hw`.
    """
    if not os.path.isfile(path):
        raise InputError(f"{path}: descriptor file missing (expected one per frame; see docs/DINO.md)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise InputError(f"{path}: not a readable torch tensor file ({exc.__class__.__name__})") from exc
    if isinstance(data, dict) and "descriptor" in data:
        data = data["descriptor"]
    if not torch.is_tensor(data):
        raise InputError(f"{path}: expected a tensor, found {type(data).__name__}")
    data = data.detach().float()
    shape = tuple(data.shape)
    if data.dim() == 4 and shape[:2] == (1, 1):
        tokens = data[0, 0]
    elif data.dim() == 2:
        tokens = data
    elif data.dim() == 4 and shape[0] == 1:
        return data[0].contiguous()
    elif data.dim() == 3:
        return data.contiguous()
    else:
        raise InputError(f"{path}: descriptor of shape {shape}; expected [1, 1, rows*cols, D] "
                         "or [rows, cols, D]")
    n = tokens.shape[0]
    if grid_hw is not None:
        rows, cols = grid_hw
        if rows * cols != n:
            raise InputError(f"{path}: {n} tokens but the sidecar {META_NAME} says a "
                             f"{rows}x{cols} grid")
    else:
        rows, cols = infer_grid(n, image_hw)
    return tokens.reshape(rows, cols, -1).contiguous()


def area_upsample_table(n_in, n_out):
    """Per-output-index (i0, i1, f) of OpenCV's INTER_AREA rule (enlargement; also identity)."""
    if n_out == n_in:
        idx = torch.arange(n_in)
        return idx, idx, torch.zeros(n_in, dtype=torch.float64)
    if n_out < n_in:
        # Shrinking is true area averaging in OpenCV; the descriptor grids are always coarser
        # than the image, so we refuse rather than silently do something else.
        raise InputError(f"descriptor grid ({n_in}) is finer than the image ({n_out}); "
                         "use --high_res_dino for H x W descriptors")
    s = n_in / n_out
    i0, i1, fs = [], [], []
    for j in range(n_out):
        a = int(math.floor(j * s))
        f = (j + 1) - (a + 1) / s
        f = 0.0 if f <= 0 else f - math.floor(f)
        i0.append(min(a, n_in - 1))
        i1.append(min(a + 1, n_in - 1))
        fs.append(f)
    return torch.tensor(i0), torch.tensor(i1), torch.tensor(fs, dtype=torch.float64)


def upsample_area(grid, out_hw):
    """Up-sample a [rows, cols, D] grid to [H, W, D] with the INTER_AREA rule (float32)."""
    rows, cols, _ = grid.shape
    r0, r1, rf = area_upsample_table(rows, out_hw[0])
    c0, c1, cf = area_upsample_table(cols, out_hw[1])
    g = grid.float()
    rf = rf.float()[:, None, None]
    cf = cf.float()[None, :, None]
    g = (1 - rf) * g[r0] + rf * g[r1]
    return (1 - cf) * g[:, c0] + cf * g[:, c1]


class DescriptorStore:
    """Coarse descriptor grids of N frames, sampled at arbitrary pixels of the H x W image.

    grids: [N, rows, cols, D] (float16 or float32, CPU, optionally pinned). `gather` returns
    float32 descriptors on `device`, equal to `upsample_area(grid[n], (H, W))[v, u]`.
    """

    def __init__(self, grids, image_hw, pin=False):
        self.grids = grids.pin_memory() if (pin and torch.cuda.is_available()) else grids
        self.image_hw = tuple(image_hw)
        self.dim = grids.shape[-1]
        r0, r1, rf = area_upsample_table(grids.shape[1], image_hw[0])
        c0, c1, cf = area_upsample_table(grids.shape[2], image_hw[1])
        self._rows = (r0, r1, rf.float())
        self._cols = (c0, c1, cf.float())

    def __len__(self):
        return self.grids.shape[0]

    def gather(self, frame, v, u, device=None):
        """Descriptors [B, D] at pixels (frame[b], v[b], u[b]); index tensors on the CPU."""
        frame, v, u = frame.cpu().long(), v.cpu().long(), u.cpu().long()
        out = gather_cells(self.grids, self._rows, self._cols, frame, v, u)
        return out.to(device) if device is not None else out

    def full(self, frame):
        """The [H, W, D] float32 descriptor map of one frame."""
        return upsample_area(self.grids[frame], self.image_hw)


def gather_cells(grids, rows, cols, frame, v, u):
    """Descriptors [B, D] float32 at pixels (frame[b], v[b], u[b]): the bilinear mix of the four
    grid cells (r0|r1, c0|c1) with weights from the fractions rf, cf, where `rows` = (r0, r1, rf)
    and `cols` = (c0, c1, cf) are per-pixel lookup tables (all tensors on one device)."""
    r0, r1, rf = (t[v] for t in rows)
    c0, c1, cf = (t[u] for t in cols)
    out = ((1 - rf) * (1 - cf))[:, None] * grids[frame, r0, c0].float()
    out += ((1 - rf) * cf)[:, None] * grids[frame, r0, c1].float()
    out += (rf * (1 - cf))[:, None] * grids[frame, r1, c0].float()
    out += (rf * cf)[:, None] * grids[frame, r1, c1].float()
    return out
