"""Batched per-ray Jacobians against the original's method: one autograd.grad per ray (float64,
models/_reference.loop_jacobians)."""
import pytest
import torch

from models._reference import loop_jacobians
from models.encoding import PositionalEncoding
from models.jacobians import PARAMETER_SUBSETS, jacobian_size, ray_jacobians, sample_points, subset_names, \
    subset_parameters
from models.nerf import NeRF
from models.rendering import Renderer, RenderOptions


def small_renderer(seed=0, width=32, n_samples=8, n_importance=8, white_bkgd=False):
    torch.manual_seed(seed)
    pos, dirs = PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4)
    coarse = NeRF(8, width, pos.out_dim, dirs.out_dim)
    fine = NeRF(8, width, pos.out_dim, dirs.out_dim)
    opts = RenderOptions(n_samples=n_samples, n_importance=n_importance, perturb=1.0, raw_noise_std=1.0,
                         white_bkgd=white_bkgd)
    return Renderer(coarse, fine, pos, dirs, opts).double()


def random_rays(n, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=gen, dtype=dtype) * 0.2
    d = torch.randn(n, 3, generator=gen, dtype=dtype)
    d[:, 2] = d[:, 2].abs() + 1.0
    vd = d / d.norm(dim=-1, keepdim=True)
    return torch.cat((o, d, torch.full((n, 1), 0.1, dtype=dtype), torch.full((n, 1), 4.0, dtype=dtype), vd), 1)


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


# every registered subset (a new one is tested as soon as it is registered), each with the channel
# mean and with one random channel per ray (--random_channel)
@pytest.mark.parametrize("random_channel", [False, True], ids=["mean", "random_channel"])
@pytest.mark.parametrize("subset", list(PARAMETER_SUBSETS))
def test_batched_jacobian_equals_per_ray_loop(subset, random_channel):
    r = small_renderer()
    rays = random_rays(6)
    torch.manual_seed(3)
    out = r.render_rays(rays, train=True, keep_fine=True)     # training mode: jitter and density noise
    fine = out["fine"]
    channel = torch.randint(0, 3, (6,)) if random_channel else None
    pts, vd = sample_points(rays, fine.z)
    fast = ray_jacobians(r, fine, pts, vd, subset, channel, colour=out["rgb"])
    slow = loop_jacobians(out["rgb"], subset_parameters(r.fine, subset), channel)
    assert fast.shape == slow.shape == (6, jacobian_size(r.fine, subset))
    assert fast.dtype == torch.float64
    assert rel_err(fast, slow) < 1e-10
    for row_f, row_s in zip(fast, slow):     # every ray, not only on average
        assert rel_err(row_f, row_s) < 1e-10


@pytest.mark.parametrize("subset", list(PARAMETER_SUBSETS))
def test_white_background_and_second_order_gradients_match_the_loop(subset):
    """Gradients *through* the Jacobians (what the shaping loss uses) agree too."""
    r = small_renderer(seed=4, white_bkgd=True)
    rays = random_rays(5, seed=2)
    torch.manual_seed(5)
    out = r.render_rays(rays, train=True, keep_fine=True)
    pts, vd = sample_points(rays, out["fine"].z)
    params = list(r.fine.parameters())
    fast = ray_jacobians(r, out["fine"], pts, vd, subset, colour=out["rgb"])
    slow = loop_jacobians(out["rgb"], subset_parameters(r.fine, subset))
    assert rel_err(fast, slow) < 1e-10
    f = (fast @ fast.T).sin().sum()
    s = (slow @ slow.T).sin().sum()
    gf = torch.autograd.grad(f, params, retain_graph=True, allow_unused=True)
    gs = torch.autograd.grad(s, params, retain_graph=True, allow_unused=True)
    for name, a, b in zip(dict(r.fine.named_parameters()), gf, gs):
        assert (a is None) == (b is None), (subset, name)
        if a is not None:
            assert rel_err(a, b) < 1e-9, (subset, name)


def test_forward_taps_reproduce_forward():
    r = small_renderer(seed=2)
    x = r.pos_enc(torch.randn(3, 5, 3, dtype=torch.float64))
    d = r.dir_enc(torch.randn(3, 3, dtype=torch.float64))[:, None, :]
    a = r.fine(x, d)
    b, taps = r.fine.forward_taps(x, d)
    for u, v in zip(a[:3], b[:3]):
        assert torch.equal(u, v)
    names = {n.rsplit(".", 1)[0] for n in subset_names(r.fine, "all_para")}
    assert names == set(taps)
    params = dict(r.fine.named_parameters())
    for prefix, tap in taps.items():   # every tap is its layer: u = x W^T + b
        w, b_ = params[prefix + ".weight"], params[prefix + ".bias"]
        assert torch.allclose(tap.u, tap.x @ w.T + b_, atol=1e-12)
