"""`python main.py --demo` at a tiny size: every stage runs through main.py, the four propagation
runs share one set of clicks, and the comparison table is written with all four columns."""
import json
import os

import pytest

import experiments.demo as demo

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def test_demo_pipeline_runs_and_compares_plain_with_shaped(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(demo.DEMO, "frames", 25)
    monkeypatch.setitem(demo.DEMO, "width", 40)
    monkeypatch.setitem(demo.DEMO, "height", 30)
    monkeypatch.setitem(demo.DEMO, "n_rays", 128)
    monkeypatch.setitem(demo.DEMO, "n_samples", 8)
    monkeypatch.setitem(demo.DEMO, "n_importance", 8)
    root = tmp_path / "demo"
    assert demo.main(["--save_dir", str(root), "--N_iters", "20"]) == 0
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


def test_main_demo_flag_runs_the_demo_script(tmp_path, capsys):
    """`main.py --demo` runs `python -m experiments.demo` (here stopped at once by a bad --N_iters)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "main.py", "--demo", "--save_dir", str(tmp_path / "d"), "--N_iters", "0"],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 2
    assert "error: --N_iters 0: expected at least 1 step" in out.stderr
    assert "Traceback" not in out.stderr
