"""The contrastive shaping loss as N x N matrix algebra, and the original's adaptive threshold.

For N rays with Jacobians J [N, P]:

    s(a, b) = <J_a, J_b> / (|J_a| |J_b| + 1e-7)        (--nce_dot_product: <J_a, J_b>)
    s <- |s|                                            (--contrastive_abs)
    P_a = sum_{b in Pos_a} exp s(a, b),  N_a = sum_{b in Neg_a} exp s(a, b)     (float64)
    L_NCE = mean over anchors with P_a > 0 and N_a > 0 of -log(P_a / (P_a + N_a) + 1e-7); 0 if none
    L_norm = mean_r (|J_r| - 1)^2

Pos/Neg are boolean [N, N] masks built on the host from the supervision (descriptor
similarities against the threshold, or label equality), so the device never waits for them:
the only host work per step is the sequential threshold scan over N anchors below.
The literal loops these replace are in training/_reference.py.
"""
import numpy as np
import torch


# ----------------------------------------------------------------------------------------------
# supervision side (host, numpy / CPU torch)
# ----------------------------------------------------------------------------------------------
def normalise(x):
    """x / (|x| + 1e-7) per row, as the original (the +1e-7 keeps zero rows at zero)."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + 1e-7)


def supervision_features(descriptors, points=None, colour=None):
    """The original's feature for similarities: normalised descriptors, then optionally
    [f, p/|p|] (--spatial / --spatial_embedding), then [f, rgb/|rgb|] (--concat_color), and the
    whole vector normalised again."""
    f = normalise(descriptors)
    if points is not None:
        f = torch.cat((f, normalise(points)), dim=-1)
    if colour is not None:
        f = torch.cat((f, normalise(colour)), dim=-1)
    return normalise(f)


def adaptive_threshold_scan(sim, tau, n_lower, n_upper, tau_lower, tau_upper, adaptive=True, extra=None):
    """The original's per-anchor threshold recursion, exactly.

    sim: [N, N] float32 similarities (row a: anchor a against every ray, itself included);
    tau: the threshold in force before anchor 0 (a Python float). For each anchor in order,
    k = #{b : sim[a, b] > tau (and extra[a, b])}, counted with the tau in force *before* the
    update; then tau -= 0.001 if k < n_lower and tau > tau_lower, else tau += 0.001 if
    k > n_upper and tau < tau_upper. Comparisons are float32 (the original compares a float32
    tensor with a Python float, which PyTorch does in float32); tau stays a Python float.
    Returns (taus [N] float64: the threshold used for each anchor, the final tau).
    """
    sim = np.asarray(sim, dtype=np.float32)
    n = sim.shape[0]
    taus = np.empty(n, dtype=np.float64)
    tau = float(tau)
    for a in range(n):
        taus[a] = tau
        if not adaptive:
            continue
        above = sim[a] > np.float32(tau)
        k = int(np.count_nonzero(above & extra[a] if extra is not None else above))
        if k < n_lower and tau > tau_lower:
            tau -= 0.001
        elif k > n_upper and tau < tau_upper:
            tau += 0.001
    return taus, tau


def adaptive_threshold_scan_device(sim, tau, n_lower, n_upper, tau_lower, tau_upper, adaptive=True):
    """`adaptive_threshold_scan` on the device, for a CUDA-graph-captured shaping step.

    sim: [N, N] float32 tensor; tau: 0-d float64 tensor holding the threshold in force before
    anchor 0; it is overwritten in place with the final threshold. Returns taus [N] float64 (the
    threshold used for each anchor). The same recursion, exactly: with q_lo[a] the n_lower-th
    and q_hi[a] the (n_upper+1)-th largest similarity of row a (both found for all anchors at
    once by one sort), k < n_lower <=> float32(tau) >= q_lo[a] and k > n_upper <=>
    q_hi[a] > float32(tau); then a loop over the anchors of a few scalar device operations,
    tau kept in float64 and moved by exactly +-0.001 as the host's Python float
    (tests/test_graphs.py compares the two bit for bit)."""
    n = sim.shape[0]
    if not adaptive:
        return tau.reshape(1).expand(n).clone()
    desc = torch.sort(sim.to(torch.float32), dim=1, descending=True).values
    inf = torch.full((n,), float("inf"), dtype=torch.float32, device=sim.device)
    q_lo = desc[:, n_lower - 1] if 1 <= n_lower <= n else (inf if n_lower < 1 else -inf)
    q_hi = desc[:, n_upper] if 0 <= n_upper < n else (-inf if n_upper >= n else inf)
    # bounds that cannot be met compare against +-inf: k < n_lower is never true for n_lower <= 0
    # and always for n_lower > N; k > n_upper never for n_upper >= N and always for n_upper < 0
    cur = tau.reshape(()).clone()
    taus = []
    for a in range(n):
        taus.append(cur)
        t32 = cur.to(torch.float32)
        down = (t32 >= q_lo[a]) & (cur > tau_lower)
        up = (q_hi[a] > t32) & (cur < tau_upper)
        cur = torch.where(down, cur - 0.001, torch.where(up, cur + 0.001, cur))
    tau.copy_(cur.reshape(tau.shape))
    return torch.stack(taus)


def threshold_masks_device(sim, taus, pos_order=False):
    """`threshold_masks` on device tensors (sim [N, N] float32, taus [N] float64): (pos, neg)."""
    if pos_order:
        raise NotImplementedError("--pos_order is not on the device path")
    cond = sim > taus.to(torch.float32)[:, None]
    return cond, ~cond


def label_masks_device(labels, void=0):
    """`label_masks` (without --pos_order) on a device tensor of labels [N]: (pos, neg)."""
    known = labels != void
    both = known[:, None] & known[None, :]
    same = labels[:, None] == labels[None, :]
    return same & both, ~same & both


def threshold_masks(sim, taus, extra=None, pos_order=False):
    """(pos, neg) bool [N, N] for descriptor supervision: cond = sim > tau_a (and extra);
    pos = cond (the anchor itself included) or, with --pos_order, only the most similar ray
    (first index on ties, as np.argmax); neg = not cond."""
    sim = np.asarray(sim, dtype=np.float32)
    cond = sim > taus.astype(np.float32)[:, None]
    if extra is not None:
        cond &= extra
    if pos_order:
        pos = np.zeros_like(cond)
        pos[np.arange(len(sim)), np.argmax(sim, axis=1)] = True
    else:
        pos = cond
    return pos, ~cond


def label_masks(labels, pos_order=False, void=0):
    """(pos, neg) bool [N, N] for label supervision (the oracle): pos = same label, neg =
    different label. Void rays (label `void`) are unknown: they are no anchor, and no positive
    or negative of any anchor. --pos_order keeps only the first same-label ray."""
    labels = np.asarray(labels)
    known = labels != void
    both = known[:, None] & known[None, :]
    same = labels[:, None] == labels[None, :]
    pos, neg = same & both, ~same & both
    if pos_order:
        first = np.zeros_like(pos)
        first[np.arange(len(labels)), np.argmax(pos, axis=1)] = True
        pos = first & pos.any(axis=1, keepdims=True)
    return pos, neg


# ----------------------------------------------------------------------------------------------
# Jacobian side (device, differentiable)
# ----------------------------------------------------------------------------------------------
def pair_similarity(jac, dot_product=False, absolute=False):
    """(S [N, N], norms [N]) in float64: cosine with the +1e-7, or the raw dot product; |S|."""
    j = jac.to(torch.float64)
    norms = torch.linalg.vector_norm(j, dim=1)
    s = j @ j.T
    if not dot_product:
        s = s / (norms[:, None] * norms[None, :] + 1e-7)
    return (s.abs() if absolute else s), norms


def info_nce(sim, pos, neg):
    """(L_NCE, valid [N] bool) from pair similarities S [N, N] float64 and masks [N, N] bool.

    An anchor counts when P_a > 0 and N_a > 0 (the original's `pos_sim > 0 and neg_sim > 0`,
    evaluated on the device without a sync); the loss is 0 when none does. Invalid anchors are
    replaced by a harmless value before the log, so they send no NaN gradients.
    """
    e = torch.exp(sim)
    zero = torch.zeros((), dtype=e.dtype, device=e.device)
    p = torch.where(pos, e, zero).sum(1)
    q = torch.where(neg, e, zero).sum(1)
    valid = (p > 0) & (q > 0)
    one = torch.ones_like(p)
    ratio = torch.where(valid, p, one) / torch.where(valid, p + q, one)
    terms = torch.where(valid, -torch.log(ratio + 1e-7), zero)
    return terms.sum() / valid.sum().clamp(min=1), valid


def norm_loss(norms):
    """L_norm = mean_r (|J_r| - 1)^2."""
    return torch.mean((norms - 1.0) ** 2)
