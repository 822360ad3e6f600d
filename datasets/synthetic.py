"""The built-in synthetic scene: a furnished room written in the Semantic-NeRF Replica layout.

THESE DATA ARE SYNTHETIC. Nothing is downloaded and no network is involved: the images are ray
cast from simple analytic geometry, and the `dino/` descriptors are NOT produced by a DINO ViT;
they are random vectors built from the ground-truth labels and the image colours (below), made to
behave like DINO key descriptors under cosine similarity. Results on this scene test the code;
they say nothing about how the method performs on real images.

    python -m datasets.synthetic --out DIR [--frames 150 --width 80 --height 60 --seed 0 --no_dino]

Layout (what `datasets/replica.py` reads): `rgb/rgb_<i>.png` (uint8 RGB), `depth/depth_<i>.png`
(uint16 millimetres of z-depth), `semantic_class/semantic_class_<i>.png` (uint8 raw class ids,
0 = void), `semantic_instance/semantic_instance_<i>.png` (uint16, 0 = void), `traj_w_c.txt`
(row-major camera-to-world 4x4 per line, OpenCV camera axes), `dino/dino_<i>.pth` for every frame
plus `dino/descriptor_meta.json` (`"model": "synthetic"`), and `scene_info.json` (class names,
objects, parameters).

Scene (`datasets/synthetic_room.py`, ray cast by `datasets/synthetic_geometry.py`): a 6 x 4 x 3 m room (z up) with striped / noisy walls,
a checker floor, a ceiling, a rug, a table, four chairs, a sofa with two cushions, a cabinet, two
vases, a bookshelf, a floor lamp, two plants, a bin, a picture, and a window that is void
(class 0). Class ids are sparse Replica ids (wall 93, floor 40, chair 20, ...). Shading is
diffuse (ambient + point lights), so colours do not depend on the view direction.

Camera: pinhole, hfov 90 deg: fx = fy = W/2, cx = (W-1)/2, cy = (H-1)/2; pixel (u, v) looks along
R_wc ((u-cx)/fx, (v-cy)/fy, 1), so the ray parameter of a hit is its z-depth. Depth and labels
come from the pixel-centre ray; pixels on an object or colour edge get the mean colour of
ss x ss sub-pixel rays (anti-aliasing, ss odd, default 3), the others the centre's. The path is
one smooth loop (an ellipse around the table at 1.3-1.7 m height, looking across the room with a
swinging yaw and pitch); frame 0 looks along -x and sees most of the furniture.

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

import numpy as np

from datasets import synthetic_geometry as geo
from datasets.synthetic_descriptors import DIM, DescriptorModel, descriptor_similarity, grid_shape
from datasets.synthetic_room import CLASS_NAMES, build_room
from utils.errors import InputError

DEFAULT_FRAMES, DEFAULT_WIDTH, DEFAULT_HEIGHT = 150, 80, 60


# ------------------------------------------------------------------------------------------------
# camera
# ------------------------------------------------------------------------------------------------
def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    """Camera-to-world 4x4 with OpenCV axes (x right, y down, z forward) looking at target."""
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], 1)
    pose[:3, 3] = eye
    return pose


def camera_poses(frames):
    """[frames, 4, 4] camera-to-world poses: one closed loop around the room's centre."""
    poses = []
    for i in range(frames):
        th = 2 * np.pi * i / frames
        eye = np.array([0.2 + 2.1 * np.cos(th), 1.15 * np.sin(th), 1.5 + 0.2 * np.sin(2 * th)])
        look = th + 0.45 * np.sin(2 * th)           # yaw swing around "across the room"
        target = np.array([0.2 - 1.3 * np.cos(look), -0.8 * np.sin(look),
                           0.55 + 0.25 * np.sin(3 * th)])
        poses.append(look_at(eye, target))
    return np.stack(poses)


