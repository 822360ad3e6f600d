"""Your own scene, end to end through main.py (docs/OWN_SCENE.md): the built-in room written as a
capture without labels (`python -m datasets.synthetic --format nerfstudio`), trained and shaped
with `--dataset_type nerfstudio`, propagated from the shipped clicks file
(experiments/room_clicks.yaml) with `--clicks ... --label_all_frames`, and the labels of every
frame scored against the room's ground truth by experiments/score_labels.py. The same clicks on
the Replica layout of the same room, through the same checkpoint and seed, give the same labels
and the same score. Then the other modes on the capture (3D, the dense rules with the aggregator,
label-supervised shaping and the Semantic-NeRF baseline on clicks; render, editing), the resumable
export, and bad input refused by name (exit 2, one line)."""
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import yaml

from datasets.clicks import read_clicks
from datasets.synthetic import VARIANTS, camera_poses, render_frame, write_capture
from datasets.synthetic import main as synthetic_main
from experiments import score_labels
from tests.cli_helpers import run_main, write_config
from tests.tiny_models import write_tiny_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread")]
FRAMES, CAP_W, CAP_H = 150, 80, 60            # the shipped clicks file's capture
W, H = 32, 24                                 # trained at a smaller size: labels are upsampled to 80x60
PLAIN, SHAPE = 300, 100
ROOM_CLICKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                           "room_clicks.yaml")
RUN = ["--seed", "0", "--N_samples", "8", "--N_importance", "8"]
PROPAGATE = ["--propagate_2d", "--rgb_layer", "--mean_gradient", *RUN]


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


def test_room_clicks_by_number_are_the_shipped_clicks_for_the_replica_layout(tmp_path):
    from experiments import room_clicks
    assert room_clicks.main(["--by_number", "--out", str(tmp_path / "n.yaml")]) == 0
    shipped, numbered = yaml.safe_load(open(ROOM_CLICKS)), yaml.safe_load(open(tmp_path / "n.yaml"))
    assert numbered["classes"] == shipped["classes"]
    assert numbered["clicks"] == [dict(c, frame=int(c["frame"][len("images/frame_"):-len(".png")]))
                                  for c in shipped["clicks"]]


def ok(capsys, config, save_dir, *flags):
    rc, out, err = run_main(capsys, config, save_dir, *flags)
    assert rc == 0, err[-3000:]
    return out


def refused(capsys, config, save_dir, *flags):
    """exit 2 with one `error:` line; returns the line."""
    rc, _, err = run_main(capsys, config, save_dir, *flags)
    errors = [line for line in err.splitlines() if "error" in line.lower()]    # (progress bars aside)
    assert rc == 2 and len(errors) == 1 and errors[0].startswith("error: "), (rc, err[-3000:])
    assert err.rstrip().endswith(errors[0])
    return errors[0]


