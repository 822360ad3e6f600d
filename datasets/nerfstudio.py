"""Loader for a `transforms.json` capture (`--dataset_type nerfstudio`): nerfstudio's
`ns-process-data` output, instant-ngp's format, or `python -m datasets.synthetic --format nerfstudio`.
The file's keys and their checks: datasets/nerfstudio_meta.py. The walk-through: docs/OWN_SCENE.md.

What it does with them (settings: `NerfstudioOptions`, the flags `--ns_*` of `NERFSTUDIO_OPTIONS`):
- poses: `transform_matrix` is camera-to-world in OpenGL axes (x right, y up, z backward);
  it becomes the project's OpenCV axes (x right, y down, z forward) by negating its y and z
  columns, c2w_cv = c2w_gl diag(1, -1, -1, 1). The world frame is kept; `experiment.convention`
  does not apply (the format fixes the axes);
- intrinsics: nerfstudio puts the first pixel's centre at 0.5, the project at 0, so cx, cy lose
  0.5. Frames whose intrinsics, size or distortion differ from the common camera (the top-level
  intrinsics, else the first frame's, undistorted) are resampled into it with cv2.remap
  (datasets/sources.py); `--ns_distortion refuse` stops instead, naming the frame and the key;
- images of any size are resized to the config's width x height like the Replica loader (bilinear
  for colour and depth, nearest for labels); the config must keep the frames' aspect ratio;
- depth: uint16 PNG (or .npy) times the depth scale (`--ns_depth_scale`, else the file's
  `depth_unit_scale_factor`, else 1e-3: millimetres), z-depth; a depth image of another size
  than its frame is first resized to it (nearest, as nerfstudio);
- scale: `--ns_normalise auto` keeps the poses when the capture has depth (its units are then
  metres) and otherwise ('cameras') centres the world on the cameras' centroid and scales it so
  that the RMS camera distance from it is 1 (COLMAP poses have an arbitrary scale, and the
  positional encoding is tuned for rooms of a few units); depth is scaled by the same factor, so
  rays and depth stay consistent. The transform is in `scene.extra['normalisation']`;
- near / far: from depth when present (0.5 x the 0.5th and 1.5 x the 99.5th percentile of the valid
  depths of the loaded frames), else from the camera layout (far = 4 R with R the largest camera
  distance from the cameras' centroid, near = far / 50); `--ns_near_far` overrides both. The config's
  `render.depth_range` is not used by this loader;
- split: nerfstudio's `train_filenames` / `test_filenames` (or `val_filenames`) when present (and
  not `--ns_ignore_split_lists`), else the Replica rule every `--ns_split_step`-th frame (train 0, 5, 10, ..., test
  train + 2); `--training_mode` tests on frame 0 only;
- labels: `semantic_path` label PNGs when every frame has one, else none: `semantic=None`, the
  scene `has_labels` False (propagation then needs clicks or scribbles, datasets/clicks.py);
- descriptors: `dino/dino_<id>.pth` with id the global frame id (`python -m datasets.extract_dino`
  writes them in this order for a capture).
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np
import torch

from datasets.descriptors import FeatureOptions
from datasets.frames import read_png
from datasets.nerfstudio_meta import DEFAULT_DEPTH_SCALE, DISTORTION_KEYS, read_capture
from datasets.scene import Intrinsics, Scene, Split, label_classes, remap_labels, replica_split_ids, resize_image
from datasets.sources import FrameSource, resample_to_common
from utils.declarations import Option, OptionGroup
from utils.errors import InputError

NORMALISE = ("auto", "none", "cameras")
DISTORTION = ("undistort", "refuse")
DEPTH_PERCENTILES = (0.5, 99.5)
DEPTH_MARGINS = (0.5, 1.5)
LAYOUT_FAR, LAYOUT_NEAR_RATIO = 4.0, 50.0


# The loader's own options: flags and YAML keys (section experiment) read only with
# --dataset_type nerfstudio (datasets/registry.py), arriving as DataOptions.loader; declared once here.
_OPTIONS = (
    Option("ns_near_far", list, None, "NEAR FAR: the rays' depth range (in the normalised world) instead of the "
           "one from depth or the camera layout", "", keeps_yaml=True, item=float),
    Option("ns_depth_scale", float, None, "metres per depth-file unit (default: the file's "
           "depth_unit_scale_factor, else 0.001: millimetres)", "", keeps_yaml=True, positive=True),
    Option("ns_normalise", str, "auto", "world scale: auto (none with depth, cameras without), none, or cameras "
           "(centred on the cameras, RMS camera distance 1)", "", keeps_yaml=True, choices=NORMALISE),
    Option("ns_split_step", int, 5, "without split lists: every N-th frame trains, test = train + N // 2", "",
           keeps_yaml=True, low=1),
    Option("ns_ignore_split_lists", bool, False, "ignore the file's train/val/test_filenames and split by "
           "--ns_split_step", "", keeps_yaml=True),
    Option("ns_distortion", str, "undistort", "frames with lens distortion: undistort (resample them) or refuse "
           "(stop, naming the frame)", "", keeps_yaml=True, choices=DISTORTION),
)
_DEFAULT = {o.name: o.value for o in _OPTIONS}


@dataclass(frozen=True)
class NerfstudioOptions:
    """Settings of the nerfstudio loader (module docstring), field for field the options above."""
    ns_near_far: Optional[Tuple[float, float]] = _DEFAULT["ns_near_far"]   # ray range override
    ns_depth_scale: Optional[float] = _DEFAULT["ns_depth_scale"]          # metres per depth unit (None: file's)
    ns_normalise: str = _DEFAULT["ns_normalise"]                          # auto | none | cameras
    ns_split_step: int = _DEFAULT["ns_split_step"]                        # every N-th frame trains
    ns_ignore_split_lists: bool = _DEFAULT["ns_ignore_split_lists"]       # ignore train/val/test_filenames
    ns_distortion: str = _DEFAULT["ns_distortion"]                        # undistort | refuse

    def __post_init__(self):
        """What one declaration cannot say (checked where build_options builds it, before any data)."""
        for o in _OPTIONS:
            value = getattr(self, o.name)
            if o.choices and value not in o.choices:
                raise InputError(f"--{o.name} {value!r}: expected one of {', '.join(o.choices)}")
        if self.ns_split_step < 1:
            raise InputError(f"--ns_split_step {self.ns_split_step}: expected at least 1")
        if self.ns_depth_scale is not None and not self.ns_depth_scale > 0:
            raise InputError(f"--ns_depth_scale {self.ns_depth_scale}: expected a number > 0")
        if self.ns_near_far is not None:
            value = self.ns_near_far
            try:
                near, far = (float(x) for x in value)
            except (TypeError, ValueError):
                raise InputError(f"--ns_near_far {_shown(value)}: expected two numbers NEAR FAR") from None
            if not (np.isfinite(near) and np.isfinite(far) and 0 <= near < far):
                raise InputError(f"--ns_near_far {_shown(value)}: expected 0 <= NEAR < FAR")
            object.__setattr__(self, "ns_near_far", (near, far))


def _shown(value):
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else repr(value)


NERFSTUDIO_OPTIONS = OptionGroup("nerfstudio capture (--dataset_type nerfstudio, docs/OWN_SCENE.md)",
                                 NerfstudioOptions, _OPTIONS)


def load_nerfstudio(data):
    """The capture of a utils.options.DataOptions (`dataset_dir`: the folder or its transforms.json;
    `data.loader`: its NerfstudioOptions, the defaults when None)."""
    return NerfstudioLoader(data, data.loader or NerfstudioOptions()).load()


def frame_order(dataset_dir, training_mode=False, options=None):
    """(every frame's (global id, FrameSource), training ids) in the loader's order, without reading
    images (datasets/extract_dino.py names descriptor files by these ids and resamples like the loader)."""
    options = options or NerfstudioOptions()
    capture = read_capture(dataset_dir)
    train, _ = split_ids(capture, training_mode, options)
    sources = frame_sources(capture, common_camera(capture, options))
    return [(f.index, s) for f, s in zip(capture.frames, sources)], train


def split_ids(capture, training_mode, options):
    """(train ids, test ids): the file's split lists when present, else the Replica rule."""
    lists = {} if options.ns_ignore_split_lists else capture.split_lists
    n = len(capture.frames)
    if not lists:
        return replica_split_ids(n, training_mode, options.ns_split_step)
    test = lists.get("test", lists.get("val"))
    train = lists.get("train")
    if train is None:
        train = [i for i in range(n) if i not in set(test or [])]
    if not train:
        raise InputError(f"{capture.json_path}: the split lists leave no training frame")
    if training_mode or not test:
        test = [0]
    return list(train), list(test)


def common_camera(capture, options):
    """(fx, fy, cx, cy, h, w) every frame is resampled into: the first frame's intrinsics, without
    distortion. `--ns_distortion refuse` stops on the first frame that would need resampling."""
    first = capture.frames[0]
    for fr in capture.frames:
        if fr.dist is not None and options.ns_distortion == "refuse":
            k = next(i for i, c in enumerate(fr.dist) if c)
            raise InputError(f"{capture.json_path}: frame '{fr.file}' has lens distortion ('{DISTORTION_KEYS[k]}' = "
                             f"{fr.dist[k]}) and --ns_distortion is refuse")
    return (*first.K, first.height, first.width)


def frame_sources(capture, common):
    """A datasets.sources.FrameSource per frame (names: file stems, made unique by their folders)."""
    stems = [os.path.splitext(os.path.basename(f.file))[0] for f in capture.frames]
    unique = len(set(stems)) == len(stems)
    out = []
    for f, stem in zip(capture.frames, stems):
        name = stem if unique else os.path.splitext(os.path.normpath(f.file))[0].replace(os.sep, "__")
        out.append(FrameSource(name=name, file=f.file, path=f.path, height=f.height, width=f.width, K=f.K,
                               dist=f.dist, common=None if (*f.K, f.height, f.width) == common and f.dist is None
                               else common))
    return out


def normalisation(capture, options):
    """(centre [3], scale): world' = scale (world - centre); identity unless 'cameras' (module doc)."""
    mode = options.ns_normalise
    has_depth = capture.frames[0].depth is not None
    if mode == "none" or (mode == "auto" and has_depth):
        return np.zeros(3), 1.0
    centres = np.stack([f.c2w[:3, 3] for f in capture.frames])
    centre = centres.mean(0)
    rms = float(np.sqrt(((centres - centre) ** 2).sum(1).mean()))
    return centre, (1.0 / rms if rms > 1e-9 else 1.0)


def near_far_from_depth(depths):
    """(near, far) from valid (> 0) depths: 0.5 x the 0.5th and 1.5 x the 99.5th percentile."""
    valid = depths[depths > 0]
    if valid.numel() == 0:
        return None
    sample = valid if valid.numel() <= 4_000_000 else valid[torch.randperm(valid.numel(),
                                                               generator=torch.Generator().manual_seed(0))[:4_000_000]]
    lo, hi = np.percentile(sample.double().numpy(), DEPTH_PERCENTILES)
    far = DEPTH_MARGINS[1] * float(hi)
    return max(DEPTH_MARGINS[0] * float(lo), far * 1e-4), far


def near_far_from_layout(poses):
    """(near, far) from the camera centres alone (no depth): far = 4 R, near = far / 50, with R the
    largest distance of a camera from their centroid; None when the cameras do not spread."""
    centres = poses[:, :3, 3].double()
    radius = float(torch.linalg.norm(centres - centres.mean(0), dim=1).max())
    if radius < 1e-9:
        return None
    far = LAYOUT_FAR * radius
    return far / LAYOUT_NEAR_RATIO, far


class NerfstudioLoader:
    def __init__(self, data, options, workers=8):
        self.data, self.options = data, options
        self.hw = (int(data.height), int(data.width))
        self.features = FeatureOptions.from_flags(data.load_dino, data.load_lseg, data.high_res_dino,
                                                  data.feature_dim, torch.float16, data.load_on_cpu)
        self.workers = workers

    def load(self):
        capture = read_capture(self.data.dataset_dir)
        self.capture = capture
        common = common_camera(capture, self.options)
        self._check_aspect(common)
        sources = frame_sources(capture, common)
        centre, scale = normalisation(capture, self.options)
        poses = np.stack([f.c2w for f in capture.frames]).copy()
        poses[:, :3, 3] = (poses[:, :3, 3] - centre) * scale
        all_poses = torch.from_numpy(poses.astype(np.float32))
        self.depth_scale = (self.options.ns_depth_scale or capture.depth_scale or DEFAULT_DEPTH_SCALE) * scale
        train_ids, test_ids = split_ids(capture, self.data.training_mode, self.options)
        train, test = self._split(train_ids, sources, all_poses), self._split(test_ids, sources, all_poses)

        classes, train_sem, test_sem = np.array([0], dtype=np.int64), None, None
        if train["sem"] is not None:
            classes = label_classes(train["sem"] + test["sem"])
            train_sem = torch.stack(remap_labels(train["sem"], classes))
            test_sem = torch.stack(remap_labels(test["sem"], classes))
        near, far, how = self._near_far(train, test, all_poses)
        features = self.features.load(capture.root, train_ids, self.hw, self.workers) if self.features.kind else None
        fx, fy, cx, cy, h, w = common
        H, W = self.hw
        intr = Intrinsics(fx * W / w, fy * H / h, (cx + 0.5) * W / w - 0.5, (cy + 0.5) * H / h - 0.5)
        print(f"[nerfstudio] {capture.json_path}: {len(capture.frames)} frames ({len(train_ids)} train, "
              f"{len(test_ids)} test), {w}x{h} -> {W}x{H}, "
              f"{sum(s.resampled for s in sources)} resampled (distortion or other intrinsics), "
              f"{'labels' if train_sem is not None else 'no labels'}, "
              f"{'depth' if train['depth'] is not None else 'no depth'}; scale {scale:.6g}; "
              f"near/far {near:.4g}/{far:.4g} ({how})", flush=True)
        return Scene(
            name=os.path.basename(os.path.normpath(capture.root)), root=capture.root, height=H, width=W,
            intrinsics=intr,
            train=Split(ids=train_ids, rgb=train["rgb"], poses=train["poses"], semantic=train_sem,
                        depth=train["depth"], features=features),
            test=Split(ids=test_ids, rgb=test["rgb"], poses=test["poses"], semantic=test_sem, depth=test["depth"]),
            semantic_classes=classes, near=near, far=far, convention="opencv", frames=sources,
            all_poses=all_poses,
            extra=dict(normalisation=dict(centre=[float(c) for c in centre], scale=float(scale)),
                       depth_scale=self.depth_scale, near_far_from=how, format="nerfstudio"))

    def _check_aspect(self, common):
        h, w = common[4], common[5]
        H, W = self.hw
        if abs(W / H - w / h) > 0.01 * (w / h):
            raise InputError(f"experiment.width x height = {W}x{H} has another aspect ratio than the capture's "
                             f"{w}x{h} frames ({self.capture.frames[0].file}); use a size with their aspect ratio")

    def _near_far(self, train, test, all_poses):
        if self.options.ns_near_far is not None:
            return float(self.options.ns_near_far[0]), float(self.options.ns_near_far[1]), "--ns_near_far"
        if train["depth"] is not None:
            found = near_far_from_depth(torch.cat([train["depth"].reshape(-1), test["depth"].reshape(-1)]))
            if found is not None:
                return found[0], found[1], "depth percentiles"
        found = near_far_from_layout(all_poses)
        if found is not None:
            return found[0], found[1], "camera layout"
        print("[nerfstudio] the cameras do not spread and there is no depth: near/far from the config "
              f"({self.data.near}/{self.data.far})", flush=True)
        return float(self.data.near), float(self.data.far), "config"

    def _split(self, ids, sources, all_poses):
        frames = [self.capture.frames[i] for i in ids]
        with ThreadPoolExecutor(self.workers) as pool:
            loaded = list(pool.map(lambda fs: self._frame(*fs), [(f, sources[f.index]) for f in frames]))
        has_depth = frames[0].depth is not None
        has_sem = frames[0].semantic is not None
        return dict(rgb=torch.stack([x[0] for x in loaded]),
                    depth=torch.stack([x[1] for x in loaded]) if has_depth else None,
                    sem=[x[2] for x in loaded] if has_sem else None,
                    poses=all_poses[torch.as_tensor(ids, dtype=torch.long)])

    def _frame(self, meta, source):
        """(rgb [H, W, 3] float32 tensor, depth [H, W] or None, raw labels [H, W] int64 or None)."""
        rgb = read_png(meta.path, "colour")
        if rgb.ndim != 3:
            raise InputError(f"{meta.path}: expected a colour image, got shape {rgb.shape}")
        if rgb.shape[:2] != (meta.height, meta.width):
            raise InputError(f"{meta.path} is {rgb.shape[1]}x{rgb.shape[0]} but {self.capture.json_path} gives "
                             f"w={meta.width} h={meta.height} for it")
        peak = 65535.0 if rgb.dtype == np.uint16 else 255.0
        rgb = resample_to_common(rgb.astype(np.float32) / peak, source, cv2.INTER_LINEAR)
        rgb = torch.as_tensor(resize_image(rgb, self.hw, "linear"), dtype=torch.float32)
        depth = sem = None
        if meta.depth is not None:
            d = read_depth(meta.depth) * self.depth_scale
            d = resize_image(d, (meta.height, meta.width), "nearest")
            d = resample_to_common(np.ascontiguousarray(d, dtype=np.float32), source, cv2.INTER_NEAREST)
            depth = torch.as_tensor(resize_image(d, self.hw, "linear"), dtype=torch.float32)
        if meta.semantic is not None:
            s = read_png(meta.semantic, "semantic")
            if s.ndim != 2:
                raise InputError(f"{meta.semantic}: expected a single-channel label image, got shape {s.shape}")
            if s.shape != (meta.height, meta.width):
                raise InputError(f"{meta.semantic} is {s.shape[1]}x{s.shape[0]} but its frame {meta.path} is "
                                 f"{meta.width}x{meta.height}")
            s = resample_to_common(s.astype(np.int32), source, cv2.INTER_NEAREST)
            sem = np.asarray(resize_image(s.astype(np.int64), self.hw, "nearest"))
        return rgb, depth, sem


def read_depth(path):
    """Depth in file units as float64 [h, w]: a single-channel uint16 PNG or a 2D .npy array."""
    if path.endswith(".npy"):
        try:
            d = np.load(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable depth file ({exc.__class__.__name__})") from None
        if d.ndim == 3 and d.shape[2] == 1:
            d = d[..., 0]
        if d.ndim != 2 or not np.issubdtype(d.dtype, np.number):
            raise InputError(f"{path}: depth array of shape {d.shape} ({d.dtype}); expected [h, w] numbers")
        return np.nan_to_num(d.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    d = read_png(path, "depth")
    if d.ndim != 2:
        raise InputError(f"{path}: a {d.shape[2]}-channel image; expected a single-channel uint16 depth image")
    if d.dtype != np.uint16:
        raise InputError(f"{path}: {d.dtype} depth; expected uint16 (an 8-bit depth image has lost its range)")
    return d.astype(np.float64)
