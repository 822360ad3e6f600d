"""The built-in synthetic scenes: furnished rooms written in the Semantic-NeRF Replica layout.

THESE DATA ARE SYNTHETIC. Nothing is downloaded and no network is involved: the images are ray
cast from simple analytic geometry, and the `dino/` descriptors are NOT produced by a DINO ViT;
they are random vectors built from the ground-truth labels and the image colours (below), made to
behave like DINO key descriptors under cosine similarity. Results on these scenes test the code;
they say nothing about how the method performs on real images.

    python -m datasets.synthetic --out DIR [--variant 0 --frames 150 --width 80 --height 60 --seed 0 --no_dino]

--variant N picks the room (`datasets/synthetic_variants.py`): 0 (default) the living room below,
1 a bedroom with a work corner. Bad input (`--out` naming a file, an unknown variant, too small
a size) stops with one line `error: ...` and exit code 2.

Layout (what `datasets/replica.py` reads): `rgb/rgb_<i>.png` (uint8 RGB), `depth/depth_<i>.png`
(uint16 millimetres of z-depth), `semantic_class/semantic_class_<i>.png` (uint8 raw class ids,
0 = void), `semantic_instance/semantic_instance_<i>.png` (uint16, 0 = void), `traj_w_c.txt`
(row-major camera-to-world 4x4 per line, OpenCV camera axes), `dino/dino_<i>.pth` for every frame
plus `dino/descriptor_meta.json` (`"model": "synthetic"`), `scene_info.json` (variant, class
names, objects, parameters) and, written last, the completion marker `.complete` (JSON of the
parameters; `scene_complete(path)` checks it; a run removes it first, so an interrupted run leaves
none).

Variant 0 (`datasets/synthetic_room.py`, ray cast by `datasets/synthetic_geometry.py`): a
6 x 4 x 3 m room (z up) with striped / noisy walls, a checker floor, a ceiling, a rug, a table,
four chairs, a sofa with two cushions, a cabinet, two vases, a bookshelf, a floor lamp, two
plants, a bin, a picture, and a window that is void (class 0). Class ids are sparse Replica ids
(wall 93, floor 40, chair 20, ...). The path is one smooth loop (an ellipse around the table at
1.3-1.7 m height, looking across the room with a swinging yaw and pitch); frame 0 looks along -x
and sees most of the furniture.

Variant 1 (`datasets/synthetic_bedroom.py`): a 5 x 4.4 x 2.7 m bedroom with diamond wallpaper,
painted walls and a plank floor; a bed with a blanket and two pillows, two nightstands, a table
lamp, a wardrobe, a desk with two monitors, a keyboard and an office chair, a rug, a plant, a
bin, two pictures, curtains, a door and a void window. It shares wall, floor, ceiling, chair,
lamp, picture, rug, plant, bin and void with variant 0 (same ids); the other classes are new.
The path is a clockwise ellipse at 1.4-1.7 m looking across the room; frame 0 looks at the bed.

Both: shading is diffuse (ambient + point lights), so colours do not depend on the view
direction. Camera: pinhole, hfov 90 deg: fx = fy = W/2, cx = (W-1)/2, cy = (H-1)/2; pixel (u, v)
looks along R_wc ((u-cx)/fx, (v-cy)/fy, 1), so the ray parameter of a hit is its z-depth. Depth
and labels come from the pixel-centre ray; pixels on an object or colour edge get the mean colour
of ss x ss sub-pixel rays (anti-aliasing, ss odd, default 3), the others the centre's
(`datasets/synthetic_render.py`).

Descriptors ("DINO-like", `datasets/synthetic_descriptors.py`), 384 channels on a coarse grid of
about H/2.7 x W/2.7 cells (22 x 30 for 60 x 80; 89 x 119 for 240 x 320, as real DINO at load size
360 and stride 4). Per pixel:
    f(p) = A m + B c[class(p)] + C o[instance(p)] + L(colour features of p)
with m a shared "mean" direction (unrelated things still have cosine ~0.3-0.5), c a unit vector
per class (look-alike classes such as wall/ceiling or chair/sofa share part of theirs), o a unit
vector per object, and L a fixed random linear map of [2 (rgb - 0.5), cos(rgb B + phi)]. Each cell
is the area average of f over its footprint (two strides wide, as overlapping ViT patches, so
boundaries mix), plus Gaussian noise drawn per frame and cell.
"""
import argparse
import glob
import json
import multiprocessing as mp
import os
import sys
import time

