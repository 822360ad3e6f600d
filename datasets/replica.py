"""Replica loader for the Semantic-NeRF layout.

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
Class names come from `scene_info.json` when present (the built-in synthetic rooms).
"""
import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from datasets.descriptors import FeatureOptions
from datasets.frame_cache import cached_stack
from datasets.frames import list_frames, read_png, read_poses
from datasets.poses import check_poses
from datasets.scene import (Intrinsics, Scene, Split, label_classes, remap_labels,
                            replica_split_ids, resize_image)
from datasets.sources import FrameSource
from utils.errors import InputError


def read_class_names(root):
    """{raw id: name} from `<root>/scene_info.json` ("classes"), or None."""
    path = os.path.join(root, "scene_info.json")
    try:
        with open(path) as f:
            return {int(k): str(v) for k, v in json.load(f).get("classes", {}).items()} or None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def same_size(path, image, size, reference):
    if tuple(image.shape[:2]) != tuple(size):
        raise InputError(f"{path} is {image.shape[1]}x{image.shape[0]} but {reference} is {size[1]}x{size[0]}; "
                         "a frame's images must have one size")


def load_replica(data):
    """The Replica-layout scene of a utils.options.DataOptions."""
    loader = ReplicaLoader(
        data.dataset_dir, data.height, data.width, training_mode=data.training_mode, load_dino=data.load_dino,
        load_lseg=data.load_lseg, high_res_dino=data.high_res_dino, feature_dim=data.feature_dim,
        near=data.near, far=data.far, pin_features=data.load_on_cpu)
    return dataclasses.replace(loader.load(), convention=data.convention)


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
        self._size = None    # ((height, width), path) of the first frame read

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
    def _load_frame(self, number, tables, read=read_png):
        """(rgb, semantic, depth, instance, (height, width) of the files) of one frame; `read(path,
        kind)` gives a file's decoded array (`_load_split`: from the frame cache)."""
        _, rgb_t, sem_t, depth_t, inst_t = tables
        rgb_path = self._path(rgb_t, "rgb", "rgb", number)
        rgb = read(rgb_path, "rgb")
        if rgb.ndim != 3:
            raise InputError(f"{rgb_path}: expected a colour image, got shape {rgb.shape}")
        size = rgb.shape[:2]
        rgb = resize_image(rgb.astype(np.float32) / 255.0, self.hw, "linear")
        sem_path = self._path(sem_t, "semantic_class", "semantic_class", number)
        sem = read(sem_path, "semantic_class")
        if sem.ndim != 2:
            raise InputError(f"{sem_path}: expected a single-channel label image, got {sem.shape}")
        same_size(sem_path, sem, size, rgb_path)
        sem = resize_image(sem.astype(np.int64), self.hw, "nearest")
        depth = inst = None
        if depth_t is not None:
            dpath = self._path(depth_t, "depth", "depth", number)
            d = read(dpath, "depth")
            if d.ndim != 2:
                raise InputError(f"{dpath}: a {d.shape[2]}-channel image; expected a single-channel uint16 depth "
                                 "image in millimetres")
            if d.dtype != np.uint16:
                raise InputError(f"{dpath}: {d.dtype} depth; expected uint16 millimetres (an 8-bit depth image "
                                 "has lost its range)")
            same_size(dpath, d, size, rgb_path)
            depth = resize_image(d.astype(np.float32) / 1000.0, self.hw, "linear")
        if inst_t is not None:
            ipath = self._path(inst_t, "semantic_instance", "semantic_instance", number)
            i = read(ipath, "semantic_instance")
            same_size(ipath, i, size, rgb_path)
            inst = resize_image(i.astype(np.int64), self.hw, "nearest")
        return (torch.as_tensor(rgb, dtype=torch.float32), np.asarray(sem),
                None if depth is None else torch.as_tensor(depth, dtype=torch.float32),
                None if inst is None else np.asarray(inst), (size, rgb_path))

    # (index into the tables of `_frames`, folder = file prefix) of each kind of frame file
    KINDS = ((1, "rgb"), (2, "semantic_class"), (3, "depth"), (4, "semantic_instance"))

    def _decoded(self, ids, numbers, tables, split):
        """{kind: (paths, arrays)} of the split's frame files: decoded in parallel, or memory-mapped from
        the frame cache (datasets/frame_cache.py) when an earlier run decoded the same files; arrays
        is one stacked array [N, ...] when the files share a shape and dtype, else a list."""
        out = {}
        for t, kind in self.KINDS:
            if tables[t] is None:
                continue
            paths = [self._path(tables[t], kind, kind, numbers[i]) for i in ids]
            out[kind] = paths, cached_stack(f"{kind}-{split}", paths, self.root, lambda p, k=kind: read_png(p, k),
                                            self.workers)
        return out

    def _stacked_split(self, decoded):
        """The split's rgb, semantic, depth and instance from stacked arrays in one pass each (the
        per-frame conversions of `_load_frame` applied to the whole stack: the same values), when
        every kind is one stack of the config's size that passes `_load_frame`'s checks; else None
        (the per-frame path then converts, and names any odd file)."""
        if any(not isinstance(arrays, np.ndarray) for _, arrays in decoded.values()):
            return None
        rgb, sem = decoded["rgb"][1], decoded["semantic_class"][1]
        depth = decoded.get("depth", (None, None))[1]
        inst = decoded.get("semantic_instance", (None, None))[1]
        size = rgb.shape[1:3]
        if (rgb.ndim != 4 or tuple(size) != self.hw or sem.shape != rgb.shape[:3]
                or (depth is not None and (depth.shape != sem.shape or depth.dtype != np.uint16))
                or (inst is not None and inst.shape != sem.shape)):
            return None
        self._check_sizes([(tuple(size), decoded["rgb"][0][0])])
        rgb = rgb.astype(np.float32)
        rgb /= 255.0
        if depth is not None:
            depth = depth.astype(np.float32)
            depth /= 1000.0
        return (torch.from_numpy(rgb), [np.asarray(sem)], None if depth is None else torch.from_numpy(depth),
                None if inst is None else [np.asarray(inst)])

    def _load_split(self, ids, numbers, tables, poses, split="train"):
        """The split's frames: rgb [N, H, W, 3] and depth float32 tensors; semantic and instance maps as
        lists of stacked raw-id arrays (remapped by `load`)."""
        decoded = self._decoded(ids, numbers, tables, split)
        stacked = self._stacked_split(decoded)
        if stacked is None:
            arrays = {p: a for paths, arrays in decoded.values() for p, a in zip(paths, arrays)}
            read = lambda path, kind: arrays[path] if path in arrays else read_png(path, kind)  # noqa: E731
            with ThreadPoolExecutor(self.workers) as pool:
                frames = list(pool.map(lambda i: self._load_frame(numbers[i], tables, read), ids))
            self._check_sizes([f[4] for f in frames])
            stacked = (torch.stack([f[0] for f in frames]), [np.stack([f[1] for f in frames])],
                       torch.stack([f[2] for f in frames]) if tables[3] is not None else None,
                       [np.stack([f[3] for f in frames])] if tables[4] is not None else None)
        rgb, sem, depth, inst = stacked
        return dict(ids=list(ids), rgb=rgb, sem=sem, depth=depth, inst=inst, poses=torch.from_numpy(poses[ids]))

    def _check_sizes(self, sizes):
        """Every frame has the size of the first, and the config's size has its aspect ratio."""
        (h, w), first = sizes[0]
        if self._size is None:
            self._size = ((h, w), first)
        (h, w), first = self._size
        for (fh, fw), path in sizes:
            if (fh, fw) != (h, w):
                raise InputError(f"{path} is {fw}x{fh} but {first} is {w}x{h}: every frame must have one size")
        H, W = self.hw
        if abs(W / H - w / h) > 0.01 * (w / h):
            raise InputError(f"experiment.width x height = {W}x{H} has another aspect ratio than the frames "
                             f"({w}x{h}, e.g. {first}); the images would be stretched and the field of view "
                             "computed from the width would not match: use a size with their aspect ratio")

    def load(self):
        tables = self._frames()
        numbers = tables[0]
        traj = os.path.join(self.root, "traj_w_c.txt")
        poses = read_poses(traj, len(numbers))
        check_poses(poses, lambda i: f"{traj}: line {i + 1} (frame rgb_{numbers[i]})")
        train_ids, test_ids = replica_split_ids(len(numbers), self.training_mode)
        train = self._load_split(train_ids, numbers, tables, poses, "train")
        test = self._load_split(test_ids, numbers, tables, poses, "test")

        classes = label_classes(train["sem"] + test["sem"])
        train_sem = torch.cat(remap_labels(train["sem"], classes))
        test_sem = torch.cat(remap_labels(test["sem"], classes))
        inst_classes = None
        train_inst = test_inst = None
        if train["inst"] is not None:
            inst_classes = label_classes(train["inst"] + test["inst"])
            train_inst = torch.cat(remap_labels(train["inst"], inst_classes))
            test_inst = torch.cat(remap_labels(test["inst"], inst_classes))

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
            near=self.near, far=self.far, class_names=read_class_names(self.root),
            frames=self._sources(tables), all_poses=torch.from_numpy(poses))

    def _sources(self, tables):
        """A FrameSource per frame (all of one size: the first frame read; hfov 90 degrees)."""
        (h, w), _ = self._size
        numbers, rgb_t = tables[0], tables[1]
        out = []
        for n in numbers:
            path = self._path(rgb_t, "rgb", "rgb", n)
            out.append(FrameSource(name=f"rgb_{n}", file=os.path.relpath(path, self.root), path=path, height=h,
                                   width=w, K=(w / 2.0, w / 2.0, (w - 1) / 2.0, (h - 1) / 2.0)))
        return out

    def _load_features(self, numbers):
        return self.features.load(self.root, numbers, self.hw, self.workers)


