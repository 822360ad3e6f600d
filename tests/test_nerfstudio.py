"""The transforms.json loader (datasets/nerfstudio.py): the built-in room as a capture gives the
same rays as its Replica layout; intrinsics per frame and lens distortion are resampled into the
common camera (checked against OpenCV's own point undistortion on an analytic image); near/far,
normalisation and splits from the data; bad input refused by name."""
import dataclasses
import json
import os
import re

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import main as jnerf_main
from datasets.nerfstudio import NerfstudioOptions, frame_order, load_nerfstudio
from datasets.registry import LOADERS, load_scene
from datasets.sources import distort_normalised, undistort_normalised
from datasets.synthetic import write_capture
from utils.errors import InputError
from utils.options import DataOptions

W, H, FRAMES = 32, 24, 10


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    base = tmp_path_factory.mktemp("room")
    cap, gt = str(base / "capture"), str(base / "capture_gt")
    write_capture(cap, gt, frames=FRAMES, width=W, height=H, stats=False, workers=1)
    return cap, gt


def data(path, kind="nerfstudio", w=W, h=H, **kw):
    return DataOptions(dataset_type=kind, dataset_dir=str(path), width=w, height=h, **kw)


def test_room_capture_and_replica_layout_give_the_same_rays(room):
    cap, gt = room
    a = load_scene(data(gt, "replica"))
    b = load_scene(data(cap, loader=NerfstudioOptions(ns_near_far=(a.near, a.far))))
    assert b.intrinsics == a.intrinsics                       # fx = W/2, cx = (W-1)/2 after the -0.5
    assert (b.intrinsics.cx, b.intrinsics.fx) == ((W - 1) / 2, W / 2)
    for sa, sb in ((a.train, b.train), (a.test, b.test)):
        assert sa.ids == sb.ids
        assert torch.equal(sa.poses, sb.poses) and torch.equal(sa.rgb, sb.rgb) and torch.equal(sa.depth, sb.depth)
    assert torch.equal(a.all_poses, b.all_poses)
    ra, rb = a.all_cameras(), b.all_cameras()
    for i in range(FRAMES):
        assert torch.equal(ra.image_rays(i), rb.image_rays(i))
    # independently: the file's OpenGL matrices times diag(1, -1, -1, 1) are traj_w_c.txt's rows
    traj = np.loadtxt(os.path.join(gt, "traj_w_c.txt")).reshape(-1, 4, 4)
    with open(os.path.join(cap, "transforms.json")) as f:
        meta = json.load(f)
    gl = np.array([fr["transform_matrix"] for fr in meta["frames"]])
    assert np.array_equal(gl[..., :, 1:3], -traj[..., :, 1:3])
    assert np.array_equal(gl[..., :, [0, 3]], traj[..., :, [0, 3]])
    assert torch.equal(b.all_poses, torch.from_numpy(traj.astype(np.float32)))
    # no labels in the capture: not in the file, not on disk, not in the scene
    assert "semantic_path" not in json.dumps(meta)
    assert sorted(os.listdir(cap)) == [".complete", "depth", "dino", "images", "transforms.json"]
    assert b.train.semantic is None and not b.has_labels and list(b.semantic_classes) == [0]
    assert a.has_labels and [s.name for s in b.frames][:2] == ["frame_00000", "frame_00001"]
    with pytest.raises(InputError, match="no ground-truth label maps"):
        b.eval_labels(b.test)


def test_near_far_from_depth_percentiles_and_override(room):
    cap, gt = room
    scene = load_nerfstudio(data(cap))
    d = torch.cat([scene.train.depth.reshape(-1), scene.test.depth.reshape(-1)]).double().numpy()
    d = d[d > 0]
    assert scene.near == pytest.approx(0.5 * np.percentile(d, 0.5)) and scene.far == pytest.approx(
        1.5 * np.percentile(d, 99.5))
    assert scene.extra["normalisation"]["scale"] == 1.0             # depth: metric, kept
    given = load_nerfstudio(data(cap, loader=NerfstudioOptions(ns_near_far=(0.2, 7.0))))
    assert (given.near, given.far) == (0.2, 7.0) and given.cameras(given.test).near == 0.2


