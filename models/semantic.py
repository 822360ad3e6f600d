"""The Semantic-NeRF baseline's semantic branch, rendering and label loss.

A semantic head reads the NeRF trunk output h (the input of `alpha_linear`: after the 8 layers,
before the view direction joins), so the logits depend on position only:

    semantic_linear: Linear(W, W/2) -> ReLU -> Linear(W/2, C)        s(x) in R^C

Rendered with the colour weights before any softmax, S(r) = sum_i w_i s(x_i); the loss is the
cross-entropy of S(r) against the seed label on labelled rays, coarse + fine, weighted by
`WGT_SEM` against the colour loss. The prediction of a ray is argmax_c S_fine(r).

The head is a module of its own, not part of `models.nerf.NeRF`, so a plain checkpoint still loads
into the NeRF unchanged; its state goes under its own checkpoint key (`semantic_state`). Its
parameters are nested as Semantic-NeRF's branch (`semantic_linear.0.0` = Linear(W, W/2),
`semantic_linear.0.1` = ReLU, `semantic_linear.1` = Linear(W/2, C)), so the `semantic_linear.*`
entries of a network state dict that embeds the branch load into it.

Two protocols: joint training (trunk and head trained together) and fine-tuning the head on a
trained plain checkpoint (trunk parameters with requires_grad False; `semantic_logits` then runs
the trunk without autograd).

`render_semantic_rays` is the coarse-to-fine render of `Renderer.render_rays` (the same samplers
and compositing, models/samplers.py and models/rendering.py) with the semantic logits of every
sample added, the trunk evaluated once per sample for density, colour and logits. For the 3D
readout it also returns the fine samples' raw logits and weights: a point's label is
argmax_c s_c(x_i), and a pixel's 3D label is the label with the largest rendered weight of its
points, argmax_l sum_i w_i [argmax_c s_c(x_i) = l] (`point_vote_labels`), the way 3D propagation
renders its per-point responses into a test view.
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.rays import ray_points
from models.rendering import composite, composite_weights, disparity, ray_setup
from models.samplers import fine_z

# Weight of the semantic loss against the colour loss: Semantic-NeRF's Replica config value (wgt_sem).
WGT_SEM = 4e-2

SEMANTIC_KEY = "semantic_state_dict"     # checkpoint key of `semantic_state(...)`


class SemanticHead(nn.Module):
    """s = W2 relu(W1 h + b1) + b2: trunk features h [..., width] -> class logits [..., num_classes]."""

    def __init__(self, width, num_classes):
        super().__init__()
        if num_classes < 1 or width < 2:
            raise ValueError(f"SemanticHead: need width >= 2 and num_classes >= 1 (got {width}, {num_classes})")
        self.width, self.num_classes = int(width), int(num_classes)
        self.semantic_linear = nn.Sequential(nn.Sequential(nn.Linear(width, width // 2), nn.ReLU()),
                                             nn.Linear(width // 2, num_classes))

    def forward(self, h):
        return self.semantic_linear(h)


def semantic_logits(net, head, x_enc):
    """Per-sample logits s(x) [..., C] of encoded positions x_enc [..., input_ch]: head(net.trunk(x_enc)).

    With autograd on and any trunk parameter (or x_enc) requiring grad, the trunk runs on its
    autograd path (joint training). Otherwise (a frozen trunk, or no autograd) it runs without
    a graph, on the NeRF's inference path; only the head is differentiated."""
    trunk_grad = torch.is_grad_enabled() and (
        x_enc.requires_grad or any(p.requires_grad for p in net.pts_linears.parameters()))
    if trunk_grad:
        h = net.trunk(x_enc)
    else:
        with torch.no_grad():
            h = net.trunk(x_enc)
    return head(h.to(head.semantic_linear[1].weight.dtype))


def render_logits(weights, logits):
    """S(r) = sum_i w_i s_i: weights [R, S], logits [R, S, C] -> [R, C] (no softmax)."""
    return torch.sum(weights[..., None] * logits, dim=-2)


def semantic_loss(logits_coarse, logits_fine, labels, ignore=-1):
    """CE(S_coarse) + CE(S_fine), each the mean over labelled rays of -log softmax(S(r))[label(r)].

    logits_*: rendered logits [R, C] (logits_coarse may be None: fine only); labels [R] int in
    0..C-1, `ignore` for unlabelled or void rays. With no labelled ray the result is a zero that
    still depends on the logits (backward gives zero gradients instead of NaN)."""
    parts = [x for x in (logits_coarse, logits_fine) if x is not None]
    if not parts:
        raise ValueError("semantic_loss: no logits given")
    keep = labels != ignore
    if not bool(keep.any()):
        return sum(x.sum() for x in parts) * 0.0
    target = labels[keep].long()
    return sum(F.cross_entropy(x[keep], target) for x in parts)


