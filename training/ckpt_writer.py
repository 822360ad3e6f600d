"""Checkpoint writes off the training loop's critical path.

On CUDA a checkpoint is written by one background thread: the loop copies the checkpoint's
tensors to the host (the next step updates the live ones in place; the copy is a few ms) and goes
on stepping while the thread pickles and writes the file (about 25 of the 39 ms a checkpoint of
the paper's network took on an H200, every 100 steps in the paper's config). At most one write is
in flight: the next save, the end of the loop and an interrupt wait for it, and a write that failed
raises its OSError there, so a failed write still stops the run with "cannot write PATH" (only a
save later). On the CPU the write happens at once, as before.

The file is the same either way (tests/test_ckpt_writer.py): the same dict, written by the same
`models.checkpoints.write_checkpoint` (atomic rename), which adds the checksum of the contents
(models/ckpt_checksum.py): in the background it hashes the host copy, in the writer's thread.
"""
from concurrent.futures import ThreadPoolExecutor

import torch

from models import checkpoints


def host_copy(obj):
    """`obj` (nested dicts / lists / tuples of tensors and plain values) with every tensor copied to
    the host, so later in-place updates of the originals do not reach it."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """write(path, data, done): write `data` to `path`, then call done(path); in the background
    when `background` (see the module doc)."""

    def __init__(self, background):
        self.background = background
        self._pool = None
        self._pending = None

    def write(self, path, data, done):
        if not self.background:
            checkpoints.write_checkpoint(path, data)
            done(path)
            return
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._pending = self._pool.submit(self._write, path, host_copy(data), done)

    @staticmethod
    def _write(path, data, done):
        checkpoints.write_checkpoint(path, data)
        done(path)

    def wait(self):
        """Return once the write in flight (if any) is on disk; raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self):
        """Wait, then stop the thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
