"""The second built-in synthetic room (`python -m datasets.synthetic --variant 1`): a different
room and class set from variant 0, loadable as Replica, geometry checked against independent
ray-box intersections, DINO-like descriptors, the completion marker and bad --out/--variant."""
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from datasets import synthetic
from datasets.synthetic import generate as synthetic_writer
from datasets.replica import ReplicaLoader
from utils.errors import InputError

H, W = 30, 40
V1_FRAMES = 20
BED_LO = np.array([-2.5, -2.2, 0.0])     # variant 1's room box as documented in datasets/synthetic/bedroom.py
BED_HI = np.array([2.5, 2.2, 2.7])
FLOOR, CEILING, WALL = 40, 31, 93
NEW_IN_V1 = {7: "bed", 34: "desk", 52: "monitor", 96: "wardrobe"}
ONLY_IN_V0 = {76: "sofa", 80: "table"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("variants")
    v0, v1 = str(base / "v0"), str(base / "v1")
    synthetic.generate_scene(v0, frames=10, width=W, height=H, seed=0, stats=False, workers=1)
    s1 = synthetic.generate_scene(v1, frames=V1_FRAMES, width=W, height=H, seed=0, stats=False, workers=1,
                                  variant=1)
    return v0, v1, s1


def labels_seen(root, n):
    return set(np.unique(np.concatenate(
        [iio.imread(os.path.join(root, "semantic_class", f"semantic_class_{i}.png")).ravel() for i in range(n)])).tolist())


def info(root):
    with open(os.path.join(root, "scene_info.json")) as f:
        return json.load(f)


def test_variant_1_is_another_room_with_another_class_set(scenes):
    v0, v1, _ = scenes
    i0, i1 = info(v0), info(v1)
    assert (i0["variant"], i1["variant"]) == (0, 1)
    seen0, seen1 = labels_seen(v0, 10), labels_seen(v1, V1_FRAMES)
    assert {FLOOR, CEILING, WALL, 0} <= seen0 & seen1                 # structure and the void window
    assert set(NEW_IN_V1) <= seen1 and not set(NEW_IN_V1) & seen0     # new furniture, seen
    assert set(ONLY_IN_V0) <= seen0 and not set(ONLY_IN_V0) & seen1
    names1 = {int(k): v for k, v in i1["classes"].items()}
    assert all(names1[k] == v for k, v in NEW_IN_V1.items())
    assert max(seen1) > len(seen1)                                    # sparse Replica-like ids
    obj0 = {o["name"] for o in i0["objects"]}
    obj1 = {o["name"] for o in i1["objects"]}
    assert "wardrobe" in obj1 and "sofa" in obj0 and not {"wardrobe", "bed"} & obj0
    p0 = np.loadtxt(os.path.join(v0, "traj_w_c.txt"))
    p1 = np.loadtxt(os.path.join(v1, "traj_w_c.txt"))
    assert not np.allclose(p0[0], p1[0])
    img0, img1 = (iio.imread(os.path.join(r, "rgb", "rgb_0.png")).astype(float) for r in (v0, v1))
    assert np.abs(img0 - img1).mean() > 20


def test_variant_1_loads_as_replica_with_sane_values(scenes):
    _, v1, _ = scenes
    sc = ReplicaLoader(v1, H, W).load()
    assert sc.train.ids == list(range(0, V1_FRAMES, 5))
    raw = sc.semantic_classes
    assert raw[0] == 0 and {7, 34, 52, 96} <= set(raw.tolist())
    for split in (sc.train, sc.test):
        sem, depth, rgb = split.semantic, split.depth, split.rgb
        assert sem.min() >= 0 and sem.max() < len(raw)
        labelled = sem > 0
        assert labelled.float().mean() > 0.9                       # the window is a small part
        assert len(torch.unique(sem)) >= 8                          # several classes per split
        assert depth[labelled].min() > 0.1 and depth.max() < 10.0  # inside the renderer's range
        assert 0.0 <= rgb.min() and rgb.max() <= 1.0 and rgb.std() > 0.1
        R = split.poses[:, :3, :3].double()
        assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64), atol=1e-5)
        eye = split.poses[:, :3, 3].numpy()
        assert np.all((eye > BED_LO + 0.5) & (eye < BED_HI - 0.5))   # the camera is inside the room
    for k in range(len(sc.train.ids)):                               # each training frame: 6+ classes
        assert len(torch.unique(sc.train.semantic[k])) >= 6


def test_variant_1_depth_matches_the_room_box_and_the_path_is_smooth(scenes):
    _, v1, _ = scenes
    poses = np.loadtxt(os.path.join(v1, "traj_w_c.txt")).reshape(-1, 4, 4)
    fx, cx, cy = W / 2.0, (W - 1) / 2.0, (H - 1) / 2.0
    v, u = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    dc = np.stack([(u - cx) / fx, (v - cy) / fx, np.ones((H, W))], -1)
    for i in (0, 6, 13):
        o, d = poses[i][:3, 3], dc @ poses[i][:3, :3].T
        with np.errstate(divide="ignore"):
            t_exit = np.where(d > 0, (BED_HI - o) / d, (BED_LO - o) / d).min(-1)
        depth = iio.imread(os.path.join(v1, "depth", f"depth_{i}.png")).astype(float) / 1000.0
        sem = iio.imread(os.path.join(v1, "semantic_class", f"semantic_class_{i}.png"))
        surface = np.isin(sem, [FLOOR, CEILING, WALL])
        assert surface.mean() > 0.2
        assert np.abs(depth - t_exit)[surface].max() <= 0.0005 + 1e-6
        assert np.all(depth <= t_exit + 0.0005 + 1e-6)              # furniture inside the box
    step = np.linalg.norm(np.roll(poses[:, :3, 3], -1, 0) - poses[:, :3, 3], axis=1)
    assert step.max() < 0.6 and step.max() < 2 * np.median(step)  # a closed loop without jumps
    assert np.all(poses[:, 2, 1] < 0)                              # camera y axis points down


