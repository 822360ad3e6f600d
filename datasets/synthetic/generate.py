"""Writing a built-in synthetic room in the Replica layout (`generate_scene`); the layout and the
scene are described in the package docstring (`datasets/synthetic/__init__.py`)."""
import glob
import json
import multiprocessing as mp
import os
import time

import imageio.v3 as iio
import numpy as np
import torch

from datasets import dino_io
from datasets.synthetic.descriptors import DIM, DescriptorModel, descriptor_similarity, grid_shape
from datasets.synthetic.render import render_frame
from datasets.synthetic.variants import VARIANTS
from utils.errors import InputError

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


def prepare_out(out_dir):
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
    prepare_out(out_dir)
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
            note="SYNTHETIC descriptors from datasets.synthetic (label- and colour-driven random "
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
        synthetic=True, note="SYNTHETIC scene and descriptors written by datasets.synthetic",
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