def test_cameras_normalisation_keeps_depth_consistent(room):
    cap, _ = room
    raw = load_nerfstudio(data(cap, loader=NerfstudioOptions(ns_normalise="none")))
    norm = load_nerfstudio(data(cap, loader=NerfstudioOptions(ns_normalise="cameras")))
    centres = raw.all_poses[:, :3, 3].double()
    c = centres.mean(0)
    s = 1.0 / float(((centres - c) ** 2).sum(1).mean().sqrt())
    assert norm.extra["normalisation"]["scale"] == pytest.approx(s)
    ncent = norm.all_poses[:, :3, 3].double()
    assert ncent.mean(0).abs().max() < 1e-5 and float((ncent ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-5)
    # the 3D point of a pixel (o + depth d) maps by the same similarity: rays and depth agree
    v, u = torch.tensor([3.0, 20.0]), torch.tensor([5.0, 30.0])
    for scene in (raw, norm):
        cams = scene.cameras(scene.train)
        rays = cams.pixel_rays(torch.zeros(2, dtype=torch.long), v, u)
        scene.pts = rays[:, :3] + scene.train.depth[0, v.long(), u.long()][:, None] * rays[:, 3:6]
    assert torch.allclose(norm.pts.double(), s * (raw.pts.double() - c), atol=1e-4)


def _ramp(xn, yn):
    """An analytic picture in normalised undistorted coordinates (linear: bilinear resampling is exact)."""
    return np.stack([0.5 + 0.45 * xn, 0.5 + 0.45 * yn, 0.3 + 0.2 * xn - 0.2 * yn], -1)


def _write_frame(root, name, w, h, K, dist=None):
    """A colour frame of the ramp seen through pinhole K (nerfstudio's cx convention) and OpenCV
    distortion, made with cv2.undistortPoints (independent of datasets/sources.py)."""
    fx, fy, cx, cy = K
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xx.ravel(), yy.ravel()], -1)[:, None]
    Kcv = np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]])
    und = cv2.undistortPoints(pts, Kcv, np.asarray(dist if dist else [0, 0, 0, 0], np.float64)).reshape(h, w, 2)
    img = np.round(np.clip(_ramp(und[..., 0], und[..., 1]), 0, 1) * 255).astype(np.uint8)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    iio.imwrite(os.path.join(root, "images", name), img)


def _pose(tx):
    m = np.eye(4)
    m[0, 3] = tx
    return m.tolist()


def _hand_capture(root):
    """Three frames: shared-looking but per-frame intrinsics, one with distortion, one twice the size."""
    frames = [dict(file_path="images/a_2.png", fl_x=30.0, fl_y=31.0, cx=20.0, cy=15.0, w=40, h=30),
              dict(file_path="images/a_10.png", fl_x=34.0, fl_y=33.0, cx=19.0, cy=16.5, w=40, h=30,
                   k1=0.08, k2=-0.02, p1=0.003, p2=-0.002),
              dict(file_path="images/a_3.png", fl_x=60.0, fl_y=62.0, cx=40.0, cy=30.0, w=80, h=60)]
    for k, fr in enumerate(frames):
        K = (fr["fl_x"], fr["fl_y"], fr["cx"], fr["cy"])
        dist = [fr.get(c, 0.0) for c in ("k1", "k2", "p1", "p2")]
        _write_frame(root, os.path.basename(fr["file_path"]), fr["w"], fr["h"], K, dist)
        fr["transform_matrix"] = _pose(0.1 * k)
    with open(os.path.join(root, "transforms.json"), "w") as f:
        json.dump(dict(camera_model="OPENCV", frames=frames), f)
    return frames


