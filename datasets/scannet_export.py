"""Export a ScanNet `.sens` stream to the frame layout `datasets/scannet.py` reads (Python 3).

    python -m datasets.scannet_export --sens scans/scene0004_00/scene0004_00.sens \
        [--out scans/scene0004_00] [--frame_skip 1] [--no_depth] [--unzip_labels]

Writes, under --out (default: the folder of the .sens file):
  renders/color/<i>.jpg   the stored JPEG bytes, unchanged (no re-encoding)
  renders/depth/<i>.png   uint16 depth in the stream's units (millimetres for ScanNet)
  renders/pose/<i>.txt    4x4 camera-to-world; invalid poses stay as stored (-inf), the loader skips them
  <scene>.txt             only if absent: fx_color, fy_color, mx_color, my_color, colorWidth,
                          colorHeight (and the depth ones) from the stream header
and, with --unzip_labels, extracts <scene>_2d-label-filt.zip and <scene>_2d-instance-filt.zip
(found next to the .sens) into --out, giving label-filt/<i>.png and instance-filt/<i>.png.
<i> is the frame's index in the stream, so labels and frames keep matching with --frame_skip.

The .sens format (version 4, little-endian): u32 version, u64 name length, name, four float32
4x4 matrices (colour intrinsics, colour extrinsics, depth intrinsics, depth extrinsics),
i32 colour compression (2 = jpeg), i32 depth compression (1 = zlib uint16), u32 colour width,
height, depth width, height, f32 depth shift, u64 frame count; then per frame: float32 4x4
camera-to-world, u64 colour timestamp, u64 depth timestamp, u64 colour bytes, u64 depth bytes,
the colour payload, the depth payload. IMU records follow the frames and are not read.
"""
import argparse
import os
import struct
import sys
import zipfile
import zlib

import imageio.v3 as iio
import numpy as np
from tqdm import tqdm

from utils.errors import InputError

COLOR_TYPES = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_TYPES = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_HEADER_TAIL = struct.Struct("<iiIIIIfQ")
_FRAME = struct.Struct("<16fQQQQ")


def _read(f, n, path):
    data = f.read(n)
    if len(data) != n:
        raise InputError(f"{path}: truncated .sens file")
    return data


def read_header(f, path):
    (version,) = struct.unpack("<I", _read(f, 4, path))
    if version != 4:
        raise InputError(f"{path}: .sens version {version}; expected 4")
    (name_len,) = struct.unpack("<Q", _read(f, 8, path))
    if name_len > 4096:
        raise InputError(f"{path}: not a .sens file (sensor name of {name_len} bytes)")
    name = _read(f, name_len, path).decode("ascii", "replace")
    mats = np.frombuffer(_read(f, 4 * 16 * 4, path), dtype="<f4").reshape(4, 4, 4)
    ctype, dtype, cw, ch, dw, dh, shift, frames = _HEADER_TAIL.unpack(_read(f, _HEADER_TAIL.size, path))
    return dict(sensor=name, intrinsic_color=mats[0], extrinsic_color=mats[1], intrinsic_depth=mats[2],
                extrinsic_depth=mats[3], color_compression=COLOR_TYPES.get(ctype, str(ctype)),
                depth_compression=DEPTH_TYPES.get(dtype, str(dtype)), color_width=cw, color_height=ch,
                depth_width=dw, depth_height=dh, depth_shift=shift, num_frames=frames)


def iter_frames(f, header, path):
    """Yield (index, pose [4,4] float32, colour bytes, depth bytes), streaming."""
    for i in range(header["num_frames"]):
        values = _FRAME.unpack(_read(f, _FRAME.size, path))
        pose = np.array(values[:16], dtype=np.float32).reshape(4, 4)
        color = _read(f, values[18], path)
        depth = _read(f, values[19], path)
        yield i, pose, color, depth


def decode_depth(data, header):
    if header["depth_compression"] == "zlib_ushort":
        data = zlib.decompress(data)
    elif header["depth_compression"] != "raw_ushort":
        raise InputError(f"depth compression {header['depth_compression']!r} is not supported")
    return np.frombuffer(data, dtype="<u2").reshape(header["depth_height"], header["depth_width"])


