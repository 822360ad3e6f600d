"""The built-in room as a nerfstudio capture (`python -m datasets.synthetic --format nerfstudio`):
what a researcher's own scene looks like after `ns-process-data`, with the labels kept apart.

    <out>/                          the capture (dataset_dir of `--dataset_type nerfstudio`)
      transforms.json               OPENCV camera (zero distortion), shared fl_x fl_y cx cy w h,
                                    frames [{file_path, transform_matrix (camera-to-world, OpenGL
                                    axes), depth_file_path}], depth_unit_scale_factor 0.001
      images/frame_<iiiii>.png      colour
      depth/frame_<iiiii>.png       uint16 millimetres of z-depth
      dino/dino_<i>.pth             the SYNTHETIC descriptors (stand-ins for extract_dino's)
      .complete                     written last
    <gt_out>/                       ground truth, for scoring only (default <out>_ground_truth): the
                                    same room in the Replica layout with its label maps, and
                                    capture_frames.json mapping each capture file to its frame number

The capture holds no label. Its files are byte copies of the Replica layout's, its poses the same
numbers (traj_w_c.txt, OpenCV axes, times diag(1, -1, -1, 1) to OpenGL axes) and its intrinsics
the same camera in nerfstudio's pixel convention (cx = W/2 where the Replica layout has (W-1)/2),
so both layouts give the same rays.
"""
import glob
import json
import os
import shutil

import numpy as np

from datasets import dino_io
from datasets.synthetic.generate import COMPLETE_MARKER, generate_scene, prepare_out
from utils.atomic import write_json_atomic
from utils.errors import InputError

GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])
FRAME_NAME = "frame_{:05d}"


def default_gt_dir(out_dir):
    return os.path.normpath(out_dir) + "_ground_truth"


def _prepare(out_dir, gt_dir):
    if os.path.abspath(out_dir) == os.path.abspath(gt_dir):
        raise InputError(f"--gt_out {gt_dir} is the capture folder; the ground truth goes elsewhere")
    prepare_out(out_dir)                   # the folder exists and holds no completion marker
    for stale in [os.path.join(out_dir, "transforms.json")] + \
            glob.glob(os.path.join(out_dir, "images", "frame_*.png")) + \
            glob.glob(os.path.join(out_dir, "depth", "frame_*.png")) + \
            glob.glob(os.path.join(out_dir, "dino", "*")):
        if os.path.isfile(stale):
            os.remove(stale)


def transforms(poses_cv, width, height, names, depth=True):
    """The transforms.json dictionary of OpenCV camera-to-world poses [N, 4, 4] (module docstring)."""
    frames = []
    for name, pose in zip(names, poses_cv):
        gl = np.asarray(pose, np.float64) @ GL_FROM_CV          # exact: sign flips of two columns
        fr = dict(file_path=f"images/{name}.png", transform_matrix=gl.tolist())
        if depth:
            fr["depth_file_path"] = f"depth/{name}.png"
        frames.append(fr)
    return dict(camera_model="OPENCV", fl_x=width / 2.0, fl_y=width / 2.0, cx=width / 2.0, cy=height / 2.0,
                w=int(width), h=int(height), k1=0.0, k2=0.0, p1=0.0, p2=0.0, depth_unit_scale_factor=1e-3,
                frames=frames)


def write_capture(out_dir, gt_dir=None, frames=150, width=80, height=60, seed=0, dino=True, supersample=3,
                  workers=None, stats=True, variant=0):
    """Write the room as a capture in `out_dir` and its ground truth in `gt_dir`; returns the
    generator's summary with `capture` and `ground_truth` paths."""
    gt_dir = gt_dir or default_gt_dir(out_dir)
    _prepare(out_dir, gt_dir)
    summary = generate_scene(gt_dir, frames, width, height, seed, dino, supersample, workers, stats, variant)
    poses = np.loadtxt(os.path.join(gt_dir, "traj_w_c.txt"), ndmin=2).reshape(-1, 4, 4)
    names = [FRAME_NAME.format(i) for i in range(frames)]
    for sub in ("images", "depth") + (("dino",) if dino else ()):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    def copy(sub_in, name_in, sub_out, name_out):
        shutil.copyfile(os.path.join(gt_dir, sub_in, name_in), os.path.join(out_dir, sub_out, name_out))

    for i, name in enumerate(names):
        copy("rgb", f"rgb_{i}.png", "images", f"{name}.png")
        copy("depth", f"depth_{i}.png", "depth", f"{name}.png")
        if dino:
            copy("dino", f"dino_{i}.pth", "dino", f"dino_{i}.pth")
    if dino:
        copy("dino", dino_io.META_NAME, "dino", dino_io.META_NAME)
    write_json_atomic(os.path.join(gt_dir, "capture_frames.json"), dict(
        capture=os.path.abspath(out_dir),
        note="ground truth of the capture, for scoring only: frame file -> Replica-layout frame number",
        frames={f"images/{name}.png": i for i, name in enumerate(names)}))
    write_json_atomic(os.path.join(out_dir, "transforms.json"), transforms(poses, width, height, names))
    params = dict(format="nerfstudio", variant=variant, frames=frames, width=width, height=height, seed=seed,
                  dino=dino, supersample=supersample)
    tmp = os.path.join(out_dir, COMPLETE_MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(params, f, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, COMPLETE_MARKER))
    summary.update(capture=os.path.abspath(out_dir), ground_truth=os.path.abspath(gt_dir))
    return summary