def test_per_frame_intrinsics_and_distortion_resampled_into_the_common_camera(tmp_path):
    frames = _hand_capture(str(tmp_path))
    scene = load_nerfstudio(data(tmp_path, w=40, h=30, loader=NerfstudioOptions(ns_split_step=1)))
    # order: a_2, a_3, a_10 (digits as numbers); the first frame's camera is the common one
    assert [s.file for s in scene.frames] == ["images/a_2.png", "images/a_3.png", "images/a_10.png"]
    i = scene.intrinsics
    assert (i.fx, i.fy, i.cx, i.cy) == (30.0, 31.0, 19.5, 14.5)
    assert [s.resampled for s in scene.frames] == [False, True, True]
    yy, xx = np.mgrid[0:30, 0:40].astype(np.float64)
    expect = _ramp((xx - i.cx) / i.fx, (yy - i.cy) / i.fy)
    P = np.array([[i.fx, 0, i.cx], [0, i.fy, i.cy], [0, 0, 1]])
    for k, fr in enumerate([frames[0], frames[2], frames[1]]):
        # where the common camera sees inside this frame's image (OpenCV's own forward map), 1 px margin
        Kcv = np.array([[fr["fl_x"], 0, fr["cx"] - 0.5], [0, fr["fl_y"], fr["cy"] - 0.5], [0, 0, 1]])
        mx, my = cv2.initUndistortRectifyMap(Kcv, np.array([fr.get(c, 0.0) for c in ("k1", "k2", "p1", "p2")]),
                                             None, P, (40, 30), cv2.CV_32FC1)
        inside = (mx >= 1) & (mx <= fr["w"] - 2) & (my >= 1) & (my <= fr["h"] - 2)
        assert inside.sum() > 0.6 * inside.size
        got = scene.train.rgb[k].numpy().astype(np.float64)
        assert np.abs(got[inside] - expect[inside]).max() < 0.012, k    # uint8 steps and resampling
        assert np.abs(got[~inside]).max() <= 1.0                        # (outside: black, or mixed at the edge)
    # a click's mapping: the original pixel of frame a_10 lands where OpenCV's undistortion puts it
    src = scene.frames[2]
    x, y = np.array([5.0, 20.0, 33.0]), np.array([4.0, 15.0, 26.0])
    fr = frames[1]
    Kcv = np.array([[fr["fl_x"], 0, fr["cx"] - 0.5], [0, fr["fl_y"], fr["cy"] - 0.5], [0, 0, 1]])
    ref = cv2.undistortPoints(np.stack([x, y], -1)[:, None], Kcv, np.array([0.08, -0.02, 0.003, -0.002]),
                              P=P).reshape(-1, 2)
    u, v = src.scene_coords(x, y, (30, 40))
    assert np.abs(np.stack([u, v], -1) - ref).max() < 1e-4
    # the larger frame maps by the resize: pixel (x, y) of 80x60 -> ((x + 0.5) / 2 - 0.5, ...) in 40x30
    u, v = scene.frames[1].scene_coords(np.array([0.0, 79.0]), np.array([0.0, 59.0]), (30, 40))
    i3 = frames[2]
    assert np.allclose(u, ((np.array([0.0, 79.0]) - (i3["cx"] - 0.5)) / i3["fl_x"] * i.fx + i.cx + 0.5) * 40 / 40 - 0.5)
    assert np.allclose(v, ((np.array([0.0, 59.0]) - (i3["cy"] - 0.5)) / i3["fl_y"] * i.fy + i.cy + 0.5) - 0.5)