def write_info(path, header):
    kc, kd = header["intrinsic_color"], header["intrinsic_depth"]
    lines = [f"colorHeight = {header['color_height']}", f"colorWidth = {header['color_width']}",
             f"depthHeight = {header['depth_height']}", f"depthWidth = {header['depth_width']}",
             f"fx_color = {kc[0, 0]:.6f}", f"fy_color = {kc[1, 1]:.6f}",
             f"mx_color = {kc[0, 2]:.6f}", f"my_color = {kc[1, 2]:.6f}",
             f"fx_depth = {kd[0, 0]:.6f}", f"fy_depth = {kd[1, 1]:.6f}",
             f"mx_depth = {kd[0, 2]:.6f}", f"my_depth = {kd[1, 2]:.6f}",
             f"numColorFrames = {header['num_frames']}", f"numDepthFrames = {header['num_frames']}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def export_sens(sens_path, out_dir=None, frame_skip=1, depth=True, unzip_labels=False, progress=True):
    """Export one .sens file; returns the number of frames written."""
    if not os.path.isfile(sens_path):
        raise InputError(f"{sens_path}: .sens file not found")
    if frame_skip < 1:
        raise InputError(f"--frame_skip {frame_skip}: expected a positive integer")
    out_dir = out_dir or os.path.dirname(os.path.abspath(sens_path))
    scene = os.path.splitext(os.path.basename(sens_path))[0]
    folders = {k: os.path.join(out_dir, "renders", k) for k in ("color", "pose") + (("depth",) if depth else ())}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    written = 0
    with open(sens_path, "rb") as f:
        header = read_header(f, sens_path)
        info_path = os.path.join(out_dir, f"{scene}.txt")
        if not os.path.isfile(info_path):
            write_info(info_path, header)
        frames = iter_frames(f, header, sens_path)
        if progress:
            frames = tqdm(frames, total=header["num_frames"], desc=f"export {scene}", dynamic_ncols=True)
        for i, pose, color, depth_data in frames:
            if i % frame_skip:
                continue
            if header["color_compression"] == "jpeg":
                with open(os.path.join(folders["color"], f"{i}.jpg"), "wb") as g:
                    g.write(color)
            else:   # png or raw rgb: (re-)encode as JPEG so that the loader's layout holds
                img = (iio.imread(color) if header["color_compression"] == "png" else
                       np.frombuffer(color, np.uint8).reshape(header["color_height"], header["color_width"], 3))
                iio.imwrite(os.path.join(folders["color"], f"{i}.jpg"), img, quality=95)
            np.savetxt(os.path.join(folders["pose"], f"{i}.txt"), pose, fmt="%f")
            if depth:
                iio.imwrite(os.path.join(folders["depth"], f"{i}.png"), decode_depth(depth_data, header))
            written += 1
    if unzip_labels:
        base = os.path.dirname(os.path.abspath(sens_path))
        for kind in ("label-filt", "instance-filt"):
            path = os.path.join(base, f"{scene}_2d-{kind}.zip")
            if not os.path.isfile(path):
                raise InputError(f"{path}: missing (download it with ScanNet's download script)")
            with zipfile.ZipFile(path) as z:
                z.extractall(out_dir)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description="Export a ScanNet .sens file to renders/{color,depth,pose}.")
    p.add_argument("--sens", required=True, help="path to <scene>.sens")
    p.add_argument("--out", default=None, help="scene folder to write into (default: the .sens folder)")
    p.add_argument("--frame_skip", type=int, default=1, help="export every n-th frame (ids stay stream indices)")
    p.add_argument("--no_depth", action="store_true", help="skip depth PNGs (the loader does not read them)")
    p.add_argument("--unzip_labels", action="store_true",
                   help="also extract <scene>_2d-label-filt.zip and <scene>_2d-instance-filt.zip")
    args = p.parse_args(argv)
    try:
        n = export_sens(args.sens, args.out, args.frame_skip, not args.no_depth, args.unzip_labels)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {n} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
