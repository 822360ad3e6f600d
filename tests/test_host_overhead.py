"""The training loop's host-side bookkeeping with less work per step gives what it gave before: the
TensorBoard scalars of a step's log vector (training/tb_logger.py), the deferred loss check
(FiniteGuard), the one-pass finite check of a checkpoint's tensors (models/checkpoints.py) and the
training mode set only when something changed it (Trainer.train_mode)."""
import math

import numpy as np
import pytest
import torch

from models.checkpoints import non_finite_tensor
from training.tb_logger import LogVector, TBLogger
from training.trainer import FiniteGuard


class _Events:
    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))

    def flush(self):
        pass


def _reference_flush(records):
    """The logger's earlier flush (the slow twin): every scalar cast to float32 on its own."""
    out = []
    for step, vals in records:
        for tag, v in vals.items():
            out.append((tag, float(v.float()) if torch.is_tensor(v) else float(v), step))
    return out


def test_log_vectors_give_the_scalars_of_per_scalar_logging():
    gen = torch.Generator().manual_seed(0)
    keys = ("Train/Loss/total", "Train/Metric/psnr_fine", "Train/Loss/img_loss_fine")
    records = []
    for step in range(23):
        vec = torch.randn(3, dtype=torch.float64, generator=gen) * 10 ** (step % 5)
        logs = LogVector(keys, vec) if step % 4 else {k: vec[i] for i, k in enumerate(keys)}
        if step % 3 == 0:
            logs["Train/extra_float"] = 0.1 * step
            logs["Train/extra_f32"] = torch.tensor(step / 7, dtype=torch.float32)
        records.append((step, logs))
    logger = TBLogger("unused", flush_every=10, enabled=False)
    logger.enabled, logger.writer = True, _Events()
    for step, logs in records:
        logger.scalars(step, logs)
    logger.flush()
    assert logger.writer.calls == _reference_flush(records)


def test_deferred_loss_check_equals_the_immediate_check():
    rng = np.random.default_rng(1)
    for _ in range(30):
        values = rng.standard_normal(25)
        for i in rng.choice(25, size=rng.integers(0, 3), replace=False):
            values[i] = rng.choice([np.nan, np.inf, -np.inf])
        eager, deferred = FiniteGuard(torch.device("cpu")), FiniteGuard(torch.device("cpu"), deferred=True)
        for step, v in enumerate(values):
            eager.record(step, torch.tensor(v, dtype=torch.float32))
            deferred.record(step, torch.tensor(v, dtype=torch.float32))
            if step % 7 == 6:                      # checks in between, as the loop's
                deferred.first_non_finite()
        a, b = eager.first_non_finite(), deferred.first_non_finite()
        assert (a is None) == (b is None)
        if a is not None:
            assert a[0] == b[0] and (a[1] == b[1] or (math.isnan(a[1]) and math.isnan(b[1])))


def _slow_non_finite(named):
    for name, t in named:
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            return name, bad
    return None


@pytest.mark.parametrize("case", range(8))
def test_one_pass_finite_check_equals_the_per_tensor_check(case):
    gen = torch.Generator().manual_seed(case)
    named = [(f"t{i}", torch.randn(int(torch.randint(0, 40, (1,), generator=gen)), generator=gen)
              .to([torch.float32, torch.float64, torch.float16][i % 3])) for i in range(9)]
    if case % 2:
        named[case][1].view(-1)[:1] = [float("nan"), float("inf"), float("-inf")][case % 3] if named[case][1].numel() \
            else 0.0
    if case in (2, 3):
        named.append(("big", torch.full((4,), 3e30)))        # the norm overflows; every value is finite
    assert non_finite_tensor(named) == _slow_non_finite(named)


def test_every_step_runs_in_training_mode_around_periodic_renders(tmp_path, one_thread):
    """Trainer.train_mode walks the modules only after a periodic render (which switches them to
    evaluation mode): every step still sees every module in training mode."""
    from dataclasses import replace

    from tests.test_graphs import make_trainer
    trainer = make_trainer(tmp_path, "cpu", width=8, n_rays=8)
    trainer.opts = replace(trainer.opts, logging=replace(trainer.opts.logging, step_vis_train=2, step_val=3))
    seen, step_fn = [], trainer.train_step

    def checked(step):
        seen.append(all(m.training for m in trainer.renderer.modules()))
        return step_fn(step)
    trainer.train_step = checked
    trainer.test_viz_factor = 4                  # small periodic renders
    trainer.fit(end=6)
    assert seen == [True] * 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
def test_checks_and_log_vectors_on_cuda():
    named = [("a", torch.randn(100, device="cuda")), ("b", torch.randn(7, 7, device="cuda", dtype=torch.float16))]
    assert non_finite_tensor(named) is None
    named[1][1][3, 3] = float("inf")
    assert non_finite_tensor(named) == ("b", 1)
    logger = TBLogger("unused", flush_every=100, enabled=False)
    logger.enabled, logger.writer = True, _Events()
    vec = torch.tensor([1.5, 2.25, float("nan")], dtype=torch.float64, device="cuda")
    logger.scalars(3, LogVector(("a", "b", "c"), vec))
    logger.flush()
    assert logger.writer.calls[:2] == [("a", 1.5, 3), ("b", 2.25, 3)] and math.isnan(logger.writer.calls[2][1])
