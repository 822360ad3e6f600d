"""Background checkpoint writes (training/ckpt_writer.py; on by default on CUDA only) against the
synchronous write: the same checkpoints, a failed write still stops the run naming the file, and
nothing half-written under a checkpoint's name."""
import errno
import os

import pytest
import torch

from models import checkpoints
from models.checkpoints import load_checkpoint
from tests.test_graphs import make_trainer, run_steps
from training.ckpt_writer import CheckpointWriter, host_copy


def _background(trainer):
    trainer.writer = CheckpointWriter(background=True)
    return trainer


def _equal(a, b):
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_host_copy_is_detached_from_later_updates():
    live = {"w": torch.ones(3), "groups": [{"lr": 0.1, "params": [0, 1]}], "step": torch.tensor(2.0)}
    snap = host_copy(live)
    live["w"].add_(1.0)
    live["step"].add_(1.0)
    assert snap["w"].tolist() == [1.0, 1.0, 1.0] and float(snap["step"]) == 2.0
    assert snap["groups"] == [{"lr": 0.1, "params": [0, 1]}]


def test_background_checkpoints_equal_synchronous_ones(tmp_path, one_thread):
    """Same steps, one trainer writing in the background, one at once: every checkpoint holds the
    same weights, optimizer state and resume state, although the background one was written
    while later steps changed the live tensors."""
    sync = make_trainer(tmp_path / "a", "cpu", fused_adam=False)
    back = _background(make_trainer(tmp_path / "b", "cpu", fused_adam=False))
    for tr in (sync, back):
        for step in range(5):
            run_steps(tr, [step])
            if step % 2 == 0:
                tr.save(step)
        tr.writer.wait()
    for step in (0, 2, 4):
        a = load_checkpoint(checkpoints.checkpoint_path(str(tmp_path / "a"), step))
        b = load_checkpoint(checkpoints.checkpoint_path(str(tmp_path / "b"), step))
        for key in ("global_step", "network_coarse_state_dict", "network_fine_state_dict", "optimizer_state_dict"):
            assert _equal(a[key], b[key]), (step, key)
        assert _equal(a["jnerf_state"]["batcher"], b["jnerf_state"]["batcher"])
    assert back.last_good == checkpoints.checkpoint_path(str(tmp_path / "b"), 4)


def test_a_failed_background_write_stops_the_run_at_the_next_save(tmp_path, one_thread, monkeypatch):
    """The write of step 0 fails (disk full): the save of step 2 raises that OSError (naming the
    file), no file stands under the failed checkpoint's name, and last_good stays unset."""
    tr = _background(make_trainer(tmp_path, "cpu"))
    real = checkpoints.write_checkpoint

    def full_disk(path, data):
        if path.endswith("000000.ckpt"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, data)

    monkeypatch.setattr(checkpoints, "write_checkpoint", full_disk)
    run_steps(tr, [0])
    tr.save(0)                                      # queued; fails in the background
    run_steps(tr, [1, 2])
    with pytest.raises(OSError) as err:
        tr.save(2)
    assert err.value.errno == errno.ENOSPC and err.value.filename.endswith("000000.ckpt")
    assert not os.path.exists(checkpoints.checkpoint_path(str(tmp_path), 0))
    assert tr.last_good is None


def test_fit_waits_for_the_last_write(tmp_path, one_thread, monkeypatch):
    """fit() returns only once its last checkpoint is on disk (a slow write is still waited for),
    and a failure of that last write is raised by fit()."""
    import time
    tr = _background(make_trainer(tmp_path / "ok", "cpu"))
    tr.n_iters = 3
    real = checkpoints.write_checkpoint

    def slow(path, data):
        time.sleep(0.3)
        return real(path, data)

    monkeypatch.setattr(checkpoints, "write_checkpoint", slow)
    tr.fit()
    assert os.path.isfile(checkpoints.checkpoint_path(str(tmp_path / "ok"), 3))

    def failing(path, data):
        raise OSError(errno.EFBIG, "File too large", path)

    monkeypatch.setattr(checkpoints, "write_checkpoint", failing)
    bad = _background(make_trainer(tmp_path / "bad", "cpu"))
    bad.n_iters = 2
    with pytest.raises(OSError) as err:
        bad.fit()
    assert err.value.errno == errno.EFBIG
    folder = tmp_path / "bad" / "checkpoints"
    assert not folder.is_dir() or not any(folder.glob("*.ckpt"))