def pixel_directions(height, width, offsets=((0.0, 0.0),), pixels=None):
    """Camera-frame directions [P, S, 3] (z = 1) of sub-pixel samples (dv, du) of the pixels
    `pixels` (flat row-major indices; default all, in row-major order)."""
    fx = fy = width / 2.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    if pixels is None:
        pixels = np.arange(height * width)
    v, u = np.divmod(pixels, width)
    off = np.asarray(offsets, float)
    vv = v[:, None] + off[None, :, 0]
    uu = u[:, None] + off[None, :, 1]
    return np.stack([(uu - cx) / fx, (vv - cy) / fy, np.ones_like(uu)], -1)


def _shade_rays(room, pose, dirs):
    d = dirs.reshape(-1, 3) @ pose[:3, :3].T
    o = pose[:3, 3]
    hits = geo.cast(room, o, d)
    col, nrm, emissive, p = geo.surface(room, o, d, hits)
    return geo.shade(room, col, nrm, emissive, p), hits


def edge_pixels(obj, rgb, contrast=0.05):
    """[H, W] bool: pixels whose object or colour differs from a 4-neighbour (both sides marked)."""
    mask = np.zeros(obj.shape, bool)
    for ax in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        diff = (obj[tuple(a)] != obj[tuple(b)]) | (np.abs(rgb[tuple(a)] - rgb[tuple(b)]).max(-1) > contrast)
        mask[tuple(a)] |= diff
        mask[tuple(b)] |= diff
    return mask


def render_frame(room, pose, height, width, ss=3):
    """Ray cast one view. Returns rgb float32 [H, W, 3] in [0, 1], z-depth [H, W] (metres) and
    the object index [H, W] (into room.all_objects), depth and labels from the centre rays.

    Anti-aliasing (ss > 1, odd): pixels on an object or colour edge (`edge_pixels`) get the mean
    colour of an ss x ss grid of sub-pixel rays (centre included); the others keep the centre's.
    """
    rgb, hits = _shade_rays(room, pose, pixel_directions(height, width))
    depth = hits.t.reshape(height, width)
    obj = hits.obj.reshape(height, width)
    rgb = rgb.reshape(height, width, 3)
    if ss > 1:
        idx = np.nonzero(edge_pixels(obj, rgb).ravel())[0]
        off = (np.arange(ss) - (ss - 1) / 2) / ss
        offsets = [(dv, du) for dv in off for du in off if (dv, du) != (0.0, 0.0)]
        if len(idx):
            sub, _ = _shade_rays(room, pose, pixel_directions(height, width, offsets, idx))
            flat = rgb.reshape(-1, 3)
            flat[idx] = (flat[idx] + sub.reshape(len(idx), len(offsets), 3).sum(1)) / (ss * ss)
    return rgb.astype(np.float32), depth, obj


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
_FOLDERS = (("rgb", "rgb", ".png"), ("depth", "depth", ".png"), ("semantic_class", "semantic_class", ".png"),
            ("semantic_instance", "semantic_instance", ".png"), ("dino", "dino", ".pth"))
_STATE = {}


def _init_pool_worker(*args):
    import torch
    torch.set_num_threads(1)
    _init_worker(*args)


def _init_worker(out_dir, frames, height, width, seed, dino, ss, stat_pixels):
    room = build_room(seed)
    objs = room.all_objects
    _STATE.update(out_dir=out_dir, height=height, width=width, seed=seed, ss=ss, room=room,
                  poses=camera_poses(frames),
                  model=DescriptorModel(room, seed) if dino else None, stat_pixels=stat_pixels,
                  class_lut=np.array([ob.class_id for ob in objs]),
                  inst_lut=np.array([ob.instance_id for ob in objs]))


def _write_frame(i):
    """Render, write and (for training frames) sample descriptors of frame i."""
    import imageio.v3 as iio
    import torch
    from datasets import dino_io
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
    meta = os.path.join(out_dir, "dino", "descriptor_meta.json")
    if os.path.exists(meta):
        os.remove(meta)
    if os.path.isdir(os.path.join(out_dir, "dino")) and not os.listdir(os.path.join(out_dir, "dino")):
        os.rmdir(os.path.join(out_dir, "dino"))


