"""The ScanNet loader (exported-frames layout) on a tiny scene written by the tests."""
import os
import struct

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from datasets import dino_io
from datasets.scannet import ScanNetLoader, load_scannet, scannet_split_ids
from datasets.scene import Intrinsics
from main import options_from_config, parser
from utils.config import load_yaml_config, merge_flags
from utils.errors import InputError

NAME = "scene0099_00"
COLOR_HW = (48, 64)              # colorHeight, colorWidth
CFG_HW = (26, 32)                # (48 + 4) / 2, 64 / 2: an exact factor 2 after the padding
NAN_FRAME = 5
INFO = dict(fx_color=60.0, fy_color=58.0, mx_color=31.5, my_color=23.25)
# raw ScanNet id -> NYU40 id; 555 occurs in the label maps but is not in the table (-> void)
TSV = {1: 1, 2: 5, 7: 0, 22: 23, 300: 5, 1000: 40}
RAW_IDS = (0, 1, 2, 7, 22, 300, 1000, 555)
INSTANCE_IDS = (0, 3, 130, 200, 255)


def write_tiny_scannet(root, n_frames=16, seed=0, dino_positions=None):
    """Exported-frames layout with known content; frame NAN_FRAME has a NaN pose."""
    rng = np.random.default_rng(seed)
    root = str(root)
    for sub in ("renders/color", "renders/pose", "label-filt", "instance-filt"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, f"{NAME}.txt"), "w") as f:
        f.write("axisAlignment = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\n")
        f.write(f"colorHeight = {COLOR_HW[0]}\ncolorWidth = {COLOR_HW[1]}\n")
        f.write("depthHeight = 24\ndepthWidth = 32\n")
        for k, v in INFO.items():
            f.write(f"{k} = {v}\n")
    with open(os.path.join(root, "scannetv2-labels.combined.tsv"), "w") as f:
        f.write("id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\n")
        for raw, nyu in TSV.items():
            f.write(f"{raw}\tthing{raw}\tthing\t3\t{nyu}\t1\tx\n")
    info = dict(rgb={}, sem={}, inst={}, poses={})
    for n in range(n_frames):
        # smooth content, so that the lossy JPEG stays close to what was written
        yy, xx = np.mgrid[0:COLOR_HW[0], 0:COLOR_HW[1]]
        base = rng.integers(40, 160, 3)
        rgb = np.stack([base[0] + 2 * xx, base[1] + 2 * yy, base[2] + xx + yy], -1).clip(0, 255).astype(np.uint8)
        iio.imwrite(os.path.join(root, "renders", "color", f"{n}.jpg"), rgb, quality=95)
        sem = np.asarray(RAW_IDS, dtype=np.uint16)[rng.integers(0, len(RAW_IDS), COLOR_HW)]
        iio.imwrite(os.path.join(root, "label-filt", f"{n}.png"), sem)
        inst = np.asarray(INSTANCE_IDS, dtype=np.uint8)[rng.integers(0, len(INSTANCE_IDS), COLOR_HW)]
        iio.imwrite(os.path.join(root, "instance-filt", f"{n}.png"), inst)
        pose = np.eye(4)
        a = 0.1 * n
        pose[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        pose[:3, 3] = [0.05 * n, 0.1, -0.02 * n]
        if n == NAN_FRAME:
            pose[:] = -np.inf
            pose[0, 0] = np.nan
        np.savetxt(os.path.join(root, "renders", "pose", f"{n}.txt"), pose, fmt="%f")
        info["rgb"][n], info["sem"][n], info["inst"][n], info["poses"][n] = rgb, sem, inst, pose
    if dino_positions:
        for k in dino_positions:
            grid = torch.full((5, 7, 384), float(k)) + torch.arange(35.0).reshape(5, 7, 1)
            dino_io.save_descriptor(os.path.join(root, "renders", "dino", f"dino_{k}.pth"), grid)
    return info


def padded_half(img):
    """Hand computation: 2 zero rows on top and bottom, then the factor-2 reduction."""
    pad = np.zeros((img.shape[0] + 4,) + img.shape[1:], dtype=np.float64)
    pad[2:-2] = img
    return pad


def settings_for(root, *flags, **exp):
    cfg = load_yaml_config("configs/scannet_scene0004_00_config.yaml")
    p = parser()
    cfg = merge_flags(cfg, p.parse_args(["--dataset_type", "scannet", "--save_dir", "unused", *flags]))
    cfg["experiment"].update(dataset_dir=str(root), height=CFG_HW[0], width=CFG_HW[1], **exp)
    return options_from_config(cfg).data


VALID = [n for n in range(16) if n != NAN_FRAME]     # frame numbers of the valid list


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scannet") / NAME
    info = write_tiny_scannet(root, dino_positions=(0, 4, 8, 12))
    return root, info


@pytest.fixture(scope="module")
def scene(scene_dir):
    root, _ = scene_dir
    return ScanNetLoader(str(root), *CFG_HW, sample_step=4, load_dino=True,
                         feature_dtype=torch.float32).load()


def test_split_on_valid_positions():
    assert scannet_split_ids(15, 4) == ([0, 4, 8, 12], [2, 6, 10, 14])
    assert scannet_split_ids(15, 2) == (list(range(0, 15, 2)), list(range(1, 15, 2)))   # 15 dropped
    assert scannet_split_ids(15, 1) == (list(range(15)), list(range(15)))
    assert scannet_split_ids(15, 4, training_mode=True)[1] == [0]
    assert scannet_split_ids(1, 4) == ([0], [0])


def test_valid_frames_and_split(scene, scene_dir):
    _, info = scene_dir
    assert scene.extra["frame_numbers"] == VALID and scene.extra["skipped_frames"] == [NAN_FRAME]
    assert scene.train.ids == [0, 4, 8, 12] and scene.test.ids == [2, 6, 10, 14]
    # positions in the valid list, not frame numbers: position 8 is frame 9 (frame 5 is skipped)
    for split in (scene.train, scene.test):
        for k, pos in enumerate(split.ids):
            assert np.allclose(split.poses[k].numpy(), info["poses"][VALID[pos]], atol=1e-6)
    assert scene.train.depth is None


def test_padding_resize_and_intrinsics(scene, scene_dir):
    _, info = scene_dir
    root = scene_dir[0]
    k, frame = 2, VALID[scene.train.ids[2]]                   # train position 8 = frame 9
    decoded = iio.imread(os.path.join(root, "renders", "color", f"{frame}.jpg")).astype(np.float64) / 255
    assert np.abs(decoded - info["rgb"][frame] / 255).mean() < 0.05   # JPEG is lossy, but close
    pad = padded_half(decoded)
    box = 0.25 * (pad[0::2, 0::2] + pad[1::2, 0::2] + pad[0::2, 1::2] + pad[1::2, 1::2])
    assert scene.train.rgb.shape == (4, 26, 32, 3)
    assert np.allclose(scene.train.rgb[k].numpy(), box, atol=1e-6)
    assert float(scene.train.rgb[k, 0].abs().max()) == 0.0 and float(scene.train.rgb[k, -1].abs().max()) == 0.0
    # intrinsics: cy + 2 for the padding, then x by 32/64 and y by 26/52
    assert scene.intrinsics == Intrinsics(fx=30.0, fy=29.0, cx=15.75, cy=12.625)


def test_labels_raw_to_nyu40_to_contiguous(scene, scene_dir):
    _, info = scene_dir
    # NYU40 ids present: 1, 5, 23, 40, and void 0 (raw 0, raw 7 -> 0, raw 555 not in the tsv)
    assert list(scene.semantic_classes) == [0, 1, 5, 23, 40]
    assert scene.extra["unmapped_raw_ids"] == [555]
    to_index = {0: 0, 1: 1, 2: 2, 7: 0, 22: 3, 300: 2, 1000: 4, 555: 0}
    for split in (scene.train, scene.test):
        for k, pos in enumerate(split.ids):
            raw = padded_half(info["sem"][VALID[pos]]).astype(np.int64)[0::2, 0::2]   # nearest
            expected = np.vectorize(to_index.get)(raw)
            assert np.array_equal(split.semantic[k].numpy(), expected)
    assert torch.equal(scene.eval_labels(scene.test), scene.test.semantic - 1)
    from utils.colormaps import label_colormap
    assert np.array_equal(scene.colour_map, label_colormap(41)[[0, 1, 5, 23, 40]])


def test_instance_ids_above_127_survive(scene, scene_dir):
    _, info = scene_dir
    assert list(scene.instance_classes) == [0, 3, 130, 200, 255]
    lut = {v: i for i, v in enumerate(scene.instance_classes)}
    raw = padded_half(info["inst"][VALID[scene.test.ids[1]]]).astype(np.int64)[0::2, 0::2]
    assert np.array_equal(scene.test.instance[1].numpy(), np.vectorize(lut.get)(raw))
    raw_back = scene.instance_classes[scene.train.instance.numpy()]
    assert raw_back.max() == 255 and (raw_back == 130).any()


def test_descriptors_by_valid_position(scene):
    store = scene.train.features
    assert len(store) == 4 and store.dim == 384
    for k, pos in enumerate(scene.train.ids):       # dino_<position>.pth, grid value = position
        assert float(store.grids[k, 0, 0, 0]) == float(pos)
    assert store.full(2).shape == (26, 32, 384)


def test_training_mode_and_sample_step_flag(scene_dir):
    root, _ = scene_dir
    s = load_scannet(settings_for(root, "--training_mode", "--sample_step", "5"))
    assert s.train.ids == [0, 5, 10] and s.test.ids == [0]
    s = load_scannet(settings_for(root))          # experiment.sample_step from the YAML (10)
    assert s.train.ids == [0, 10] and s.test.ids == [5]


def test_nothing_written_into_the_dataset(tmp_path):
    root = tmp_path / NAME
    write_tiny_scannet(root, n_frames=6)
    before = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    ScanNetLoader(str(root), *CFG_HW, sample_step=2).load()
    after = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    assert before == after


# -- bad input --------------------------------------------------------------------------------
@pytest.fixture
def small(tmp_path):
    root = tmp_path / NAME
    write_tiny_scannet(root, n_frames=8)
    return root


def _fails(root, *needles, step=4, **kw):
    with pytest.raises(InputError) as exc:
        ScanNetLoader(str(root), *CFG_HW, sample_step=step, **kw).load()
    for n in needles:
        assert n in str(exc.value), (n, str(exc.value))
    return str(exc.value)


def test_missing_scene_folder(tmp_path):
    _fails(tmp_path / "nowhere", "nowhere", "does not exist")


def test_missing_label_table(small):
    os.remove(small / "scannetv2-labels.combined.tsv")
    _fails(small, "scannetv2-labels.combined.tsv", "missing")


def test_missing_pose_for_a_colour_frame(small):
    os.remove(small / "renders" / "pose" / "3.txt")
    _fails(small, os.path.join("renders", "pose", "3.txt"), "missing camera pose")


def test_pose_with_wrong_count(small):
    np.savetxt(small / "renders" / "pose" / "2.txt", np.eye(3))
    _fails(small, os.path.join("pose", "2.txt"), "9 numbers; expected 16")


def test_unreadable_label_png(small):
    (small / "label-filt" / "4.png").write_bytes(b"\x89PNG broken")
    _fails(small, os.path.join("label-filt", "4.png"), "unreadable")


def test_missing_instance_frame(small):
    os.remove(small / "instance-filt" / "0.png")
    _fails(small, os.path.join("instance-filt", "0.png"), "missing")


def test_info_file_problems(small):
    os.remove(small / f"{NAME}.txt")
    _fails(small, f"{NAME}.txt", "missing ScanNet info file")
    with open(small / f"{NAME}.txt", "w") as f:
        f.write("colorWidth = 64\ncolorHeight = 48\nfx_color = 60\n")
    _fails(small, f"{NAME}.txt", "fy_color", "mx_color")
    with open(small / f"{NAME}.txt", "w") as f:
        f.write("colorWidth = 80\ncolorHeight = 48\nfx_color = 60\nfy_color = 60\nmx_color = 1\nmy_color = 1\n")
    _fails(small, "0.jpg", "64x48 pixels", "80x48")


def test_missing_sample_step(small):
    with pytest.raises(InputError, match="--sample_step"):
        load_scannet(settings_for(small, sample_step=None))
    with pytest.raises(InputError, match="--sample_step"):
        load_scannet(settings_for(small, "--sample_step", "0"))


# -- through main.py --------------------------------------------------------------------------
def _write_cli_config(tmp_path, root, **exp):
    import yaml
    with open("configs/scannet_scene0004_00_config.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["experiment"].update(dict(dict(dataset_dir=str(root), height=CFG_HW[0], width=CFG_HW[1], sample_step=4), **exp))
    cfg["model"].update(netwidth=16, netwidth_fine=16)
    cfg["train"]["N_iters"] = 3
    cfg["logging"].update(step_save_ckpt=100, step_log_tfb=1)
    path = tmp_path / "scannet.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def test_missing_sample_step_through_main(tmp_path, small, capsys):
    from tests.cli_helpers import run_main
    cfg = _write_cli_config(tmp_path, small, sample_step=None)
    rc, _, err = run_main(capsys, cfg, tmp_path / "out", "--dataset_type", "scannet")
    assert rc != 0 and err.strip().startswith("error:") and "--sample_step" in err
    assert len(err.strip().splitlines()) == 1


def test_plain_training_through_main(tmp_path, small, capsys, monkeypatch):
    import json

    import models.cameras as cameras
    from tests.cli_helpers import run_main
    seen = {"train": [], "test": []}

    test_fn, train_fn = cameras.image_rays, cameras.rays_from_pixels
    monkeypatch.setattr(cameras, "image_rays", lambda *a, **k: (seen["test"].append(a[3]), test_fn(*a, **k))[1])
    monkeypatch.setattr(cameras, "rays_from_pixels", lambda *a, **k: (seen["train"].append(a[3]), train_fn(*a, **k))[1])
    cfg = _write_cli_config(tmp_path, small)
    rc, out, err = run_main(capsys, cfg, tmp_path / "out", "--dataset_type", "scannet", "--seed", "1")
    assert rc == 0, err
    metrics = json.load(open(tmp_path / "out" / "metrics.json"))
    assert metrics["steps"] >= 3 and np.isfinite(metrics["test_psnr"])
    # training and test rays use the same calibrated intrinsics (the original's test rays did not)
    expected = Intrinsics(fx=30.0, fy=29.0, cx=15.75, cy=12.625)
    assert seen["train"] and seen["test"]
    assert all(i == expected for i in seen["train"] + seen["test"])
    assert sorted(os.listdir(small)) == sorted([f"{NAME}.txt", "scannetv2-labels.combined.tsv", "renders",
                                                "label-filt", "instance-filt"])


# -- the .sens exporter -----------------------------------------------------------------------
def _write_sens(path, frames, color_hw=COLOR_HW, depth_hw=(6, 8)):
    import io
    import zlib
    kc = np.eye(4, dtype=np.float32)
    kc[0, 0], kc[1, 1], kc[0, 2], kc[1, 2] = INFO["fx_color"], INFO["fy_color"], INFO["mx_color"], INFO["my_color"]
    with open(path, "wb") as f:
        f.write(struct.pack("<IQ", 4, 6) + b"tester")
        for m in (kc, np.eye(4), np.eye(4) * 2, np.eye(4)):
            f.write(np.asarray(m, "<f4").tobytes())
        f.write(struct.pack("<iiIIIIfQ", 2, 1, color_hw[1], color_hw[0], depth_hw[1], depth_hw[0], 1000.0,
                            len(frames)))
        for pose, rgb, depth in frames:
            buf = io.BytesIO()
            iio.imwrite(buf, rgb, extension=".jpg")
            color, dz = buf.getvalue(), zlib.compress(depth.astype("<u2").tobytes())
            f.write(np.asarray(pose, "<f4").tobytes() + struct.pack("<QQQQ", 1, 2, len(color), len(dz)))
            f.write(color + dz)
        f.write(b"imu records follow")


def test_export_from_sens(tmp_path):
    from datasets.scannet_export import export_sens
    rng = np.random.default_rng(3)
    info = write_tiny_scannet(tmp_path / "ref", n_frames=7)
    frames = [(info["poses"][n], info["rgb"][n], rng.integers(0, 5000, (6, 8))) for n in range(7)]
    out = tmp_path / NAME
    out.mkdir()
    _write_sens(out / f"{NAME}.sens", frames)
    assert export_sens(str(out / f"{NAME}.sens"), progress=False) == 7
    for n in (0, 6):
        assert np.array_equal(iio.imread(out / "renders" / "depth" / f"{n}.png"), frames[n][2])
        assert np.array_equal(iio.imread(out / "renders" / "color" / f"{n}.jpg").shape, COLOR_HW + (3,))
    # labels come from ScanNet's zips; here copied from the reference scene
    import shutil
    for sub in ("label-filt", "instance-filt", "scannetv2-labels.combined.tsv"):
        src = tmp_path / "ref" / sub
        (shutil.copytree if src.is_dir() else shutil.copy)(src, out / sub)
    s = ScanNetLoader(str(out), *CFG_HW, sample_step=2).load()
    assert s.extra["skipped_frames"] == [NAN_FRAME] and s.train.ids == [0, 2, 4]
    assert s.intrinsics == Intrinsics(fx=30.0, fy=29.0, cx=15.75, cy=12.625)
    assert np.allclose(s.train.poses[2].numpy(), info["poses"][VALID[4]], atol=1e-6)
    (out / f"{NAME}.sens").write_bytes(b"\x05\x00\x00\x00")
    with pytest.raises(InputError, match="version 5"):
        export_sens(str(out / f"{NAME}.sens"), progress=False)
