"""Reading and checking a `transforms.json` capture (nerfstudio's `ns-process-data` output, or
instant-ngp's format) before any image is read. datasets/nerfstudio.py loads what this returns.

Keys read (top level, or per frame where a frame overrides the top level):
- `frames`: list of {`file_path`, `transform_matrix` (4x4 camera-to-world, OpenGL camera axes)};
- intrinsics `fl_x`, `fl_y`, `cx`, `cy`, `w`, `h` (nerfstudio convention: the first pixel's centre
  is at 0.5, so cx here = the project's cx + 0.5); instant-ngp's `camera_angle_x` / `camera_angle_y`
  stand in for a missing `fl_x` / `fl_y`; a missing `cx`/`cy` is w/2 / h/2; a missing `w`/`h` is read
  from the image header;
- `camera_model`: OPENCV or PINHOLE (absent = PINHOLE); distortion `k1`, `k2`, `k3`, `p1`, `p2` or
  `distortion_params` ([k1, k2, k3, k4, p1, p2], nerfstudio's order); k4 must be 0;
- optional per frame: `depth_file_path` (every frame or none), `semantic_path` (this project's key:
  a label PNG of raw class ids, 0 = void; every frame or none); nerfstudio's `mask_path` is ignored;
- optional top level: `depth_unit_scale_factor` (metres per depth unit; nerfstudio has it as a
  parser setting, default 1e-3), `train_filenames` / `val_filenames` / `test_filenames`.
Frames are ordered by `file_path` with digit runs compared as numbers (frame_2 before frame_10);
the position in that order is the global frame id (also the `dino/dino_<id>.pth` number).
"""
import json
import math
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from datasets.frames import image_size
from utils.errors import InputError

SUPPORTED_MODELS = ("OPENCV", "PINHOLE")
DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")          # OpenCV's order
NERFSTUDIO_PARAMS = ("k1", "k2", "k3", "k4", "p1", "p2")   # order of `distortion_params`
DEFAULT_DEPTH_SCALE = 1e-3
# OpenGL / nerfstudio camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward)
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class FrameMeta:
    index: int                                 # global frame id (position in the sorted order)
    file: str                                  # file_path as written
    path: str                                  # file_path joined to the capture folder
    c2w: np.ndarray                            # [4, 4] float64 camera-to-world, OpenCV axes
    K: Tuple[float, float, float, float]       # (fx, fy, cx, cy), the project's pixel convention
    height: int
    width: int
    dist: Optional[Tuple[float, ...]]          # OpenCV (k1, k2, p1, p2, k3), None when all zero
    depth: Optional[str] = None                # depth file path
    semantic: Optional[str] = None             # label PNG path


@dataclass(frozen=True)
class Capture:
    root: str                                  # the folder holding transforms.json
    json_path: str
    frames: List[FrameMeta]
    depth_scale: Optional[float]               # from the file, None when absent
    split_lists: dict                          # 'train' / 'val' / 'test' -> list of global ids


