"""The annotation export (propagation/export.py, propagation/upsample.py) on hand-made arrays: box
means and the guided filter against literal loops, grid sampling by hand, an edge recovered from
the colour guide, and the writer's files, counts, resume and refusals."""
import json
import os
import re

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from datasets.sources import FrameSource
from propagation.export import ExportClasses, overlay, write_all_frames
from utils.options import ExportOptions
from propagation.testviews import confidence
from propagation.upsample import box_mean, guided_filter, sample_grid, upsample_scores
from utils.errors import InputError


def literal_box_mean(x, r):
    h, w = x.shape
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            out[i, j] = x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean()
    return out


def literal_guided(I, p, r, eps):
    """He et al. 2010, Algorithm 1, with window means clipped at the border."""
    mI, mp = literal_box_mean(I, r), literal_box_mean(p, r)
    cov = literal_box_mean(I * p, r) - mI * mp
    var = literal_box_mean(I * I, r) - mI * mI
    a = cov / (var + eps)
    b = mp - a * mI
    return literal_box_mean(a, r) * I + literal_box_mean(b, r)


def test_box_mean_and_guided_filter_against_literal_loops():
    rng = np.random.default_rng(0)
    x = rng.random((7, 9))
    for r in (1, 2, 4):
        np.testing.assert_allclose(box_mean(torch.from_numpy(x), r).numpy(), literal_box_mean(x, r), atol=1e-12)
    I, p = rng.random((7, 9)), rng.random((2, 7, 9))
    got = guided_filter(torch.from_numpy(I), torch.from_numpy(p), 2, 1e-2).numpy()
    for k in range(2):
        np.testing.assert_allclose(got[k], literal_guided(I, p[k], 2, 1e-2), atol=1e-10)


def test_sample_grid_by_hand():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])          # [1, 2, 2]
    # a 4x4 original image over the 2x2 render: u = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25
    src = FrameSource("f", "f.png", "", 4, 4, (2.0, 2.0, 1.5, 1.5), common=(1.0, 1.0, 0.5, 0.5, 2, 2))
    grid = torch.from_numpy(src.scene_grid((2, 2)))
    assert grid[0, :, 0].tolist() == [-0.25, 0.25, 0.75, 1.25]
    near = sample_grid(maps, grid, "nearest")[0]
    assert near.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    bil = sample_grid(maps, grid, "bilinear")[0]
    # rows: v = -0.25 (edge: row 0), 0.25, 0.75, 1.25 (edge: row 1); columns likewise
    col = np.array([0, 0.25, 0.75, 1])
    expect = np.array([0, 0.25, 0.75, 1])[:, None] * 2 + col[None, :]
    np.testing.assert_allclose(bil.numpy(), expect, atol=1e-6)


def test_guided_upsampling_follows_the_colour_edge():
    """Render 4x8, frame 8x16. Classes A | B split at original column 5, inside render column 2,
    whose scores are mixed. The guide (the frame) has its edge at column 5: guided upsampling puts
    the label border there; nearest cannot (it follows render pixels)."""
    a = torch.zeros(4, 8)
    a[:, :2], a[:, 2] = 1.0, 0.5
    scores = torch.stack([a, 1 - a]).double()
    guide = torch.zeros(8, 16, dtype=torch.float64)
    guide[:, 5:] = 1.0
    src = FrameSource("f", "f.png", "", 8, 16, (8.0, 8.0, 7.5, 3.5), common=(4.0, 4.0, 3.5, 1.5, 4, 8))
    up = upsample_scores(scores, src, (4, 8), guide, "guided")
    labels = up.argmax(0)
    expect = torch.zeros(8, 16, dtype=torch.long)
    expect[:, 5:] = 1
    assert torch.equal(labels, expect)
    near = upsample_scores(scores, src, (4, 8), None, "nearest").argmax(0)
    assert near[0].tolist() == [0] * 6 + [1] * 10          # render column 2 = original 4, 5: a tie -> A
    # the render grid itself is returned as is
    same = FrameSource("g", "g.png", "", 4, 8, (4.0, 4.0, 3.5, 1.5))
    assert upsample_scores(scores, same, (4, 8), None, "guided") is scores


def test_confidence_is_the_relative_margin():
    s = torch.tensor([[[0.8, 0.0, 0.3]], [[0.2, 0.0, 0.3]], [[0.4, 0.0, 0.0]]])   # [3 classes, 1, 3]
    assert torch.allclose(confidence(s), torch.tensor([[0.5, 0.0, 0.0]]))


CLASSES = ExportClasses(np.array([20, 93]), ["chair", "wall"], np.array([[255, 0, 0], [0, 0, 255]], np.uint8))


def frames(tmp_path, n=3):
    out = []
    for k in range(n):
        path = tmp_path / f"frame_{k}.png"
        iio.imwrite(path, np.full((4, 6, 3), 40 * k, np.uint8))
        out.append(FrameSource(f"frame_{k}", f"images/frame_{k}.png", str(path), 4, 6, (3.0, 3.0, 2.5, 1.5)))
    return out


def fake_labeller(calls):
    def label(gid, src):
        calls.append(gid)
        lab = np.zeros((4, 6), np.int64)
        lab[:, gid + 1:] = 1                      # frame k: k + 1 columns of chair, the rest wall
        conf = np.full((4, 6), 0.5)
        rgb = np.full((4, 6, 3), 40 * gid / 255.0)
        return lab, conf, rgb
    return label


