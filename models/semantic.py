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
trained plain checkpoint (trunk parameters with requires_grad False; the renderer then runs the
trunk on its inference path, without autograd).

The semantic render is `Renderer.render_rays(..., heads=(coarse, fine))`: the plain render (the
same samplers, compositing and engine paths, float16 included) with each head's logits of the
trunk output of every sample, rendered with the colour weights. For the 3D readout it also
returns the fine samples' raw logits and weights: a point's label is argmax_c s_c(x_i), and a
pixel's 3D label is the label with the largest rendered weight of its points,
argmax_l sum_i w_i [argmax_c s_c(x_i) = l] (`point_vote_labels`), the way 3D propagation renders
its per-point responses into a test view.
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.engine import Path
from models.nerf import linear_train

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

    def logits(self, h, path: Path):
        """s(h) as a renderer pass evaluates it (Renderer.run_field): with autograd in `path`'s
        training dtype (float16 casts of the float32 weights, float32 logits out) and layers, else
        in the weights' dtype (a float16 trunk output of the half engine is cast up first)."""
        first, last = self.semantic_linear[0][0], self.semantic_linear[1]
        if path.grad and path.dtype is not None:
            dt = path.dtype
            hidden = linear_train(h.to(dt), first.weight.to(dt), first.bias.to(dt), path.epilogue, relu=True)
            return linear_train(hidden, last.weight.to(dt), last.bias.to(dt), path.epilogue).float()
        epilogue = path.grad and path.epilogue
        hidden = linear_train(h.to(last.weight.dtype), first.weight, first.bias, epilogue, relu=True)
        return linear_train(hidden, last.weight, last.bias, epilogue)


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




def semantic_loss(logits_coarse, logits_fine, labels, ignore=-1):
    """CE(S_coarse) + CE(S_fine), each the mean over labelled rays of -log softmax(S(r))[label(r)].

    logits_*: rendered logits [R, C] (logits_coarse may be None: fine only); labels [R] int in
    0..C-1, `ignore` for unlabelled or void rays. Written without a host sync (a masked sum over
    the count), so that the CUDA-graph step can run it; with no labelled ray it is a zero that
    still depends on the logits (backward gives zero gradients instead of NaN)."""
    parts = [x for x in (logits_coarse, logits_fine) if x is not None]
    if not parts:
        raise ValueError("semantic_loss: no logits given")
    keep = labels != ignore
    count = keep.sum().clamp(min=1).to(parts[0].dtype)
    target = torch.where(keep, labels, torch.zeros_like(labels)).long()
    return sum((F.cross_entropy(x, target, reduction="none") * keep).sum() / count for x in parts)


def predict_labels(logits):
    """Class index argmax_c S(r) [R] of rendered logits [R, C]."""
    return torch.argmax(logits, dim=-1)


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
