"""Per-frame descriptor grids (DINO / LSeg) of a scene: which to read, reading them, PCA."""
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import torch

from datasets import dino_io
from datasets.frame_cache import cached_stack
from utils.errors import InputError


@dataclass(frozen=True)
class FeatureOptions:
    """Which per-frame descriptors a loader reads and how (shared by the Replica and ScanNet
    loaders): kind 'dino' / 'lseg' / None, --high_res_dino, --feature_dim, storage dtype, pinning."""
    kind: Optional[str] = None
    high_res: bool = False
    dim: int = 384
    dtype: torch.dtype = torch.float16
    pin: bool = False

    @classmethod
    def from_flags(cls, load_dino, load_lseg, high_res_dino, feature_dim, feature_dtype, pin_features):
        kind = "lseg" if load_lseg else ("dino" if load_dino else None)
        return cls(kind, high_res_dino, feature_dim, feature_dtype, pin_features)

    def load(self, root, numbers, hw, workers):
        return load_feature_store(root, numbers, hw, self.kind, self.high_res, self.dim, self.dtype, self.pin,
                                  workers)


def load_feature_store(root, numbers, hw, kind, high_res=False, feature_dim=384,
                       dtype=torch.float16, pin=False, workers=8):
    """Load the descriptor grids of the given frame numbers into a DescriptorStore."""
    folder = os.path.join(root, {"dino": "dino_1" if high_res else "dino", "lseg": "lseg"}[kind])
    prefix = "lseg" if kind == "lseg" else "dino"
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: descriptor folder missing (--load_{kind}); extract them with "
                         "`python -m datasets.extract_dino` (docs/DINO.md)")
    meta = dino_io.read_meta(folder)
    expected = (meta or {}).get("dim", 512 if kind == "lseg" else 384)
    grid_hw = tuple(meta["grid"]) if meta else None
    if kind == "lseg" or high_res:
        grid_hw = hw  # these files are already at the image resolution

    def one(number):
        path = os.path.join(folder, f"{prefix}_{number}.pth")
        g = dino_io.load_descriptor(path, hw, grid_hw)
        if g.shape[-1] != expected:
            raise InputError(f"{path}: descriptors have {g.shape[-1]} channels; expected {expected}"
                             f" ({'sidecar ' + dino_io.META_NAME if meta else kind + ' default'})")
        if (kind == "lseg" or high_res) and tuple(g.shape[:2]) != tuple(hw):
            raise InputError(f"{path}: grid {tuple(g.shape[:2])} does not match the image size {hw}")
        # a float64 sum is finite exactly when every float32 value is (no overflow below 1e308):
        # one pass instead of isfinite, a negation and a count (22 of the 30 ms a file took)
        if not math.isfinite(float(g.sum(dtype=torch.float64))):
            bad = int((~torch.isfinite(g)).sum())
            raise InputError(f"{path}: {bad} non-finite descriptor values (NaN or inf); re-extract this frame")
        return g.to(dtype)

    paths = [os.path.join(folder, f"{prefix}_{n}.pth") for n in numbers]
    by_path = dict(zip(paths, numbers))
    if dtype in (torch.float16, torch.float32):
        # decoded once, then memory-mapped from the frame cache (datasets/frame_cache.py); the key
        # holds everything the grids depend on besides the files
        extra = (kind, high_res, str(dtype), tuple(hw), grid_hw, expected, json.dumps(meta, sort_keys=True))
        grids = cached_stack(f"{os.path.basename(folder)}-{len(numbers)}", paths, root,
                             lambda p: one(by_path[p]).numpy(), workers, extra)
        grids = [torch.from_numpy(g) for g in grids] if isinstance(grids, list) else torch.from_numpy(grids)
    else:
        with ThreadPoolExecutor(workers) as pool:
            grids = list(pool.map(one, numbers))
    if isinstance(grids, list):
        shapes = {tuple(g.shape) for g in grids}
        if len(shapes) > 1:
            raise InputError(f"{folder}: descriptor files have different shapes {sorted(shapes)}")
        grids = torch.stack(grids)
    if feature_dim > grids.shape[-1]:
        raise InputError(f"--feature_dim {feature_dim} is larger than the descriptors' "
                         f"{grids.shape[-1]} channels in {folder}")
    if feature_dim < grids.shape[-1]:
        grids = pca_reduce(grids, feature_dim).to(dtype)
    return dino_io.DescriptorStore(grids, hw, pin=pin)


def pca_reduce(grids, dim, max_fit=200_000, seed=0):
    """Project all frames' descriptors onto one PCA basis of `dim` components.

    The original fits a PCA per image (a different basis per frame, so descriptors of different
    frames are not comparable); here one basis is fitted on a subsample of all frames' cells.
    """
    flat = grids.reshape(-1, grids.shape[-1]).float()
    gen = torch.Generator().manual_seed(seed)
    fit = flat if flat.shape[0] <= max_fit else flat[torch.randperm(flat.shape[0], generator=gen)[:max_fit]]
    mean = fit.mean(0)
    _, _, vt = torch.linalg.svd(fit - mean, full_matrices=False)
    basis = vt[:dim].T
    # sklearn's sign convention: the largest-magnitude entry of each component is positive
    sign = torch.sign(basis[basis.abs().argmax(0), torch.arange(dim)])
    basis = basis * sign
    return ((flat - mean) @ basis).reshape(*grids.shape[:-1], dim)
