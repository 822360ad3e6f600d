"""Checkpoints in the original's format, written atomically.

A checkpoint is `torch.save` of a dict with the original's keys
    global_step, network_coarse_state_dict, network_fine_state_dict, optimizer_state_dict
(parameter names as in models/nerf.py; the optimizer is one Adam over the coarse then the fine
parameters, as the original), so checkpoints move between the two code bases in both
directions. This project adds one key, `jnerf_state` (adaptive threshold, random states,
ray-sampler position), which the original ignores.
"""
import os
import re

import torch

from utils.atomic import atomic_path
from utils.errors import InputError

REQUIRED_KEYS = ("global_step", "network_coarse_state_dict", "network_fine_state_dict")
EXTRA_KEY = "jnerf_state"


def checkpoint_path(save_dir, step):
    return os.path.join(save_dir, "checkpoints", f"{step:06d}.ckpt")


def save_checkpoint(path, step, renderer, optimizer=None, extra=None):
    """Write the checkpoint to a temporary file and rename it, so a crash never leaves a
    truncated file under the final name."""
    data = {
        "global_step": int(step),
        "network_coarse_state_dict": renderer.coarse.state_dict(),
        "network_fine_state_dict": renderer.fine.state_dict(),
        "optimizer_state_dict": optimizer.state_dict() if optimizer is not None else {},
    }
    if extra:
        data[EXTRA_KEY] = extra
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def load_checkpoint(path, map_location="cpu"):
    """Read and validate a checkpoint file; one InputError naming the file on any problem."""
    if not path or not os.path.isfile(path):
        raise InputError(f"--ckpt_path: {path!r} does not exist (expected a .ckpt file written by "
                         "training, e.g. <save_dir>/checkpoints/010000.ckpt)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"--ckpt_path: {path} is not a readable checkpoint "
                         f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise InputError(f"--ckpt_path: {path} is not a JacobiNeRF checkpoint (expected keys "
                         f"{', '.join(REQUIRED_KEYS)}; found {found})")
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


def apply_checkpoint(path, data, renderer, optimizer=None):
    """Load network weights (and, if `optimizer` is given, its state) into place."""
    _check_state(path, "network_coarse_state_dict", renderer.coarse, data["network_coarse_state_dict"])
    _check_state(path, "network_fine_state_dict", renderer.fine, data["network_fine_state_dict"])
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
                             f"parameters ({exc}); --fix_density must match the run that wrote it") from exc


def latest_checkpoint(save_dir):
    folder = os.path.join(save_dir, "checkpoints")
    if not os.path.isdir(folder):
        return None
    steps = [(int(m.group(1)), f) for f in os.listdir(folder) if (m := re.fullmatch(r"(\d+)\.ckpt", f))]
    return os.path.join(folder, max(steps)[1]) if steps else None
