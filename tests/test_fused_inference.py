"""The inference fast paths of models/nerf.py and models/rendering.py against their slow twins.

Without autograd the field runs fused GEMM+bias+ReLU epilogues, a zero-padded 64-d position
input, and alpha/feature/views composed into one GEMM; image renders skip the coarse colour
head. Each must compute what the layered, eager network computes: to float64 rounding in
float64, to float32 rounding in float32.
"""
import pytest
import torch

from models.encoding import PositionalEncoding
from models.nerf import InferenceOptions, NeRF
from models.rendering import Renderer, RenderOptions


def _rays(n, dtype=torch.float64, generator=None, near=0.1, far=4.0):
    """n rays [n, 11] from near the origin, unit directions, depth range [near, far]."""
    o = torch.randn(n, 3, dtype=dtype, generator=generator) * 0.2
    d = torch.nn.functional.normalize(torch.randn(n, 3, dtype=dtype, generator=generator), dim=-1)
    return torch.cat((o, d, torch.full((n, 1), near, dtype=dtype), torch.full((n, 1), far, dtype=dtype), d), 1)


def test_fast_paths_are_on_by_default():
    assert NeRF(W=32).inference == InferenceOptions(fused=True, pad_k=True, compose_head=True)


def _eager(net, x, d):
    with torch.enable_grad():          # the autograd path is the plain layered network
        out = net(x, d)
    return [t.detach() for t in out]


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
    net.inference = InferenceOptions(fused=True, pad_k=pad, compose_head=compose)
    with torch.no_grad():
        got = net(x, d)
        sigma = net.density(x)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max()), (a - b).abs().max()
    assert torch.allclose(sigma, ref[1], rtol=tol, atol=tol * ref[1].abs().max())


def test_image_render_without_coarse_colour_equals_full_render():
    torch.manual_seed(1)
    coarse, fine = NeRF(W=32).double(), NeRF(W=32).double()
    r = Renderer(coarse, fine, PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4),
                 RenderOptions(n_samples=16, n_importance=16, netchunk=100), near=0.1, far=4.0).double()
    rays = _rays(40)
    r.set_inference(InferenceOptions(fused=False))
    ref = r.render_chunked(rays, chunk=13, keys=("rgb", "depth", "acc", "rgb_coarse"))
    r.set_inference(InferenceOptions(fused=True, pad_k=True, compose_head=True))
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
    r.inference_dtype = dtype
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
def test_skip_buffer_trunk_and_field_equal_layered(kw, dtype, tol, write, monkeypatch):
    """The padded trunk builds the skip input in one buffer (the layer before a skip writes into
    its last W columns, in place or through a copy) and the composed head has 8-aligned outputs;
    both must give the layered network's values, for any width, depth, skips and odd chunk."""
    monkeypatch.setattr("models.nerf._SKIP_WRITE", write)
    net = _random_net(dtype, **kw)
    c = kw["input_ch"]
    for shape in [(1, 1), (7, 11), (1, 13), (97,)]:
        x = torch.randn(*shape, c, dtype=dtype)
        d = torch.randn(*(shape[:1] + (1,) * (len(shape) - 1)), 27, dtype=dtype)
        with torch.enable_grad():
            ref_h = net.trunk(x).detach()
        with torch.no_grad():
            h = net.trunk(x)
        assert _close(h, ref_h, tol), (shape, (h - ref_h).abs().max())
        if net.D - 1 in net.skips:
            continue                    # the trunk's output is [x, h]: no head takes it
        ref = _eager(net, x, d)
        with torch.no_grad():
            got = net(x, d)
            sigma = net.density(x)
        for a, b in zip(got, ref):
            assert _close(a, b, tol), (shape, (a - b).abs().max())
        assert _close(sigma, ref[1], tol)


def test_last_layer_skip_trunk():
    net = _random_net(torch.float64, W=32, D=3, skips=(2,))
    x = torch.randn(5, 3, 63, dtype=torch.float64)
    with torch.enable_grad():
        ref = net.trunk(x).detach()
    with torch.no_grad():
        h = net.trunk(x)
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
def test_image_render_in_odd_chunks_equals_layered_render(write, monkeypatch):
    """A render whose network calls get odd point counts (netchunk 77, chunks of 9 rays: coarse
    calls of 5 x 13 and 4 x 13 points, fine of 2 x 31 and 1 x 31) equals the layered network's,
    on a 6 x 64 net with two skips."""
    monkeypatch.setattr("models.nerf._SKIP_WRITE", write)
    torch.manual_seed(4)
    nets = [NeRF(W=64, D=6, skips=(1, 3)).double() for _ in range(2)]
    for p in (p for n in nets for p in n.parameters()):
        torch.nn.init.normal_(p, std=0.2)
    r = Renderer(*nets, PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4),
                 RenderOptions(n_samples=13, n_importance=18, netchunk=77), near=0.1, far=4.0).double()
    rays = _rays(23)
    r.set_inference(InferenceOptions(fused=False))
    ref = r.render_chunked(rays, chunk=9, keys=("rgb", "depth", "acc"))
    r.set_inference(InferenceOptions())
    fast = r.render_chunked(rays, chunk=9, keys=("rgb", "depth", "acc"))
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
    r.fine.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    capped = r.render_chunked(rays, keys=("rgb", "depth"))
    assert len(calls) == 6 and max(calls) * 32 <= 16384           # 3000 rays x 32 fine samples
    monkeypatch.setattr(rendering, "CPU_CALL_BYTES", 1 << 40)
    calls.clear()
    whole = r.render_chunked(rays, keys=("rgb", "depth"))
    assert calls == [3000]
    for k in ("rgb", "depth"):
        assert torch.allclose(capped[k], whole[k], rtol=1e-5, atol=1e-6), (capped[k] - whole[k]).abs().max()