def test_variant_1_descriptors_are_closer_within_a_class(scenes):
    _, v1, _ = scenes
    sc = ReplicaLoader(v1, H, W, load_dino=True).load()
    store = sc.train.features
    assert store.dim == 384 and len(store) == len(sc.train.ids)
    gen = torch.Generator().manual_seed(1)
    n = 2000
    frame = torch.randint(0, len(store), (n,), generator=gen)
    v, u = torch.randint(0, H, (n,), generator=gen), torch.randint(0, W, (n,), generator=gen)
    f = torch.nn.functional.normalize(store.gather(frame, v, u).float(), dim=1)
    lab = sc.train.semantic[frame, v, u]
    cos = f @ f.T
    same = lab[:, None] == lab[None, :]
    off = ~torch.eye(n, dtype=torch.bool)
    # measured (40x30, 20 frames, seed 0): mean cosine 0.82 same class vs 0.57 different; above 0.8:
    # 69% of same-class pairs, 5% of different-class pairs; per class, own pairs beat other pairs
    # by 0.19-0.32 (14 classes with 20+ samples)
    margin = cos[same & off].mean() - cos[~same].mean()
    assert margin > 0.15
    assert (cos[same & off] > 0.8).float().mean() > 0.6
    assert (cos[~same] > 0.8).float().mean() < 0.2
    # per class with enough samples: its own pairs are closer than its pairs with other classes
    checked = 0
    for c in torch.unique(lab):
        m = lab == c
        if m.sum() < 20:
            continue
        within = cos[m][:, m][off[m][:, m]].mean()
        across = cos[m][:, ~m].mean()
        assert within > across + 0.15, int(c)
        checked += 1
    assert checked >= 10


def test_completion_marker_appears_only_after_everything(tmp_path, monkeypatch):
    out = str(tmp_path / "scene")
    marker = os.path.join(out, ".complete")
    frames = 4
    seen = {"frames": 0, "marker_written": False}
    real_frame, real_marker = synthetic_writer._write_frame, synthetic_writer._write_marker

    def frame(i):
        assert not os.path.exists(marker)                       # never during the writing
        seen["frames"] += 1
        return real_frame(i)

    def write_marker(out_dir, params):
        expected = ["traj_w_c.txt", "scene_info.json", os.path.join("dino", "descriptor_meta.json")]
        for i in range(frames):
            expected += [f"rgb/rgb_{i}.png", f"depth/depth_{i}.png", f"semantic_class/semantic_class_{i}.png",
                         f"semantic_instance/semantic_instance_{i}.png", f"dino/dino_{i}.pth"]
        missing = [p for p in expected if not os.path.isfile(os.path.join(out_dir, p))]
        assert not missing and seen["frames"] == frames
        seen["marker_written"] = True
        real_marker(out_dir, params)

    monkeypatch.setattr(synthetic_writer, "_write_frame", frame)
    monkeypatch.setattr(synthetic_writer, "_write_marker", write_marker)
    assert not synthetic.scene_complete(out)
    synthetic.generate_scene(out, frames=frames, width=16, height=12, stats=False, workers=1, variant=1)
    assert seen["marker_written"] and synthetic.scene_complete(out)
    assert synthetic.scene_complete(out, variant=1, frames=frames)
    assert not synthetic.scene_complete(out, variant=0)

    # regenerating over a complete scene and dying half way leaves no marker
    def dies(i):
        if i == 2:
            raise KeyboardInterrupt
        return frame(i)
    monkeypatch.setattr(synthetic_writer, "_write_frame", dies)
    seen.update(frames=0, marker_written=False)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate_scene(out, frames=frames, width=16, height=12, stats=False, workers=1, variant=1)
    assert not os.path.exists(marker) and not synthetic.scene_complete(out)
    assert not os.path.exists(os.path.join(out, "scene_info.json"))
    monkeypatch.setattr(synthetic_writer, "_write_frame", frame)
    seen.update(frames=0)
    synthetic.generate_scene(out, frames=frames, width=16, height=12, stats=False, workers=1, variant=1)
    assert synthetic.scene_complete(out, variant=1)


def test_out_is_a_file_stops_with_one_line(tmp_path):
    path = tmp_path / "not_a_folder"
    path.write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "datasets.synthetic", "--out", str(path), "--frames", "2",
                           "--width", "16", "--height", "12"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --out {path} is a file"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert path.read_text() == "keep me"


def test_unknown_variant_stops_with_one_line(tmp_path, capsys):
    out = tmp_path / "v7"
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--out", str(out), "--variant", "7", "--frames", "2", "--width", "16", "--height", "12"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --variant 7: unknown variant"), err
    assert not out.exists()                                   # nothing was written
    with pytest.raises(InputError, match="--variant -1"):
        synthetic.generate_scene(str(out), frames=2, width=16, height=12, variant=-1)
