"""bench/pipeline.py's projection to full length (the arithmetic only; the stages need a GPU)."""
import pytest

from bench.pipeline import aggregator_rate, project, training_rate


def test_project_adds_only_the_missing_steps_at_the_steady_rate():
    # 2000 steps in 6.5 s of which ~5 s fixed: 200k steps cost 6.5 + 198000 x 0.75 ms, not 100 x 6.5 s
    assert project(6.5, 2000, 200000, 0.75e-3) == pytest.approx(6.5 + 198000 * 0.75e-3)
    assert project(10.0, 500, 500, 1.0) == 10.0


def test_training_rate_prefers_the_steady_rate():
    assert training_rate(dict(seconds_per_step=0.02, steady_seconds_per_step=0.01)) == 0.01
    assert training_rate(dict(seconds_per_step=0.02)) == 0.02
    assert training_rate(dict(seconds_per_step=0.02, steady_seconds_per_step=None)) == 0.02


def test_aggregator_rate_from_metrics():
    m = dict(aggregator=dict(steps=2000, seconds=6.5, steady_seconds_per_step=6e-4), timings=dict(aggregator=7.0))
    assert aggregator_rate(m, 20000) == (2000, 6e-4)
    old = dict(aggregator=dict(steps=2000, seconds=6.5), timings=dict(aggregator=7.0))
    assert aggregator_rate(old, 20000) == (2000, 7.0 / 2000)
    assert aggregator_rate(dict(timings=dict(test_views=3.0)), 20000) is None      # sparse run: no aggregator


def test_issue_table_has_every_row_and_reads_the_logs(tmp_path):
    from bench.pipeline import ISSUE_ROWS, issue_table, startup_seconds
    log = tmp_path / "plain.log"
    log.write_text("[jnerf] mode: train\n[jnerf] start-up: 4.2 s since the process started (scene 1.0 s, ...)\n")
    assert startup_seconds(str(log)) == 4.2 and startup_seconds(str(tmp_path / "none.log")) is None
    rows = dict(plain=dict(wall=60.0, rate="6.10 ms/step", startup=4.2, metrics=dict(render_seconds=9.0, test_views=180)),
                shape=dict(wall=20.0, startup=6.5), p3d=None)
    rows.pop("p3d")
    rows["2d_dense"] = dict(wall=50.0, projected=80.0, startup=3.0)
    table = issue_table(rows, None)
    lines = table.splitlines()
    assert len(lines) == 2 + len(ISSUE_ROWS)
    assert "| 6.10 ms/step |" in table and "50 ms (9.0 s" in table and "- / 80.0 s" in table
    assert "6.5 s (shape; plain 4.2, 2d_dense 3.0)" in table and "not run" in table


def test_long_run_windows_from_checkpoint_times(tmp_path):
    import os
    from bench.long_run import checkpoint_times, window_rates
    (tmp_path / "checkpoints").mkdir()
    for step in range(0, 1001, 100):
        path = tmp_path / "checkpoints" / f"{step:06d}.ckpt"
        path.write_bytes(b"")
        os.utime(path, (1000.0 + step * 0.006, 1000.0 + step * 0.006 + (0.1 if step >= 700 else 0.0)))
    times = checkpoint_times(str(tmp_path))
    assert [s for s, _ in times] == list(range(0, 1001, 100))
    rates = window_rates(times, 500)
    assert [(s, e) for s, e, _ in rates] == [(0, 500), (500, 1000)]
    assert rates[0][2] == pytest.approx(0.006) and rates[1][2] == pytest.approx(0.006 + 0.1 / 500)
