"""Per-ray Jacobians of the rendered fine colour with respect to shaped parameters.

The scalar per ray is y_r = mean over channels of the fine colour (or one channel c_r with
--random_channel). Every function here returns all rays' Jacobians at once, as ordinary
differentiable expressions: a loss on them sends gradients into every fine parameter, as the
original's per-ray `autograd.grad(create_graph=True)` loop does, without the loop.

`rgb_linear.weight` (--rgb_layer, the paper's block) has a closed form in quantities the forward
pass already has. The fine colour is C_c = sum_i w_i sigmoid(z_ic) with z_i = W h_i + b, so

    dy / dW[c, k] = (1/3) sum_i w_i sigmoid'(z_ic) h_ik,      sigmoid' = s (1 - s),

one einsum for all rays.

Other blocks (--density_layer, --pts_layer, --rgb_pts_layer, --all_para) use per-sample
gradients. For an affine layer u = x W^T + b evaluated at the samples s of ray r,

    dy_r / dW = sum_s (dy_r / du_rs) (outer) x_rs,      dy_r / db = sum_s dy_r / du_rs,

and because rays are independent, dy_r/du_rs = d(sum_q y_q)/du_rs: one backward pass for the
whole batch gives every ray's errors. It runs in two stages, both with create_graph=True:
1. errors at the per-sample outputs: (dy/dz, dy/dsigma_raw) = grad(sum_r y_r) through the
   compositing of the render (so the training-mode density noise is accounted for exactly);
2. the fine network is re-evaluated at the same points with its layer inputs/outputs exposed
   (`NeRF.forward_taps`; deterministic, so the values are those of the render) and the stage-1
   errors are pulled back to the selected layers' outputs in one vector-Jacobian product.
Then one einsum per layer. No Python loop over rays anywhere.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch


@dataclass(frozen=True)
class ParameterSubset:
    """A block of fine-network parameters whose Jacobians can be shaped."""
    name: str                             # recorded in metrics and used by ray_jacobians
    flag: str                             # the command-line flag that selects it
    help: str                             # its --help line
    params: Optional[Tuple[str, ...]]     # fine-network parameter names; None = all of them


# The registry. Order = the original's precedence when several flags are given (the first set wins).
PARAMETER_SUBSETS = {s.name: s for s in (
    ParameterSubset("rgb", "rgb_layer", "fine rgb_linear.weight (the paper's choice)", ("rgb_linear.weight",)),
    ParameterSubset("density", "density_layer", "fine alpha_linear.weight", ("alpha_linear.weight",)),
    ParameterSubset("all_para", "all_para", "all fine-network parameters", None),
    ParameterSubset("pts", "pts_layer", "fine pts_linears.6.weight", ("pts_linears.6.weight",)),
    ParameterSubset("rgb_pts", "rgb_pts_layer", "fine rgb_linear.weight and pts_linears.6.weight",
                    ("rgb_linear.weight", "pts_linears.6.weight")),
)}


def subset_flags():
    """{flag: subset name} in precedence order (for utils.build_options)."""
    return {s.flag: s.name for s in PARAMETER_SUBSETS.values()}


def subset_names(net, subset):
    """Fine-network parameter names of a subset, in the order their Jacobians are concatenated
    (all parameters: `named_parameters()` order, weights and biases, each flattened row-major)."""
    if subset not in PARAMETER_SUBSETS:
        raise ValueError(f"unknown parameter subset {subset!r}")
    names = PARAMETER_SUBSETS[subset].params
    if names is None:
        return [name for name, _ in net.named_parameters()]
    params = dict(net.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"the network has no parameter {missing[0]} (netdepth too small for "
                         f"--{PARAMETER_SUBSETS[subset].flag}?)")
    return list(names)


def subset_parameters(net, subset):
    """The parameter tensors of `subset_names(net, subset)`, in that order."""
    params = dict(net.named_parameters())
    return [params[n] for n in subset_names(net, subset)]


def jacobian_size(net, subset):
    """P: the number of scalars in the subset (the width of a ray's Jacobian row)."""
    params = dict(net.named_parameters())
    return sum(params[n].numel() for n in subset_names(net, subset))


def rgb_layer_jacobian(fine, channel=None):
    """[R, 3, F] Jacobian of each ray's channel-mean colour w.r.t. the fine rgb_linear.weight.

    fine: models.rendering.FineSamples (weights [R,S], rgb_logits [R,S,3], features [R,S,F]).
    channel: optional [R] long tensor; then the Jacobian of that single channel per ray (the
    original's --random_channel: only row c is non-zero and there is no 1/3).
    """
    s = torch.sigmoid(fine.rgb_logits)
    ws = fine.weights[..., None] * s * (1.0 - s)                    # [R, S, 3]
    if channel is None:
        return torch.einsum("rsc,rsk->rck", ws, fine.features) / 3.0
    mask = torch.nn.functional.one_hot(channel, 3).to(ws.dtype)     # [R, 3]
    return torch.einsum("rsc,rsk->rck", ws * mask[:, None, :], fine.features)


def ray_scalar(colour, channel=None):
    """y_r: the channel mean of colour [R, 3], or colour[r, channel[r]]."""
    if channel is None:
        return colour.mean(-1)
    return colour.gather(1, channel[:, None])[:, 0]


def output_errors(fine, colour=None, channel=None):
    """(dy_r/dz_rs [R,S,3], dy_r/dsigma_raw_rs [R,S]) for every sample, from ONE
    autograd.grad(create_graph=True) of sum_r y_r (rays are independent).

    colour: the rendered colour [R, 3] in graph (default: sum_s w_s sigmoid(z_s) from `fine`).
    """
    if colour is None:
        colour = torch.sum(fine.weights[..., None] * torch.sigmoid(fine.rgb_logits), dim=-2)
    y = ray_scalar(colour, channel)
    dz, ds = torch.autograd.grad(y.sum(), (fine.rgb_logits, fine.sigma_raw), create_graph=True,
                                 allow_unused=True)
    dz = torch.zeros_like(fine.rgb_logits) if dz is None else dz
    ds = torch.zeros_like(fine.sigma_raw) if ds is None else ds
    return dz, ds


def sample_points(rays, z):
    """Sample positions o + d z [R, S, 3] (d unnormalised, as the renderer) and view dirs [R, 3]."""
    return rays[:, None, 0:3] + rays[:, None, 3:6] * z[..., None], rays[:, 8:11]


def ray_jacobians(renderer, fine, pts, viewdirs, subset="rgb", channel=None, colour=None):
    """[R, P] Jacobians of y_r w.r.t. the fine parameters of `subset`, differentiable.

    fine: FineSamples of the render (graph attached); pts [R, S, 3] and viewdirs [R, 3]: where
    the fine network was evaluated (`sample_points`); colour: the rendered colour [R, 3] (in
    graph) if it is not sum_s w_s sigmoid(z_s) (e.g. white background).
    """
    net = renderer.fine
    names = subset_names(net, subset)
    if names == ["rgb_linear.weight"]:
        return rgb_layer_jacobian(fine, channel).flatten(1)
    dz, ds = output_errors(fine, colour, channel)
    prefixes = []
    for name in names:
        prefix = name.rsplit(".", 1)[0]
        if prefix != "rgb_linear" and prefix not in prefixes:
            prefixes.append(prefix)
    taps, du = {}, {}
    if prefixes:
        out, taps = net.forward_taps(renderer.pos_enc(pts), renderer.dir_enc(viewdirs)[:, None, :])
        grads = torch.autograd.grad((out.rgb_logits, out.sigma_raw), [taps[p].u for p in prefixes],
                                    grad_outputs=(dz, ds), create_graph=True)
        du = dict(zip(prefixes, grads))
    parts = []
    for name in names:
        prefix, kind = name.rsplit(".", 1)
        if prefix == "rgb_linear":
            x, d = fine.features, dz
        else:
            x, d = taps[prefix].x, du[prefix]
        if kind == "weight":
            parts.append(torch.einsum("rso,rsi->roi", d, x).flatten(1))
        else:
            parts.append(d.sum(1))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]
