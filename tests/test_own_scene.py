"""Your own scene, end to end in Python (the flags --clicks / --label_all_frames come with the next
round): the built-in room as a capture without labels, clicks from a file, 2D propagation through
a checkpoint, labels for every frame, scored by experiments/score_labels.py against the ground
truth kept apart. The same clicks on the Replica layout of the same room give the same labels, so
the scored mIoU equals that run's own metrics. And the shipped experiments/room_clicks.yaml."""
import dataclasses
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml

import main as jnerf_main
from datasets.clicks import UserLabelOptions, read_clicks, with_user_labels
from datasets.nerfstudio import NerfstudioOptions
from datasets.registry import load_scene
from datasets.synthetic import VARIANTS, camera_poses, render_frame, write_capture
from experiments.score_labels import score
from models.factory import build_renderer
from propagation.export import ExportOptions
from propagation.run import propagate
from tests.cli_helpers import SMALL_FLAGS, write_config
from tests.tiny_models import write_tiny_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread")]
W, H, FRAMES = 32, 24, 10
ROOM_CLICKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                           "room_clicks.yaml")


def test_shipped_room_clicks_land_on_their_classes():
    """experiments/room_clicks.yaml: one click per class of the default capture (150 frames, 80x60),
    each on a pixel of its class in the room's ground truth, on training frames only; its classes
    are every class the training frames show."""
    clicks = read_clicks(ROOM_CLICKS)
    room = VARIANTS[0].build(0)
    lut = np.array([ob.class_id for ob in room.all_objects])
    poses = camera_poses(150)
    truth = {f: lut[render_frame(room, poses[f], 60, 80, ss=1)[2]] for f in range(0, 150, 5)}
    ids = clicks.classes.by_name()
    for c in clicks.clicks:
        f = int(c.frame[len("images/frame_"):-len(".png")])
        assert f in truth, c                                           # a training frame
        assert truth[f][int(c.y), int(c.x)] == ids[c.label], c         # on its class
    assert sorted(ids[c.label] for c in clicks.clicks) == sorted(ids.values())     # one click per class
    seen = set(np.unique(np.stack(list(truth.values()))).tolist()) - {0}
    assert set(ids.values()) == seen
    assert len({c.frame for c in clicks.clicks}) <= 3                  # a few frames


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    cap, gt = str(root / "capture"), str(root / "capture_gt")
    write_capture(cap, gt, frames=FRAMES, width=W, height=H, stats=False, workers=1)
    config = write_config(root, cap, width=W, height=H)
    ckpt = write_tiny_checkpoint(config, str(root / "ckpt" / "000001.ckpt"))
    # one click per class of training frame 0, on its most interior pixel (from the ground truth)
    sem = iio.imread(os.path.join(gt, "semantic_class", "semantic_class_0.png"))
    names = {int(k): v for k, v in json.load(open(os.path.join(gt, "scene_info.json")))["classes"].items()}
    import cv2
    clicks = []
    for c in np.unique(sem):
        if c == 0:
            continue
        dist = cv2.distanceTransform(np.pad((sem == c).astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        clicks.append(dict(frame="images/frame_00000.png", x=int(x), y=int(y), label=names[int(c)]))
    classes = [dict(name=names[int(c)], id=int(c)) for c in np.unique(sem) if c]
    by_name = dict(classes=classes, clicks=clicks)
    by_id = dict(classes=classes, clicks=[dict(c, frame=0) for c in clicks])
    paths = {}
    for key, doc in (("capture", by_name), ("replica", by_id)):
        paths[key] = str(root / f"clicks_{key}.yaml")
        with open(paths[key], "w") as f:
            yaml.safe_dump(doc, f)
    return dict(root=root, cap=cap, gt=gt, config=config, ckpt=ckpt, clicks=paths)


def run_propagation(world, kind, save_dir, export=None):
    _, opts = jnerf_main.parse_options(["--config_file", world["config"], "--save_dir", str(save_dir), *SMALL_FLAGS,
                                        "--dataset_type", "nerfstudio" if kind == "capture" else "replica",
                                        "--propagate_2d", "--ckpt_path", world["ckpt"], "--rgb_layer",
                                        "--mean_gradient", "--seed", "0"])
    data = opts.data if kind == "capture" else dataclasses.replace(opts.data, dataset_dir=world["gt"])
    loader_options = NerfstudioOptions(near_far=(opts.data.near, opts.data.far)) if kind == "capture" else None
    scene = with_user_labels(load_scene(data, loader_options), UserLabelOptions(clicks=world["clicks"][kind]))
    os.makedirs(save_dir, exist_ok=True)
    torch.manual_seed(0)
    renderer = build_renderer(opts.model, torch.device("cpu"))
    metrics = propagate(opts, scene, renderer, np.random.default_rng(0), export=export)
    raw = [scene.semantic_classes[iio.imread(os.path.join(save_dir, f"{i}_label.png")).astype(np.int64) + 1]
           for i in range(len(scene.test))]
    return scene, metrics, raw


def test_clicks_to_labels_for_every_frame_equal_the_replica_run(world, capsys):
    out = world["root"] / "run_capture"
    export = ExportOptions(str(out / "all_frames"), progress=False)
    cap, m_cap, raw_cap = run_propagation(world, "capture", out, export)
    printed = capsys.readouterr().out
    assert printed.count("metrics skipped") == 1 and "mIoU" not in printed
    assert m_cap["metrics_skipped"] and "miou" not in m_cap and m_cap["label_export"]["frames"] == FRAMES
    assert os.path.isfile(out / "0_confidence.png") and not os.path.exists(out / "0_error_map.png")
    rep, m_rep, raw_rep = run_propagation(world, "replica", world["root"] / "run_replica")
    # the same rays, clicks and checkpoint: the same labels (as raw class ids) on every test view
    assert cap.test.ids == rep.test.ids
    for a, b in zip(raw_cap, raw_rep):
        assert np.array_equal(a, b)
    # every frame of the capture has its labels; the test frames' are the test views' labels
    labels = sorted(os.listdir(out / "all_frames" / "labels"))
    assert labels == [f"frame_{i:05d}.png" for i in range(FRAMES)]
    for k, gid in enumerate(cap.test.ids):
        assert np.array_equal(iio.imread(out / "all_frames" / "labels" / f"frame_{gid:05d}.png"), raw_cap[k])
    # scored against the ground truth kept apart: the Replica run's own metrics
    s = score(str(out / "all_frames"), world["gt"], "test")
    assert s["frames"] == len(rep.test)
    assert s["miou"] == pytest.approx(m_rep["miou"], abs=1e-12)
    assert s["total_accuracy"] == pytest.approx(m_rep["total_accuracy"], abs=1e-12)
    assert s["class_average_accuracy"] == pytest.approx(m_rep["class_average_accuracy"], abs=1e-12)
