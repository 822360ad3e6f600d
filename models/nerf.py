"""The NeRF MLP, with the original's parameter names so checkpoints load both ways.

    pts_linears.0..7   8 x 256 trunk, ReLU; after layer 4 the encoded position is prepended
                       ([gamma(x), h], 319-d) and fed to pts_linears.5
    alpha_linear       256 -> 1     raw density
    feature_linear     256 -> 256   no activation
    views_linears.0    (256 + 27) -> 128, ReLU   input [feature, gamma(d)]
    rgb_linear         128 -> 3     colour logits

Modules are created in the original's order, so `parameters()` (and hence the Adam state in a
checkpoint) lines up with the original's. `field` returns the colour logits, the raw density
and the 128-d input of `rgb_linear` (needed by the closed-form Jacobians and by propagation).

How a call evaluates is one explicit `models.engine.Path` (the renderer derives it from its
`Engine` value): the layered network with autograd (`forward`, the reference; on CUDA with the
fused-epilogue training layers), 16-bit training passes on float32 weights (`forward_mixed`), or
the inference fast paths without autograd (fused layers, padded input, composed head, the half
engine). Each computes the layered network's values up to rounding (tests/test_fused_inference.py,
tests/test_precision.py).
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.engine import REFERENCE, Path


class LayerTap(NamedTuple):
    """One affine layer of a forward pass: its input x and its output u = x W^T + b (before any
    activation). Per-sample parameter gradients are outer products of dL/du with x."""
    x: torch.Tensor
    u: torch.Tensor


class EncodedInput(NamedTuple):
    """Encoded positions already written into the padded trunk's input buffer (`NeRF.encoded_input`):
    buf [M, pad_c + W] = [gamma(x), 0, (room for the skip activation)], lead = the points' leading shape,
    channels = the encoding's width (`shape` and `dtype` read like the encoded tensor's)."""
    buf: torch.Tensor
    lead: torch.Size
    channels: int

    @property
    def shape(self):
        return torch.Size((*self.lead, self.channels))

    @property
    def dtype(self):
        return self.buf.dtype


class FieldOutput(NamedTuple):
    rgb_logits: Optional[torch.Tensor]    # [..., 3] pre-sigmoid colour (None: colour=False)
    sigma_raw: torch.Tensor               # [...]    pre-ReLU density
    rgb_features: Optional[torch.Tensor]  # [..., W/2] input of rgb_linear (post-ReLU; None: features=False)
    trunk: Optional[torch.Tensor] = None  # [..., W] the trunk output h (trunk=True: the Semantic-NeRF heads read it)


def _bias_grad(gu):
    """Column sums of gu [M, N] as a matrix-vector product: PyTorch's sum over dim 0 of a tall
    matrix ran at a fraction of the memory bandwidth (a third of a float16 training step's
    time went to these sums); a GEMV reads gu once at full speed."""
    return gu.t().mv(gu.new_ones(gu.shape[0]))


class _Linear(torch.autograd.Function):
    """x W^T + b with autograd (`relu`: the bias and ReLU in the GEMM's epilogue, one write of the
    activation instead of three). Backward is autograd's for the eager ops: dL/du = dL/dy where
    y > 0 with the ReLU (y is saved, as ReLU saves it), the two GEMMs, and the bias gradient as
    a GEMV (`_bias_grad`). Slow twin: [F.relu](F.linear(x, W, b)) (tests/test_loss_scale.py)."""

    @staticmethod
    def forward(ctx, x, weight, bias, relu):
        x2 = x.reshape(-1, x.shape[-1])
        flat = torch._addmm_activation(bias, x2, weight.t()) if relu else torch.addmm(bias, x2, weight.t())
        ctx.relu = relu
        ctx.save_for_backward(x, weight, flat if relu else None)
        return flat.reshape(*x.shape[:-1], flat.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        gu = grad.reshape(-1, grad.shape[-1])
        if ctx.relu:
            gu = torch.ops.aten.threshold_backward(gu, y, 0)
        gx = (gu @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
        gw = gu.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        gb = _bias_grad(gu) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def linear_train(x, weight, bias, fused, relu=False):
    """[relu](x W^T + b) with autograd; fused: `_Linear` (epilogue ReLU, GEMV bias gradient;
    training on CUDA), else the eager ops."""
    if fused:
        return _Linear.apply(x, weight, bias, relu)
    y = F.linear(x, weight, bias)
    return F.relu(y) if relu else y


def linear_relu(x, layer, fused=False):
    """relu(x W^T + b) for x [..., in]. fused: one GEMM with the bias and ReLU in its epilogue
    (cuBLASLt on CUDA), so the activation is written once instead of three times (what bounds
    rendering speed); same arithmetic as the eager pair. Only valid without autograd."""
    if not fused:
        return F.relu(layer(x))
    flat = torch._addmm_activation(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight.t())
    return flat.reshape(*x.shape[:-1], flat.shape[-1])


def _relu_linear_into(out, x, weight, bias, direct):
    """out[:] = relu(x W^T + b) without autograd, `out` a column block of a wider row-major
    buffer (the skip input [gamma(x), h] built in place instead of concatenated).
    direct: the GEMM writes the block itself (ldc = the buffer's width); right where the ReLU is
    a separate pass anyway (CPU). Else the fused GEMM writes a contiguous temporary and one copy
    moves it: on CUDA the cuBLASLt bias+ReLU epilogue needs a contiguous result (ATen's
    isInputCompliesAddmmCudaLt), and a strided out= falls back to a bias broadcast-copy, a
    beta=1 GEMM and an in-place ReLU, 5 passes over the block instead of 3."""
    if direct:
        torch._addmm_activation(bias, x, weight.t(), out=out)
    else:
        out.copy_(torch._addmm_activation(bias, x, weight.t()))


def _linear_n8(x, weight, bias):
    """x W^T + b for x [M, K] without autograd, W's rows and b zero-padded to a multiple of 8
    outputs and the padding sliced off (a view with that row stride): cuBLAS sent the unaligned
    N = W/2 + 1 = 129 of the composed head (and rgb_linear's 3) to a slow kernel (21.6 of a
    122 ms float16 render). The kept outputs are the same sums; the added ones are zeros."""
    n = weight.shape[0]
    pad = (-n) % 8
    return torch.addmm(F.pad(bias, (0, pad)), x, F.pad(weight, (0, 0, 0, pad)).t())[:, :n]


class NeRF(nn.Module):
    def __init__(self, D=8, W=256, input_ch=63, input_ch_views=27, skips=(4,)):
        super().__init__()
        self.D, self.W = D, W
        self.input_ch, self.input_ch_views = input_ch, input_ch_views
        self.skips = tuple(skips)
        self.pts_linears = nn.ModuleList(
            [nn.Linear(input_ch, W)]
            + [nn.Linear(W + input_ch, W) if i in self.skips else nn.Linear(W, W) for i in range(D - 1)])
        self.views_linears = nn.ModuleList([nn.Linear(input_ch_views + W, W // 2)])
        self.feature_linear = nn.Linear(W, W)
        self.alpha_linear = nn.Linear(W, 1)
        self.rgb_linear = nn.Linear(W // 2, 3)

    # -- the one entry -----------------------------------------------------------------------
    def forward(self, x_enc, d_enc):
        """The layered network (`REFERENCE`): x_enc [..., S, input_ch]; d_enc broadcastable to
        [..., S, input_ch_views] (e.g. [R, 1, 27])."""
        return self.field(x_enc, d_enc, REFERENCE)

    def field(self, x_enc, d_enc, path: Path, features=True, colour=True, trunk=False):
        """FieldOutput of encoded positions x_enc and directions d_enc, evaluated as `path` says.
        features=False: rgb_features may be None; colour=False: density only (rgb_logits and
        rgb_features None); trunk=True: the trunk output h is returned too (in the pass's dtype).

        Splitting views_linears.0 into its feature and direction columns computes the same
        product as the original's concatenation without copying the direction to every sample."""
        if path.grad and path.dtype is not None:
            return self.forward_mixed(x_enc, d_enc, path.dtype, features, epilogue=path.epilogue, colour=colour,
                                      trunk=trunk)
        h = self.trunk(x_enc, path)
        fast = not path.grad and path.fused and (isinstance(x_enc, EncodedInput) or x_enc.dim() >= 2)
        half = h.dtype != self.alpha_linear.weight.dtype           # the half engine (no autograd)
        keep = h if trunk else None
        if not colour:
            a = self.alpha_linear
            return FieldOutput(None, F.linear(h, a.weight.to(h.dtype), a.bias.to(h.dtype))[..., 0], None, keep)
        if half or (fast and path.compose_head):
            sigma_raw, logits, h128 = self._composed_head(h, self.view_bias(d_enc))
            return FieldOutput(logits, sigma_raw, h128, keep)
        a = self.alpha_linear
        sigma_raw = linear_train(h, a.weight, a.bias, path.epilogue)[..., 0]
        logits, h128 = self.head(h, self.view_bias(d_enc), path.epilogue)
        return FieldOutput(logits, sigma_raw, h128, keep)

    def trunk(self, x_enc, path: Path = REFERENCE):
        """W-d trunk features [..., W] of encoded positions [..., input_ch] (paths in the
        parameters' dtype or the half engine; the 16-bit training pass is `forward_mixed`'s)."""
        if isinstance(x_enc, EncodedInput):
            return self._trunk_padded(None, path.skip_direct, x_enc)
        fast = not path.grad and path.fused and x_enc.dim() >= 2
        if (fast and path.pad_k) or x_enc.dtype != self.pts_linears[0].weight.dtype:
            return self._trunk_padded(x_enc, path.skip_direct)
        return self._trunk_layered(x_enc, path.epilogue, fast)

    def padded_input(self, encoder, pts, dtype):
        """The zero-padded encoded input of `forward_mixed` ([..., input_ch rounded up to a multiple of
        8] in the 16-bit `dtype`), written by `encoder` (encode_into) without an encoded float32 copy,
        a cast and a pad of its own: the same values as F.pad(encoder(pts).to(dtype), ...)."""
        c = self.input_ch
        x = pts.reshape(-1, pts.shape[-1])
        buf = x.new_empty((x.shape[0], c + (-c) % 8), dtype=dtype)
        encoder.encode_into(x, buf[:, :c])
        buf[:, c:] = 0
        return buf.reshape(*pts.shape[:-1], buf.shape[-1])

    def encoded_input(self, encoder, pts, dtype):
        """EncodedInput of points pts [..., 3]: the padded trunk's input buffer in `dtype` with the
        position encoding written into it by `encoder` (models.encoding.PositionalEncoding.encode_into:
        no encoded copy, cast or concatenation of its own). Same values as encoding, casting and
        `_trunk_padded`'s copy (tests/test_fused_inference.py)."""
        c, W = self.input_ch, self.W
        pad_c = c + (-c) % 8
        x = pts.reshape(-1, pts.shape[-1])
        buf = x.new_empty((x.shape[0], pad_c + (W if self.skips else 0)), dtype=dtype)
        encoder.encode_into(x, buf[:, :c])
        buf[:, c:pad_c] = 0       # zero weights times uninitialised memory could give NaN
        return EncodedInput(buf, pts.shape[:-1], c)

    def density(self, x_enc, path: Path = REFERENCE):
        """Raw density only (the coarse pass of an image render needs nothing else)."""
        return self.field(x_enc, None, path, colour=False).sigma_raw

    # -- the paths ---------------------------------------------------------------------------
    def _trunk_layered(self, x_enc, epilogue=False, fused_relu=False):
        """The trunk layer by layer: with autograd as `_Linear` (epilogue) or the eager pair;
        without, optionally one fused GEMM+bias+ReLU call per layer (`linear_relu`)."""
        h = x_enc
        for i, layer in enumerate(self.pts_linears):
            h = (linear_train(h, layer.weight, layer.bias, True, relu=True) if epilogue
                 else linear_relu(h, layer, fused_relu))
            if i in self.skips:
                h = torch.cat((x_enc, h), dim=-1)
        return h

    def _padded_weight(self, i, pad):
        """pts_linears.i's weight for an input whose position part is zero-padded by `pad`
        channels: zero columns after the position columns of layer 0 and of the layer after a skip."""
        w = self.pts_linears[i].weight
        c = self.input_ch
        if i == 0:
            return F.pad(w, (0, pad))
        if i - 1 in self.skips:
            return torch.cat((F.pad(w[:, :c], (0, pad)), w[:, c:]), dim=1)
        return w

    def _trunk_padded(self, x_enc, direct, encoded=None):
        """The trunk without autograd, in x_enc's dtype (the half engine's, or the parameters'):
        fused GEMM+bias+ReLU layers on weights cast to it.

        Alignment: K = 63 and 319 leave cuBLAS's tensor-core kernels unaligned, so the position
        input is zero-padded to pad_c = 64 channels (and the weights' matching columns): the
        same sums plus zeros.
        Skips without concatenation: one buffer [M, pad_c + W] holds [gamma(x), 0, h]. The
        encoded input is copied into it once (it is also layer 0's padded input, read in place),
        the layer before a skip writes its activation into the last W columns
        (`_relu_linear_into`), and the layer after reads the whole buffer as its K = pad_c + W
        input. This replaces an F.pad of the input and a [M, pad_c + W] torch.cat per skip.
        direct: the layer before a skip writes into the buffer in place (`_relu_linear_into`).
        encoded: an EncodedInput whose buffer already holds the encoded input (x_enc is then None)."""
        c, W = self.input_ch, self.W
        pad_c = c + (-c) % 8
        last = len(self.pts_linears) - 1
        if encoded is None:
            dt, lead = x_enc.dtype, x_enc.shape[:-1]
            x = x_enc.reshape(-1, c)
            buf = x.new_empty((x.shape[0], pad_c + (W if self.skips else 0)))
            buf[:, :c] = x
            buf[:, c:pad_c] = 0       # zero weights times uninitialised memory could give NaN
        else:
            buf, lead, _ = encoded
            dt, x = buf.dtype, buf[:, :c]
        h = buf[:, :pad_c]
        for i, layer in enumerate(self.pts_linears):
            w = self._padded_weight(i, pad_c - c).to(dt)
            if i in self.skips and i < last:
                # after a skip (consecutive skips) the input is the buffer itself: no in-place write
                _relu_linear_into(buf[:, pad_c:], h, w, layer.bias.to(dt), direct and h is not buf)
                h = buf
            else:
                h = torch._addmm_activation(layer.bias.to(dt), h, w.t())
        if last in self.skips:    # as the layered trunk (no head takes this width)
            h = torch.cat((x, h), dim=-1)
        return h.reshape(*lead, h.shape[-1])

    def _composed_head(self, h, view_term):
        """(sigma_raw, logits, h128) without autograd: feature_linear has no activation, so
        views_linears.0 after it is one affine map of h; stacked with alpha_linear that is a
        single 256 -> 129 GEMM instead of three. It and rgb_linear run with their outputs
        zero-padded to a multiple of 8 (`_linear_n8`); sigma_raw and logits are strided views
        into the padded results. Equal to the layered head up to rounding."""
        W, H, dt = self.W, self.W // 2, h.dtype
        v = self.views_linears[0]
        vf = v.weight[:, :W]
        # composed in the weights' precision, then cast once to the activations' (half engine)
        weight = torch.cat((vf @ self.feature_linear.weight, self.alpha_linear.weight), dim=0).to(dt)
        bias = torch.cat((vf @ self.feature_linear.bias + v.bias, self.alpha_linear.bias)).to(dt)
        y = _linear_n8(h.reshape(-1, W), weight, bias).reshape(*h.shape[:-1], H + 1)
        h128 = F.relu(y[..., :H] + view_term.to(dt))
        r = self.rgb_linear
        logits = _linear_n8(h128.reshape(-1, H), r.weight.to(dt), r.bias.to(dt))
        return y[..., H], logits.reshape(*h128.shape[:-1], logits.shape[-1]), h128

    def forward_mixed(self, x_enc, d_enc, dtype, features=True, epilogue=False, colour=True, trunk=False):
        """The autograd pass in a lower precision `dtype` (Precision.train_dtype: float16 for
        --precision mixed; bfloat16 in the benchmarks): every affine layer runs on `dtype` casts of
        the float32 master weights (gradients reach them in float32 through the casts),
        activations stay in `dtype`, and the outputs are cast back to float32 for compositing,
        losses and Jacobians (the rgb_linear inputs only with `features`; else rgb_features is
        None; the trunk output stays in `dtype`). The position input is zero-padded to a multiple
        of 8 channels (with zero weight columns: the same sums plus zeros) so that the first and
        the skip layer are tensor-core aligned (x_enc may come padded already: `padded_input`).
        epilogue: the layers as `_Linear`. Same function as
        `forward` up to the rounding of `dtype` (tests/test_precision.py)."""
        c, W = self.input_ch, self.W
        pad = (-c) % 8
        # an input already padded in `dtype` (the renderer's `padded_input`) is used as it is
        x = x_enc if x_enc.shape[-1] == c + pad and x_enc.dtype == dtype else F.pad(x_enc.to(dtype), (0, pad))
        h = x
        for i, layer in enumerate(self.pts_linears):
            h = linear_train(h, self._padded_weight(i, pad).to(dtype), layer.bias.to(dtype), epilogue, relu=True)
            if i in self.skips:
                h = torch.cat((x, h), dim=-1)
        a = self.alpha_linear
        sigma_raw = linear_train(h, a.weight.to(dtype), a.bias.to(dtype), epilogue)[..., 0]
        keep = h if trunk else None
        if not colour:
            return FieldOutput(None, sigma_raw.float(), None, keep)
        view_term = F.linear(d_enc.to(dtype), self.views_linears[0].weight[:, W:].to(dtype))
        logits, h128 = self.head(h, view_term, epilogue, dtype)
        return FieldOutput(logits.float(), sigma_raw.float(), h128.float() if features else None, keep)

    def view_bias(self, d_enc):
        """The direction's contribution to views_linears.0 (per ray, shared by its samples)."""
        return F.linear(d_enc, self.views_linears[0].weight[:, self.W:])

    def head(self, h, view_term, fused=False, dtype=None):
        """Colour logits and rgb_linear input from trunk features and a precomputed view term.
        fused: the layers as `_Linear` (training on CUDA); dtype: weights cast to it (forward_mixed)."""
        v, W = self.views_linears[0], self.W
        cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
        feature = linear_train(h, cast(self.feature_linear.weight), cast(self.feature_linear.bias), fused)
        h128 = F.relu(linear_train(feature, cast(v.weight[:, :W]), cast(v.bias), fused) + view_term)
        return linear_train(h128, cast(self.rgb_linear.weight), cast(self.rgb_linear.bias), fused), h128

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
