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
    o = torch.randn(40, 3, dtype=torch.float64) * 0.2
    dirs = torch.nn.functional.normalize(torch.randn(40, 3, dtype=torch.float64), dim=-1)
    rays = torch.cat((o, dirs, torch.full((40, 1), 0.1, dtype=torch.float64),
                      torch.full((40, 1), 4.0, dtype=torch.float64), dirs), 1)
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
