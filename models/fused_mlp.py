"""The NeRF MLP of an inference pass in one Triton kernel (the float16 engine's `kernel` path).

Per block of BM points the kernel reads the zero-padded encoded position [BM, C] once, runs the
trunk (D layers of width W, the skip input [gamma(x), h] read as two K-blocks instead of a
concatenation), then the composed head (models.nerf.NeRF._composed_head: alpha as a row sum;
feature_linear and views_linears.0 as one W -> W/2 product plus the ray's view term; rgb_linear)
and writes only what the caller keeps: sigma_raw, the colour logits, and the rgb_linear input
with `features`. The activations stay on chip; the layered half engine writes and reads a [M, W]
activation per layer (about 4 KB a point for the 8 x 256 trunk), which is what bounded a render.

Arithmetic is that of the layered float16 engine: float16 operands, float32 accumulation, every
layer's output rounded to float16 after its bias (and ReLU), the head's pre-activation rounded
before the float16 view term is added. Only the order of each dot product's sums differs.
The slow twin, `models._reference.fused_mlp_field`, writes the same roundings as plain torch ops,
layer by layer (tests/test_fused_mlp.py checks the kernel against it, on the CPU through Triton's
interpreter).

Shapes the kernel takes (`supports`): W a power of two >= 32 (the activation is two W/2 halves,
each a power-of-two tile), one skip or none, the position input padded to C = a multiple of 16,
float16 only. Anything else keeps the layered half engine.
"""
import weakref

import torch
import torch.nn.functional as F

try:                                    # a CPU install may have no Triton: the kernel path is then never taken
    import triton
    import triton.language as tl
except ImportError:                     # pragma: no cover - exercised where Triton is absent
    triton = None

BLOCK_M = 128                           # points per program (measured on the H200: docs/PERFORMANCE.md)
NUM_WARPS = 8
NUM_STAGES = 1
RGB_PAD = 16                            # rgb_linear's 3 outputs padded to the smallest dot width


def available():
    return triton is not None


def supports(net, dtype):
    """Whether the kernel computes `net` (a models.nerf.NeRF) for activations of `dtype`."""
    W = net.W
    return (available() and dtype == torch.float16 and W >= 32 and W & (W - 1) == 0
            and len(net.skips) <= 1 and all(0 <= s < net.D - 1 for s in net.skips))


# -- weights, packed once per parameter version ---------------------------------------------------
_PACKED = weakref.WeakKeyDictionary()   # net -> (key, tensors): repacked only when a parameter changes


def input_width(net):
    """The position input's width in the kernel: a power of two >= 16 (a dot's K tile; 63 -> 64)."""
    return max(16, 1 << (net.input_ch - 1).bit_length())


def pack(net, dtype=torch.float16):
    """The kernel's weights of `net` in `dtype`: (trunk [sum of K_i x W], trunk biases [D, W],
    head [W, W/2], head bias [W/2], alpha [W], alpha bias (float), rgb [W/2, RGB_PAD], rgb bias
    [RGB_PAD]). Every matrix transposed to K x N, row-major; the position columns of layer 0 and of
    the layer after the skip zero-padded to C. The head is composed in the parameters' precision
    and cast once, as models.nerf.NeRF._composed_head does."""
    params = list(net.parameters())
    key = (dtype, tuple((p.data_ptr(), p._version) for p in params))
    hit = _PACKED.get(net)
    if hit is not None and hit[0] == key:
        return hit[1]
    c, C, W, H = net.input_ch, input_width(net), net.W, net.W // 2
    with torch.no_grad():
        blocks = []
        for i, layer in enumerate(net.pts_linears):
            w = layer.weight
            if i == 0:
                w = F.pad(w, (0, C - c))
            elif i - 1 in net.skips:
                w = torch.cat((F.pad(w[:, :c], (0, C - c)), w[:, c:]), dim=1)
            blocks.append(w.t().reshape(-1))
        trunk = torch.cat(blocks).to(dtype).contiguous()
        biases = torch.stack([layer.bias for layer in net.pts_linears]).to(dtype).contiguous()
        v = net.views_linears[0]
        vf = v.weight[:, :W]
        head = (vf @ net.feature_linear.weight).t().to(dtype).contiguous()              # [W, H]
        head_b = (vf @ net.feature_linear.bias + v.bias).to(dtype).contiguous()
        alpha = net.alpha_linear.weight[0].to(dtype).contiguous()
        alpha_b = float(net.alpha_linear.bias.to(dtype)[0])
        rgb = F.pad(net.rgb_linear.weight, (0, 0, 0, RGB_PAD - 3)).t().to(dtype).contiguous()  # [H, 16]
        rgb_b = F.pad(net.rgb_linear.bias, (0, RGB_PAD - 3)).to(dtype).contiguous()
    packed = (trunk, biases, head, head_b, alpha, alpha_b, rgb, rgb_b)
    _PACKED[net] = (key, packed)
    return packed


