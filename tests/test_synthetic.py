"""The built-in synthetic room (datasets/synthetic/): geometry checked against independent
ray-plane intersections, labels, poses, descriptors and the loader round trip."""
import filecmp
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from datasets import synthetic
from datasets.replica import ReplicaLoader

H, W, FRAMES = 30, 40, 30
ROOM_LO = np.array([-3.0, -2.0, 0.0])   # the room box as documented in datasets/synthetic/geometry.py
ROOM_HI = np.array([3.0, 2.0, 3.0])
FLOOR, CEILING, WALL, CHAIR = 40, 31, 93, 20


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "room"
    summary = synthetic.generate_scene(str(root), frames=FRAMES, width=W, height=H, seed=0)
    return str(root), summary


@pytest.fixture(scope="module")
def loaded(scene_dir):
    return ReplicaLoader(scene_dir[0], H, W, load_dino=True).load()


def read(root, folder, i):
    return iio.imread(os.path.join(root, folder, f"{folder}_{i}.png"))


def poses_of(root):
    return np.loadtxt(os.path.join(root, "traj_w_c.txt")).reshape(-1, 4, 4)


def camera_rays(pose):
    """World ray directions [H, W, 3] for dc = ((u-cx)/fx, (v-cy)/fy, 1), hfov 90 (written here,
    independently of the generator)."""
    fx = W / 2.0
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
    v, u = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    dc = np.stack([(u - cx) / fx, (v - cy) / fx, np.ones_like(u, dtype=float)], -1)
    return dc @ pose[:3, :3].T


def test_floor_depth_matches_ray_plane_intersection(scene_dir):
    root, _ = scene_dir
    pose = poses_of(root)[0]
    o, d = pose[:3, 3], camera_rays(pose)
    depth = read(root, "depth", 0).astype(np.float64) / 1000.0
    sem = read(root, "semantic_class", 0)
    # the bottom-left corner pixel of frame 0 looks down at the bare floor (checked: class 40)
    t = (0.0 - o[2]) / d[H - 1, 0, 2]            # plane z = 0; t is the z-depth since dc_z = 1
    assert sem[H - 1, 0] == FLOOR
    assert abs(depth[H - 1, 0] - t) <= 0.0005 + 1e-6
    # every floor pixel of the frame: same check
    floor = sem == FLOOR
    assert floor.sum() > 20
    t_floor = -o[2] / d[..., 2]
    assert np.abs(depth - t_floor)[floor].max() <= 0.0005 + 1e-6


def test_room_surfaces_depth_is_the_box_exit_and_nothing_lies_behind_it(scene_dir):
    root, _ = scene_dir
    poses = poses_of(root)
    for i in (0, 7, 16, 23):
        o, d = poses[i][:3, 3], camera_rays(poses[i])
        with np.errstate(divide="ignore"):
            t_planes = np.where(d > 0, (ROOM_HI - o) / d, (ROOM_LO - o) / d)
        t_exit = t_planes.min(-1)
        depth = read(root, "depth", i).astype(np.float64) / 1000.0
        sem = read(root, "semantic_class", i)
        surface = np.isin(sem, [FLOOR, CEILING, WALL])
        assert surface.mean() > 0.3
        assert np.abs(depth - t_exit)[surface].max() <= 0.0005 + 1e-6
        assert np.all(depth <= t_exit + 0.0005 + 1e-6)       # all furniture is inside the room
        assert depth.min() > 0.1 and depth.max() < 10.0        # the renderer's depth range


def test_sparse_class_ids_void_and_instances(scene_dir):
    root, summary = scene_dir
    sems = [read(root, "semantic_class", i) for i in range(FRAMES)]
    insts = [read(root, "semantic_instance", i) for i in range(FRAMES)]
    assert sems[0].dtype == np.uint8 and insts[0].dtype == np.uint16
    ids = np.unique(np.concatenate([s.ravel() for s in sems]))
    assert 0 in ids                                           # the void window is seen
    assert len(ids) >= 10 and ids.max() > len(ids)            # sparse, not 0..C-1
    assert not np.array_equal(ids, np.arange(len(ids)))
    for s, inst in zip(sems, insts):
        assert np.all((s == 0) == (inst == 0))                # void has instance 0 and only void
    chair_instances = np.unique(np.concatenate([inst[s == CHAIR] for s, inst in zip(sems, insts)]))
    assert len(chair_instances) >= 3
    # frame 0, the one labelled frame of the propagation tests
    assert len(np.unique(sems[0])) >= 6
    assert len(np.unique(insts[0][sems[0] == CHAIR])) >= 2
    assert summary["frame0"]["instances_per_class"]["chair"] >= 2
    assert 0.1 < summary["depth_range"][0] and summary["depth_range"][1] < 10.0   # all frames


