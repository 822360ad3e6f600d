"""Output files written while the device computes: a bounded pool of writer threads and
asynchronous device-to-host copies.

`BackgroundWriter` runs write jobs (PNG encoding releases the GIL) on a few threads while the
caller renders the next view. At most `max_pending` jobs are queued or running: `submit` waits for
the oldest one beyond that, so a fast producer cannot pile up host memory. The first error of a job
is raised in the caller, at the next `submit` or at `close` (the end of a `with` block), so a
failed write still stops the run with its own error (a full disk: utils.rundir.write_failure).
When the body of the `with` block raises, jobs not yet started are cancelled, running ones are
waited for, and the body's error is the one reported. Files themselves are written atomically by
the jobs (utils/image_io.write_png, write_video). `enabled=False` runs every job at once in the
caller (the reference the tests compare with).

`HostCopy` copies device tensors to the host without waiting: on CUDA into pinned buffers with
a non-blocking copy and an event, so the caller queues the next view's kernels at once and a
writer thread waits for the copy (`get`). On the CPU `get` returns the tensors themselves.
"""
import collections
from concurrent.futures import ThreadPoolExecutor

import torch


class BackgroundWriter:
    def __init__(self, workers=4, max_pending=None, enabled=True):
        self.enabled = enabled and workers > 0
        self.max_pending = max_pending if max_pending is not None else 4 * max(1, workers)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="writer") if self.enabled else None
        self._pending = collections.deque()

    def submit(self, fn, *args, **kwargs):
        """Run fn(*args, **kwargs) in the background; returns a Future (done at once when disabled).
        Raises the error of an earlier job that failed."""
        if not self.enabled:
            from concurrent.futures import Future
            f = Future()
            f.set_result(fn(*args, **kwargs))
            return f
        self._reap(block=False)
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        f = self._pool.submit(fn, *args, **kwargs)
        self._pending.append(f)
        return f

    def _reap(self, block):
        while self._pending and (block or self._pending[0].done()):
            self._pending.popleft().result()

    def close(self):
        """Wait for every job; raise the first error."""
        if self._pool is None:
            return
        try:
            self._reap(block=True)
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None

    def abort(self):
        """Cancel the jobs not yet started, wait for the running ones, drop their errors."""
        if self._pool is None:
            return
        for f in self._pending:
            f.cancel()
        self._pool.shutdown(wait=True)
        self._pool = None
        self._pending.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class HostCopy:
    """Host copies of `tensors` (a list), started now, ready after `get()`."""

    def __init__(self, tensors):
        self._event = None
        if any(t.is_cuda for t in tensors):
            self._host = []
            for t in tensors:
                if t.is_cuda:
                    h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                    h.copy_(t, non_blocking=True)
                    self._host.append(h)
                else:
                    self._host.append(t)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = list(tensors)

    def get(self):
        """The host tensors (waits for the copies)."""
        if self._event is not None:
            self._event.synchronize()
        return self._host
