"""Checkpoints in the original's format, written atomically.

A checkpoint is `torch.save` of a dict with the original's keys
    global_step, network_coarse_state_dict, network_fine_state_dict, optimizer_state_dict
(parameter names as in models/nerf.py; the optimizer is one Adam over the coarse then the fine
parameters, as the original), so checkpoints move between the two code bases in both
directions. This project adds one key, `jnerf_state` (adaptive threshold, random states,
ray-sampler position), which the original ignores; a Semantic-NeRF baseline run adds its heads
under `semantic_state_dict` (models/semantic.py; `load_semantic_heads`), so its checkpoint is
still a plain checkpoint to every other mode.

Reliability (docs/RELIABILITY.md): a save is refused when a weight or an optimizer-state tensor is
non-finite (`non_finite_tensor`, checked by the trainer before every save), a load is refused
naming such a tensor, a failed write raises the OSError of the file system (disk full, file too
large) naming the checkpoint, and `prune_checkpoints` implements --keep_ckpts. Every write adds a
checksum of the contents (models/ckpt_checksum.py), checked at load: a damaged file is refused by
name, as are empty, truncated and foreign files; a checkpoint without one (older ones, the
original's) loads as before.
"""
import io
import os
import re

import torch

from models.ckpt_checksum import checksum_problem, with_checksum
from models.semantic import SEMANTIC_KEY, load_semantic_state
from utils.atomic import atomic_path
from utils.errors import InputError

REQUIRED_KEYS = ("global_step", "network_coarse_state_dict", "network_fine_state_dict")
EXTRA_KEY = "jnerf_state"


def checkpoint_path(save_dir, step):
    return os.path.join(save_dir, "checkpoints", f"{step:06d}.ckpt")


def checkpoint_data(step, renderer, optimizer=None, extra=None, entries=None):
    """The checkpoint dict (its tensors are the live ones: copy them before the next step if the
    write is deferred). entries: further top-level keys, e.g. {SEMANTIC_KEY: the heads' state} of a
    Semantic-NeRF run (models.semantic.semantic_state)."""
    data = {
        "global_step": int(step),
        "network_coarse_state_dict": renderer.coarse.state_dict(),
        "network_fine_state_dict": renderer.fine.state_dict(),
        "optimizer_state_dict": optimizer.state_dict() if optimizer is not None else {},
    }
    if extra:
        data[EXTRA_KEY] = extra
    data.update(entries or {})
    return data


def write_checkpoint(path, data):
    """torch.save `data` with its checksum to a temporary file and rename it, so a crash never
    leaves a truncated file under the final name; returns path. The tensors are hashed where they
    are: the caller passes host copies when the write is deferred (training/ckpt_writer.py)."""
    data = with_checksum(data)
    with atomic_path(path) as tmp:
        try:
            torch.save(data, tmp)
        except RuntimeError:
            # torch's file writer reports a full disk as "unexpected pos ..."; writing the same bytes
            # from Python raises the file system's own error (ENOSPC, EFBIG), or succeeds
            buf = io.BytesIO()
            torch.save(data, buf)
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
    return path


def check_checkpoint_path(path, flag="--ckpt_path"):
    """InputError unless `path` is an existing file (a folder is named as such)."""
    if path and os.path.isdir(path):
        inside = latest_checkpoint(path) or latest_checkpoint(os.path.dirname(os.path.normpath(path)))
        hint = f"; the latest checkpoint there is {inside}" if inside else ""
        raise InputError(f"{flag}: {path} is a folder; expected a .ckpt file such as "
                         f"<save_dir>/checkpoints/010000.ckpt{hint}")
    if not path or not os.path.isfile(path):
        raise InputError(f"{flag}: {path!r} does not exist (expected a .ckpt file written by "
                         "training, e.g. <save_dir>/checkpoints/010000.ckpt)")


def first_line(exc, limit=200):
    """The first line of an exception's message (its class name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0][:limit]}" if lines else exc.__class__.__name__


ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def _unreadable(path, exc, flag):
    """The InputError of a file torch.load could not read: empty, truncated or not a checkpoint."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if size == 0:
        return InputError(f"{flag}: {path} is empty (0 bytes); expected a checkpoint written by training "
                          "(a copy or a save that did not finish?)")
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC):
        return InputError(f"{flag}: {path} is truncated or damaged ({size} bytes; {first_line(exc)}); "
                          "copy it again or use an earlier checkpoint")
    return InputError(f"{flag}: {path} is not a readable checkpoint: not a PyTorch file (it starts with {head!r})")


def load_checkpoint(path, map_location="cpu", flag="--ckpt_path"):
    """Read and validate a checkpoint file: readable, the original's keys, and (when it carries one)
    its checksum; one InputError naming the file on any problem."""
    check_checkpoint_path(path, flag)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise _unreadable(path, exc, flag) from None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        found = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{flag}: {path} is not a JacobiNeRF checkpoint (expected keys "
                         f"{', '.join(REQUIRED_KEYS)}; found {found})")
    problem = checksum_problem(data)
    if problem is not None:
        raise InputError(f"{flag}: {path} is damaged: {problem} (a bad copy or disk); copy it again or use an "
                         "earlier checkpoint")
    return data


def _check_state(path, name, net, state):
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        detail = []
        if wrong:
            k, got, want = wrong[0]
            detail.append(f"{k} has shape {got}, the config builds {want}")
        if missing:
            detail.append(f"missing {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:3]}")
        raise InputError(f"--ckpt_path: {path}: {name} does not match the network of this config "
                         f"(model.netdepth/netwidth, render.multires/i_embed): {'; '.join(detail)}")


