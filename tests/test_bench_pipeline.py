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
