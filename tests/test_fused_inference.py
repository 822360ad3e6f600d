"""The inference fast paths of models/nerf.py and models/rendering.py against their slow twins.

Without autograd the field runs fused GEMM+bias+ReLU epilogues, a zero-padded 64-d position
input, and alpha/feature/views composed into one GEMM; image renders skip the coarse colour
head. Each must compute what the layered, eager network computes: to float64 rounding in
float64, to float32 rounding in float32.
"""
import pytest
import torch

import models.nerf as nerf_mod
from models.encoding import PositionalEncoding
from models.nerf import NeRF
from models.rendering import Renderer, RenderOptions


@pytest.fixture
def switches():
    saved = (nerf_mod.FUSED_INFERENCE, nerf_mod.PAD_K, nerf_mod.COMPOSE_HEAD)
    yield
    nerf_mod.FUSED_INFERENCE, nerf_mod.PAD_K, nerf_mod.COMPOSE_HEAD = saved


def _eager(net, x, d):
    with torch.enable_grad():          # the autograd path is the plain layered network
        out = net(x, d)
    return [t.detach() for t in out]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("pad,compose", [(True, True), (False, True), (True, False), (False, False)])
def test_fused_field_equals_layered_field(switches, dtype, tol, pad, compose):
    torch.manual_seed(0)
    net = NeRF(W=64).to(dtype)
    for p in net.parameters():         # non-zero biases and weights of realistic scale
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(7, 11, 63, dtype=dtype)
    d = torch.randn(7, 1, 27, dtype=dtype)
    ref = _eager(net, x, d)
    nerf_mod.FUSED_INFERENCE, nerf_mod.PAD_K, nerf_mod.COMPOSE_HEAD = True, pad, compose
    with torch.no_grad():
        got = net(x, d)
        sigma = net.density(x)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max()), (a - b).abs().max()
    assert torch.allclose(sigma, ref[1], rtol=tol, atol=tol * ref[1].abs().max())


def test_image_render_without_coarse_colour_equals_full_render(switches):
    torch.manual_seed(1)
    coarse, fine = NeRF(W=32).double(), NeRF(W=32).double()
    r = Renderer(coarse, fine, PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4),
                 RenderOptions(n_samples=16, n_importance=16, netchunk=100), near=0.1, far=4.0).double()
    o = torch.randn(40, 3, dtype=torch.float64) * 0.2
    dirs = torch.nn.functional.normalize(torch.randn(40, 3, dtype=torch.float64), dim=-1)
    rays = torch.cat((o, dirs, torch.full((40, 1), 0.1, dtype=torch.float64),
                      torch.full((40, 1), 4.0, dtype=torch.float64), dirs), 1)
    nerf_mod.FUSED_INFERENCE = False
    ref = r.render_chunked(rays, chunk=13, keys=("rgb", "depth", "acc", "rgb_coarse"))
    nerf_mod.FUSED_INFERENCE = True
    fast = r.render_chunked(rays, chunk=13, keys=("rgb", "depth", "acc"))
    for k in ("rgb", "depth", "acc"):
        assert torch.allclose(fast[k], ref[k], rtol=1e-10, atol=1e-12), k
    full = r.render_rays(rays, train=False)
    assert torch.allclose(full["rgb_coarse"], ref["rgb_coarse"], rtol=1e-10, atol=1e-12)