def named_tensors(obj, prefix=""):
    """(dotted name, tensor) of every floating-point tensor in a nested dict/list structure."""
    if torch.is_tensor(obj):
        if obj.is_floating_point():
            yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def _all_finite_fast(tensors):
    """True when the 2-norm of every tensor is finite, which implies every value is (a NaN or inf
    makes the norm NaN or inf): one multi-tensor kernel per device and dtype and one host read,
    where an isfinite().all() per tensor took about 400 launches (11.6 of a checkpoint's 39 ms
    on an H200). False also when a norm overflows (values above ~1e19): the exact check decides."""
    groups = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    norms = [torch.stack(torch._foreach_norm(ts)).isfinite().all() for ts in groups.values()]
    return bool(torch.stack([n.cpu() for n in norms]).all()) if norms else True


def non_finite_tensor(named):
    """(name, count of NaN/inf values) of the first tensor of `named` ((name, tensor) pairs) that is not
    all finite, or None. One host sync for all tensors of a device."""
    named = list(named)
    if _all_finite_fast([t for _, t in named]):
        return None
    by_device = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    ok = torch.ones(len(named), dtype=torch.bool)
    for idx in by_device.values():
        ok[idx] = torch.stack([torch.isfinite(named[i][1]).all() for i in idx]).cpu()
    if bool(ok.all()):
        return None
    name, t = named[int((~ok).nonzero()[0, 0])]
    return name, int((~torch.isfinite(t)).sum())


def _check_finite(path, data, keys):
    bad = non_finite_tensor(named_tensors({k: data[k] for k in keys if k in data}))
    if bad is not None:
        name, count = bad
        raise InputError(f"--ckpt_path: {path}: {name} holds {count} non-finite values (NaN or inf); the run "
                         "that wrote it diverged; use an earlier checkpoint")


def check_networks(path, data, renderer, optimizer_state=False):
    """InputError unless the checkpoint's networks fit `renderer` and are finite (with
    `optimizer_state`, its optimizer state too); nothing is loaded."""
    _check_state(path, "network_coarse_state_dict", renderer.coarse, data["network_coarse_state_dict"])
    _check_state(path, "network_fine_state_dict", renderer.fine, data["network_fine_state_dict"])
    _check_finite(path, data, ("network_coarse_state_dict", "network_fine_state_dict")
                  + (("optimizer_state_dict",) if optimizer_state else ()))


def apply_checkpoint(path, data, renderer, optimizer=None):
    """Load network weights (and, if `optimizer` is given, its state) into place; refuses
    non-finite weights (or optimizer state), naming the tensor."""
    check_networks(path, data, renderer, optimizer is not None)
    renderer.coarse.load_state_dict(data["network_coarse_state_dict"])
    renderer.fine.load_state_dict(data["network_fine_state_dict"])
    if optimizer is not None:
        state = data.get("optimizer_state_dict")
        if not state:
            raise InputError(f"--resume: {path} holds no optimizer state")
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError) as exc:
            raise InputError(f"--resume: the optimizer state in {path} does not match this run's "
                             f"parameters ({first_line(exc)}); the mode, the Semantic-NeRF protocol and "
                             "--fix_density must match the run that wrote it") from exc


def restore_checkpoint(path, renderer, optimizer=None):
    """Read the checkpoint at `path` onto the renderer's device and load its weights into
    `renderer` (with `optimizer`, also the optimizer state: a resumed run); one InputError naming
    the file on any problem. Returns the checkpoint dict (`global_step`, `jnerf_state`, heads)."""
    data = load_checkpoint(path, map_location=renderer.device)
    apply_checkpoint(path, data, renderer, optimizer)
    return data


def latest_checkpoint(save_dir):
    """Path of the highest-step checkpoint in <save_dir>/checkpoints, or None."""
    steps = checkpoint_steps(save_dir)
    return steps[max(steps)] if steps else None


def checkpoint_steps(save_dir):
    """{step: path} of the `<step>.ckpt` files in <save_dir>/checkpoints."""
    folder = os.path.join(save_dir, "checkpoints")
    if not os.path.isdir(folder):
        return {}
    return {int(m.group(1)): os.path.join(folder, f) for f in os.listdir(folder)
            if (m := re.fullmatch(r"(\d+)\.ckpt", f))}


def prune_checkpoints(save_dir, keep, current, final):
    """--keep_ckpts: of the checkpoints at steps <= `current` keep the newest `keep`; the one at
    step `final` (the run's last) and any later ones (another run's, e.g. before a --resume from an
    earlier step) are never removed. Returns the removed paths."""
    if not keep:
        return []
    steps = checkpoint_steps(save_dir)
    candidates = sorted((s for s in steps if s <= current), reverse=True)
    removed = []
    for s in candidates[keep:]:
        if s != final:
            os.remove(steps[s])
            removed.append(steps[s])
    return removed


def load_semantic_heads(path, data, head_coarse, head_fine, required=True):
    """Load the Semantic-NeRF heads saved under SEMANTIC_KEY of checkpoint `data` (read from `path`).
    Returns whether they were loaded; InputError (naming the file) when they are missing and
    `required`, or when they do not match the heads (another label space or network width)."""
    state = data.get(SEMANTIC_KEY)
    if state is None:
        if required:
            raise InputError(f"--ckpt_path: {path} holds no Semantic-NeRF heads ({SEMANTIC_KEY}); it was not "
                             "written by a --semantic_nerf run")
        return False
    _check_finite(path, data, (SEMANTIC_KEY,))
    try:
        load_semantic_state(state, head_coarse, head_fine)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise InputError(f"--ckpt_path: {path}: its Semantic-NeRF heads do not match this run's "
                         f"({first_line(exc)}); same label space (--test_instance) and "
                         "network width needed") from None
    return True