def test_undistortion_inverts_opencvs_forward_map():
    K = np.array([[50.0, 0, 20], [0, 52.0, 15], [0, 0, 1]])
    dist = (0.1, -0.05, 0.001, 0.002, 0.01)
    mx, my = cv2.initUndistortRectifyMap(K, np.array(dist), None, K, (40, 30), cv2.CV_32FC1)
    xd, yd = (mx.astype(np.float64) - 20) / 50, (my.astype(np.float64) - 15) / 52   # distorted source points
    xn, yn = undistort_normalised(xd, yd, dist)
    yy, xx = np.mgrid[0:30, 0:40]
    assert np.abs(xn * 50 + 20 - xx).max() < 2e-3 and np.abs(yn * 52 + 15 - yy).max() < 2e-3   # float32 maps
    bx, by = distort_normalised(xn, yn, dist)
    assert np.abs(bx - xd).max() < 1e-8 and np.abs(by - yd).max() < 1e-8


def test_split_lists_semantic_masks_and_frame_order(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "sem"))
    frames = []
    rng = np.random.default_rng(0)
    for k in range(6):
        name = f"images/f{k}.png"
        iio.imwrite(os.path.join(root, name), rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        iio.imwrite(os.path.join(root, "sem", f"f{k}.png"), np.full((12, 16), [0, 7, 31][k % 3], np.uint8))
        frames.append(dict(file_path=name, transform_matrix=_pose(0.3 * k), semantic_path=f"sem/f{k}.png"))
    meta = dict(fl_x=8.0, fl_y=8.0, cx=8.0, cy=6.0, w=16, h=12, frames=frames,
                train_filenames=["images/f0.png", "images/f2.png", "images/f3.png"], test_filenames=["images/f5.png"])
    with open(os.path.join(root, "transforms.json"), "w") as f:
        json.dump(meta, f)
    scene = load_nerfstudio(data(root, w=16, h=12))
    assert scene.train.ids == [0, 2, 3] and scene.test.ids == [5]
    assert scene.has_labels and list(scene.semantic_classes) == [0, 31]     # the loaded frames' ids (f0 f2 f3 f5)
    assert scene.train.semantic[:, 0, 0].tolist() == [0, 1, 0] and scene.test.semantic[0, 0, 0] == 1
    # no depth: normalised (RMS camera distance 1) and far = 4 x the largest camera distance from the centroid
    scale = 1 / np.sqrt(np.mean((0.3 * np.arange(6) - 0.75) ** 2))
    assert scene.extra["normalisation"]["scale"] == pytest.approx(scale)
    assert scene.far == pytest.approx(4 * 0.75 * scale) and scene.near == pytest.approx(scene.far / 50)
    order, train = frame_order(root)
    assert [s.path for _, s in order][:2] == [os.path.join(root, "images/f0.png"), os.path.join(root, "images/f1.png")]
    assert train == [0, 2, 3]
    plain = load_nerfstudio(data(root, w=16, h=12,
                                 loader=NerfstudioOptions(ns_ignore_split_lists=True, ns_split_step=2)))
    assert plain.train.ids == [0, 2, 4] and plain.test.ids == [1, 3, 5]


def test_registry_and_example_config(room, tmp_path):
    assert LOADERS["nerfstudio"].load is load_nerfstudio
    cap, _ = room
    _, opts = jnerf_main.parse_options(["--config_file", "configs/nerfstudio_example.yaml", "--dataset_type",
                                        "nerfstudio", "--save_dir", str(tmp_path)])
    assert opts.data.dataset_type == "nerfstudio"
    scene = load_scene(dataclasses.replace(opts.data, dataset_dir=cap, width=W, height=H))
    assert len(scene.train) == 2 and scene.height == H
    assert opts.data.loader == NerfstudioOptions()            # every setting at its declared default


def test_loader_flags_and_yaml_keys_reach_the_loader(room, tmp_path):
    """--ns_* flags (and their YAML keys in `experiment`) become data.loader, read only for this layout."""
    import yaml
    cap, _ = room
    with open("configs/nerfstudio_example.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["experiment"].update(dataset_dir=cap, width=W, height=H, ns_split_step=2, ns_normalise="cameras")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _, opts = jnerf_main.parse_options(["--config_file", str(config), "--dataset_type", "nerfstudio", "--save_dir",
                                        str(tmp_path), "--ns_near_far", "0.25", "6", "--ns_depth_scale", "0.002",
                                        "--ns_ignore_split_lists", "--ns_distortion", "refuse"])
    assert opts.data.loader == NerfstudioOptions(ns_near_far=(0.25, 6.0), ns_depth_scale=0.002, ns_normalise="cameras",
                                                 ns_split_step=2, ns_ignore_split_lists=True, ns_distortion="refuse")
    scene = load_scene(opts.data)
    assert scene.train.ids == list(range(0, FRAMES, 2)) and (scene.near, scene.far) == (0.25, 6.0)
    assert scene.extra["near_far_from"] == "--ns_near_far" and scene.extra["normalisation"]["scale"] != 1.0
    # the depth scale: depth files in mm read as 2 mm units, times the normalisation scale
    plain = load_scene(dataclasses.replace(opts.data, loader=NerfstudioOptions(ns_normalise="cameras")))
    assert torch.allclose(scene.train.depth[0], 2 * plain.train.depth[0])
    # the same keys for the Replica layout are not read (a YAML may hold several layouts' keys)
    _, opts = jnerf_main.parse_options(["--config_file", str(config), "--save_dir", str(tmp_path)])
    assert opts.data.loader is None
    for argv, expected in ((["--ns_split_step", "0"], "--ns_split_step 0: expected at least 1"),
                           (["--ns_near_far", "1"], "--ns_near_far 1.0: expected two numbers NEAR FAR"),
                           (["--ns_depth_scale", "-1"], "--ns_depth_scale -1.0: expected a number > 0")):
        with pytest.raises(InputError, match=re.escape(expected)):
            jnerf_main.parse_options(["--config_file", str(config), "--dataset_type", "nerfstudio", "--save_dir",
                                      str(tmp_path), *argv])