import imageio.v3 as iio
import numpy as np
import torch

from datasets import dino_io
from datasets.synthetic_descriptors import DIM, DescriptorModel, descriptor_similarity, grid_shape
from datasets.synthetic_render import edge_pixels, look_at, pixel_directions, render_frame
from datasets.synthetic_variants import VARIANTS
from utils.errors import InputError

__all__ = ["generate_scene", "scene_complete", "camera_poses", "render_frame", "look_at", "pixel_directions",
           "edge_pixels", "grid_shape", "descriptor_similarity", "VARIANTS", "main"]

DEFAULT_FRAMES, DEFAULT_WIDTH, DEFAULT_HEIGHT = 150, 80, 60
COMPLETE_MARKER = ".complete"


def camera_poses(frames, variant=0):
    """[frames, 4, 4] camera-to-world poses of the variant's closed camera path."""
    return VARIANTS[variant].poses(frames)


def scene_complete(path, **expected):
    """True iff `path` holds a fully written scene: its completion marker exists (it is written
    last) and records every given parameter, e.g. scene_complete(p, variant=1, frames=50)."""
    marker = os.path.join(path, COMPLETE_MARKER)
    try:
        with open(marker) as f:
            params = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(params, dict) and all(params.get(k) == v for k, v in expected.items())


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
_FOLDERS = (("rgb", "rgb", ".png"), ("depth", "depth", ".png"), ("semantic_class", "semantic_class", ".png"),
            ("semantic_instance", "semantic_instance", ".png"), ("dino", "dino", ".pth"))
_STATE = {}


def _init_pool_worker(*args):
    torch.set_num_threads(1)
    _init_worker(*args)


def _init_worker(out_dir, frames, height, width, seed, dino, ss, stat_pixels, variant):
    room = VARIANTS[variant].build(seed)
    objs = room.all_objects
    _STATE.update(out_dir=out_dir, height=height, width=width, seed=seed, ss=ss, room=room,
                  poses=camera_poses(frames, variant),
                  model=DescriptorModel(room, seed) if dino else None, stat_pixels=stat_pixels,
                  class_lut=np.array([ob.class_id for ob in objs]),
                  inst_lut=np.array([ob.instance_id for ob in objs]))


def _write_frame(i):
    """Render, write and (for training frames) sample descriptors of frame i."""
    s = _STATE
    h, w, out = s["height"], s["width"], s["out_dir"]
    rgb, depth, obj = render_frame(s["room"], s["poses"][i], h, w, s["ss"])
    cls, inst = s["class_lut"][obj], s["inst_lut"][obj]
    iio.imwrite(os.path.join(out, "rgb", f"rgb_{i}.png"), np.round(rgb * 255).astype(np.uint8))
    iio.imwrite(os.path.join(out, "depth", f"depth_{i}.png"),
                np.clip(np.round(depth * 1000), 0, 65535).astype(np.uint16))
    iio.imwrite(os.path.join(out, "semantic_class", f"semantic_class_{i}.png"), cls.astype(np.uint8))
    iio.imwrite(os.path.join(out, "semantic_instance", f"semantic_instance_{i}.png"), inst.astype(np.uint16))
    result = dict(frame=i, classes=np.unique(cls).tolist(), instances=np.unique(inst).tolist(),
                  depth_range=(float(depth.min()), float(depth.max())))
    if s["model"] is not None:
        grid = s["model"].grid(obj, rgb, i)
        dino_io.save_descriptor(os.path.join(out, "dino", f"dino_{i}.pth"), torch.from_numpy(grid))
        if i % 5 == 0 and s["stat_pixels"]:      # a training frame: keep a pixel sample for the stats
            rng = np.random.default_rng([s["seed"], 3, i])
            v = rng.integers(0, h, s["stat_pixels"])
            u = rng.integers(0, w, s["stat_pixels"])
            store = dino_io.DescriptorStore(torch.from_numpy(grid)[None], (h, w))
            f = store.gather(torch.zeros(len(v), dtype=torch.long), torch.from_numpy(v), torch.from_numpy(u))
            result["sample"] = (f.numpy(), cls[v, u], inst[v, u])
    return result


