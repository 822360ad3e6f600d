"""Slow reference implementations of the fast paths in training/, for tests and benchmarks only.

`slow_shaping` is the original's shaping step written loop by loop; the fast path
(training/shaping.py with training/contrastive.py) computes the same loss, threshold and
gradients with N x N matrix algebra. Nothing in the package calls this module.
"""
import numpy as np
import torch

from models._reference import loop_jacobians
from models.jacobians import subset_parameters


def slow_shaping(renderer, out, rays, opts, tau, feats=None, labels=None, channel=None):
    """The shaping terms as the original's Trainer.step computes them, loop by loop.

    renderer, out: a Renderer and its render_rays(rays, train=True, keep_fine=True) output;
    rays [N, 11]; opts: utils.options.ShapingOptions (subset, target, weights, threshold
    settings); tau: the threshold before anchor 0; feats [N, D]: descriptors (descriptor
    supervision) or labels [N] (label supervision, 0 = void); channel: [N] colour channel per
    ray (random_channel) or None.

    Per-ray Jacobians by one autograd.grad(create_graph=True) per ray; then for each anchor a in
    order: positives/negatives from the descriptor cosine against tau (tau updated after the
    anchor with the adaptive rule) or from label equality (void rays are neither anchors nor
    pairs); P_a, N_a summed pair by pair in float64; -log(P_a / (P_a + N_a) + 1e-7) averaged over
    the anchors with P_a > 0 and N_a > 0.
    Returns (total, L_NCE, L_norm, final tau).
    """
    params = subset_parameters(renderer.fine, opts.subset)
    if opts.target == "2d":
        colour = out["rgb"]
    else:
        pts = rays[:, 0:3] + out["depth"].detach()[:, None] * rays[:, 3:6]
        field = renderer.run_field(renderer.fine, pts[:, None, :], torch.zeros_like(pts))
        colour = torch.sigmoid(field.rgb_logits[:, 0])
    jac = loop_jacobians(colour, params, channel)
    n = len(jac)
    grad_loss = torch.tensor(0.0, dtype=torch.float64)
    if opts.dot_product or opts.norm_loss:      # the original: nce_dot_product or gradient_norm_loss
        grad_loss = grad_loss + torch.mean((torch.linalg.norm(jac, dim=-1) - 1.0) ** 2)
    if feats is not None:
        f = feats / (torch.linalg.norm(feats, dim=-1)[:, None] + 1e-7)
        f = f / (torch.linalg.norm(f, dim=-1)[:, None] + 1e-7)

    def s(a, b):
        d = torch.dot(jac[a], jac[b])
        if not opts.dot_product:
            d = d / (torch.linalg.norm(jac[a]) * torch.linalg.norm(jac[b]) + 1e-7)
        return torch.exp(abs(d) if opts.absolute else d)

    loss = torch.tensor(0.0, dtype=torch.float64)
    anchors = 0
    for a in range(n):
        if feats is not None:
            sim = f @ f[a]
            cond = [bool(sim[b] > tau) for b in range(n)]
            if opts.adaptive_threshold and not opts.pos_order:
                k = sum(cond)
                if k < int(opts.pos_ratio_lower * n) and tau > opts.pos_threshold_lower:
                    tau -= 0.001
                elif k > int(opts.pos_ratio_upper * n) and tau < opts.pos_threshold_upper:
                    tau += 0.001
            pos = [int(np.argmax(sim.numpy()))] if opts.pos_order else [b for b in range(n) if cond[b]]
            neg = [b for b in range(n) if not cond[b]]
        else:   # labels; void (0) rays are unknown: neither anchors nor pairs
            if labels[a] == 0:
                continue
            same = [b for b in range(n) if labels[b] == labels[a]]
            pos = same[:1] if opts.pos_order else same
            neg = [b for b in range(n) if labels[b] != labels[a] and labels[b] != 0]
        pos_sim = torch.tensor(0.0, dtype=torch.float64)
        for b in pos:
            pos_sim = pos_sim + s(a, b)
        neg_sim = torch.tensor(0.0, dtype=torch.float64)
        for b in neg:
            neg_sim = neg_sim + s(a, b)
        if pos_sim > 0 and neg_sim > 0:
            loss = loss - torch.log(pos_sim / (pos_sim + neg_sim) + 1e-7)
            anchors += 1
    if anchors > 0:
        loss = loss / anchors
    total = opts.wgt_contrastive * loss + opts.wgt_gradient * grad_loss
    return total, loss, grad_loss, tau
