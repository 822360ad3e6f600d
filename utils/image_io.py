"""Image and video files: PNGs written atomically, videos that never crash a finished run.

PNGs go through OpenCV's encoder (uint8 and uint16, 1/3/4 channels) with an explicit RGB->BGR
swap, so colour PNGs have the right channel order (the original wrote RGB arrays with cv2,
swapping red and blue).
"""
import os
import sys

import cv2
import imageio.v2 as imageio
import numpy as np

from utils.atomic import atomic_path, write_bytes_atomic
from utils.errors import InputError

_video_warned = False

# H.264 in yuv420p needs even frame sizes; imageio's default (16) rescales every other size, with
# a warning per file, so frames are padded to even sizes here and passed through unscaled.
VIDEO_BLOCK = 2


def _as_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to8b(x):
    """float in [0, 1] -> uint8 (clip, times 255, truncate: the NeRF convention). NaN (the
    disparity 1 / (depth / acc) of a ray that hits nothing) becomes 0 instead of an undefined cast."""
    return (255 * np.clip(np.nan_to_num(_as_numpy(x), nan=0.0), 0, 1)).astype(np.uint8)


def _png_ready(array):
    """uint8/uint16 unchanged; bool -> 0/255; float in [0,1] -> uint8; other ints -> the
    smallest of uint8/uint16 that holds them."""
    a = _as_numpy(array)
    if a.dtype in (np.uint8, np.uint16):
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        return to8b(a)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo >= 0 and hi <= 255:
            return a.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return a.astype(np.uint16)
        raise ValueError(f"integer image with values {lo}..{hi} does not fit a PNG (0..65535)")
    raise ValueError(f"cannot write a {a.dtype} array as PNG")


def write_png(path, array):
    """Write [H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA) to `path` atomically."""
    a = _png_ready(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 3:
        a = a[..., ::-1]
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., [2, 1, 0, 3]]
    elif a.ndim != 2:
        raise ValueError(f"cannot write an array of shape {a.shape} as PNG")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a))
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    write_bytes_atomic(path, buf.tobytes())


def read_label_png(path):
    """A label PNG as a 2D uint8/uint16 array (values unchanged). A three-channel file is accepted
    only if its channels are equal. InputError naming the file when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise InputError(f"label image {path} does not exist")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"label image {path} is not a readable image file")
    if img.ndim == 3:
        if img.shape[2] >= 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
            img = img[..., 0]
        else:
            raise InputError(f"label image {path} has {img.shape[2]} colour channels; expected a "
                             "single-channel image of label ids")
    return img


def video_frame(frame):
    """[H', W', 3] uint8 of a frame (uint8, uint16: its high byte, or float in [0,1]; [H,W] or
    [H,W,3]), H' and W' rounded up to a multiple of VIDEO_BLOCK by repeating the last row / column."""
    f = _png_ready(frame)
    if f.dtype != np.uint8:
        f = (f >> 8).astype(np.uint8)       # uint16 -> its high byte
    if f.ndim == 2:
        f = np.repeat(f[..., None], 3, axis=2)
    pad_h, pad_w = -f.shape[0] % VIDEO_BLOCK, -f.shape[1] % VIDEO_BLOCK
    if pad_h or pad_w:
        f = np.pad(f, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return f


def write_video(path, frames, fps=30):
    """mp4 of `frames` (see `video_frame`) with imageio, quality 8 as the original, at the frames'
    own size (an odd side gains one repeated row / column). Returns True when written. A missing
    ffmpeg backend (or any encoder failure) prints one warning per process and skips the video: a
    finished run must never die for a video."""
    global _video_warned
    frames = list(frames)
    if not frames:
        return False
    try:
        prepared = [video_frame(f) for f in frames]
        with atomic_path(path, ".mp4") as tmp:
            imageio.mimwrite(tmp, prepared, fps=fps, quality=8, macro_block_size=VIDEO_BLOCK)
        return True
    except Exception as exc:  # noqa: BLE001 - see the docstring
        if not _video_warned:
            print(f"warning: videos are skipped ({os.path.basename(path)}: {type(exc).__name__}: {exc}); "
                  "install imageio-ffmpeg to get them", file=sys.stderr)
            _video_warned = True
        return False