def _clear_old(out_dir):
    for folder, prefix, ext in _FOLDERS:
        for path in glob.glob(os.path.join(out_dir, folder, f"{prefix}_*{ext}")):
            os.remove(path)
    for path in (os.path.join(out_dir, "dino", "descriptor_meta.json"), os.path.join(out_dir, "scene_info.json"),
                 os.path.join(out_dir, COMPLETE_MARKER + ".tmp")):
        if os.path.exists(path):
            os.remove(path)
    if os.path.isdir(os.path.join(out_dir, "dino")) and not os.listdir(os.path.join(out_dir, "dino")):
        os.rmdir(os.path.join(out_dir, "dino"))


def _prepare_out(out_dir):
    """Create `out_dir` (InputError if it is a file or cannot be made) and drop its marker."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"--out {out_dir} is a file, not a folder (name a new or existing folder)")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    marker = os.path.join(out_dir, COMPLETE_MARKER)
    if os.path.lexists(marker):
        os.remove(marker)


def _write_marker(out_dir, params):
    """Write the completion marker atomically (a temporary file renamed into place)."""
    tmp = os.path.join(out_dir, COMPLETE_MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(params, f, sort_keys=True)
    os.replace(tmp, os.path.join(out_dir, COMPLETE_MARKER))


def generate_scene(out_dir, frames=DEFAULT_FRAMES, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT, seed=0,
                   dino=True, supersample=3, workers=None, stats=True, variant=0):
    """Write synthetic room `variant` to `out_dir` (Replica layout) and return a summary dict.

    Deterministic for a given (variant, frames, width, height, seed, supersample): the same files
    byte for byte, whatever `workers`. The completion marker and old frame files in `out_dir` are
    removed first; the marker is written last.
    workers: processes (default: 1 for small scenes, else up to the CPU count).
    stats: measure descriptor cosine statistics on a pixel sample of the training frames.
    """
    if variant not in VARIANTS:
        known = ", ".join(f"{k} ({v.name})" for k, v in sorted(VARIANTS.items()))
        raise InputError(f"--variant {variant}: unknown variant (known: {known})")
    if frames < 1 or width < 8 or height < 8:
        raise InputError(f"--frames {frames} --width {width} --height {height}: need at least one "
                         "frame of at least 8 x 8 pixels")
    if supersample < 1 or supersample % 2 == 0:
        raise InputError(f"--supersample {supersample}: must be odd (labels come from the centre ray)")
    t0 = time.time()
    _prepare_out(out_dir)
    _clear_old(out_dir)
    for folder, _, _ in _FOLDERS:
        if folder != "dino" or dino:
            os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    poses = camera_poses(frames, variant)
    np.savetxt(os.path.join(out_dir, "traj_w_c.txt"), poses.reshape(frames, 16), fmt="%.9f")
    room = VARIANTS[variant].build(seed)
    rows, cols = grid_shape(height, width)
    if dino:
        dino_io.write_meta(os.path.join(out_dir, "dino"), dict(
            model="synthetic", synthetic=True, grid=[rows, cols], dim=DIM, seed=seed,
            note="SYNTHETIC descriptors from datasets/synthetic.py (label- and colour-driven random "
                 "vectors with noise), not from a DINO network"))
    n_train = len(range(0, frames, 5))
    stat_pixels = int(np.ceil(3000 / n_train)) if (stats and dino) else 0
    args = (out_dir, frames, height, width, seed, dino, supersample, stat_pixels, variant)
    if workers is None:
        workers = 1 if frames * width * height <= 2_000_000 else min(4, os.cpu_count() or 1)
    if workers <= 1:
        _init_worker(*args)
        results = [_write_frame(i) for i in range(frames)]
    else:
        env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update({k: "1" for k in env})
        try:
            with mp.get_context("spawn").Pool(workers, _init_pool_worker, args) as pool:
                results = list(pool.imap(_write_frame, range(frames), chunksize=4))
        finally:
            for k, v in env.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

    summary = _summarise(room, variant, results, frames, width, height, seed, dino, supersample, (rows, cols))
    with open(os.path.join(out_dir, "scene_info.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _write_marker(out_dir, dict(variant=variant, frames=frames, width=width, height=height, seed=seed,
                                dino=dino, supersample=supersample))
    summary["out_dir"] = os.path.abspath(out_dir)
    if stat_pixels:
        f, c, i = (np.concatenate([r["sample"][k] for r in results if "sample" in r]) for k in range(3))
        summary["descriptor_stats"] = descriptor_similarity(f, c, i, seed=seed)
    summary["seconds"] = round(time.time() - t0, 2)
    return summary


def _summarise(room, variant, results, frames, width, height, seed, dino, ss, grid):
    classes = sorted({c for r in results for c in r["classes"]})
    f0 = results[0]
    f0_inst = [k for k in f0["instances"] if k != 0]
    objs = {ob.instance_id: ob for ob in room.all_objects}
    names = room.class_names
    per_class = {}
    for k in f0_inst:
        per_class.setdefault(names[objs[k].class_id], []).append(k)
    return dict(
        synthetic=True, note="SYNTHETIC scene and descriptors written by datasets/synthetic.py",
        variant=variant, room=room.name,
        frames=frames, width=width, height=height,
        seed=seed, supersample=ss, dino=dino, dino_grid=list(grid) if dino else None,
        classes={int(c): names[c] for c in classes},
        objects=[dict(name=ob.name, class_id=ob.class_id, instance_id=ob.instance_id)
                 for ob in room.all_objects],
        depth_range=[min(r["depth_range"][0] for r in results), max(r["depth_range"][1] for r in results)],
        frame0=dict(classes=[int(c) for c in f0["classes"]],
                    class_names=[names[c] for c in f0["classes"]],
                    instances=len(f0_inst), instances_per_class={k: len(v) for k, v in per_class.items()}),
        intrinsics=dict(fx=width / 2.0, fy=width / 2.0, cx=(width - 1) / 2.0, cy=(height - 1) / 2.0))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=(
        "Write a built-in SYNTHETIC furnished room in the Replica (Semantic-NeRF) layout, "
        "with synthetic DINO-like descriptors."))
    ap.add_argument("--out", required=True, help="output folder (the dataset_dir)")
    ap.add_argument("--variant", type=int, default=0, help="room: 0 living room (default), 1 bedroom")
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    ap.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    ap.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no_dino", action="store_true", help="do not write dino/ descriptors")
    ap.add_argument("--supersample", type=int, default=3, help="sub-pixel rays per axis (odd)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: automatic)")
    ap.add_argument("--no_stats", action="store_true", help="skip the descriptor statistics")
    a = ap.parse_args(argv)
    try:
        summary = generate_scene(a.out, a.frames, a.width, a.height, a.seed, not a.no_dino,
                                 a.supersample, a.workers, stats=not a.no_stats, variant=a.variant)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps({k: v for k, v in summary.items() if k != "objects"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