# ----------------------------------------------------------------------------- bad input

def _one_frame_capture(root, frame_extra=None, top_extra=None, write_image=True):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    if write_image:
        iio.imwrite(os.path.join(root, "images", "x.png"), np.zeros((12, 16, 3), np.uint8))
    fr = dict(file_path="images/x.png", transform_matrix=np.eye(4).tolist())
    fr.update(frame_extra or {})
    meta = dict(camera_model="OPENCV", fl_x=8.0, fl_y=8.0, cx=8.0, cy=6.0, w=16, h=12, frames=[fr])
    meta.update(top_extra or {})
    with open(os.path.join(root, "transforms.json"), "w") as f:
        json.dump(meta, f)
    return root


@pytest.mark.parametrize("frame_extra, top_extra, write_image, match", [
    (None, None, False, r"frame 'images/x.png' \(frames\[0\]\): image file .*x.png is missing"),
    ({"transform_matrix": np.eye(4)[:3].tolist()}, None, True, r"'transform_matrix' has shape \[3, 4\]; expected 4x4"),
    ({"transform_matrix": [[float("nan")] * 4] * 4}, None, True, "'transform_matrix' has non-finite entries"),
    ({"transform_matrix": (2 * np.eye(4)).tolist()}, None, True, "not a rigid camera-to-world"),
    (None, {"camera_model": "OPENCV_FISHEYE"}, True, "camera_model 'OPENCV_FISHEYE' is not supported"),
    (None, {"camera_model": "PINHOLE", "k1": 0.1}, True, "'k1' = 0.1 but camera_model PINHOLE"),
    ({"k4": 0.2}, None, True, "'k4' = 0.2"),
    ({"depth_file_path": "depth/x.png"}, None, True, "depth_file_path file .*depth/x.png is missing"),
    (None, {"test_filenames": ["images/y.png"]}, True, "'test_filenames' lists 'images/y.png'"),
    (None, {"fl_x": "eight"}, True, "'fl_x' = 'eight': expected a finite number"),
])
def test_bad_captures_are_refused_by_name(tmp_path, frame_extra, top_extra, write_image, match):
    root = _one_frame_capture(str(tmp_path), frame_extra, top_extra, write_image)
    with pytest.raises(InputError, match=match) as exc:
        load_nerfstudio(data(root, w=16, h=12))
    assert "transforms.json" in str(exc.value)


