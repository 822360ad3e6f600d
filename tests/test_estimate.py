"""`python -m experiments.reproduce X.yaml --estimate` (experiments/estimate.py) on the tiny plan of
tests/test_reproduce.py: the projection against hand-computed values from rates planted in
metrics files and markers, the shares of two processes, and the calibration runs (real main.py
stages) for the rates no run recorded."""
import json
import os

import pytest

from experiments import reproduce
from experiments.estimate import CALIBRATION_DIR, estimate_markdown, project_plan
from experiments.plan import load_plan
from experiments.stages import MARKER, identity, scene_stages
from tests.test_reproduce import ROOT, write_yaml

SMALL = dict(label_spaces=["semantic"], dims=["2d"])     # 10 stages a scene: plain, jnerf, 2 regimes x 4


def _plant(stage, metrics, wall=None, done=False):
    os.makedirs(stage.save_dir, exist_ok=True)
    with open(os.path.join(stage.save_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    if wall is not None:
        marker = dict(identity(stage), seconds=wall) if done else dict(argv=["an earlier command"], seconds=wall)
        with open(os.path.join(stage.save_dir, MARKER), "w") as f:
            json.dump(marker, f)
    if done:
        for path in stage.outputs:
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "w").close()


def test_projection_from_recorded_rates_by_hand(tmp_path):
    out = tmp_path / "out"
    plan = load_plan(write_yaml(tmp_path / "t.yaml", **SMALL), out_dir=str(out))
    config = out / "living_room" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(open(os.path.join(ROOT, "configs", "synthetic_room.yaml")).read())   # a prepared scene
    living = {s.save_dir.split(os.sep + "living_room" + os.sep, 1)[1]: s
              for s in scene_stages(plan, plan.scenes[0], str(config))}
    bedroom = {s.save_dir.split(os.sep + "bedroom" + os.sep, 1)[1]: s
               for s in scene_stages(plan, plan.scenes[1], str(out / "bedroom" / "config.yaml"))}
    assert len(living) == len(bedroom) == 10
    p2d = os.path.join("semantic", "1_click", "propagate_2d_plain")
    dense = os.path.join("semantic", "dense", "propagate_2d_jnerf")
    joint = os.path.join("semantic", "1_click", "semantic_joint")
    tune = os.path.join("semantic", "dense", "semantic_finetune")
    # plain, living room: finished (its marker: 6 s in all) -> 0.1 s/step, 6 - 30 x 0.1 = 3 s fixed
    # (training test views, here 1 as with --training_mode, never stand for propagation's)
    _plant(living["plain"], dict(steps=30, seconds=4.0, steady_seconds_per_step=0.1, test_views=1), 6.0, done=True)
    # plain, bedroom: an earlier 10-step run, no steady rate, no marker -> 0.3 s/step, 3 - 10 x 0.3 = 0 fixed
    _plant(bedroom["plain"], dict(steps=10, seconds=3.0, seconds_per_step=0.3, test_views=1))
    # shaping only in the bedroom (its marker is another command's: the seconds still count): 0.2, 1.5 fixed
    _plant(bedroom["jnerf"], dict(steps=5, seconds=1.5, steady_seconds_per_step=0.2, test_views=7), 2.5)
    _plant(living[joint], dict(steps=30, seconds=2.0, steady_seconds_per_step=0.05, test_views=5))    # 0.5 fixed
    _plant(living[tune], dict(steps=10, seconds=0.4, steady_seconds_per_step=0.04, test_views=5))      # 0 fixed
    # --mean_gradient: (2 + 0.5) / 5 = 0.5 s/view, 3.2 - 2.5 = 0.7 s fixed
    _plant(living[p2d], dict(test_views=5, timings=dict(directions=0.5, test_views=2.0, writing=0.5, total=3.2)))
    # the bedroom's views (7) come from its own propagation record: (2.8 + 0.7) / 7 = 0.5 s/view, 0.5 s fixed
    _plant(bedroom[p2d.replace("plain", "jnerf")],
           dict(test_views=7, timings=dict(directions=0.3, test_views=2.8, writing=0.7, total=4.0)))
    # the dense regime: 1.25 / 5 = 0.25 s/view; aggregator 0.05 s/step; 6 - 1.25 - 40 x 0.05 = 2.75 s fixed
    _plant(living[dense], dict(test_views=5, aggregator=dict(steps=40, seconds=2.2, steady_seconds_per_step=0.05),
                               timings=dict(directions=1.0, aggregator=2.5, test_views=1.0, writing=0.25, total=5.0)),
           6.0)

    est = project_plan(plan, processes=2)
    assert est["calibrated"] == [] and not (out / CALIBRATION_DIR).exists()
    rows = {(r.scene, r.title.split(": ", 1)[1]): r for r in est["rows"]}
    by_hand = {
        "plain NeRF": (6.0, 9.0),                               # 3 + 30 x 0.1 | 0 + 30 x 0.3
        "Jacobi shaping (JacobiNeRF)": (2.5, 2.5),              # 1.5 + 5 x 0.2 (the bedroom's rate, both)
        "semantic, 1 click: plain NeRF, 2D propagation": (3.2, 4.2),        # 0.7 + 5 | 7 views x 0.5
        "semantic, 1 click: JacobiNeRF, 2D propagation": (3.2, 4.0),       # the bedroom's own: 0.5 + 7 x 0.5
        "semantic, 1 click: Semantic-NeRF (joint)": (2.0, 2.0),             # 0.5 + 30 x 0.05
        "semantic, 1 click: Semantic-NeRF (fine-tune)": (0.4, 0.4),         # 10 x 0.04
        "semantic, dense: plain NeRF, 2D propagation": (5.0, 5.5),          # 2.75 + 20 x 0.05 + 5 | 7 x 0.25
        "semantic, dense: JacobiNeRF, 2D propagation": (5.0, 5.5),
        "semantic, dense: Semantic-NeRF (joint)": (2.0, 2.0),
        "semantic, dense: Semantic-NeRF (fine-tune)": (0.4, 0.4),
    }
    assert len(rows) == 20
    for stage, seconds in by_hand.items():
        for scene, s in zip(("living room", "bedroom"), seconds):
            assert rows[scene, stage].seconds == pytest.approx(s, abs=1e-9), (scene, stage)
    r = rows["bedroom", "semantic, dense: plain NeRF, 2D propagation"]
    assert (r.units, r.rate, r.fixed, r.kind) == (7, pytest.approx(0.25), pytest.approx(3.75), "propagate_2d")
    assert rows["living room", "plain NeRF"].source == "recorded: " + os.path.join("living_room", "plain", "metrics.json")
    assert rows["living room", "Jacobi shaping (JacobiNeRF)"].source.startswith("recorded (same kind): bedroom")
    assert rows["living room", "plain NeRF"].done and sum(r.done for r in est["rows"]) == 1
    living_total, bedroom_total = sum(v[0] for v in by_hand.values()), sum(v[1] for v in by_hand.values())
    assert (living_total, bedroom_total) == pytest.approx((29.7, 35.5))
    assert est["scenes"]["living room"] == pytest.approx(dict(seconds=29.7, left=29.7 - 6.0))
    assert [(p["scenes"], p["seconds"]) for p in est["processes"]] == [(["living room"], pytest.approx(29.7)),
                                                                      (["bedroom"], pytest.approx(35.5))]
    assert est["wall_s"] == pytest.approx(35.5)
    assert project_plan(plan, processes=1)["wall_s"] == pytest.approx(65.2)
    text = estimate_markdown(plan, est)
    assert ("| living room: plain NeRF (done) | plain | 30 | 0.1 | 3.0 | 6.0 s | recorded: "
            + os.path.join("living_room", "plain", "metrics.json") + " |") in text
    assert "| bedroom: semantic, dense: plain NeRF, 2D propagation | propagate_2d | 7 views | 0.25 /view | 3.8 | 5.5 s |" \
        in text
    assert "| 1 | bedroom | 35.5 s | 35.5 s |" in text


@pytest.mark.slow
def test_calibration_runs_what_no_run_recorded_and_is_reused(tmp_path, one_thread):
    path = write_yaml(tmp_path / "t.yaml", **SMALL)
    out, data = str(tmp_path / "out"), str(tmp_path / "data")
    plan = load_plan(path, out_dir=out)
    bedroom_plain = scene_stages(plan, plan.scenes[1], os.path.join(out, "bedroom", "config.yaml"))[0]
    _plant(bedroom_plain, dict(steps=30, seconds=1.2, steady_seconds_per_step=0.04, test_views=2))
    est = reproduce.estimate(path, out_dir=out, data_root=data, calibration_steps=6)
    cal = os.path.join(out, CALIBRATION_DIR, "living_room")
    # every missing rate, and the plain NeRF the propagation stages read, calibrated on the first scene
    assert est["calibrated"] == ["living room: plain NeRF", "living room: Jacobi shaping (JacobiNeRF)",
                                 "living room: semantic, 1 click: plain NeRF, 2D propagation",
                                 "living room: semantic, 1 click: Semantic-NeRF (joint)",
                                 "living room: semantic, 1 click: Semantic-NeRF (fine-tune)",
                                 "living room: semantic, dense: plain NeRF, 2D propagation"]
    for r in est["rows"]:
        if r.title.endswith("plain NeRF") and r.kind == "plain":
            assert r.source.startswith("recorded")
            continue
        assert r.source.startswith("calibration: " + os.path.join(CALIBRATION_DIR, "living_room")), r.title
        record = os.path.join(out, r.source.split(": ", 1)[1].split(";")[0])
        m = json.load(open(record))
        marker = json.load(open(os.path.join(os.path.dirname(record), MARKER)))
        wall, command = marker["seconds"], marker["command"]
        if r.unit == "step":                                    # fixed = the run's time less its steps
            steps = int(command[command.index("--N_iters") + 1])
            assert steps == min(6, plan.stages[r.kind]["N_iters"])     # jnerf: 5, the plan's own length
            assert r.rate == m["steady_seconds_per_step"]
            assert r.fixed == pytest.approx(max(0.0, wall - m["steps"] * r.rate))
            assert r.seconds == pytest.approx(r.fixed + r.units * r.rate)
        else:
            if "dense" in r.title:
                last = len(command) - 1 - command[::-1].index("--agg_steps")
                assert m["aggregator"]["steps"] == 6 and command[last + 1] == "6"     # calibrated with 6 steps,
                assert r.fixed >= 20 * m["aggregator"]["steady_seconds_per_step"]     # projected with the plan's 20
            else:
                assert "aggregator" not in m
            assert r.units == m["test_views"] and r.rate > 0
            assert r.seconds == pytest.approx(r.fixed + r.units * r.rate)
    assert os.path.isfile(os.path.join(out, "estimate.md")) and os.path.isdir(cal)
    again = reproduce.estimate(path, out_dir=out, data_root=data, calibration_steps=6)
    assert again["calibrated"] == []
    assert [r.seconds for r in again["rows"]] == [r.seconds for r in est["rows"]]


def test_estimate_flags_and_torchrun_are_refused_with_one_line(tmp_path, monkeypatch, capsys):
    path = write_yaml(tmp_path / "t.yaml", **SMALL)
    assert reproduce.main([path, "--processes", "2"]) == 2
    assert "--processes and --calibration_steps go with --estimate" in capsys.readouterr().err
    assert reproduce.main([path, "--estimate", "--calibration_steps", "1"]) == 2
    assert "--calibration_steps 1: expected at least 2" in capsys.readouterr().err
    for k, v in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0").items():
        monkeypatch.setenv(k, v)
    assert reproduce.main([path, "--estimate", "--out_dir", str(tmp_path / "out")]) == 2
    assert "error: --estimate runs in one process" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
