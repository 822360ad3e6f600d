"""The inference fast paths of models/nerf.py and models/rendering.py against their slow twins.

Without autograd the field runs fused GEMM+bias+ReLU epilogues, a zero-padded 64-d position
input, and alpha/feature/views composed into one GEMM; image renders skip the coarse colour
head. Each must compute what the layered, eager network computes: to float64 rounding in
float64, to float32 rounding in float32.
"""
import pytest
import torch

from models.encoding import PositionalEncoding
from models.engine import Engine
from models.nerf import NeRF
from models.rendering import Renderer, RenderOptions
from utils.precision import Precision

LAYERED = Engine(fused=False)       # the inference passes on the layered network


def _infer(net, x, d, engine=Engine(), skip_write=None):
    """The network's pass without autograd as a renderer with `engine` runs it (on the CPU)."""
    from dataclasses import replace
    path = replace(engine, skip_write=skip_write or engine.skip_write).path(False, "cpu")
    with torch.no_grad():
        return net.field(x, d, path), net.density(x, path), net.trunk(x, path)


def _rays(n, dtype=torch.float64, generator=None, near=0.1, far=4.0):
    """n rays [n, 11] from near the origin, unit directions, depth range [near, far]."""
    o = torch.randn(n, 3, dtype=dtype, generator=generator) * 0.2
    d = torch.nn.functional.normalize(torch.randn(n, 3, dtype=dtype, generator=generator), dim=-1)
    return torch.cat((o, d, torch.full((n, 1), near, dtype=dtype), torch.full((n, 1), far, dtype=dtype), d), 1)


def test_fast_paths_are_on_by_default():
    e = Engine()
    assert (e.fused, e.pad_k, e.compose_head, e.precision.name) == (True, True, True, "fp32")
    p = e.path(False, "cpu")
    assert not p.grad and p.fused and p.pad_k and p.compose_head and p.skip_direct and p.dtype is None
    assert not e.path(True, "cpu").epilogue and e.path(True, "cuda").epilogue     # the _Linear layers: CUDA only


def _eager(net, x, d):
    with torch.enable_grad():          # the autograd path is the plain layered network
        out = net(x, d)
    return [t.detach() for t in out[:3]]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("pad,compose", [(True, True), (False, True), (True, False), (False, False)])
def test_fused_field_equals_layered_field(dtype, tol, pad, compose):
    torch.manual_seed(0)
    net = NeRF(W=64).to(dtype)
    for p in net.parameters():         # non-zero biases and weights of realistic scale
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(7, 11, 63, dtype=dtype)
    d = torch.randn(7, 1, 27, dtype=dtype)
    ref = _eager(net, x, d)
    got, sigma, _ = _infer(net, x, d, Engine(fused=True, pad_k=pad, compose_head=compose))
    for a, b in zip(got[:3], ref):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max()), (a - b).abs().max()
    assert torch.allclose(sigma, ref[1], rtol=tol, atol=tol * ref[1].abs().max())


def test_image_render_without_coarse_colour_equals_full_render():
    torch.manual_seed(1)
    coarse, fine = NeRF(W=32).double(), NeRF(W=32).double()
    r = Renderer(coarse, fine, PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4),
                 RenderOptions(n_samples=16, n_importance=16, netchunk=100)).double()
    rays = _rays(40)
    ref = r.with_engine(LAYERED).render_chunked(rays, chunk=13, keys=("rgb", "depth", "acc", "rgb_coarse"))
    fast = r.render_chunked(rays, chunk=13, keys=("rgb", "depth", "acc"))
    for k in ("rgb", "depth", "acc"):
        assert torch.allclose(fast[k], ref[k], rtol=1e-10, atol=1e-12), k
    full = r.render_rays(rays, train=False)
    assert torch.allclose(full["rgb_coarse"], ref["rgb_coarse"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_engine_follows_the_float32_render(dtype):
    """--precision fp16: the field runs in half precision without autograd, outputs cast back.
    The render must stay within half-precision rounding of the float32 render (float16 keeps
    11 significant bits, bfloat16 8), and passes with autograd must ignore the engine."""
    from tests.tiny_models import tiny_renderer
    r = tiny_renderer(seed=2, width=32, n_samples=16, n_importance=16, dtype=torch.float32)
    r.opts.netchunk = 200
    gen = torch.Generator().manual_seed(3)
    o = torch.randn(50, 3, generator=gen) * 0.2
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen), dim=-1)
    rays = torch.cat((o, dirs, torch.full((50, 1), 0.5), torch.full((50, 1), 4.0), dirs), 1)
    ref = r.render_chunked(rays, keys=("rgb", "depth"))
    with torch.no_grad():
        field_ref = r.run_field(r.fine, o[:, None, :], dirs)
    assert ref["depth"].min() > 0.5 and ref["rgb"].std() > 0.01     # a non-trivial render
    r = r.with_engine(Engine(precision=Precision("half", "the half engine", inference_dtype=dtype)))
    got = r.render_chunked(rays, keys=("rgb", "depth"))
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    assert got["rgb"].dtype == torch.float32 and got["depth"].dtype == torch.float32
    assert (got["rgb"] - ref["rgb"]).abs().max() < tol
    assert ((got["depth"] - ref["depth"]).abs() / ref["depth"]).max() < tol
    with torch.no_grad():
        field = r.run_field(r.fine, o[:, None, :], dirs)
    assert field.rgb_features.dtype == torch.float32
    scale = field_ref.rgb_features.abs().max()
    assert (field.rgb_features - field_ref.rgb_features).abs().max() / scale < tol
    with torch.enable_grad():           # training passes never use the half engine
        out = r.render_rays(rays, train=False)
    assert out["rgb"].requires_grad
    assert (out["rgb"].detach() - ref["rgb"]).abs().max() < 1e-5