def test_poses_are_rotations_and_the_path_is_smooth(scene_dir):
    poses = poses_of(scene_dir[0])
    assert poses.shape == (FRAMES, 4, 4)
    R = poses[:, :3, :3]
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-6)
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-6)
    assert np.allclose(poses[:, 3], [0, 0, 0, 1])
    assert np.all((poses[:, :3, 3] > ROOM_LO + 0.5) & (poses[:, :3, 3] < ROOM_HI - 0.5))
    nxt = np.roll(np.arange(FRAMES), -1)                      # the loop closes
    step = np.linalg.norm(poses[nxt, :3, 3] - poses[:, :3, 3], axis=1)
    rel = R[nxt] @ R.transpose(0, 2, 1)
    angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert step.max() < 0.6 and angle.max() < 25.0            # 30 frames for one 10.6 m loop
    assert step.max() < 2 * np.median(step)                   # no jumps
    # camera y axis points down (OpenCV): its world z component is negative
    assert np.all(R[:, 2, 1] < 0)


def test_loader_split_and_remapped_labels(scene_dir, loaded):
    root, _ = scene_dir
    sc = loaded
    assert sc.train.ids == list(range(0, FRAMES, 5))
    assert sc.test.ids == [i + 2 for i in range(0, FRAMES, 5)]
    raw = sc.semantic_classes
    assert raw[0] == 0 and np.all(np.diff(raw) > 0)
    for k, i in enumerate(sc.train.ids):
        expected = read(root, "semantic_class", i)
        assert np.array_equal(raw[sc.train.semantic[k].numpy()], expected)
        rgb = read(root, "rgb", i)
        assert torch.allclose(sc.train.rgb[k], torch.from_numpy(rgb / 255.0).float(), atol=1e-6)
    ev = sc.eval_labels(sc.test)
    assert ev.min() == -1 and ev.max() == len(raw) - 2
    assert sc.train.instance is not None and sc.instance_classes[0] == 0
    assert sc.intrinsics.fx == W / 2 and sc.intrinsics.cx == (W - 1) / 2


def test_descriptors_are_synthetic_and_similar_within_classes(scene_dir, loaded):
    root, _ = scene_dir
    with open(os.path.join(root, "dino", "descriptor_meta.json")) as f:
        meta = json.load(f)
    assert meta["model"] == "synthetic" and meta["synthetic"] is True
    assert tuple(meta["grid"]) == synthetic.grid_shape(H, W) == (11, 15)
    assert sorted(os.listdir(os.path.join(root, "dino"))) == sorted(
        [f"dino_{i}.pth" for i in range(FRAMES)] + ["descriptor_meta.json"])      # every frame
    store = loaded.train.features
    assert store.dim == 384 and len(store) == len(loaded.train.ids)
    gen = torch.Generator().manual_seed(0)
    n = 3000
    frame = torch.randint(0, len(store), (n,), generator=gen)
    v, u = torch.randint(0, H, (n,), generator=gen), torch.randint(0, W, (n,), generator=gen)
    f = torch.nn.functional.normalize(store.gather(frame, v, u), dim=1)
    lab = loaded.train.semantic[frame, v, u]
    cos = f @ f.T
    same = lab[:, None] == lab[None, :]
    off = ~torch.eye(n, dtype=torch.bool)
    same_mean, diff_mean = cos[same & off].mean().item(), cos[~same].mean().item()
    # measured on this 40x30 scene (seed 0): mean cosine 0.82 same class vs 0.60 different
    # (margin 0.23); above 0.8: 72% of same-class pairs, 6% of different-class pairs
    assert same_mean - diff_mean > 0.15
    assert (cos[same & off] > 0.8).float().mean() > 0.6            # same class: mostly above 0.8
    assert (cos[~same] > 0.8).float().mean() < 0.2                  # different class: a minority
    stats = synthetic.descriptor_similarity(f.numpy(), lab.numpy(), lab.numpy())
    assert stats["margin_mean_same_minus_different"] > 0.15


def test_same_seed_same_files_other_seed_differs(scene_dir, tmp_path):
    root, _ = scene_dir
    again = tmp_path / "again"
    synthetic.generate_scene(str(again), frames=FRAMES, width=W, height=H, seed=0, stats=False)
    for folder in ("rgb", "depth", "semantic_class", "semantic_instance", "dino"):
        names = sorted(os.listdir(os.path.join(root, folder)))
        assert names == sorted(os.listdir(again / folder))
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(root, folder), again / folder, names,
                                                   shallow=False)
        assert not mismatch and not errors, (folder, mismatch, errors)
    assert filecmp.cmp(os.path.join(root, "traj_w_c.txt"), again / "traj_w_c.txt", shallow=False)
    assert filecmp.cmp(os.path.join(root, "scene_info.json"), again / "scene_info.json", shallow=False)
    other = tmp_path / "other"
    synthetic.generate_scene(str(other), frames=2, width=W, height=H, seed=1, stats=False)
    assert not np.array_equal(read(root, "rgb", 1), iio.imread(other / "rgb" / "rgb_1.png"))


def test_cli_small_run_and_bad_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    # stale frames of an earlier, longer run are removed
    os.makedirs(out / "rgb")
    iio.imwrite(out / "rgb" / "rgb_9.png", np.zeros((H, W, 3), np.uint8))
    assert synthetic.main(["--out", str(out), "--frames", "3", "--width", "24", "--height", "16",
                           "--no_dino"]) == 0
    assert sorted(os.listdir(out / "rgb")) == ["rgb_0.png", "rgb_1.png", "rgb_2.png"]
    assert not (out / "dino").exists()
    assert read(str(out), "depth", 2).dtype == np.uint16
    assert '"synthetic": true' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(out), "--supersample", "2"])
