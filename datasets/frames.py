"""Frame files shared by the loaders: numbered PNG discovery, PNG reading, pose tables."""
import glob
import os
import re

import imageio.v3 as iio
import numpy as np
from PIL import Image

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


def image_size(path):
    """(width, height) of an image file from its header only; InputError naming an unreadable one."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:
        raise InputError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from None


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
