"""Slow reference implementations of the fast paths in propagation/, for tests and benchmarks only.

Each function is the literal definition that a fast path replaces, kept short and obviously
correct, and named after the fast path it checks (its docstring says which); nothing in the
package calls them (tests/test_layers.py).
"""
import torch


def point_responses_3d(fine, M, no_abs=False):
    """[B, S, D]: r_id = |mean_c (z'_idc - z_ic)| for the fine samples `fine` (FineSamples of
    `Renderer.render_rays(keep_fine=True)`) and perturbations M [D, 3, F]: the colour logits of
    every sample with M_d added to rgb_linear.weight, minus the unperturbed logits, one direction
    at a time (signed with no_abs).

    Fast path: propagation.responses.responses_3d, which folds the channel mean into
    u_d = mean_c M_d (r_id = |u_d . h_i|) and renders sum_i w_i r_id in one product."""
    out = []
    for m in M:
        perturbed = fine.rgb_logits + fine.features @ m.T          # logits of the perturbed last layer
        diff = (perturbed - fine.rgb_logits).mean(-1)
        out.append(diff if no_abs else diff.abs())
    return torch.stack(out, -1)
