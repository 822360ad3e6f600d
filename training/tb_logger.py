"""TensorBoard logging that does not stall the GPU every step.

Scalars are recorded as device tensors at the configured interval (`logging.step_log_tfb`) and
written in one host transfer every `flush_every` records, each with its own step number, so the
event files are what per-step logging would give without a device sync per step. A step's logs
that come as one device vector (`LogVector`, the CUDA-graph step's) are kept as that vector: a
flush concatenates the records (one kernel), casts them to float32 (one kernel; the values
TensorBoard stores, as before) and reads them in one transfer, where a cast per scalar used to
add several kernels a step.
"""
import os

import torch


class LogVector(dict):
    """{tag: 0-d tensor} whose first `len(keys)` entries are the elements of one 1-D tensor `vector`
    (in order); TBLogger records the vector instead of each scalar. Entries added later are logged
    one by one."""

    def __init__(self, keys, vector):
        super().__init__((k, vector[i]) for i, k in enumerate(keys))
        self.keys_, self.vector = tuple(keys), vector


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
            vector = getattr(values, "vector", None)
            keys = values.keys_ if vector is not None and all(k in values for k in values.keys_) else ()
            rest = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in values.items() if k not in keys}
            self._pending.append((step, keys, vector.detach() if keys else None, rest))
            if len(self._pending) >= self.flush_every:
                self.flush()

    def flush(self):
        if not self._pending:
            return
        flat, parts, n = [], [], 0            # flat: (step, tag, index into the transfer, or a float)
        for step, keys, vector, rest in self._pending:
            if keys:
                parts.append(vector.reshape(-1))
                flat.extend((step, tag, n + i) for i, tag in enumerate(keys))
                n += vector.numel()
            for tag, v in rest.items():
                if torch.is_tensor(v):
                    parts.append(v.reshape(1))
                    flat.append((step, tag, n))
                    n += 1
                else:
                    flat.append((step, tag, float(v)))
        host = []
        if parts:  # one transfer for everything recorded since the last flush
            dev = parts[0].device
            host = torch.cat([t.to(dev) for t in parts]).float().cpu().tolist()
        for step, tag, v in flat:
            self.writer.add_scalar(tag, host[v] if isinstance(v, int) else v, step)
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
