"""The NeRF MLP, with the original's parameter names so checkpoints load both ways.

    pts_linears.0..7   8 x 256 trunk, ReLU; after layer 4 the encoded position is prepended
                       ([gamma(x), h], 319-d) and fed to pts_linears.5
    alpha_linear       256 -> 1     raw density
    feature_linear     256 -> 256   no activation
    views_linears.0    (256 + 27) -> 128, ReLU   input [feature, gamma(d)]
    rgb_linear         128 -> 3     colour logits

Modules are created in the original's order, so `parameters()` (and hence the Adam state in a
checkpoint) lines up with the original's. `forward` returns the colour logits, the raw density
and the 128-d input of `rgb_linear` (needed by the closed-form Jacobians and by propagation).

Passes without autograd (image renders, propagation) take fast paths chosen by the network's
`InferenceOptions`; each computes the layered network's values up to rounding (their slow twin
is the autograd path, compared in tests/test_fused_inference.py).
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class LayerTap(NamedTuple):
    """One affine layer of a forward pass: its input x and its output u = x W^T + b (before any
    activation). Per-sample parameter gradients are outer products of dL/du with x."""
    x: torch.Tensor
    u: torch.Tensor


class FieldOutput(NamedTuple):
    rgb_logits: torch.Tensor   # [..., 3] pre-sigmoid colour
    sigma_raw: torch.Tensor    # [...]    pre-ReLU density
    rgb_features: torch.Tensor  # [..., W/2] input of rgb_linear (post-ReLU)


@dataclass(frozen=True)
class InferenceOptions:
    """Fast paths of the passes without autograd (with autograd the layered network always runs)."""
    fused: bool = True          # GEMM + bias + ReLU in one call; False: the layered network throughout
    pad_k: bool = True          # pad the 63-d position input to 64 so every GEMM is tensor-core aligned
    compose_head: bool = True   # alpha + feature_linear + views_linears.0 as one 256 -> 129 GEMM


def linear_relu(x, layer, fused=False):
    """relu(x W^T + b) for x [..., in]. fused: one GEMM with the bias and ReLU in its epilogue
    (cuBLASLt on CUDA), so the activation is written once instead of three times (what bounds
    rendering speed); same arithmetic as the eager pair. Only valid without autograd."""
    if not fused:
        return F.relu(layer(x))
    flat = torch._addmm_activation(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight.t())
    return flat.reshape(*x.shape[:-1], flat.shape[-1])


class NeRF(nn.Module):
    def __init__(self, D=8, W=256, input_ch=63, input_ch_views=27, skips=(4,), inference=InferenceOptions()):
        super().__init__()
        self.D, self.W = D, W
        self.inference = inference      # fast paths of no-autograd passes (not part of the state dict)
        self.input_ch, self.input_ch_views = input_ch, input_ch_views
        self.skips = tuple(skips)
        self.pts_linears = nn.ModuleList(
            [nn.Linear(input_ch, W)]
            + [nn.Linear(W + input_ch, W) if i in self.skips else nn.Linear(W, W) for i in range(D - 1)])
        self.views_linears = nn.ModuleList([nn.Linear(input_ch_views + W, W // 2)])
        self.feature_linear = nn.Linear(W, W)
        self.alpha_linear = nn.Linear(W, 1)
        self.rgb_linear = nn.Linear(W // 2, 3)

    def _fast(self, x):
        """Whether this pass takes the fused inference paths: no autograd, batched input."""
        return self.inference.fused and not torch.is_grad_enabled() and x.dim() >= 2

    def trunk(self, x_enc):
        """W-d trunk features [..., W] of encoded positions [..., input_ch]."""
        fast = self._fast(x_enc)
        if (fast and self.inference.pad_k) or x_enc.dtype != self.pts_linears[0].weight.dtype:
            return self._trunk_padded(x_enc)   # (the half engine always takes this path)
        h = x_enc
        for i, layer in enumerate(self.pts_linears):
            h = linear_relu(h, layer, fast)
            if i in self.skips:
                h = torch.cat((x_enc, h), dim=-1)
        return h

    def _trunk_padded(self, x_enc):
        """The trunk without autograd, with the position input zero-padded to a multiple of 8
        channels (and the weights' matching columns zero-padded): K = 63 and 319 leave cuBLAS's
        tensor-core kernels unaligned. The padded products are the same sums plus zeros."""
        c, dt = self.input_ch, x_enc.dtype
        pad = (-c) % 8
        x = F.pad(x_enc.reshape(-1, c), (0, pad))
        h = x
        for i, layer in enumerate(self.pts_linears):
            w = layer.weight.to(dt)
            if i == 0:
                w = F.pad(w, (0, pad))
            elif i - 1 in self.skips:
                w = torch.cat((F.pad(w[:, :c], (0, pad)), w[:, c:]), dim=1)
            h = torch._addmm_activation(layer.bias.to(dt), h, w.t())
            if i in self.skips:
                h = torch.cat((x, h), dim=-1)
        return h.reshape(*x_enc.shape[:-1], h.shape[-1])

    def _composed_head(self, h, view_term):
        """(sigma_raw, logits, h128) without autograd: feature_linear has no activation, so
        views_linears.0 after it is one affine map of h; stacked with alpha_linear that is a
        single 256 -> 129 GEMM instead of three. Equal to the layered head up to rounding."""
        W, dt = self.W, h.dtype
        v = self.views_linears[0]
        vf = v.weight[:, :W]
        # composed in the weights' precision, then cast once to the activations' (half engine)
        weight = torch.cat((vf @ self.feature_linear.weight, self.alpha_linear.weight), dim=0).to(dt)
        bias = torch.cat((vf @ self.feature_linear.bias + v.bias, self.alpha_linear.bias)).to(dt)
        y = torch.addmm(bias, h.reshape(-1, W), weight.t()).reshape(*h.shape[:-1], W // 2 + 1)
        h128 = F.relu(y[..., :W // 2] + view_term.to(dt))
        logits = F.linear(h128, self.rgb_linear.weight.to(dt), self.rgb_linear.bias.to(dt))
        return y[..., W // 2], logits, h128

    def forward_mixed(self, x_enc, d_enc, dtype, features=True):
        """`forward` with autograd in a lower precision `dtype` (bf16 training, Renderer.train_dtype;
        withheld from --precision, docs/PERFORMANCE.md): every
        affine layer runs on `dtype` casts of the float32 master weights (gradients reach them in
        float32 through the casts), activations stay in `dtype`, and the outputs are cast back to
        float32 for compositing, losses and Jacobians (the rgb_linear inputs only with `features`;
        else rgb_features is None). The position input is zero-padded to a
        multiple of 8 channels (with zero weight columns: the same sums plus zeros) so that the
        first and the skip layer are tensor-core aligned. Same function as `forward` up to the
        rounding of `dtype` (tests/test_precision.py)."""
        c, W = self.input_ch, self.W
        pad = (-c) % 8
        x = F.pad(x_enc.to(dtype), (0, pad))
        h = x
        for i, layer in enumerate(self.pts_linears):
            w = layer.weight
            if i == 0:
                w = F.pad(w, (0, pad))
            elif i - 1 in self.skips:
                w = torch.cat((F.pad(w[:, :c], (0, pad)), w[:, c:]), dim=1)
            h = F.relu(F.linear(h, w.to(dtype), layer.bias.to(dtype)))
            if i in self.skips:
                h = torch.cat((x, h), dim=-1)
        sigma_raw = F.linear(h, self.alpha_linear.weight.to(dtype), self.alpha_linear.bias.to(dtype))[..., 0]
        feature = F.linear(h, self.feature_linear.weight.to(dtype), self.feature_linear.bias.to(dtype))
        v = self.views_linears[0]
        view_term = F.linear(d_enc.to(dtype), v.weight[:, W:].to(dtype))
        h128 = F.relu(F.linear(feature, v.weight[:, :W].to(dtype), v.bias.to(dtype)) + view_term)
        logits = F.linear(h128, self.rgb_linear.weight.to(dtype), self.rgb_linear.bias.to(dtype))
        return FieldOutput(logits.float(), sigma_raw.float(), h128.float() if features else None)

    def view_bias(self, d_enc):
        """The direction's contribution to views_linears.0 (per ray, shared by its samples)."""
        return F.linear(d_enc, self.views_linears[0].weight[:, self.W:])

    def head(self, h, view_term):
        """Colour logits and rgb_linear input from trunk features and a precomputed view term."""
        v = self.views_linears[0]
        feature = self.feature_linear(h)
        h128 = F.relu(F.linear(feature, v.weight[:, :self.W], v.bias) + view_term)
        return self.rgb_linear(h128), h128

    def forward(self, x_enc, d_enc):
        """x_enc [..., S, input_ch]; d_enc broadcastable to [..., S, input_ch_views] (e.g. [R, 1, 27]).

        Splitting views_linears.0 into its feature and direction columns computes the same
        product as the original's concatenation without copying the direction to every sample.
        """
        h = self.trunk(x_enc)
        if self._fast(h) and (self.inference.compose_head or h.dtype != self.rgb_linear.weight.dtype):
            sigma_raw, logits, h128 = self._composed_head(h, self.view_bias(d_enc))
            return FieldOutput(logits, sigma_raw, h128)
        sigma_raw = self.alpha_linear(h)[..., 0]
        logits, h128 = self.head(h, self.view_bias(d_enc))
        return FieldOutput(logits, sigma_raw, h128)

    def density(self, x_enc):
        """Raw density only (the coarse pass of an image render needs nothing else)."""
        h = self.trunk(x_enc)
        return F.linear(h, self.alpha_linear.weight.to(h.dtype), self.alpha_linear.bias.to(h.dtype))[..., 0]

    def forward_taps(self, x_enc, d_enc):
        """`forward`, plus a LayerTap per affine layer, keyed by parameter prefix (`pts_linears.6`,
        `alpha_linear`, `feature_linear`, `views_linears.0`, `rgb_linear`), in graph.

        Same values as `forward`. The tap of views_linears.0 has x = [feature, gamma(d)] (the
        direction broadcast to every sample), matching the layer's full weight.
        """
        taps = {}
        h = x_enc
        for i, layer in enumerate(self.pts_linears):
            u = layer(h)
            taps[f"pts_linears.{i}"] = LayerTap(h, u)
            h = F.relu(u)
            if i in self.skips:
                h = torch.cat((x_enc, h), dim=-1)
        u_alpha = self.alpha_linear(h)
        taps["alpha_linear"] = LayerTap(h, u_alpha)
        feature = self.feature_linear(h)
        taps["feature_linear"] = LayerTap(h, feature)
        v = self.views_linears[0]
        u_view = F.linear(feature, v.weight[:, :self.W], v.bias) + self.view_bias(d_enc)
        d_full = d_enc.expand(*feature.shape[:-1], d_enc.shape[-1])
        taps["views_linears.0"] = LayerTap(torch.cat((feature, d_full), dim=-1), u_view)
        h128 = F.relu(u_view)
        logits = self.rgb_linear(h128)
        taps["rgb_linear"] = LayerTap(h128, logits)
        return FieldOutput(logits, u_alpha[..., 0], h128), taps