# -- the kernel -----------------------------------------------------------------------------------
if triton is not None:
    @triton.jit
    def _tile(ptr, row0, col0, ld, R: tl.constexpr, N: tl.constexpr):
        r = row0 + tl.arange(0, R)
        c = col0 + tl.arange(0, N)
        return tl.load(ptr + r[:, None] * ld + c[None, :])

    @triton.jit
    def _bias_relu(acc, b_ptr, col0, H: tl.constexpr):
        b = tl.load(b_ptr + col0 + tl.arange(0, H)).to(tl.float32)
        return tl.maximum(acc + b[None, :], 0.0).to(tl.float16)

    @triton.jit
    def _half(x, lo, hi, w_ptr, b_ptr, col0, C: tl.constexpr, H: tl.constexpr, WITH_X: tl.constexpr):
        """One output half [BM, H] of a trunk layer: [x,] lo, hi times the layer's K x 2H weight."""
        W: tl.constexpr = 2 * H
        if WITH_X:
            acc = tl.dot(x, _tile(w_ptr, 0, col0, W, C, H))
            acc = tl.dot(lo, _tile(w_ptr, C, col0, W, H, H), acc)
            acc = tl.dot(hi, _tile(w_ptr, C + H, col0, W, H, H), acc)
        else:
            acc = tl.dot(lo, _tile(w_ptr, 0, col0, W, H, H))
            acc = tl.dot(hi, _tile(w_ptr, H, col0, W, H, H), acc)
        return _bias_relu(acc, b_ptr, col0, H)

    @triton.jit(do_not_specialize=["M", "S"])       # one compiled kernel for every point and sample count
    def _field_kernel(x_ptr, x_ld, trunk_ptr, bias_ptr, head_ptr, head_b_ptr, alpha_ptr, alpha_b,
                      rgb_ptr, rgb_b_ptr, view_ptr, sigma_ptr, logits_ptr, feat_ptr, M, S,
                      BM: tl.constexpr, C: tl.constexpr, H: tl.constexpr, D: tl.constexpr, SKIP: tl.constexpr,
                      RGB: tl.constexpr, COLOUR: tl.constexpr, FEATURES: tl.constexpr):
        W: tl.constexpr = 2 * H
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        live = rows < M
        cols_c = tl.arange(0, C)
        x = tl.load(x_ptr + rows[:, None] * x_ld + cols_c[None, :], mask=live[:, None], other=0.0)
        # layer 0: K = C
        lo = _bias_relu(tl.dot(x, _tile(trunk_ptr, 0, 0, W, C, H)), bias_ptr, 0, H)
        hi = _bias_relu(tl.dot(x, _tile(trunk_ptr, 0, H, W, C, H)), bias_ptr, H, H)
        for i in tl.static_range(1, D):
            # layer i's K x W block starts after layer 0's C x W, i - 1 blocks of W x W and, past the
            # skip, the skip layer's extra C x W
            if i > SKIP + 1:
                w_ptr = trunk_ptr + (2 * C * W + (i - 1) * W * W)
            else:
                w_ptr = trunk_ptr + (C * W + (i - 1) * W * W)
            b_ptr = bias_ptr + i * W
            new_lo = _half(x, lo, hi, w_ptr, b_ptr, 0, C, H, i == SKIP + 1)
            hi = _half(x, lo, hi, w_ptr, b_ptr, H, C, H, i == SKIP + 1)
            lo = new_lo
        # density: alpha_linear as a row sum, rounded as the float16 GEMM's output
        cols_h = tl.arange(0, H)
        a_lo = tl.load(alpha_ptr + cols_h).to(tl.float32)
        a_hi = tl.load(alpha_ptr + H + cols_h).to(tl.float32)
        sigma = (tl.sum(lo.to(tl.float32) * a_lo[None, :], 1) + tl.sum(hi.to(tl.float32) * a_hi[None, :], 1)
                 + alpha_b)
        tl.store(sigma_ptr + rows, sigma.to(tl.float16), mask=live)
        if COLOUR:
            # the composed feature -> views_linears.0 map, its float16 output plus the ray's view term
            y = tl.dot(lo, _tile(head_ptr, 0, 0, H, H, H))
            y = tl.dot(hi, _tile(head_ptr, H, 0, H, H, H), y)
            y = (y + tl.load(head_b_ptr + cols_h).to(tl.float32)[None, :]).to(tl.float16)
            ray = rows // S
            v = tl.load(view_ptr + ray[:, None] * H + cols_h[None, :], mask=live[:, None], other=0.0)
            h128 = tl.maximum(y.to(tl.float32) + v.to(tl.float32), 0.0).to(tl.float16)
            cols_r = tl.arange(0, RGB)
            lg = tl.dot(h128, _tile(rgb_ptr, 0, 0, RGB, H, RGB))
            lg = (lg + tl.load(rgb_b_ptr + cols_r).to(tl.float32)[None, :]).to(tl.float16)
            tl.store(logits_ptr + rows[:, None] * 3 + cols_r[None, :], lg, mask=live[:, None] & (cols_r[None, :] < 3))
            if FEATURES:
                tl.store(feat_ptr + rows[:, None] * H + cols_h[None, :], h128, mask=live[:, None])


