"""TensorBoard logging that does not stall the GPU every step.

Scalars are recorded as device tensors at the configured interval (`logging.step_log_tfb`) and
written in one host transfer every `flush_every` records, each with its own step number, so the
event files are what per-step logging would give without a device sync per step.
"""
import os

import torch


class TBLogger:
    def __init__(self, log_dir, flush_every=50, enabled=True):
        self.enabled = enabled
        self.writer = None
        if enabled:
            # imported here: tensorboard is heavy and needed only when logging is on (log=False runs skip it)
            from torch.utils.tensorboard import SummaryWriter
            os.makedirs(log_dir, exist_ok=True)
            self.writer = SummaryWriter(log_dir)
        self.flush_every = flush_every
        self._pending = []   # (step, {tag: 0-d tensor or float})

    def scalars(self, step, values):
        if self.enabled:
            self._pending.append((step, {k: (v.detach() if torch.is_tensor(v) else v) for k, v in values.items()}))
            if len(self._pending) >= self.flush_every:
                self.flush()

    def flush(self):
        if not self._pending:
            return
        flat = [(step, tag, v) for step, vals in self._pending for tag, v in vals.items()]
        tensors = [v for _, _, v in flat if torch.is_tensor(v)]
        host = iter(())
        if tensors:  # one transfer for everything recorded since the last flush
            dev = tensors[0].device
            host = iter(torch.stack([t.float().reshape(()).to(dev) for t in tensors]).cpu().tolist())
        for step, tag, v in flat:
            self.writer.add_scalar(tag, next(host) if torch.is_tensor(v) else float(v), step)
        self._pending.clear()
        self.writer.flush()

    def histogram(self, step, tag, values):
        if self.enabled:
            self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def images(self, step, tag, array_nhwc):
        if self.enabled:
            self.writer.add_images(tag, array_nhwc, step, dataformats="NHWC")

    def close(self):
        if self.enabled:
            self.flush()
            self.writer.close()
