"""Decoded frames and descriptors, read in parallel once and cached as memory-mapped .npy files.

A loader asks for the arrays of a list of files (`cached_stack(name, paths, decode)`): the PNGs of a
split, the descriptor grids of the training frames. The first run decodes them with a thread pool
(PNG decoding and torch.load release the GIL), stacks them and writes the stack atomically as one
.npy; later runs memory-map that file and decode nothing. The arrays are what `decode` returned,
so a loader's checks and conversions run on them unchanged and a cached scene equals the uncached
one exactly (tests/test_frame_cache.py).

Validity: the cache file's name holds a SHA-256 of the dataset's absolute path, the `extra` values
the caller passes (anything else the arrays depend on: sizes, dtypes, the descriptor kind) and the
relative path, size and modification time (ns) of every source file, in order. Change, add,
remove, touch or reorder a source file, move the dataset, or copy another dataset's cache in, and
the name no longer matches: the arrays are decoded again and the stale file of that name is
replaced (never read). A file that does not load as the expected stack (truncated, foreign) is
rebuilt too.

Where: `<JNERF_CACHE_DIR>/<dataset name>-<hash of its path>/`, JNERF_CACHE_DIR defaulting to
`$XDG_CACHE_HOME/jnerf` (else `~/.cache/jnerf`); nothing is written into the dataset folder (a run
never writes into its input). `JNERF_CACHE_DIR=off` turns the cache off. A folder that cannot be
written (read-only, full disk) is not an error: the run goes on with the decoded arrays and says
so once. Arrays of different shapes or dtypes (a frame of another size) are not cached: the
loader's own check then names the odd file.
"""
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from utils.atomic import atomic_path

ENV = "JNERF_CACHE_DIR"
VERSION = 1
_warned = False


def cache_root():
    """The folder of all caches, or None when JNERF_CACHE_DIR is 'off' (or '0', 'none', '')."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "none", "false") else value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jnerf")


def dataset_cache_dir(root):
    """The cache folder of the dataset at `root` (None: caching off)."""
    base = cache_root()
    if base is None:
        return None
    path = os.path.abspath(root)
    tag = hashlib.sha256(path.encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(os.path.normpath(path)))
    return os.path.join(base, f"{name or 'dataset'}-{tag}")


def source_key(root, paths, extra=()):
    """SHA-256 over the dataset path, `extra` and (relative path, size, mtime_ns) of each source
    file; None when a file cannot be stat'ed (the loader's own read then reports it)."""
    root = os.path.abspath(root)
    entries = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            return None
        entries.append((os.path.relpath(os.path.abspath(p), root), st.st_size, st.st_mtime_ns))
    blob = json.dumps([VERSION, root, [str(e) for e in extra], entries])
    return hashlib.sha256(blob.encode()).hexdigest()


def _note(message):
    global _warned
    if not _warned:
        print(f"[jnerf] frame cache: {message}; going on without it", file=sys.stderr, flush=True)
        _warned = True


def decode_all(paths, decode, workers=8):
    """[decode(p) for p in paths], on a thread pool."""
    if workers <= 1 or len(paths) <= 1:
        return [decode(p) for p in paths]
    with ThreadPoolExecutor(min(workers, len(paths))) as pool:
        return list(pool.map(decode, paths))


def _stackable(arrays):
    first = arrays[0]
    return all(isinstance(a, np.ndarray) and a.shape == first.shape and a.dtype == first.dtype for a in arrays)


def _load(path, count):
    """The cached stack at `path` (memory-mapped, copy-on-write: writable, never written back), or
    None when it is missing or not a stack of `count` arrays."""
    if not os.path.isfile(path):
        return None
    try:
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(arr, np.ndarray) or arr.ndim < 1 or arr.shape[0] != count or arr.dtype == object:
        return None
    return arr


def _write(folder, name, key, stack):
    """Write `stack` as <folder>/<name>-<key>.npy atomically and remove older files of `name`."""
    path = os.path.join(folder, f"{name}-{key}.npy")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, stack, allow_pickle=False)
    for other in os.listdir(folder):
        if other.startswith(f"{name}-") and other.endswith(".npy") and other != os.path.basename(path):
            try:
                os.remove(os.path.join(folder, other))
            except OSError:
                pass
    return path


def cached_stack(name, paths, root, decode, workers=8, extra=()):
    """The arrays decode(p) of `paths` (the files of dataset `root`), in order: an array [N, ...]
    (memory-mapped from the cache, or freshly stacked and written to it) when they share one shape
    and dtype, else the list of decoded arrays (not cached). `name` names the cache entry (e.g.
    'rgb-train'); `extra`: values the arrays depend on besides the files (part of the key)."""
    paths = list(paths)
    folder = dataset_cache_dir(root) if paths else None
    key = source_key(root, paths, extra) if folder is not None else None
    if key is not None:
        cached = _load(os.path.join(folder, f"{name}-{key}.npy"), len(paths))
        if cached is not None:
            return cached
    arrays = decode_all(paths, decode, workers)
    if not arrays or not _stackable(arrays):
        return arrays
    stack = np.stack(arrays)
    if key is not None:
        try:
            _write(folder, name, key, stack)
        except OSError as exc:
            _note(f"cannot write {folder} ({exc.strerror or exc})")
    return stack
