"""Slow reference implementations of the fast paths in models/, for tests and benchmarks only.

Each function is the literal definition that a fast path replaces (the original's loops), kept
short and obviously correct, and named after the fast path it checks (its docstring says which);
nothing in the package calls them (tests/test_layers.py).
"""
import torch

from models.jacobians import ray_scalar
from models.rays import ray_points, unpack_rays
from models.semantic import semantic_logits

SEMANTIC_HEAD_PREFIX = "semantic_linear."     # Semantic-NeRF's name of the branch in its network


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


def fine_samples_at(renderer, rays, z):
    """The fine network evaluated again at depths z [B, S] of rays [B, 11]: a FieldOutput
    (rgb_logits [B, S, 3], sigma_raw [B, S], rgb_features [B, S, W/2]).

    Fast path: the per-sample values that `Renderer.render_rays(keep_fine=True)` keeps in
    `FineSamples` from its one fine pass (propagation's one-pass responses reuse them where the
    original re-runs a perturbed network, which is what this does on a perturbed copy)."""
    return renderer.run_field(renderer.fine, ray_points(rays, z), unpack_rays(rays)[4])


def point_logits_at(renderer, net, head, rays, z):
    """Semantic logits [B, S, C] at the samples o + z d of rays [B, 11], depths z [B, S]: the
    trunk of `net` evaluated again there, positions encoded by `renderer.pos_enc`.

    Fast path: the `point_logits` of `Renderer.render_rays(..., heads=..., keep_points=True)`,
    where the trunk runs once per sample for density, colour and logits together."""
    return semantic_logits(net, head, renderer.pos_enc(ray_points(rays, z)))


def split_semantic_state(net_state):
    """Split a network state dict that embeds the semantic branch (Semantic-NeRF's layout) into
    (NeRF state, head state): entries `semantic_linear.*` go to the head (same names), the rest to
    the NeRF. Checks that `models.semantic.SemanticHead` names its parameters as that branch, so
    `semantic_state` / `load_semantic_state` move heads between the two layouts by name alone."""
    head = {k: v for k, v in net_state.items() if k.startswith(SEMANTIC_HEAD_PREFIX)}
    nerf = {k: v for k, v in net_state.items() if not k.startswith(SEMANTIC_HEAD_PREFIX)}
    return nerf, head