def field(net, x, view_term, samples, colour=True, features=True, block_m=None, num_warps=None, num_stages=None):
    """(sigma_raw [M], logits [M, 3] or None, features [M, W/2] or None), all float16, of M points.

    x: [M, >= C] float16 whose first C columns are the zero-padded encoded positions (any row
    stride: the trunk buffer of models.nerf.EncodedInput is read in place); view_term: [M / samples,
    W/2] float16, the view term of each ray (point m belongs to ray m // samples).
    block_m / num_warps / num_stages: the launch configuration (benchmarks sweep it)."""
    C, W, H = input_width(net), net.W, net.W // 2
    M = x.shape[0]
    if x.shape[1] < C or x.stride(1) != 1 or x.dtype != torch.float16:
        raise ValueError(f"fused MLP: input [{M}, >= {C}] float16 with unit column stride expected, "
                         f"got {tuple(x.shape)} {x.dtype} strides {x.stride()}")
    trunk, biases, head, head_b, alpha, alpha_b, rgb, rgb_b = pack(net)
    sigma = x.new_empty(M)
    logits = x.new_empty((M, 3)) if colour else None
    feats = x.new_empty((M, H)) if colour and features else None
    view = view_term.contiguous() if colour else sigma
    bm = block_m or BLOCK_M
    grid = (triton.cdiv(M, bm),)
    skip = net.skips[0] if net.skips else net.D      # none: no layer index matches SKIP + 1
    _field_kernel[grid](x, x.stride(0), trunk, biases, head, head_b, alpha, alpha_b, rgb, rgb_b, view, sigma,
                        logits if logits is not None else sigma, feats if feats is not None else sigma, M, samples,
                        BM=bm, C=C, H=H, D=net.D, SKIP=skip, RGB=RGB_PAD, COLOUR=colour,
                        FEATURES=feats is not None, num_warps=num_warps or NUM_WARPS,
                        num_stages=num_stages or NUM_STAGES)
    return sigma, logits, feats
