"""Responses of pixels (2D) and 3D sample points to weight perturbations, in one render pass.

Propagation perturbs only the fine `rgb_linear.weight`: W <- W + M_d with
M_d = t * diag(r, g, b)/255 * Delta_d (Delta_d a direction [3, F], t = --perturb_t). Density,
sample positions, compositing weights w_i and the F-dimensional inputs h_i of `rgb_linear` do not
change, so one render pass that keeps (w_i, z_i, h_i) gives every direction's perturbed colour
exactly:

    z'_i = z_i + M_d h_i                            (logits of the perturbed last layer)
    2D:  R_d(p) = mean_c | sum_i w_i (sigmoid(z'_ic) - sigmoid(z_ic)) |   (= mean_c |C' - C|)
    3D:  r_id = | mean_c (z'_ic - z_ic) | = | u_d . h_i |,  u_d = mean_c M_d[c, :]
         Q_d(p) = sum_i w_i r_id                     (rendered with the unperturbed weights)

(--no_abs drops the absolute values.) Directions are then combined per label by a "mixing"
matrix A [D, K]: K = L label channels averaging the label's directions, or K = D (one channel
per direction, --merge_instance). Everything is chunked over rays and over directions, so
memory stays bounded for any number of directions and views.

`rerender_responses_2d` is the original's procedure (perturb the real weight, re-render,
restore: `perturbed_weight`), used for --noisy_propagation, where every render draws its own
noise and jitter.
"""
import contextlib
from typing import NamedTuple

import torch

# Elements of the largest [B, S, D, 3] intermediate of the 2D head (about 256 MB in float32).
HEAD_ELEMENTS = 1 << 26


class Directions(NamedTuple):
    """Perturbation directions and the label each belongs to."""
    deltas: torch.Tensor          # [D, 3, F] float64: Jacobians (or their means) of labelled pixels
    owner: torch.Tensor           # [D] long: index into the label list (0..L-1)
    num_labels: int               # L

    @property
    def count(self):
        return int(self.deltas.shape[0])


def perturbation_matrices(deltas, t, rgb=(255, 255, 255), dtype=torch.float32, device=None):
    """M_d = t * diag(r, g, b)/255 @ Delta_d, [D, 3, F] (computed in float64, then cast)."""
    scale = torch.tensor([float(c) for c in rgb], dtype=torch.float64, device=deltas.device) / 255.0
    m = float(t) * scale[None, :, None] * deltas.to(torch.float64)
    return m.to(device=device or deltas.device, dtype=dtype)


def mixing_matrix(owner, num_labels, merge=False, dtype=torch.float32, device=None):
    """[D, K] matrix turning per-direction responses into channels.

    merge=False: K = L, column l averages the directions of label l (the original's mean over a
    label's responses; a label with a single direction gets it unchanged).
    merge=True: K = D, the identity (every direction its own channel, --merge_instance).
    """
    owner = owner.to(device=device or owner.device)
    d = owner.shape[0]
    if merge:
        return torch.eye(d, dtype=dtype, device=owner.device)
    a = torch.zeros(d, num_labels, dtype=torch.float64, device=owner.device)
    a[torch.arange(d, device=owner.device), owner] = 1.0
    counts = a.sum(0).clamp(min=1.0)
    return (a / counts).to(dtype)


def cumulative_mixers(owner, num_labels, rounds, dtype=torch.float32, device=None):
    """For adaptive selection's aggregator data: mixer j averages, per label, the directions of
    rounds 0..j (direction k of label l belongs to round `rank of k among label l's directions`)."""
    owner = owner.to(device=device or owner.device)
    rank = torch.zeros_like(owner)
    for l in range(num_labels):
        idx = (owner == l).nonzero().flatten()
        rank[idx] = torch.arange(idx.numel(), device=owner.device)
    mixers = []
    for j in range(rounds):
        keep = rank <= j
        a = torch.zeros(owner.shape[0], num_labels, dtype=torch.float64, device=owner.device)
        sel = keep.nonzero().flatten()
        a[sel, owner[sel]] = 1.0
        mixers.append((a / a.sum(0).clamp(min=1.0)).to(dtype))
    return mixers


# ----------------------------------------------------------------------------- per ray chunk

