"""Seeding. Without --seed nothing is seeded (the original's behaviour)."""
import random

import numpy as np
import torch


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and CUDA); returns a numpy Generator for explicit use."""
    if seed is None:
        return np.random.default_rng()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