class Quiet:
    """Stands in for capsys in the module fixture (capsys is per test): nothing is captured there."""
    @staticmethod
    def readouterr():
        return type("Captured", (), dict(out="", err=""))()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The capture and its ground truth, the two configs, a plain and a shaped checkpoint."""
    root = tmp_path_factory.mktemp("own_scene")
    cap, gt = str(root / "room_capture"), str(root / "room_capture_ground_truth")
    assert synthetic_main(["--format", "nerfstudio", "--out", cap, "--workers", "1", "--no_stats"]) == 0
    os.makedirs(root / "cfg_capture")
    os.makedirs(root / "cfg_replica")
    config = write_config(root / "cfg_capture", cap, width=W, height=H, netwidth=32)
    replica = write_config(root / "cfg_replica", gt, width=W, height=H, netwidth=32)
    # the capture's near/far from the Replica config's depth_range, so that both layouts sample the same points
    near_far = ["--ns_near_far", "0.1", "10"]
    capture = ["--dataset_type", "nerfstudio", *near_far]
    plain, shaped = root / "plain", root / "shaped"
    ok(Quiet, config, plain, *capture, *RUN, "--N_iters", str(PLAIN), "--N_rays", "256", "--lrate", "5e-3")
    ok(Quiet, config, shaped, *capture, *RUN, "--ckpt_path", str(plain / "checkpoints" / f"{PLAIN:06d}.ckpt"),
       "--load_dino", "--feature_dim", "384", "--contrastive_2d", "--contrastive_starting_step", "0",
       "--contrastive_step", "1", "--wgt_contrastive", "1e-2", "--wgt_gradient", "1e-2", "--rgb_layer",
       "--adaptive_threshold", "--gt_feature_sim", "--gradient_norm_loss", "--contrastive_abs", "--N_rays", "64",
       "--N_iters", str(SHAPE), "--lrate", "5e-3")
    # the same clicks for the Replica layout, whose frames are rgb/rgb_<n>.png: by frame number
    doc = yaml.safe_load(open(ROOM_CLICKS))
    for c in doc["clicks"]:
        c["frame"] = int(c["frame"][len("images/frame_"):-len(".png")])
    replica_clicks = str(root / "room_clicks_by_number.yaml")
    with open(replica_clicks, "w") as f:
        yaml.safe_dump(doc, f)
    return dict(root=root, cap=cap, gt=gt, config=config, replica=replica, capture=capture,
                plain=str(plain / "checkpoints" / f"{PLAIN:06d}.ckpt"),
                ckpt=str(shaped / "checkpoints" / f"{SHAPE:06d}.ckpt"), replica_clicks=replica_clicks)


def chance_miou(gt_dir, class_ids, frames):
    """The mIoU of guessing, on the ground truth of `frames` (pixels of the given classes): the best of
    a constant guess of the most frequent class and of guesses drawn with the classes' own
    frequencies (expected IoU p^2 / (2p - p^2) per class) or uniformly (p/K / (p + 1/K - p/K))."""
    gt = np.stack([iio.imread(os.path.join(gt_dir, "semantic_class", f"semantic_class_{i}.png")) for i in frames])
    counts = np.array([(gt == c).sum() for c in class_ids], np.float64)
    p = counts / counts.sum()
    k = len(class_ids)
    return max(p.max() / k, np.mean(p * p / (2 * p - p * p)), np.mean((p / k) / (p + 1 / k - p / k)))


def independent_score(label_dir, gt_dir, frames, name):
    """mIoU of exported labels against ground truth, computed here (numpy), over the classes of classes.json."""
    ids = [c["id"] for c in json.load(open(os.path.join(label_dir, "classes.json")))]
    inter, union = np.zeros(len(ids)), np.zeros(len(ids))
    for i in frames:
        pred = iio.imread(os.path.join(label_dir, "labels", name(i) + ".png")).astype(np.int64)
        gt = iio.imread(os.path.join(gt_dir, "semantic_class", f"semantic_class_{i}.png")).astype(np.int64)
        valid = np.isin(gt, ids)
        for k, c in enumerate(ids):
            inter[k] += ((pred == c) & (gt == c) & valid).sum()
            union[k] += (((pred == c) & valid) | (gt == c)).sum()
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_clicks_to_labels_for_every_frame_equal_the_replica_run(world, capsys, tmp_path):
    """The issue's end-to-end run and its measure: capture and Replica layout, same clicks and seed."""
    cap_out, rep_out = tmp_path / "labels_capture", tmp_path / "labels_replica"
    out = ok(capsys, world["config"], cap_out, *world["capture"], *PROPAGATE, "--ckpt_path", world["ckpt"],
             "--clicks", ROOM_CLICKS, "--label_all_frames")
    assert out.count("metrics skipped: the scene has no ground-truth labels") == 1 and "mIoU" not in out
    metrics = json.load(open(cap_out / "metrics.json"))
    assert metrics["metrics_skipped"] and "miou" not in metrics and metrics["label_export"]["frames"] == FRAMES
    assert metrics["labelled_frames"] == [5, 60] and len(metrics["given_classes"]) == 15
    for i in range(FRAMES // 5):     # every test view: label PNG, colourised map, confidence; no error map
        for f in (f"{i}_label.png", f"{i}_vis_label.png", f"{i}_confidence.png"):
            assert os.path.isfile(cap_out / f), f
    assert not os.path.exists(cap_out / "0_error_map.png")
    ok(capsys, world["replica"], rep_out, *PROPAGATE, "--ckpt_path", world["ckpt"],
       "--clicks", world["replica_clicks"], "--label_all_frames")
    rep_metrics = json.load(open(rep_out / "metrics.json"))

    # every frame of the capture labelled at its own 80x60, the same ids as the Replica run's
    cap_dir, rep_dir = cap_out / "all_frames", rep_out / "all_frames"
    assert sorted(os.listdir(cap_dir / "labels")) == [f"frame_{i:05d}.png" for i in range(FRAMES)]
    for folder in ("labels_vis", "confidence"):
        assert len(os.listdir(cap_dir / folder)) == FRAMES
    cap_classes, rep_classes = (json.load(open(d / "classes.json")) for d in (cap_dir, rep_dir))
    assert [(c["id"], c["name"]) for c in cap_classes] == [(c["id"], c["name"]) for c in rep_classes]
    assert cap_classes[0]["colour"] == [64, 128, 0]         # a capture's colours: the clicks file's
    for i in range(FRAMES):
        a = iio.imread(cap_dir / "labels" / f"frame_{i:05d}.png")
        assert a.shape == (CAP_H, CAP_W) and a.dtype == np.uint16
        assert np.array_equal(a, iio.imread(rep_dir / "labels" / f"rgb_{i}.png")), i
    # the test views at the render size: the same labels as the Replica run's (whose metrics those are)
    cap_ids = [c["id"] for c in json.load(open(cap_dir / "classes.json"))]
    rep_ids = [int(n.rsplit("(", 1)[1][:-1]) for n in rep_metrics["class_names"]]
    for i in range(FRAMES // 5):
        a = iio.imread(cap_out / f"{i}_label.png").astype(np.int64)
        b = iio.imread(rep_out / f"{i}_label.png").astype(np.int64)
        assert np.array_equal(np.array(cap_ids)[a], np.array(rep_ids)[b]), i

    # scored by the separate script: the capture's labels and the Replica run's score the same
    score_json = tmp_path / "score.json"
    assert score_labels.main([str(cap_dir), world["gt"], "--frames", "test", "--json", str(score_json)]) == 0
    printed = capsys.readouterr().out
    score = json.load(open(score_json))
    assert score["frames"] == FRAMES // 5 and f"mIoU {100 * score['miou']:.2f} %" in printed
    assert score_labels.main([str(rep_dir), world["gt"], "--frames", "test", "--json", str(tmp_path / "r.json")]) == 0
    rep_score = json.load(open(tmp_path / "r.json"))
    for key in ("miou", "total_accuracy", "class_average_accuracy"):
        assert score[key] == rep_score[key], key
    test_frames = list(range(2, FRAMES, 5))
    assert score["miou"] == pytest.approx(independent_score(str(rep_dir), world["gt"], test_frames,
                                                            lambda i: f"rgb_{i}"), abs=1e-12)
    chance = chance_miou(world["gt"], cap_ids, test_frames)
    assert score["miou"] > chance and rep_metrics["miou"] > chance, (score["miou"], rep_metrics["miou"], chance)
    with capsys.disabled():          # the measure, shown with pytest -s
        print(f"\n[own scene] test frames at 80x60: capture mIoU {score['miou']:.6f}, Replica layout "
              f"{rep_score['miou']:.6f}; the Replica run's 32x24 test views {rep_metrics['miou']:.6f}; "
              f"chance {chance:.6f}")

    # --overwrite keeps all_frames/ (resume); labels of another checkpoint are refused, not mixed
    out = ok(capsys, world["config"], cap_out, *world["capture"], *PROPAGATE, "--ckpt_path", world["ckpt"],
             "--clicks", ROOM_CLICKS, "--label_all_frames", "--overwrite")
    assert f"({FRAMES - 0} labelled" not in out and f"{FRAMES} already complete" in out
    line = refused(capsys, world["config"], cap_out, *world["capture"], *PROPAGATE, "--ckpt_path", world["plain"],
                   "--clicks", ROOM_CLICKS, "--label_all_frames", "--overwrite")
    assert str(cap_dir) in line and "another propagation" in line and f"checkpoint_step {SHAPE}" in line


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 10-frame 32x24 capture, a random checkpoint and one click per class of training frame 0 (on
    its most interior pixel, from the ground truth): the other modes and the bad input."""
    import cv2
    root = tmp_path_factory.mktemp("own_small")
    cap, gt = str(root / "capture"), str(root / "capture_gt")
    write_capture(cap, gt, frames=10, width=W, height=H, stats=False, workers=1)
    config = write_config(root, cap, width=W, height=H)
    ckpt = write_tiny_checkpoint(config, str(root / "ckpt" / "000001.ckpt"))
    sem = iio.imread(os.path.join(gt, "semantic_class", "semantic_class_0.png"))
    names = {int(k): v for k, v in json.load(open(os.path.join(gt, "scene_info.json")))["classes"].items()}
    clicks = []
    for c in np.unique(sem)[1:]:
        dist = cv2.distanceTransform(np.pad((sem == c).astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        clicks.append(dict(frame="images/frame_00000.png", x=int(x), y=int(y), label=names[int(c)]))
    classes = [dict(name=names[int(c)], id=int(c)) for c in np.unique(sem)[1:]]
    path = write_clicks(root / "clicks.yaml", clicks, classes)
    return dict(config=config, ckpt=ckpt, capture=["--dataset_type", "nerfstudio", "--ns_near_far", "0.1", "10"],
                clicks=path, click=clicks[0], classes=classes, root=root)


def write_clicks(path, clicks, classes=None):
    doc = dict(clicks=clicks) if classes is None else dict(classes=classes, clicks=clicks)
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return str(path)


def test_every_mode_runs_on_the_capture_and_its_clicks(small, capsys, tmp_path):
    """3D propagation (its labels into a folder of its own, nearest upsampling), the dense rule with
    the aggregator, label-supervised shaping and the Semantic-NeRF baseline from the clicks; render
    and editing on a scene without labels."""
    cap, config, ckpt = small["capture"], small["config"], small["ckpt"]
    clicks = ["--clicks", small["clicks"]]
    n = len(small["classes"])
    folder = tmp_path / "labels_3d"
    out = ok(capsys, config, tmp_path / "p3", *cap, "--propagate_3d", "--rgb_layer", "--mean_gradient", *RUN,
             "--ckpt_path", ckpt, *clicks, "--label_all_frames", str(folder), "--label_upsample", "nearest")
    assert out.count("metrics skipped") == 1
    assert len(os.listdir(folder / "labels")) == 10 and "'nearest'" in open(folder / "summary.md").read()
    assert json.load(open(folder / "export.json"))["upsample"] == "nearest"
    assert os.path.isfile(tmp_path / "p3" / "test_render" / "0_confidence.png")
    assert not os.path.exists(tmp_path / "p3" / "all_frames")
    ok(capsys, config, tmp_path / "dense", *cap, "--propagate_2d", "--rgb_layer", "--adaptive_selection",
       "--num_iters", "2", "--num_comb", "2", "--train_agg", "--agg_steps", "20", *RUN, "--ckpt_path", ckpt, *clicks)
    dense = json.load(open(tmp_path / "dense" / "metrics.json"))
    assert dense["aggregator"]["pixels"] == n and dense["metrics_skipped"] and len(dense["given_classes"]) == n
    out = ok(capsys, config, tmp_path / "shape_labels", *cap, "--contrastive_2d", "--rgb_layer", "--from_label",
             *RUN, "--ckpt_path", ckpt, "--N_iters", "3", "--contrastive_starting_step", "0", "--contrastive_step",
             "1", *clicks)
    assert "supervision labels" in out
    out = ok(capsys, config, tmp_path / "semantic", *cap, "--semantic_finetune", *RUN, "--ckpt_path", ckpt,
             "--N_iters", "3", *clicks)
    assert out.count("metrics skipped: the scene has no ground-truth labels") == 1
    for kind in ("2d", "3d"):
        m = json.load(open(tmp_path / "semantic" / f"semantic_{kind}" / "metrics.json"))
        assert m["metrics_skipped"] and "miou" not in m
    for f in ("0_label.png", "0_vis_label.png"):
        assert os.path.isfile(tmp_path / "semantic" / "semantic_2d" / f)
    # scribbles: a 3x3 patch of each class around its click on frame 0, alone and with the clicks
    scribbles = tmp_path / "painted"
    os.makedirs(scribbles)
    paint = np.zeros((H, W), np.uint16)
    by_name = {c["name"]: c["id"] for c in small["classes"]}
    for c in yaml.safe_load(open(small["clicks"]))["clicks"]:
        paint[max(0, c["y"] - 1):c["y"] + 2, max(0, c["x"] - 1):c["x"] + 2] = by_name[c["label"]]
    iio.imwrite(scribbles / "frame_00000.png", paint)
    with open(scribbles / "classes.yaml", "w") as f:
        yaml.safe_dump(dict(classes=small["classes"]), f)
    for extra, name in ((["--scribbles", str(scribbles)], "scribbles"),
                        (["--scribbles", str(scribbles), *clicks], "clicks_clicks_scribbles")):
        ok(capsys, config, tmp_path / name, *cap, *PROPAGATE, "--ckpt_path", ckpt, *extra, "--visualise_save")
        m = json.load(open(tmp_path / name / "metrics.json"))
        assert m["seeds"] == name and m["labelled_frames"] == [0] and len(m["given_classes"]) <= n
        assert json.load(open(tmp_path / name / "seeds" / name / "seeds.json"))["labelled_frames"] == [0]
    ok(capsys, config, tmp_path / "render", *cap, "--render_only", *RUN, "--ckpt_path", ckpt)
    ok(capsys, config, tmp_path / "edit", *cap, "--perturb_gradient", "--rgb_layer", "--N_rays", "1", *RUN,
       "--ckpt_path", ckpt)


def test_bad_clicks_and_flag_conflicts_are_refused_by_name(small, capsys, tmp_path):
    cap, config, ckpt, good = small["capture"], small["config"], small["ckpt"], small["click"]
    run = [*cap, *PROPAGATE, "--ckpt_path", ckpt]
    classes = small["classes"]
    bad = {
        "unknown frame": (dict(good, frame="images/frame_00099.png"), "unknown frame 'images/frame_00099.png'"),
        "not a training frame": (dict(good, frame=2), "frame 2 is not a training frame"),
        "pixel outside": (dict(good, x=W), f"pixel outside the {W}x{H} image"),
        "unknown class": (dict(good, label="spaceship"), "unknown class name 'spaceship'"),
    }
    for case, (click, why) in bad.items():
        path = write_clicks(tmp_path / "c.yaml", [good, click], classes)
        line = refused(capsys, config, tmp_path / "r", *run, "--clicks", path)
        assert line.startswith(f"error: {path}: click 1 ") and why in line, (case, line)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    line = refused(capsys, config, tmp_path / "r", *run, "--clicks", str(empty))
    assert line == f"error: {empty}: no clicks (expected a list of {{frame, x, y, label}})"
    ok_file = small["clicks"]
    for extra in (["--sparse_views"], ["--label_propagation"], ["--user_click"], ["--load_saved"],
                  ["--label_map_ids", "5"], ["--test_instance"]):
        line = refused(capsys, config, tmp_path / "r", *run, "--clicks", ok_file, *extra)
        assert line.startswith(f"error: --clicks and {extra[0]} are exclusive"), line
    line = refused(capsys, config, tmp_path / "r", *run, "--scribbles", ok_file)
    assert f"--scribbles {ok_file} is a file, not a folder" in line
    line = refused(capsys, config, tmp_path / "r", *run, "--clicks", str(tmp_path / "absent.yaml"))
    assert f"--clicks {tmp_path / 'absent.yaml'} does not exist" in line
    line = refused(capsys, config, tmp_path / "r", *cap, *RUN, "--N_iters", "1", "--clicks", ok_file)
    assert line.startswith("error: --clicks gives the labels") and "plain NeRF training uses no labels" in line
    line = refused(capsys, config, tmp_path / "r", *cap, *RUN, "--N_iters", "1", "--label_all_frames")
    assert "--label_all_frames labels every frame after a propagation" in line
    line = refused(capsys, config, tmp_path / "r", *run, "--clicks", ok_file, "--label_upsample", "nearest")
    assert "--label_upsample sets how --label_all_frames upsamples" in line
    line = refused(capsys, config, tmp_path / "r", *PROPAGATE, "--ckpt_path", ckpt, "--ns_split_step", "2")
    assert "--ns_split_step is an option of --dataset_type nerfstudio; this run reads --dataset_type replica" in line
    line = refused(capsys, config, tmp_path / "r", "--dataset_type", "nerfstudio", "--ns_near_far", "5", "1",
                   *PROPAGATE, "--ckpt_path", ckpt, "--clicks", ok_file)
    assert "--ns_near_far 5.0 1.0: expected 0 <= NEAR < FAR" in line
    # a capture without labels and without clicks: nothing to propagate from, nothing to shape or train on
    line = refused(capsys, config, tmp_path / "r", *run)
    assert line.startswith("error: 2D label propagation starts from labels")
    assert "--clicks FILE or --scribbles DIR" in line
    line = refused(capsys, config, tmp_path / "r", *cap, *RUN, "--contrastive_2d", "--rgb_layer", "--from_label",
                   "--N_iters", "1")
    assert line.startswith("error: Jacobi shaping with label supervision starts from labels")
    line = refused(capsys, config, tmp_path / "r", *cap, *RUN, "--semantic_nerf", "--N_iters", "1")
    assert line.startswith("error: the Semantic-NeRF baseline starts from labels")