def _random_net(dtype, seed=0, **kw):
    torch.manual_seed(seed)
    net = NeRF(**kw).to(dtype)
    for p in net.parameters():         # non-zero biases and weights of realistic scale
        torch.nn.init.normal_(p, std=0.3)
    return net


def _close(a, b, tol):
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max())


# width, depth, skips, encoded-input channels: skips at 0, consecutive, last, none; c % 8 == 0
NETS = [dict(W=32, D=8, skips=(4,), input_ch=63), dict(W=64, D=5, skips=(1, 3), input_ch=39),
        dict(W=32, D=4, skips=(0,), input_ch=63), dict(W=64, D=6, skips=(2, 3), input_ch=64),
        dict(W=32, D=3, skips=(), input_ch=21)]


@pytest.mark.parametrize("write", ["direct", "copy"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("kw", NETS)
def test_skip_buffer_trunk_and_field_equal_layered(kw, dtype, tol, write):
    """The padded trunk builds the skip input in one buffer (the layer before a skip writes into
    its last W columns, in place or through a copy) and the composed head has 8-aligned outputs;
    both must give the layered network's values, for any width, depth, skips and odd chunk."""
    net = _random_net(dtype, **kw)
    c = kw["input_ch"]
    for shape in [(1, 1), (7, 11), (1, 13), (97,)]:
        x = torch.randn(*shape, c, dtype=dtype)
        d = torch.randn(*(shape[:1] + (1,) * (len(shape) - 1)), 27, dtype=dtype)
        with torch.enable_grad():
            ref_h = net.trunk(x).detach()
        _, _, h = _infer(net, x, d, skip_write=write)
        assert _close(h, ref_h, tol), (shape, (h - ref_h).abs().max())
        if net.D - 1 in net.skips:
            continue                    # the trunk's output is [x, h]: no head takes it
        ref = _eager(net, x, d)
        got, sigma, _ = _infer(net, x, d, skip_write=write)
        for a, b in zip(got[:3], ref):
            assert _close(a, b, tol), (shape, (a - b).abs().max())
        assert _close(sigma, ref[1], tol)


def test_last_layer_skip_trunk():
    net = _random_net(torch.float64, W=32, D=3, skips=(2,))
    x = torch.randn(5, 3, 63, dtype=torch.float64)
    with torch.enable_grad():
        ref = net.trunk(x).detach()
    with torch.no_grad():
        h = net.trunk(x, Engine().path(False, "cpu"))
    assert h.shape == (5, 3, 63 + 32) and _close(h, ref, 1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("W", [32, 64, 256])
def test_padded_head_equals_unpadded(W, dtype, tol):
    """The composed head's outputs (W/2 + 1) and rgb_linear's (3) are padded to a multiple of 8
    with zero rows; the kept outputs are the unpadded products (same sums)."""
    net = _random_net(dtype, W=W)
    h = torch.relu(torch.randn(3, 29, W, dtype=dtype))
    view_term = net.view_bias(torch.randn(3, 1, 27, dtype=dtype))
    v, H = net.views_linears[0], W // 2
    vf = v.weight[:, :W]
    with torch.no_grad():
        sigma, logits, h128 = net._composed_head(h, view_term)
        weight = torch.cat((vf @ net.feature_linear.weight, net.alpha_linear.weight), dim=0)
        bias = torch.cat((vf @ net.feature_linear.bias + v.bias, net.alpha_linear.bias))
        y = torch.addmm(bias, h.reshape(-1, W), weight.t()).reshape(3, 29, H + 1)   # N = W/2 + 1
        ref_h128 = torch.relu(y[..., :H] + view_term)
        ref_logits = torch.nn.functional.linear(ref_h128, net.rgb_linear.weight, net.rgb_linear.bias)
    assert _close(sigma, y[..., H], tol) and _close(h128, ref_h128, tol)
    assert _close(logits, ref_logits, tol)
    assert sigma.shape == (3, 29) and logits.shape == (3, 29, 3) and h128.shape == (3, 29, H)


@pytest.mark.parametrize("write", ["direct", "copy"])
def test_image_render_in_odd_chunks_equals_layered_render(write):
    """A render whose network calls get odd point counts (netchunk 77, chunks of 9 rays: coarse
    calls of 5 x 13 and 4 x 13 points, fine of 2 x 31 and 1 x 31) equals the layered network's,
    on a 6 x 64 net with two skips."""
    torch.manual_seed(4)
    nets = [NeRF(W=64, D=6, skips=(1, 3)).double() for _ in range(2)]
    for p in (p for n in nets for p in n.parameters()):
        torch.nn.init.normal_(p, std=0.2)
    r = Renderer(*nets, PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4),
                 RenderOptions(n_samples=13, n_importance=18, netchunk=77)).double()
    rays = _rays(23)
    ref = r.with_engine(LAYERED).render_chunked(rays, chunk=9, keys=("rgb", "depth", "acc"))
    fast = r.with_engine(Engine(skip_write=write)).render_chunked(rays, chunk=9, keys=("rgb", "depth", "acc"))
    for k in ("rgb", "depth", "acc"):
        assert torch.allclose(fast[k], ref[k], rtol=1e-10, atol=1e-12), k


def test_cpu_renders_cap_the_points_per_call(monkeypatch):
    """On the CPU a pass without autograd calls the network on cache-sized blocks
    (rendering.CPU_CALL_BYTES); the image equals one call per netchunk to rounding, and passes
    with autograd (training) keep netchunk."""
    import models.rendering as rendering
    from tests.tiny_models import tiny_renderer
    r = tiny_renderer(seed=4, width=32, n_samples=16, n_importance=16, dtype=torch.float32)
    r.opts.netchunk = 1 << 18
    rays = _rays(3000, torch.float32, torch.Generator().manual_seed(5), near=0.5)
    with torch.no_grad():
        assert r.rays_per_call(r.fine, 32) == rendering.CPU_CALL_BYTES // (4 * 32) // 32      # 16384 points
    with torch.enable_grad():
        assert r.rays_per_call(r.fine, 32) == (1 << 18) // 32
    calls = []
    field = r.fine.field

    def counted(x, *args, **kw):
        calls.append(x.shape[0])
        return field(x, *args, **kw)
    monkeypatch.setattr(r.fine, "field", counted)
    capped = r.render_chunked(rays, keys=("rgb", "depth"))
    assert len(calls) == 6 and max(calls) * 32 <= 16384           # 3000 rays x 32 fine samples
    monkeypatch.setattr(rendering, "CPU_CALL_BYTES", 1 << 40)
    calls.clear()
    whole = r.render_chunked(rays, keys=("rgb", "depth"))
    assert calls == [3000]
    for k in ("rgb", "depth"):
        assert torch.allclose(capped[k], whole[k], rtol=1e-5, atol=1e-6), (capped[k] - whole[k]).abs().max()


@pytest.mark.parametrize("dtype,half", [(torch.float64, None), (torch.float32, None), (torch.float32, torch.float16),
                                        (torch.float32, torch.bfloat16)])
def test_encoding_into_the_trunk_buffer_equals_encode_then_copy(dtype, half):
    """Engine.fused_encoding (the renderer writes the position encoding straight into the padded
    trunk's input buffer, models.nerf.EncodedInput; on by default on CUDA) gives bit for bit the render of encoding,
    casting and copying (its slow twin, fused_encoding=False), in the parameters' dtype and on the
    half engine; and PositionalEncoding.encode_into equals the encoder's output cast."""
    torch.manual_seed(6)
    nets = [NeRF(W=64, D=6, skips=(1, 3)).to(dtype) for _ in range(2)]
    for p in (p for n in nets for p in n.parameters()):
        torch.nn.init.normal_(p, std=0.2)
    r = Renderer(*nets, PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4),
                 RenderOptions(n_samples=13, n_importance=18, netchunk=77)).to(dtype)
    precision = Precision("half", "the half engine", inference_dtype=half) if half else Precision("x", "")
    rays = _rays(23, dtype)
    slow = r.with_engine(Engine(precision=precision, fused_encoding=False))
    fast = r.with_engine(Engine(precision=precision, fused_encoding=True))
    assert fast.engine.path(False, "cpu").prefill and not slow.engine.path(False, "cpu").prefill
    assert not Engine().path(False, "cpu").prefill and Engine().path(False, "cuda").prefill   # default: CUDA only
    ref = slow.render_chunked(rays, chunk=9, keys=("rgb", "depth", "acc"))
    got = fast.render_chunked(rays, chunk=9, keys=("rgb", "depth", "acc"))
    for k in ("rgb", "depth", "acc"):
        assert torch.equal(got[k], ref[k]), k
    with torch.no_grad():
        pts = rays[:5, None, :3] + rays[:5, None, 3:6] * torch.linspace(0.5, 3.0, 7, dtype=dtype)[:, None]
        a, b = slow.run_field(r.fine, pts, rays[:5, 8:11]), fast.run_field(r.fine, pts, rays[:5, 8:11])
        for x, y in zip(a, b):
            assert (x is None and y is None) or torch.equal(x, y)
    enc = PositionalEncoding(10, input_scale=10.0)
    x = torch.randn(40, 3, dtype=dtype)
    out = torch.full((40, 70), 7.0, dtype=half or dtype)
    enc.encode_into(x, out[:, :63])
    assert torch.equal(out[:, :63], enc(x).to(out.dtype)) and (out[:, 63:] == 7).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
def test_encoding_into_the_buffer_on_cuda_is_bit_exact():
    """The float16 engine on the GPU: the render with the encoding written into the buffer equals the
    encode-cast-copy render bit for bit."""
    torch.manual_seed(7)
    nets = [NeRF(W=128) for _ in range(2)]
    for p in (p for n in nets for p in n.parameters()):
        torch.nn.init.normal_(p, std=0.1)
    r = Renderer(*nets, PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4),
                 RenderOptions(n_samples=32, n_importance=64)).cuda()
    rays = _rays(4096, torch.float32).cuda()
    half = Precision("half", "the half engine", inference_dtype=torch.float16)
    ref = r.with_engine(Engine(precision=half, fused_encoding=False)).render_chunked(rays, keys=("rgb", "depth"))
    got = r.with_engine(Engine(precision=half)).render_chunked(rays, keys=("rgb", "depth"))
    assert torch.equal(got["rgb"], ref["rgb"]) and torch.equal(got["depth"], ref["depth"])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA only"))])
