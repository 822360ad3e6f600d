"""A hand-made Replica-layout folder for loader and error-path tests (independent of the
synthetic generator)."""
import os

import imageio.v3 as iio
import numpy as np
import torch


def write_tiny_replica(root, n_frames=12, height=12, width=16, classes=(0, 7, 31, 93), instances=True,
                       depth=True, dino_grid=None, dino_dim=384, sidecar=True, seed=0, numbering=None):
    """Write frames with known content. Returns dict(poses, rgb, sem, numbers).

    numbering: list of file numbers (default 0..n-1); the loader orders by number.
    dino_grid: (rows, cols) to also write dino/dino_<n>.pth for every frame.
    """
    rng = np.random.default_rng(seed)
    numbers = list(numbering) if numbering is not None else list(range(n_frames))
    for sub in ("rgb", "semantic_class") + (("depth",) if depth else ()) + (("semantic_instance",) if instances else ()):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    poses, rgbs, sems = [], [], []
    for k, n in enumerate(numbers):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        sem = np.asarray(classes, dtype=np.uint8)[rng.integers(0, len(classes), (height, width))]
        iio.imwrite(os.path.join(root, "rgb", f"rgb_{n}.png"), rgb)
        iio.imwrite(os.path.join(root, "semantic_class", f"semantic_class_{n}.png"), sem)
        if depth:
            d = rng.integers(500, 5000, (height, width)).astype(np.uint16)
            iio.imwrite(os.path.join(root, "depth", f"depth_{n}.png"), d)
        if instances:
            iio.imwrite(os.path.join(root, "semantic_instance", f"semantic_instance_{n}.png"),
                        (sem.astype(np.uint16) * 3))
        pose = np.eye(4)
        angle = 0.1 * k
        pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        pose[:3, 3] = [0.1 * k, -0.2, 0.05 * k]
        poses.append(pose)
        rgbs.append(rgb)
        sems.append(sem)
        if dino_grid is not None:
            os.makedirs(os.path.join(root, "dino"), exist_ok=True)
            rows, cols = dino_grid
            t = torch.from_numpy(rng.standard_normal((1, 1, rows * cols, dino_dim)).astype(np.float32))
            torch.save(t, os.path.join(root, "dino", f"dino_{n}.pth"))
    if dino_grid is not None and sidecar:
        import json
        with open(os.path.join(root, "dino", "descriptor_meta.json"), "w") as f:
            json.dump({"grid": list(dino_grid), "dim": dino_dim}, f)
    np.savetxt(os.path.join(root, "traj_w_c.txt"), np.stack(poses).reshape(len(numbers), 16))
    return dict(poses=np.stack(poses), rgb=rgbs, sem=sems, numbers=numbers)
