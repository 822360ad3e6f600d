"""Replica loader for the Semantic-NeRF layout (spec 2.1-2.6).

    dataset_dir/
      rgb/rgb_<i>.png                 8-bit colour
      depth/depth_<i>.png             uint16 millimetres (optional folder)
      semantic_class/semantic_class_<i>.png   raw class ids, 0 = void
      semantic_instance/semantic_instance_<i>.png   optional
      traj_w_c.txt                    one row-major camera-to-world 4x4 per line (OpenCV axes)
      dino/dino_<i>.pth               optional descriptors (datasets/dino_io.py)

Frames are ordered by the number in their file name; position in that order is the frame id
(and the row of traj_w_c.txt). Images are resized to the config's width x height (bilinear
for rgb/depth, nearest for labels); intrinsics follow from the size (hfov 90 degrees).
"""
import glob
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from datasets import dino_io
from datasets.scene import (Intrinsics, Scene, Split, label_classes, remap_labels,
                            replica_split_ids, resize_image)
from utils.errors import InputError

_NUM = re.compile(r"_(\d+)\.[A-Za-z]+$")


def list_frames(folder, prefix, ext=".png"):
    """{frame number: path} of `<folder>/<prefix>_<n><ext>`, or None if the folder is absent."""
    if not os.path.isdir(folder):
        return None
    out = {}
    for path in glob.glob(os.path.join(folder, f"{prefix}_*{ext}")):
        m = _NUM.search(os.path.basename(path))
        if m and os.path.basename(path) == f"{prefix}_{m.group(1)}{ext}":
            out[int(m.group(1))] = path
    return out


def read_png(path, kind):
    """Read a PNG as a numpy array, with one clear error for missing or unreadable files."""
    import imageio.v3 as iio
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing {kind} frame")
    try:
        img = iio.imread(path, plugin="pillow")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise InputError(f"{path}: unreadable {kind} image ({exc.__class__.__name__}: {first})") from exc
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    return img


def read_poses(path, count):
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing camera trajectory (expected one row-major 4x4 "
                         "camera-to-world matrix per line, one line per frame)")
    try:
        poses = np.loadtxt(path, ndmin=2)
    except ValueError as exc:
        raise InputError(f"{path}: not a table of numbers ({exc})") from exc
    if poses.shape[1] != 16:
        raise InputError(f"{path}: rows have {poses.shape[1]} numbers; expected 16 (a 4x4 matrix)")
    if poses.shape[0] != count:
        raise InputError(f"{path}: {poses.shape[0]} poses for {count} frames in rgb/; "
                         "expected one line per frame")
    if not np.isfinite(poses).all():
        raise InputError(f"{path}: non-finite pose entries")
    return poses.reshape(-1, 4, 4).astype(np.float32)