def predict_labels(logits):
    """Class index argmax_c S(r) [R] of rendered logits [R, C]."""
    return torch.argmax(logits, dim=-1)


# -- rendering -----------------------------------------------------------------------------------
def _field(renderer, net, head, pts, viewdirs, colour):
    """(sigma_raw [B, S], colour logits [B, S, 3] or None, semantic logits [B, S, C]) at pts
    [B, S, 3]; the trunk runs once, without a graph when the NeRF is frozen (see semantic_logits)."""
    x = renderer.pos_enc(pts)
    trunk_grad = torch.is_grad_enabled() and any(p.requires_grad for p in net.pts_linears.parameters())
    with torch.set_grad_enabled(trunk_grad):
        h = net.trunk(x)
        sigma = net.alpha_linear(h)[..., 0]
        rgb = None
        if colour:
            rgb, _ = net.head(h, net.view_bias(renderer.dir_enc(viewdirs)[:, None, :]))
    return sigma, rgb, head(h.to(head.semantic_linear[1].weight.dtype))


def _composite(rgb_logits, sigma_raw, z, dir_norm, noise, white_bkgd, generator):
    """(weights [B, S], colour [B, 3] or None when rgb_logits is None: no colour head was run)."""
    if rgb_logits is None:
        return composite_weights(sigma_raw, z, dir_norm, noise, generator), None
    comp = composite(rgb_logits, sigma_raw, z, dir_norm, noise, white_bkgd, generator)
    return comp.weights, comp.rgb


def render_semantic_rays(renderer, heads, rays, train, colour=True, keep_points=False, generator=None):
    """Render rays [B, 11] coarse + fine with semantic logits (module doc). heads: (coarse head,
    fine head). Training mode: stratified jitter, random importance samples and density noise, as
    `Renderer.render_rays`; evaluation mode is deterministic.

    Returns dict: logits / logits_coarse (rendered S(r) [B, C]), rgb / rgb_coarse ([B, 3]; None
    when colour=False), depth, acc, disp, sigma_raw_coarse / sigma_raw_fine; with keep_points
    also point_logits [B, S, C] (the fine samples' raw logits) and weights [B, S]."""
    o = renderer.opts
    head_c, head_f = heads
    viewdirs, dir_norm, z, jitter, noise = ray_setup(rays, o, train, generator)
    pts = ray_points(rays, z)
    sigma_c, rgb_c, s_c = _field(renderer, renderer.coarse, head_c, pts, viewdirs, colour)
    w_c, out_rgb_c = _composite(rgb_c, sigma_c, z, dir_norm, noise, o.white_bkgd, generator)

    z_fine = fine_z(z, w_c, o.n_importance, not jitter, generator)
    pts = ray_points(rays, z_fine)
    sigma_f, rgb_f, s_f = _field(renderer, renderer.fine, head_f, pts, viewdirs, colour)
    w_f, out_rgb_f = _composite(rgb_f, sigma_f, z_fine, dir_norm, noise, o.white_bkgd, generator)
    depth, acc = torch.sum(w_f * z_fine, dim=-1), w_f.sum(-1)
    out = dict(logits=render_logits(w_f, s_f), logits_coarse=render_logits(w_c, s_c), rgb=out_rgb_f,
               rgb_coarse=out_rgb_c, depth=depth, acc=acc, disp=disparity(depth, acc),
               sigma_raw_coarse=sigma_c, sigma_raw_fine=sigma_f)
    if keep_points:
        out["point_logits"], out["weights"] = s_f, w_f
    return out


def point_vote_labels(weights, point_logits, num_classes):
    """The 3D readout [B]: argmax_l sum_i w_i [argmax_c s_ic = l] of fine weights [B, S] and raw
    point logits [B, S, C] (each point labelled by its own logits, the labels rendered into the
    pixel with the colour weights)."""
    point_labels = torch.argmax(point_logits, dim=-1)                       # [B, S]
    votes = torch.zeros(weights.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    votes.scatter_add_(1, point_labels, weights)
    return torch.argmax(votes, dim=-1)


# -- checkpoints ---------------------------------------------------------------------------------
def semantic_state(head_coarse, head_fine):
    """The heads' state for a checkpoint's `SEMANTIC_KEY`: {coarse, fine, num_classes}."""
    return dict(coarse=head_coarse.state_dict(), fine=head_fine.state_dict(), num_classes=head_fine.num_classes)


def load_semantic_state(state, head_coarse, head_fine):
    """Load `semantic_state(...)` output into the two heads (strict)."""
    if state.get("num_classes") != head_fine.num_classes:
        raise ValueError(f"semantic state has {state.get('num_classes')} classes, the heads {head_fine.num_classes}")
    head_coarse.load_state_dict(state["coarse"])
    head_fine.load_state_dict(state["fine"])