def test_missing_file_unreadable_depth_and_refused_distortion(tmp_path):
    with pytest.raises(InputError, match=r"transforms.json: missing"):
        load_nerfstudio(data(tmp_path, w=16, h=12))
    with pytest.raises(InputError, match="does not exist"):
        load_nerfstudio(data(tmp_path / "nope", w=16, h=12))
    root = _one_frame_capture(str(tmp_path / "d"), {"depth_file_path": "depth/x.png"})
    os.makedirs(os.path.join(root, "depth"))
    with open(os.path.join(root, "depth", "x.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(InputError, match=r"depth/x.png: unreadable depth image"):
        load_nerfstudio(data(root, w=16, h=12))
    iio.imwrite(os.path.join(root, "depth", "x.png"), np.zeros((12, 16), np.uint8))
    with pytest.raises(InputError, match=r"uint8 depth; expected uint16"):
        load_nerfstudio(data(root, w=16, h=12))
    root = _one_frame_capture(str(tmp_path / "k"), {"k1": 0.05})
    with pytest.raises(InputError, match=r"frame 'images/x.png' has lens distortion \('k1' = 0.05\)"):
        load_nerfstudio(data(root, w=16, h=12, loader=NerfstudioOptions(ns_distortion="refuse")))
    with pytest.raises(InputError, match="aspect ratio"):
        load_nerfstudio(data(root, w=16, h=16))
    with pytest.raises(InputError, match="normalise 'bad'"):
        load_nerfstudio(data(root, w=16, h=12, loader=NerfstudioOptions(ns_normalise="bad")))


def test_capture_writer_cli_byte_copies_and_ground_truth_apart(tmp_path, capsys):
    from datasets.synthetic import main as synthetic_main, scene_complete
    out = tmp_path / "cap"
    assert synthetic_main(["--format", "nerfstudio", "--out", str(out), "--frames", "3", "--width", "16",
                           "--height", "12", "--no_dino", "--no_stats"]) == 0
    gt = tmp_path / "cap_ground_truth"
    assert sorted(os.listdir(out)) == [".complete", "depth", "images", "transforms.json"]
    assert scene_complete(str(out), format="nerfstudio", frames=3)
    mapping = json.load(open(gt / "capture_frames.json"))["frames"]
    assert mapping == {f"images/frame_{i:05d}.png": i for i in range(3)}
    for i in range(3):
        assert (out / "images" / f"frame_{i:05d}.png").read_bytes() == (gt / "rgb" / f"rgb_{i}.png").read_bytes()
        assert (out / "depth" / f"frame_{i:05d}.png").read_bytes() == (gt / "depth" / f"rgb_{i}.png".replace(
            "rgb_", "depth_")).read_bytes()
    assert os.path.isfile(gt / "semantic_class" / "semantic_class_2.png")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        synthetic_main(["--out", str(tmp_path / "r"), "--gt_out", str(tmp_path / "g")])
    assert "--gt_out belongs to --format nerfstudio" in capsys.readouterr().err


def test_replica_loader_lists_every_frame(tiny_replica):
    root, info = tiny_replica
    scene = load_scene(data(root, "replica", w=16, h=12))
    assert [s.file for s in scene.frames] == [os.path.join("rgb", f"rgb_{n}.png") for n in range(12)]
    assert torch.equal(scene.all_poses, torch.from_numpy(info["poses"].astype(np.float32)))
    assert torch.equal(scene.all_cameras().poses[scene.test.ids], scene.test.poses)
    u, v = scene.frames[0].scene_coords(np.array([0.0, 15.0]), np.array([0.0, 11.0]), (6, 8))
    assert u.tolist() == [-0.25, 7.25] and v.tolist() == [-0.25, 5.25]         # (x + 0.5) / 2 - 0.5