def head_colour_deltas(fine, M, max_elements=HEAD_ELEMENTS):
    """[B, D, 3]: sum_i w_i (sigmoid(z_i + M_d h_i) - sigmoid(z_i)), exactly C'_d - C per ray.

    fine: FineSamples (weights [B,S], rgb_logits [B,S,3], features [B,S,F]); M [D, 3, F].
    """
    w, z, h = fine.weights, fine.rgb_logits, fine.features
    b, s, f = h.shape
    d = M.shape[0]
    out = torch.empty(b, d, 3, dtype=z.dtype, device=z.device)
    s0 = torch.sigmoid(z)
    d_step = max(1, min(d, max_elements // max(1, s * 3)))
    b_step = max(1, max_elements // max(1, s * 3 * d_step))
    for d0 in range(0, d, d_step):
        m = M[d0:d0 + d_step].reshape(-1, f)                       # [Dg*3, F]
        dg = m.shape[0] // 3
        for b0 in range(0, b, b_step):
            hb = h[b0:b0 + b_step]
            bb = hb.shape[0]
            dz = (hb.reshape(-1, f) @ m.T).view(bb, s, dg, 3)       # [Bb, S, Dg, 3]
            diff = torch.sigmoid(dz.add_(z[b0:b0 + bb, :, None, :])).sub_(s0[b0:b0 + bb, :, None, :])
            out[b0:b0 + bb, d0:d0 + dg] = torch.einsum("bs,bsdc->bdc", w[b0:b0 + bb], diff)
    return out


def responses_2d(fine, M, no_abs=False, max_elements=HEAD_ELEMENTS):
    """[B, D]: mean over channels of |C'_d - C| (signed with no_abs)."""
    delta = head_colour_deltas(fine, M, max_elements)
    return delta.mean(-1) if no_abs else delta.abs().mean(-1)


def responses_3d(fine, M, no_abs=False):
    """[B, D]: sum_i w_i |mean_c (M_d h_i)_c| (signed with no_abs), the rendered point response."""
    u = M.mean(1)                                                  # [D, F] = t * u_d
    r = fine.features @ u.T                                        # [B, S, D]
    if not no_abs:
        r = r.abs()
    return torch.einsum("bs,bsd->bd", fine.weights, r)


# ----------------------------------------------------------------------------- whole views

def render_chunks(renderer, rays, chunk, train=False, generator=None):
    """Yield (start, render dict with 'fine') for consecutive ray chunks, without gradients."""
    with torch.no_grad():
        for i in range(0, rays.shape[0], chunk):
            r = rays[i:i + chunk].to(renderer.device, non_blocking=True)
            yield i, renderer.render_rays(r, train, keep_fine=True, generator=generator, coarse_rgb=False)


@contextlib.contextmanager
def perturbed_weight(renderer, delta):
    """Inside the block the fine rgb_linear.weight W is W + delta ([3, F]); afterwards (also on
    an error) it is the exact original W again (a saved copy, not W + delta - delta)."""
    weight = renderer.fine.rgb_linear.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(delta.to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def view_responses(renderer, rays, M, mixers, kind="2d", no_abs=False, chunk=8192, train=False,
                   generator=None, want_depth=False, max_elements=HEAD_ELEMENTS):
    """Responses of all rays of one or more views to all directions, from one render pass.

    rays [N, 11]; M [D, 3, F] (device, compute dtype); mixers: list of [D, K_j] matrices.
    Returns (list of [N, K_j] tensors on the renderer's device, depth [N] or None).
    """
    n = rays.shape[0]
    dev = renderer.device
    outs = [torch.empty(n, a.shape[1], dtype=M.dtype, device=dev) for a in mixers]
    depth = torch.empty(n, dtype=M.dtype, device=dev) if want_depth else None
    with torch.no_grad():
        for i, out in render_chunks(renderer, rays, chunk, train, generator):
            fine = out["fine"]
            if kind == "2d":
                r = responses_2d(fine, M, no_abs, max_elements)
            else:
                r = responses_3d(fine, M, no_abs)
            for o, a in zip(outs, mixers):
                o[i:i + r.shape[0]] = r @ a
            if want_depth:
                depth[i:i + r.shape[0]] = out["depth"]
    return outs, depth


def rerender_responses_2d(renderer, rays, M, mixers, no_abs=False, chunk=8192, train=False,
                          generator=None, want_depth=False):
    """The original's 2D procedure: render once, then for each direction render again with the
    weight perturbed by M[d] (`perturbed_weight`); R_d = mean_c |C'_d - C| (signed with no_abs).

    Same return as `view_responses`. Costs 1 + D renders; used for --noisy_propagation (each
    render draws its own noise, as the original's training-mode renders) and as a reference.
    """
    def render(keys):
        return renderer.render_chunked(rays, train=train, chunk=chunk, keys=keys, generator=generator)

    first = render(("rgb", "depth"))
    base = first["rgb"]
    resp = torch.empty(rays.shape[0], M.shape[0], dtype=base.dtype, device=renderer.device)
    for d in range(M.shape[0]):
        with perturbed_weight(renderer, M[d]):
            diff = render(("rgb",))["rgb"] - base
        resp[:, d] = diff.mean(-1) if no_abs else diff.abs().mean(-1)
    outs = [resp @ a.to(resp.dtype) for a in mixers]
    return outs, (first["depth"] if want_depth else None)