def test_writer_files_counts_and_resume(tmp_path):
    out = tmp_path / "labels_out"
    srcs = frames(tmp_path)
    calls = []
    summary = write_all_frames(fake_labeller(calls), srcs, CLASSES, ExportOptions(str(out), progress=False))
    assert calls == [0, 1, 2] and summary["rendered"] == 3 and summary["resumed"] == 0
    lab = iio.imread(out / "labels" / "frame_1.png")
    assert lab.dtype == np.uint16 and lab[0].tolist() == [20, 20, 93, 93, 93, 93]
    vis = iio.imread(out / "labels_vis" / "frame_1.png")
    rgb = np.full((4, 6, 3), 40 / 255.0)
    lab_idx = (lab == 93).astype(np.int64)
    assert np.array_equal(vis, overlay(rgb, lab_idx, CLASSES.colours))
    assert vis[0, 0].tolist() == [int(round(255 * (0.5 * 40 / 255 + 0.5))), 20, 20]    # half grey, half red
    assert np.array_equal(iio.imread(out / "confidence" / "frame_2.png"), np.full((4, 6), 128, np.uint8))
    assert json.load(open(out / "classes.json")) == [dict(id=20, name="chair", colour=[255, 0, 0]),
                                                     dict(id=93, name="wall", colour=[0, 0, 255])]
    chair = 4 * (1 + 2 + 3)
    assert summary["pixel_counts"] == {"chair": chair, "wall": 3 * 24 - chair}
    md = (out / "summary.md").read_text()
    assert f"| 20 | chair | {chair} |" in md and f"| 93 | wall | {72 - chair} |" in md
    assert not [p for d in ("labels", "labels_vis", "confidence") for p in os.listdir(out / d) if ".tmp" in p]
    # resume: complete frames are not labelled again; a frame with a missing file is
    os.remove(out / "confidence" / "frame_1.png")
    calls.clear()
    again = write_all_frames(fake_labeller(calls), srcs, CLASSES, ExportOptions(str(out), progress=False))
    assert calls == [1] and again["resumed"] == 2 and again["pixel_counts"] == summary["pixel_counts"]
    # another label space into the same folder is refused
    other = ExportClasses(np.array([20]), ["chair"], np.array([[255, 0, 0]], np.uint8))
    with pytest.raises(InputError, match="classes.json: this label folder holds other classes"):
        write_all_frames(fake_labeller(calls), srcs, other, ExportOptions(str(out), progress=False))
    with pytest.raises(ValueError, match="upsampling mode 'cubic'"):
        write_all_frames(fake_labeller(calls), srcs, CLASSES, ExportOptions(str(out), upsample="cubic"))


def test_writer_subset_of_frames(tmp_path):
    calls = []
    write_all_frames(fake_labeller(calls), frames(tmp_path), CLASSES,
                     ExportOptions(str(tmp_path / "o"), frames=[2], progress=False))
    assert calls == [2] and os.listdir(tmp_path / "o" / "labels") == ["frame_2.png"]


def test_writer_resumes_only_the_same_labels(tmp_path):
    """With a provenance (what export_labels records), a resume needs the same fingerprint: labels of
    another propagation, or complete frames of unknown origin, are refused, never mixed."""
    out = tmp_path / "o"
    srcs = frames(tmp_path)
    calls = []
    mine = dict(fingerprint="a" * 64, upsample="guided", render_size=[4, 6], checkpoint_step=100)
    write_all_frames(fake_labeller(calls), srcs, CLASSES, ExportOptions(str(out), progress=False), (4, 6), mine)
    assert json.load(open(out / "export.json")) == mine and calls == [0, 1, 2]
    os.remove(out / "labels" / "frame_2.png")
    calls.clear()
    write_all_frames(fake_labeller(calls), srcs, CLASSES, ExportOptions(str(out), progress=False), (4, 6), mine)
    assert calls == [2]
    other = dict(mine, fingerprint="b" * 64, checkpoint_step=200)
    with pytest.raises(InputError, match=re.escape(f"--label_all_frames {out} holds the labels of another "
                                                   "propagation (checkpoint_step 100 there, 200 here)")):
        write_all_frames(fake_labeller(calls), srcs, CLASSES, ExportOptions(str(out), progress=False), (4, 6), other)
    os.remove(out / "export.json")
    with pytest.raises(InputError, match="holds labels without export.json"):
        write_all_frames(fake_labeller(calls), srcs, CLASSES, ExportOptions(str(out), progress=False), (4, 6), mine)
    assert calls == [2]            # nothing relabelled by the refused runs


def test_label_fingerprint_follows_weights_directions_and_settings():
    from propagation.export import label_fingerprint
    from propagation.testviews import TestPlan
    from tests.tiny_models import tiny_renderer
    r = tiny_renderer()
    plan = TestPlan(kind="2d", M=torch.ones(2, 3, 4), mixer=torch.eye(2), channel_labels=torch.tensor([0, 1]))
    base = label_fingerprint(r, plan, "guided", (4, 6))
    assert base == label_fingerprint(tiny_renderer(), plan, "guided", (4, 6))      # same weights, same plan
    assert base != label_fingerprint(tiny_renderer(seed=1), plan, "guided", (4, 6))
    assert base != label_fingerprint(r, TestPlan(**{**plan.__dict__, "M": 2 * plan.M}), "guided", (4, 6))
    assert base != label_fingerprint(r, TestPlan(**{**plan.__dict__, "no_abs": True}), "guided", (4, 6))
    assert base != label_fingerprint(r, plan, "nearest", (4, 6))
    assert base != label_fingerprint(r, plan, "guided", (8, 12))
