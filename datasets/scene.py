"""The frame bundle every loader returns, and the helpers loaders share.

Conventions (the original's):
- rgb float32 in [0, 1], [N, H, W, 3]; depth float32 metres (z-depth), [N, H, W];
- poses: camera-to-world 4x4, OpenCV camera axes (x right, y down, z forward);
- `semantic`: class indices 0..C-1 where 0 is void, from `semantic_classes` (sorted raw ids,
  `semantic_classes[0]` is the void id 0 whether or not it occurs; the original assumed it
  occurs, see README "Decisions");
- `eval_labels` = semantic - 1, so void is -1 (ignored) and valid classes are 0..C-2: the label
  space of propagation outputs and metrics.

A scene without ground-truth labels (a capture: datasets/nerfstudio.py) has `semantic=None` in
both splits (`has_labels` False) and `semantic_classes == [0]` until user labels (clicks or
scribbles, datasets/clicks.py `with_user_labels`) give it a label space; then `seeds` holds
them and `class_names` / `colour_map` come from the clicks file.

`frames` / `all_poses` describe every frame of the capture (training, test and any other), in
global frame-id order, for the per-frame label export (propagation/export.py) and for mapping
user clicks from the original images (datasets/sources.py).
"""
import hashlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from models.cameras import Cameras, Intrinsics  # noqa: F401  (Intrinsics: loaders build it)
from utils.errors import InputError


@dataclass
class Split:
    ids: List[int]                      # global frame ids (file numbers' positions)
    rgb: torch.Tensor                   # [N, H, W, 3] float32
    poses: torch.Tensor                 # [N, 4, 4] float32 camera-to-world
    semantic: Optional[torch.Tensor]    # [N, H, W] int64, 0 = void; None: no ground-truth labels
    depth: Optional[torch.Tensor] = None      # [N, H, W] float32 metres
    instance: Optional[torch.Tensor] = None   # [N, H, W] int64, 0 = void
    features: Optional[object] = None         # datasets.dino_io.DescriptorStore

    def __len__(self):
        return len(self.ids)


@dataclass
class Scene:
    name: str
    root: str
    height: int
    width: int
    intrinsics: Intrinsics
    train: Split
    test: Split
    semantic_classes: np.ndarray          # raw ids, index 0 = void
    near: float = 0.1
    far: float = 10.0
    instance_classes: Optional[np.ndarray] = None
    colour_map: Optional[np.ndarray] = None   # [C, 3] uint8, row 0 = void
    extra: dict = field(default_factory=dict)
    convention: str = "opencv"                # camera axes of the poses
    class_names: Optional[Dict[int, str]] = None   # raw id -> name (clicks file, scene_info.json)
    frames: Optional[list] = None             # datasets.sources.FrameSource of every frame (global ids)
    all_poses: Optional[torch.Tensor] = None  # [N_all, 4, 4] camera-to-world of every frame
    seeds: Optional[object] = None            # datasets.seeds.Seeds given by the user (clicks, scribbles)

    def cameras(self, split):
        """The Cameras of a split (`scene.train` or `scene.test`)."""
        return Cameras(split.poses, self.intrinsics, self.height, self.width, self.near, self.far,
                       self.convention)

    def all_cameras(self):
        """The Cameras of every frame of the capture, in global frame-id order."""
        if self.all_poses is None:
            raise InputError(f"{self.root}: this loader does not list every frame of the scene")
        return Cameras(self.all_poses, self.intrinsics, self.height, self.width, self.near, self.far,
                       self.convention)

    def identity(self):
        """What a metrics file records of the scene ({name, digest}; propagation.compare and the
        runner's tables refuse to mix scenes): the digest (sha1) of its training frames' ids and
        camera poses, which stays with the data wherever its folder is."""
        h = hashlib.sha1(",".join(str(int(i)) for i in self.train.ids).encode())
        h.update(self.train.poses.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
        return {"name": self.name, "digest": h.hexdigest()}

    @property
    def num_classes(self):
        return len(self.semantic_classes)

    @property
    def has_labels(self):
        """Whether the scene has ground-truth semantic maps (metrics need them)."""
        return self.train.semantic is not None

    def eval_labels(self, split, instance=False):
        """Labels in the evaluation space: void -1, valid classes 0..C-2 (int64 tensor)."""
        data = split.instance if instance else split.semantic
        if data is None and not instance:
            raise InputError(f"{self.root}: this scene has no ground-truth label maps (a capture without "
                             "labels); label it with clicks or scribbles (docs/OWN_SCENE.md)")
        if data is None:
            raise InputError("--test_instance: this dataset has no instance maps (Replica: "
                             "semantic_instance/; ScanNet: instance-filt/)")
        return data - 1


def replica_split_ids(total, training_mode=False, step=5):
    """The original's split, generalised to any frame count: train 0,5,10,..; test = train+2."""
    if total <= 0:
        raise InputError("dataset has no frames")
    train = list(range(0, total, step))
    test = [i + step // 2 for i in train if i + step // 2 < total]
    if training_mode or not test:
        test = [0]
    return train, test


def remap_labels(maps, classes):
    """Map raw ids to their index in the sorted `classes` array (vectorised lookup)."""
    lut = np.zeros(int(max(classes.max(), max(int(m.max()) for m in maps))) + 1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    return [torch.from_numpy(lut[m]) for m in maps]


def _unique_ids(m):
    """Sorted unique values of an integer map: a bincount for small non-negative ids (a tenth of
    np.unique's time on label images), np.unique otherwise; the same array either way."""
    m = np.asarray(m)
    if m.size and m.dtype.kind in "ui":
        lo, hi = int(m.min()), int(m.max())
        if lo >= 0 and hi < (1 << 20):
            return np.flatnonzero(np.bincount(m.ravel(), minlength=hi + 1)).astype(m.dtype)
    return np.unique(m)


def label_classes(maps):
    """Sorted unique raw ids over all maps, with void 0 always first."""
    ids = np.unique(np.concatenate([_unique_ids(m) for m in maps]))
    return np.union1d(np.array([0]), ids).astype(np.int64)


def resize_image(img, hw, mode):
    """Resize [H, W, C] or [H, W] float with OpenCV's rules: 'linear' (half-pixel centres,
    no antialiasing, i.e. INTER_LINEAR) or 'nearest' (floor(dst*scale), INTER_NEAREST)."""
    if tuple(img.shape[:2]) == tuple(hw):
        return img
    t = torch.as_tensor(img)
    squeeze = t.dim() == 2
    if squeeze:
        t = t[..., None]
    dtype = t.dtype
    x = t.permute(2, 0, 1)[None].to(torch.float64)
    if mode == "nearest":
        y = F.interpolate(x, size=hw, mode="nearest")
    else:
        y = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    y = y[0].permute(1, 2, 0)
    if not dtype.is_floating_point:
        y = y.round()
    y = y.to(dtype)
    return y[..., 0] if squeeze else y