class ReplicaLoader:
    """Reads one Replica sequence. `load()` returns a `datasets.scene.Scene`."""

    def __init__(self, root, height, width, training_mode=False, load_dino=False,
                 load_lseg=False, high_res_dino=False, feature_dim=384, feature_dtype=torch.float16,
                 near=0.1, far=10.0, pin_features=False, workers=8):
        self.root = root
        self.hw = (int(height), int(width))
        self.training_mode = training_mode
        self.features = FeatureOptions.from_flags(load_dino, load_lseg, high_res_dino, feature_dim, feature_dtype,
                                                  pin_features)
        self.near, self.far = near, far
        self.workers = workers

    # -- discovery --------------------------------------------------------------------------
    def _frames(self):
        if not os.path.isdir(self.root):
            raise InputError(f"dataset_dir {self.root!r} does not exist (set experiment.dataset_dir "
                             "in the YAML config)")
        rgb = list_frames(os.path.join(self.root, "rgb"), "rgb")
        if not rgb:
            raise InputError(f"{os.path.join(self.root, 'rgb')}: no rgb_<i>.png frames found")
        numbers = sorted(rgb)
        sem = list_frames(os.path.join(self.root, "semantic_class"), "semantic_class")
        if sem is None:
            raise InputError(f"{os.path.join(self.root, 'semantic_class')}: folder missing "
                             "(expected semantic_class_<i>.png for every frame)")
        depth = list_frames(os.path.join(self.root, "depth"), "depth")
        inst = list_frames(os.path.join(self.root, "semantic_instance"), "semantic_instance")
        return numbers, rgb, sem, depth, inst

    def _path(self, table, folder, prefix, number):
        path = table.get(number) if table is not None else None
        return path or os.path.join(self.root, folder, f"{prefix}_{number}.png")

    # -- loading ----------------------------------------------------------------------------
    def _load_frame(self, number, tables):
        _, rgb_t, sem_t, depth_t, inst_t = tables
        rgb = read_png(self._path(rgb_t, "rgb", "rgb", number), "rgb")
        if rgb.ndim != 3:
            raise InputError(f"{rgb_t[number]}: expected a colour image, got shape {rgb.shape}")
        rgb = resize_image(rgb.astype(np.float32) / 255.0, self.hw, "linear")
        sem_path = self._path(sem_t, "semantic_class", "semantic_class", number)
        sem = read_png(sem_path, "semantic_class")
        if sem.ndim != 2:
            raise InputError(f"{sem_path}: expected a single-channel label image, got {sem.shape}")
        sem = resize_image(sem.astype(np.int64), self.hw, "nearest")
        depth = inst = None
        if depth_t is not None:
            d = read_png(self._path(depth_t, "depth", "depth", number), "depth")
            depth = resize_image(d.astype(np.float32) / 1000.0, self.hw, "linear")
        if inst_t is not None:
            ipath = self._path(inst_t, "semantic_instance", "semantic_instance", number)
            i = read_png(ipath, "semantic_instance")
            inst = resize_image(i.astype(np.int64), self.hw, "nearest")
        return (torch.as_tensor(rgb, dtype=torch.float32), np.asarray(sem),
                None if depth is None else torch.as_tensor(depth, dtype=torch.float32),
                None if inst is None else np.asarray(inst))

    def _load_split(self, ids, numbers, tables, poses):
        with ThreadPoolExecutor(self.workers) as pool:
            frames = list(pool.map(lambda i: self._load_frame(numbers[i], tables), ids))
        rgb = torch.stack([f[0] for f in frames])
        depth = torch.stack([f[2] for f in frames]) if tables[3] is not None else None
        return dict(ids=list(ids), rgb=rgb, sem=[f[1] for f in frames], depth=depth,
                    inst=[f[3] for f in frames] if tables[4] is not None else None,
                    poses=torch.from_numpy(poses[ids]))

    def load(self):
        tables = self._frames()
        numbers = tables[0]
        poses = read_poses(os.path.join(self.root, "traj_w_c.txt"), len(numbers))
        train_ids, test_ids = replica_split_ids(len(numbers), self.training_mode)
        train = self._load_split(train_ids, numbers, tables, poses)
        test = self._load_split(test_ids, numbers, tables, poses)

        classes = label_classes(train["sem"] + test["sem"])
        train_sem = torch.stack(remap_labels(train["sem"], classes))
        test_sem = torch.stack(remap_labels(test["sem"], classes))
        inst_classes = None
        train_inst = test_inst = None
        if train["inst"] is not None:
            inst_classes = label_classes(train["inst"] + test["inst"])
            train_inst = torch.stack(remap_labels(train["inst"], inst_classes))
            test_inst = torch.stack(remap_labels(test["inst"], inst_classes))

        features = None
        if self.features.kind:
            features = self._load_features([numbers[i] for i in train_ids])

        H, W = self.hw
        intr = Intrinsics(fx=W / 2.0, fy=W / 2.0, cx=(W - 1) / 2.0, cy=(H - 1) / 2.0)
        return Scene(
            name=os.path.basename(os.path.normpath(self.root)), root=self.root, height=H, width=W,
            intrinsics=intr,
            train=Split(ids=train_ids, rgb=train["rgb"], poses=train["poses"], semantic=train_sem,
                        depth=train["depth"], instance=train_inst, features=features),
            test=Split(ids=test_ids, rgb=test["rgb"], poses=test["poses"], semantic=test_sem,
                       depth=test["depth"], instance=test_inst),
            semantic_classes=classes, instance_classes=inst_classes,
            near=self.near, far=self.far)

    def _load_features(self, numbers):
        return self.features.load(self.root, numbers, self.hw, self.workers)


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
                         "`python -m datasets.extract_dino` (README, 'DINO descriptors')")
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
        return g.to(dtype)

    with ThreadPoolExecutor(workers) as pool:
        grids = list(pool.map(one, numbers))
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