@pytest.mark.parametrize("train_dtype", [torch.bfloat16, torch.float16])
def test_encoding_into_the_padded_training_input_equals_encode_cast_pad(train_dtype, device):
    """16-bit training passes (--precision mixed: NeRF.forward_mixed): the renderer's padded input
    written by the encoder (NeRF.padded_input) gives bit for bit the loss and every gradient of
    encoding, casting and padding in forward_mixed (fused_encoding=False, the slow twin)."""
    torch.manual_seed(8)
    nets = [NeRF(W=32) for _ in range(2)]
    for p in (p for n in nets for p in n.parameters()):
        torch.nn.init.normal_(p, std=0.2)
    r = Renderer(*nets, PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4),
                 RenderOptions(n_samples=8, n_importance=8)).to(device)
    precision = Precision("mixed-like", "16-bit training passes", train_dtype=train_dtype)
    rays = _rays(16, torch.float32).to(device)
    results = []
    for fused in (False, True):
        e = r.with_engine(Engine(precision=precision, fused_encoding=fused))
        assert e.engine.path(True, device).prefill == fused
        for p in r.parameters():
            p.grad = None
        with torch.enable_grad():
            out = e.render_rays(rays, train=False, keep_fine=True)
            loss = out["rgb"].square().mean() + out["rgb_coarse"].square().mean()
            loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in r.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)
