"""Slow reference implementations of the fast paths in models/, for tests and benchmarks only.

Each function is the literal definition that a fast path replaces (the original's loops), kept
short and obviously correct; nothing in the package calls them.
"""
import torch

from models.jacobians import ray_scalar


def loop_jacobians(colour, params, channel=None):
    """The original's per-ray Jacobians: for each ray r, autograd.grad(y_r, params,
    create_graph=True), flattened and concatenated: [R, P], differentiable.

    colour: rendered colour [R, 3] in graph; y_r = ray_scalar(colour, channel) (the channel mean,
    or one channel per ray). Fast path: models.jacobians.ray_jacobians (no loop over rays).
    """
    rows = []
    y = ray_scalar(colour, channel)
    for r in range(colour.shape[0]):
        grads = torch.autograd.grad(y[r], params, create_graph=True, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)
