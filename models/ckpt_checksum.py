"""A checkpoint's checksum: sha256 over its contents, stored beside them and checked at load.

The digest covers every tensor (its dtype, shape and bytes) and every plain value (ints, floats,
strings, None: their repr), each preceded by its path in the nested dicts and lists, walked in a
stable order (dict keys sorted by type and text), so it does not depend on insertion order. It is
stored as the top-level string `jnerf_checksum` ("sha256:<hex>"), a key the original ignores.
A checkpoint without it (older ones, the original's) loads unchecked.

Cost: sha256 runs at about 1.5 GB/s a core with the CPU's SHA instructions; the paper's two
8 x 256 networks with their Adam moments are 14 MB, so the large tensors are hashed on a few
threads (hashlib releases the GIL) and the digest combines the per-tensor digests. The background
writer on CUDA (training/ckpt_writer.py) hashes its host copy in its own thread, off the training
loop.
"""
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch

CHECKSUM_KEY = "jnerf_checksum"
ALGORITHM = "sha256"
PARALLEL_BYTES = 1 << 18        # tensors from this size on are hashed on the pool
_pool = None
_PLAIN = (int, float, str, bool, type(None))     # a list of these is one leaf (random states: 625 ints)


def _leaves(obj, path):
    if torch.is_tensor(obj):
        yield path, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            yield from _leaves(obj[k], f"{path}/{type(k).__name__}:{k}")
    elif isinstance(obj, (list, tuple)) and not all(type(v) in _PLAIN for v in obj):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}/{i}")
    else:
        yield path, obj


def _tensor_digest(t):
    t = t.detach()
    t = (t.cpu() if t.device.type != "cpu" else t).contiguous()
    h = hashlib.new(ALGORITHM, f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.digest()


def _map(fn, items):
    global _pool
    if len(items) < 2:
        return [fn(x) for x in items]
    if _pool is None:
        _pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="checksum")
    return list(_pool.map(fn, items))


def checksum(data):
    """'sha256:<hex>' of a checkpoint dict's contents (its own checksum entry left out): the hash of
    every leaf's path with its tensor's digest or its plain value's repr."""
    leaves = list(_leaves({k: v for k, v in data.items() if k != CHECKSUM_KEY}, ""))
    big = [v for _, v in leaves if torch.is_tensor(v) and v.numel() * v.element_size() >= PARALLEL_BYTES]
    digests = dict(zip(map(id, big), _map(_tensor_digest, big)))
    h = hashlib.new(ALGORITHM)
    for path, value in leaves:
        h.update(path.encode())
        if torch.is_tensor(value):
            h.update(digests.get(id(value)) or _tensor_digest(value))
        else:
            h.update(f"|{value!r}|".encode())
    return f"{ALGORITHM}:{h.hexdigest()}"


def with_checksum(data):
    """A shallow copy of `data` with its checksum entry (the tensors are not copied)."""
    out = {k: v for k, v in data.items() if k != CHECKSUM_KEY}
    out[CHECKSUM_KEY] = checksum(out)
    return out


def checksum_problem(data):
    """None when `data` holds no checksum or a matching one; else what is wrong, in words."""
    stored = data.get(CHECKSUM_KEY)
    if stored is None:
        return None
    if not isinstance(stored, str) or not stored.startswith(f"{ALGORITHM}:"):
        return f"its checksum entry {CHECKSUM_KEY} is not a {ALGORITHM} digest ({str(stored)[:40]!r})"
    if checksum(data) != stored:
        return "its contents do not match the checksum written with them"
    return None