def generate_scene(out_dir, frames=DEFAULT_FRAMES, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT, seed=0,
                   dino=True, supersample=3, workers=None, stats=True):
    """Write the synthetic room to `out_dir` (Replica layout) and return a summary dict.

    Deterministic for a given (frames, width, height, seed, supersample): the same files byte
    for byte, whatever `workers`. Old frame files in `out_dir` are removed first.
    workers: processes (default: 1 for small scenes, else up to the CPU count).
    stats: measure descriptor cosine statistics on a pixel sample of the training frames.
    """
    from datasets import dino_io
    if frames < 1 or width < 8 or height < 8:
        raise InputError(f"--frames {frames} --width {width} --height {height}: need at least one "
                         "frame of at least 8 x 8 pixels")
    if supersample < 1 or supersample % 2 == 0:
        raise InputError(f"--supersample {supersample}: must be odd (labels come from the centre ray)")
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    _clear_old(out_dir)
    for folder, _, _ in _FOLDERS:
        if folder != "dino" or dino:
            os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    poses = camera_poses(frames)
    np.savetxt(os.path.join(out_dir, "traj_w_c.txt"), poses.reshape(frames, 16), fmt="%.9f")
    room = build_room(seed)
    rows, cols = grid_shape(height, width)
    if dino:
        dino_io.write_meta(os.path.join(out_dir, "dino"), dict(
            model="synthetic", synthetic=True, grid=[rows, cols], dim=DIM, seed=seed,
            note="SYNTHETIC descriptors from datasets/synthetic.py (label- and colour-driven random "
                 "vectors with noise), not from a DINO network"))
    n_train = len(range(0, frames, 5))
    stat_pixels = int(np.ceil(3000 / n_train)) if (stats and dino) else 0
    args = (out_dir, frames, height, width, seed, dino, supersample, stat_pixels)
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

    summary = _summarise(room, results, frames, width, height, seed, dino, supersample, (rows, cols))
    with open(os.path.join(out_dir, "scene_info.json"), "w") as f:
        json.dump(summary, f, indent=1)
    summary["out_dir"] = os.path.abspath(out_dir)
    if stat_pixels:
        f, c, i = (np.concatenate([r["sample"][k] for r in results if "sample" in r]) for k in range(3))
        summary["descriptor_stats"] = descriptor_similarity(f, c, i, seed=seed)
    summary["seconds"] = round(time.time() - t0, 2)
    return summary


def _summarise(room, results, frames, width, height, seed, dino, ss, grid):
    classes = sorted({c for r in results for c in r["classes"]})
    f0 = results[0]
    f0_inst = [k for k in f0["instances"] if k != 0]
    objs = {ob.instance_id: ob for ob in room.all_objects}
    per_class = {}
    for k in f0_inst:
        per_class.setdefault(CLASS_NAMES[objs[k].class_id], []).append(k)
    return dict(
        synthetic=True, note="SYNTHETIC scene and descriptors written by datasets/synthetic.py",
        frames=frames, width=width, height=height,
        seed=seed, supersample=ss, dino=dino, dino_grid=list(grid) if dino else None,
        classes={int(c): CLASS_NAMES[c] for c in classes},
        objects=[dict(name=ob.name, class_id=ob.class_id, instance_id=ob.instance_id)
                 for ob in room.all_objects],
        depth_range=[min(r["depth_range"][0] for r in results), max(r["depth_range"][1] for r in results)],
        frame0=dict(classes=[int(c) for c in f0["classes"]],
                    class_names=[CLASS_NAMES[c] for c in f0["classes"]],
                    instances=len(f0_inst), instances_per_class={k: len(v) for k, v in per_class.items()}),
        intrinsics=dict(fx=width / 2.0, fy=width / 2.0, cx=(width - 1) / 2.0, cy=(height - 1) / 2.0))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=(
        "Write the built-in SYNTHETIC furnished room in the Replica (Semantic-NeRF) layout, "
        "with synthetic DINO-like descriptors."))
    ap.add_argument("--out", required=True, help="output folder (the dataset_dir)")
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
                                 a.supersample, a.workers, stats=not a.no_stats)
    except InputError as exc:
        ap.error(str(exc))
    print(json.dumps({k: v for k, v in summary.items() if k != "objects"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