def natural_key(text):
    """Sort key comparing digit runs as numbers: frame_2 < frame_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def capture_json(dataset_dir):
    """(folder, transforms.json path) of a capture given as its folder or as the JSON file."""
    if os.path.isfile(dataset_dir) and dataset_dir.endswith(".json"):
        return os.path.dirname(os.path.abspath(dataset_dir)), dataset_dir
    path = os.path.join(dataset_dir, "transforms.json")
    if not os.path.isdir(dataset_dir):
        raise InputError(f"dataset_dir {dataset_dir!r} does not exist (a folder holding transforms.json)")
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing (a nerfstudio capture folder holds transforms.json, as written by "
                         "ns-process-data)")
    return dataset_dir, path


def read_capture(dataset_dir):
    """Parse and check the capture; InputError naming the file, frame and key on bad input."""
    root, path = capture_json(dataset_dir)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise InputError(f"{path}: expected a JSON object with a 'frames' list")
    if not meta["frames"]:
        raise InputError(f"{path}: 'frames' is empty")
    model = meta.get("camera_model", "PINHOLE")
    if model not in SUPPORTED_MODELS:
        raise InputError(f"{path}: camera_model {model!r} is not supported (only {' and '.join(SUPPORTED_MODELS)}: "
                         "pinhole cameras with OpenCV distortion; undistort fisheye or equirectangular images first)")
    raw = meta["frames"]
    for i, fr in enumerate(raw):
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
            raise InputError(f"{path}: frames[{i}] has no 'file_path' string")
    order = sorted(range(len(raw)), key=lambda i: natural_key(raw[i]["file_path"]))
    frames = [_frame(path, root, meta, raw[i], i, k, model) for k, i in enumerate(order)]
    seen = {}
    for fr in frames:
        if fr.file in seen:
            raise InputError(f"{path}: frames list '{fr.file}' twice")
        seen[fr.file] = fr.index
    for key in ("depth", "semantic"):
        have = [fr.file for fr in frames if getattr(fr, key) is not None]
        if have and len(have) != len(frames):
            name = {"depth": "depth_file_path", "semantic": "semantic_path"}[key]
            lacking = next(fr.file for fr in frames if getattr(fr, key) is None)
            raise InputError(f"{path}: '{name}' is given for {len(have)} of {len(frames)} frames (e.g. not for "
                             f"'{lacking}'); give it for every frame or for none")
    scale = meta.get("depth_unit_scale_factor")
    if scale is not None and not (_is_number(scale) and scale > 0 and math.isfinite(scale)):
        raise InputError(f"{path}: depth_unit_scale_factor {scale!r}: expected a positive number (metres per unit)")
    return Capture(root, path, frames, None if scale is None else float(scale), _split_lists(path, meta, seen))


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _value(path, meta, fr, where, key, default=None):
    """The frame's value of `key`, else the top level's, else `default` (a number, checked)."""
    v = fr.get(key, meta.get(key, default))
    if v is not None and not (_is_number(v) and math.isfinite(v)):
        raise InputError(f"{path}: {where}: '{key}' = {v!r}: expected a finite number")
    return v


def _frame(path, root, meta, fr, raw_index, index, model):
    where = f"frame '{fr['file_path']}' (frames[{raw_index}])"
    file_path = os.path.join(root, fr["file_path"])
    if not os.path.isfile(file_path):
        raise InputError(f"{path}: {where}: image file {file_path} is missing")
    c2w = _pose(path, where, fr.get("transform_matrix"))
    w, h = _value(path, meta, fr, where, "w"), _value(path, meta, fr, where, "h")
    if w is None or h is None:
        w, h = image_size(file_path)
    w, h = int(w), int(h)
    if w < 1 or h < 1:
        raise InputError(f"{path}: {where}: image size w={w} h={h}: expected positive integers")
    fx, fy = _value(path, meta, fr, where, "fl_x"), _value(path, meta, fr, where, "fl_y")
    ax, ay = _value(path, meta, fr, where, "camera_angle_x"), _value(path, meta, fr, where, "camera_angle_y")
    if fx is None and ax is not None:
        fx = 0.5 * w / math.tan(0.5 * ax)
    if fy is None and ay is not None:
        fy = 0.5 * h / math.tan(0.5 * ay)
    if fx is None:
        raise InputError(f"{path}: {where}: no focal length (expected 'fl_x', or 'camera_angle_x')")
    fy = fx if fy is None else fy
    if not (fx > 0 and fy > 0):
        raise InputError(f"{path}: {where}: focal length fl_x={fx} fl_y={fy}: expected positive numbers")
    cx = _value(path, meta, fr, where, "cx", w / 2.0)
    cy = _value(path, meta, fr, where, "cy", h / 2.0)
    dist = _distortion(path, meta, fr, where, model)
    depth = semantic = None
    for key in ("depth_file_path", "semantic_path"):
        if key in fr:
            if not isinstance(fr[key], str):
                raise InputError(f"{path}: {where}: '{key}' must be a file path string")
            p = os.path.join(root, fr[key])
            if not os.path.isfile(p):
                raise InputError(f"{path}: {where}: {key} file {p} is missing")
            if key == "depth_file_path":
                depth = p
            else:
                semantic = p
    # nerfstudio's pixel centres are at +0.5 (COLMAP's convention); the project's at integers
    return FrameMeta(index, fr["file_path"], file_path, c2w, (float(fx), float(fy), float(cx) - 0.5, float(cy) - 0.5),
                     h, w, dist, depth, semantic)


def _pose(path, where, matrix):
    if matrix is None:
        raise InputError(f"{path}: {where}: 'transform_matrix' is missing")
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {where}: 'transform_matrix' is not a 4x4 array of numbers") from None
    if m.shape != (4, 4):
        raise InputError(f"{path}: {where}: 'transform_matrix' has shape {list(m.shape)}; expected 4x4 "
                         "(camera-to-world)")
    if not np.isfinite(m).all():
        raise InputError(f"{path}: {where}: 'transform_matrix' has non-finite entries (NaN or inf)")
    rot = m[:3, :3]
    if (np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-6 or np.abs(rot.T @ rot - np.eye(3)).max() > 1e-3
            or np.linalg.det(rot) < 0):
        raise InputError(f"{path}: {where}: 'transform_matrix' is not a rigid camera-to-world transform "
                         "(expected a rotation and a translation, last row 0 0 0 1)")
    return m @ GL_TO_CV


def _distortion(path, meta, fr, where, model):
    """OpenCV (k1, k2, p1, p2, k3), or None when every coefficient is zero."""
    values = {}
    params = fr.get("distortion_params", meta.get("distortion_params"))
    if params is not None:
        if (not isinstance(params, list) or len(params) not in (4, 6)
                or not all(_is_number(p) and math.isfinite(p) for p in params)):
            raise InputError(f"{path}: {where}: 'distortion_params' {params!r}: expected [k1, k2, k3, k4, p1, p2]")
        values = dict(zip(NERFSTUDIO_PARAMS, params)) if len(params) == 6 else dict(zip(DISTORTION_KEYS, params))
    for key in NERFSTUDIO_PARAMS:
        v = _value(path, meta, fr, where, key)
        if v is not None:
            values[key] = v
    if values.get("k4", 0.0) != 0.0:
        raise InputError(f"{path}: {where}: 'k4' = {values['k4']}: OpenCV's 5-coefficient model has no k4 (a fisheye "
                         "or thin-prism camera); undistort the images first")
    coeffs = tuple(float(values.get(k, 0.0)) for k in DISTORTION_KEYS)
    if not any(coeffs):
        return None
    if model == "PINHOLE":
        key = next(k for k, c in zip(DISTORTION_KEYS, coeffs) if c)
        raise InputError(f"{path}: {where}: '{key}' = {values[key]} but camera_model PINHOLE has no distortion "
                         "(use camera_model OPENCV)")
    return coeffs


def _split_lists(path, meta, index_of):
    """{'train' | 'val' | 'test': [global ids]} of the lists present (entries must be frames)."""
    out = {}
    for split in ("train", "val", "test"):
        key = f"{split}_filenames"
        if key not in meta:
            continue
        names = meta[key]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{path}: '{key}' must be a list of file paths")
        ids = []
        for n in names:
            hit = index_of.get(n)
            if hit is None:
                hit = index_of.get(os.path.normpath(n))
            if hit is None:
                raise InputError(f"{path}: '{key}' lists '{n}', which is not the file_path of any frame")
            ids.append(hit)
        out[split] = sorted(set(ids))
    return out
