"""`python -m datasets.extract_dino` on a tiny Replica folder with random ViT-S/8 weights:
files, sidecar, loader round trip, resume, preprocessing and clear errors."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import dino_io
from datasets import extract_dino as ex
from datasets.descriptors import load_feature_store
from models import vit
from tests.tiny_scene import write_tiny_replica

H, W = 48, 64  # image size of the tiny scene; load size 48 keeps it, grid 11 x 15 at stride 4


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = vit.VisionTransformer(stride=8)
    with torch.no_grad():
        model.pos_embed.normal_()
        model.cls_token.normal_()
    path = tmp_path_factory.mktemp("w") / vit.WEIGHTS_NAME
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture
def scene(tmp_path):
    root = tmp_path / "scene"
    write_tiny_replica(str(root), n_frames=12, height=H, width=W)
    return str(root)


def run(capsys, *argv):
    rc = ex.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_files_load_through_replica_loader(capsys, scene, weights):
    rc, out, err = run(capsys, "--dataset_dir", scene, "--weights", weights, "--load_size", H,
                       "--batch_size", 2, "--half")
    assert rc == 0, err
    assert "ms per frame" in out and "--half is ignored on CPU" in out
    folder = os.path.join(scene, "dino")
    assert sorted(os.listdir(folder)) == sorted([dino_io.META_NAME, "dino_0.pth", "dino_5.pth",
                                                  "dino_10.pth"])  # train ids 0, 5, 10
    meta = json.load(open(os.path.join(folder, dino_io.META_NAME)))
    assert meta["grid"] == [11, 15] and meta["dim"] == 384
    assert (meta["model"], meta["load_size"], meta["stride"], meta["layer"], meta["facet"]) == \
        ("dino_vits8", H, 4, 11, "key")

    raw = torch.load(os.path.join(folder, "dino_5.pth"), weights_only=True)
    assert raw.shape == (1, 1, 11 * 15, 384) and raw.dtype == torch.float32
    # one frame's storage only (a view of the batch would save the whole batch)
    assert os.path.getsize(os.path.join(folder, "dino_5.pth")) < 1.1 * raw.numel() * 4

    # same numbers as the network on the preprocessed frame
    model = vit.dino_vits8(weights, stride=4)
    with torch.no_grad():
        expect = model.facet(ex.load_image(os.path.join(scene, "rgb", "rgb_5.png"), H)[None], 11, "key")
    torch.testing.assert_close(raw[0], expect, rtol=1e-5, atol=1e-5)

    store = load_feature_store(scene, [0, 5, 10], (H, W), "dino", dtype=torch.float32)
    full = store.full(1)
    assert full.shape == (H, W, 384)
    # the top-left pixel lies in the first patch cell
    torch.testing.assert_close(full[0, 0], raw[0, 0, 0])


def test_second_run_skips_existing(capsys, scene, weights):
    args = ["--dataset_dir", scene, "--weights", weights, "--load_size", H, "--ids", "0,3"]
    assert run(capsys, *args)[0] == 0
    paths = [os.path.join(scene, "dino", f"dino_{n}.pth") for n in (0, 3)]
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and "nothing to do" in out
    assert [os.stat(p).st_mtime_ns for p in paths] == stamps
    os.remove(paths[1])
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and "1 of 2 frames" in out
    assert os.stat(paths[0]).st_mtime_ns == stamps[0] and os.path.isfile(paths[1])
    # other settings into the same folder are refused, not mixed
    rc, _, err = run(capsys, "--dataset_dir", scene, "--weights", weights, "--load_size", H,
                     "--ids", "1", "--stride", 8)
    assert rc == 2 and "stride=4" in err and "--out_folder" in err


def test_load_size_token_facet_and_bin(capsys, scene, weights):
    rc, _, err = run(capsys, "--dataset_dir", scene, "--weights", weights, "--load_size", 24,
                     "--ids", "2", "--facet", "token", "--bin", "--out_folder", "dino_bin")
    assert rc == 0, err
    meta = json.load(open(os.path.join(scene, "dino_bin", dino_io.META_NAME)))
    # 64x48 -> 32x24 -> grid 1 + (24-8)/4 by 1 + (32-8)/4
    assert meta["grid"] == [5, 7] and meta["dim"] == 17 * 384 and meta["bin"] is True
    raw = torch.load(os.path.join(scene, "dino_bin", "dino_2.pth"), weights_only=True)
    assert raw.shape == (1, 1, 35, 17 * 384)


def test_preprocessing_matches_pil_lanczos_and_imagenet(tmp_path):
    assert ex.resized_size(640, 480, 360) == (480, 360)
    assert ex.resized_size(480, 640, 360) == (360, 480)
    assert ex.resized_size(500, 333, 360) == (540, 360)  # int(360 * 500 / 333) = 540
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "rgb_0.png")
    got = ex.load_image(str(tmp_path / "rgb_0.png"), 24)
    ref = np.asarray(Image.fromarray(arr).resize((32, 24), Image.LANCZOS), dtype=np.float32) / 255
    ref = (ref - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    assert got.shape == (3, 24, 32)
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["no_dir", "no_rgb", "no_weights", "facet", "ids_text", "ids_absent",
                                  "layer", "stride"])
def test_clear_errors(capsys, tmp_path, scene, weights, case):
    base = ["--dataset_dir", scene, "--weights", weights, "--load_size", H]
    argv, expect = {
        "no_dir": (["--dataset_dir", tmp_path / "absent", "--weights", weights], "absent"),
        "no_rgb": (["--dataset_dir", tmp_path, "--weights", weights], "rgb"),
        "no_weights": (["--dataset_dir", scene], vit.WEIGHTS_NAME),
        "facet": (base + ["--facet", "attn"], "--facet"),
        "ids_text": (base + ["--ids", "0,x"], "--ids"),
        "ids_absent": (base + ["--ids", "0,99"], "rgb_99.png"),
        "layer": (base + ["--layer", 12], "--layer"),
        "stride": (base + ["--stride", 3], "--stride"),
    }[case]
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and err.startswith("error:") and expect in err
    assert "Traceback" not in err


def test_capture_frames_in_loader_order_and_resampled_like_the_loader(capsys, tmp_path, weights):
    """A transforms.json capture: files named out of numeric order in the JSON, one frame with lens
    distortion. Descriptor i is the network on the loader's frame i (the resampled image)."""
    from datasets.nerfstudio import NerfstudioOptions, load_nerfstudio
    from utils.options import DataOptions
    root = tmp_path / "capture"
    os.makedirs(root / "images")
    rng = np.random.default_rng(1)
    numbers = [11, 2, 30, 7, 1, 5, 9]                     # loader order: 1 2 5 7 9 11 30
    frames = []
    for n in numbers:
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"img_{n}.png")
        fr = dict(file_path=f"images/img_{n}.png", transform_matrix=np.eye(4).tolist())
        if n == 11:
            fr.update(k1=0.05, p2=0.001)
        frames.append(fr)
    with open(root / "transforms.json", "w") as f:
        json.dump(dict(camera_model="OPENCV", fl_x=40.0, fl_y=40.0, cx=32.0, cy=24.0, w=W, h=H, frames=frames), f)
    rc, _, err = run(capsys, "--dataset_dir", root, "--weights", weights, "--load_size", H)
    assert rc == 0, err
    assert sorted(os.listdir(root / "dino")) == sorted([dino_io.META_NAME, "dino_0.pth", "dino_5.pth"])
    scene = load_nerfstudio(DataOptions(dataset_type="nerfstudio", dataset_dir=str(root), width=W, height=H,
                                        load_dino=True, loader=NerfstudioOptions(ns_near_far=(0.1, 2.0))))
    assert scene.train.ids == [0, 5] and scene.frames[5].file == "images/img_11.png" and scene.frames[5].resampled
    model = vit.dino_vits8(weights, stride=4)
    for k, gid in enumerate(scene.train.ids):
        # the image the loader made (before any resize: the config size is the image size), as uint8
        Image.fromarray(np.round(scene.train.rgb[k].numpy() * 255).astype(np.uint8)).save(tmp_path / "seen.png")
        with torch.no_grad():
            expect = model.facet(ex.load_image(str(tmp_path / "seen.png"), H)[None], 11, "key")
        raw = torch.load(root / "dino" / f"dino_{gid}.pth", weights_only=True)
        torch.testing.assert_close(raw[0], expect, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scene.train.features.grids[k].float(), raw[0, 0].reshape(11, 15, -1).half().float())
