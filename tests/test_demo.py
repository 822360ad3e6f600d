"""`python main.py --demo` at a tiny size: every stage runs through main.py, the four propagation
runs share one set of clicks, and the comparison table is written with all four columns."""
import json
import os

import pytest

import main as jnerf_main
import training.demo as demo
from tests.test_propagation_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_pipeline_runs_and_compares_plain_with_shaped(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(demo.DEMO, "frames", 25)
    monkeypatch.setitem(demo.DEMO, "width", 40)
    monkeypatch.setitem(demo.DEMO, "height", 30)
    monkeypatch.setitem(demo.DEMO, "n_rays", 128)
    monkeypatch.setitem(demo.DEMO, "n_samples", 8)
    monkeypatch.setitem(demo.DEMO, "n_importance", 8)
    root = tmp_path / "demo"
    assert jnerf_main.main(["--demo", "--save_dir", str(root), "--N_iters", "20"]) == 0
    runs = {}
    for name in ("propagate_2d_plain", "propagate_2d_jnerf", "propagate_3d_plain", "propagate_3d_jnerf"):
        with open(root / name / "metrics.json") as f:
            runs[name] = json.load(f)
    # one set of clicks for all four runs
    assert len({tuple(m["given_classes"]) for m in runs.values()}) == 1
    assert len({m["seed_dir"] for m in runs.values()}) == 1
    assert runs["propagate_2d_jnerf"]["checkpoint"].endswith(os.path.join("jnerf", "checkpoints", "000020.ckpt"))
    assert runs["propagate_3d_plain"]["checkpoint"].endswith(os.path.join("plain", "checkpoints", "000020.ckpt"))
    table = (root / "comparison.md").read_text()
    for column in ("2D plain NeRF", "2D JacobiNeRF", "3D plain NeRF", "3D JacobiNeRF"):
        assert column in table
    miou_row = next(line for line in table.splitlines() if line.startswith("| mIoU |"))
    values = [float(v) for v in miou_row.strip("|").split("|")[1:]]
    expected = [100 * runs[n]["miou"] for n in ("propagate_2d_plain", "propagate_2d_jnerf", "propagate_3d_plain",
                                                "propagate_3d_jnerf")]
    assert values == pytest.approx(expected, abs=0.006)
    assert "2D JacobiNeRF" in capsys.readouterr().out
