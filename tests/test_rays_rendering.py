"""Rays, samplers and volume rendering against hand-worked values."""
import math
from types import SimpleNamespace

import pytest
import torch

from models.cameras import Cameras, Intrinsics
from models.rays import camera_directions, image_rays, rays_from_pixels, unpack_rays
from models.render_views import render_chunk_size
from models.rendering import composite, composite_weights
from models.samplers import sample_pdf, stratified_z


def test_rays_match_hand_computed_camera():
    # 4x3 image, fx = fy = 2 (hfov 90 at W = 4), cx = 1.5, cy = 1.0
    intr = Intrinsics(2.0, 2.0, 1.5, 1.0)
    pose = torch.tensor([[0.0, 0.0, 1.0, 1.0],    # camera x -> world z
                         [0.0, 1.0, 0.0, 2.0],    # camera y -> world y
                         [-1.0, 0.0, 0.0, 3.0],   # camera z -> world -x
                         [0.0, 0.0, 0.0, 1.0]])
    rays = image_rays(pose, 3, 4, intr, 0.1, 10.0)
    o, d, near, far, vd = unpack_rays(rays)
    assert torch.allclose(o, torch.tensor([1.0, 2.0, 3.0]).expand(12, 3))
    # pixel (v=0, u=0): camera dir ((0-1.5)/2, (0-1)/2, 1) = (-0.75, -0.5, 1)
    # world = R @ dc = (1, -0.5, 0.75)
    assert torch.allclose(d[0], torch.tensor([1.0, -0.5, 0.75]))
    # pixel (v=2, u=3) is row-major index 11: dc = (0.75, 0.5, 1) -> world (1, 0.5, -0.75)
    assert torch.allclose(d[11], torch.tensor([1.0, 0.5, -0.75]))
    assert torch.allclose(vd[0], d[0] / math.sqrt(1 + 0.25 + 0.5625))
    assert torch.all(near == 0.1) and torch.all(far == 10.0)


def test_opencv_convention_y_down_z_forward():
    intr = Intrinsics(10.0, 10.0, 4.5, 4.5)
    dc = camera_directions(torch.tensor([0.0, 9.0]), torch.tensor([4.5, 4.5]), intr)
    assert dc[0, 1] < 0 < dc[1, 1]          # top row looks up (negative y), bottom row down
    assert torch.all(dc[:, 2] == 1.0)       # z forward, unnormalised (z-depth)
    gl = camera_directions(torch.tensor([0.0]), torch.tensor([4.5]), intr, "opengl")
    assert gl[0, 1] > 0 and gl[0, 2] == -1.0


def test_rays_from_pixels_per_ray_poses():
    intr = Intrinsics(1.0, 1.0, 0.0, 0.0)
    poses = torch.eye(4).repeat(2, 1, 1)
    poses[1, :3, 3] = torch.tensor([5.0, 0.0, 0.0])
    rays = rays_from_pixels(poses, torch.tensor([0, 1]), torch.tensor([1, 0]), intr, 0.5, 2.0)
    assert torch.allclose(rays[:, 3:6], torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    assert torch.allclose(rays[1, :3], torch.tensor([5.0, 0.0, 0.0]))


def test_cameras_build_the_rays_of_their_views():
    """Cameras.image_rays / pixel_rays are the rays of models/rays.py for the view's pose; the
    scaled cameras keep pixel centres at integers."""
    intr = Intrinsics(2.0, 2.0, 1.5, 1.0)
    poses = torch.eye(4).repeat(2, 1, 1)
    poses[1, :3, 3] = torch.tensor([1.0, -2.0, 0.5])
    cams = Cameras(poses, intr, 3, 4, near=0.2, far=5.0, convention="opengl")
    full = cams.image_rays(1)
    assert torch.equal(full, image_rays(poses[1], 3, 4, intr, 0.2, 5.0, "opengl"))
    v, u = torch.tensor([0, 2, 1]), torch.tensor([3, 0, 1])
    rays = cams.pixel_rays(torch.tensor([1, 1, 0]), v, u)
    assert torch.allclose(rays[:2], full[v[:2] * 4 + u[:2]], rtol=0, atol=1e-7)
    assert torch.allclose(rays[2], cams.image_rays(0)[1 * 4 + 1], rtol=0, atol=1e-7)
    half = cams.scaled(2)
    assert (half.height, half.width) == (1, 2)
    assert half.intrinsics == Intrinsics(1.0, 1.0, 0.5, 0.25)
    assert len(cams.subset([1])) == 1 and torch.equal(cams.subset([1]).poses[0], poses[1])


def test_three_sample_volume_rendering_by_hand():
    sigma = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64)     # relu -> 1, 2, 0
    z = torch.tensor([[1.0, 1.5, 2.5]], dtype=torch.float64)
    norm = torch.tensor([[2.0]], dtype=torch.float64)                 # |d| = 2
    logits = torch.tensor([[[0.0, 0.0, 0.0], [10.0, -10.0, 0.0], [0.0, 0.0, 5.0]]], dtype=torch.float64)
    # distances: (0.5, 1.0, 1e10) * 2 = (1, 2, 2e10)
    a1 = 1 - math.exp(-1 * 1)
    a2 = 1 - math.exp(-2 * 2)
    a3 = 0.0
    t2 = 1 - a1 + 1e-10
    t3 = t2 * (1 - a2 + 1e-10)
    w = torch.tensor([[a1, a2 * t2, a3 * t3]], dtype=torch.float64)
    out = composite(logits, sigma, z, norm)
    assert torch.allclose(out.weights, w, atol=1e-15)
    s = torch.sigmoid(logits[0])
    expected_rgb = w[0, 0] * s[0] + w[0, 1] * s[1] + w[0, 2] * s[2]
    assert torch.allclose(out.rgb[0], expected_rgb, atol=1e-15)
    assert torch.allclose(out.depth, (w * z).sum(-1), atol=1e-15)
    assert torch.allclose(out.acc, w.sum(-1))


def test_density_noise_only_when_asked():
    sigma = torch.randn(5, 8)
    z = torch.linspace(1, 2, 8).expand(5, 8)
    norm = torch.ones(5, 1)
    w0 = composite_weights(sigma, z, norm, 0.0)
    assert torch.equal(w0, composite_weights(sigma, z, norm, 0.0))
    torch.manual_seed(0)
    assert not torch.allclose(w0, composite_weights(sigma, z, norm, 1.0))


def test_renderer_is_deterministic_in_eval_and_noisy_in_training():
    from models.encoding import PositionalEncoding
    from models.nerf import NeRF
    from models.rendering import Renderer, RenderOptions
    torch.manual_seed(0)
    pe, de = PositionalEncoding(4, input_scale=10.0), PositionalEncoding(2)
    r = Renderer(NeRF(4, 32, pe.out_dim, de.out_dim, skips=(2,)), NeRF(4, 32, pe.out_dim, de.out_dim, skips=(2,)),
                 pe, de, RenderOptions(n_samples=8, n_importance=8))
    rays = image_rays(torch.eye(4), 3, 4, Intrinsics(2, 2, 1.5, 1), 0.1, 4.0)
    a = r.render_rays(rays, train=False)["rgb"]
    b = r.render_rays(rays, train=False)["rgb"]
    assert torch.equal(a, b)
    c = r.render_rays(rays, train=True)["rgb"]
    assert not torch.allclose(a, c)


def test_stratified_samples_stay_in_their_bins():
    near, far = torch.full((4, 1), 1.0), torch.full((4, 1), 3.0)
    z = stratified_z(near, far, 5, jitter=False)
    assert torch.allclose(z[0], torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]))
    zj = stratified_z(near, far, 5, jitter=True)
    mids = torch.tensor([1.25, 1.75, 2.25, 2.75])
    lower = torch.cat((torch.tensor([1.0]), mids))
    upper = torch.cat((mids, torch.tensor([3.0])))
    assert torch.all(zj >= lower) and torch.all(zj <= upper)


def test_sample_pdf_hand_example():
    # bins 0,1,2 with weights (0 + 1e-5, 1 + 1e-5): nearly all mass in [1, 2]
    bins = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    w = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    s = sample_pdf(bins, w, 3, deterministic=True)
    p0 = 1e-5 / (1 + 2e-5)
    # u = 0 -> in the first bin at 0; u = 0.5 -> inside [1, 2]; u = 1 -> idx past the end -> clamps
    assert s[0, 0].item() == pytest.approx(0.0)
    assert s[0, 1].item() == pytest.approx(1.0 + (0.5 - p0) / (1 - p0), rel=1e-12)
    assert s[0, 2].item() == pytest.approx(2.0)
    assert not s.requires_grad


@pytest.mark.parametrize("device,samples,rays", [("cpu", (16, 16), 4096), ("cuda", (64, 128), 21845),
                                                 ("cpu", (512, 512), 256)])
def test_render_chunk_size_by_hand(device, samples, rays):
    """2^17 coarse + fine points a call on the CPU, 2^22 on CUDA, never under 256 rays."""
    r = SimpleNamespace(opts=SimpleNamespace(n_samples=samples[0], n_importance=samples[1]),
                        device=torch.device(device))
    assert render_chunk_size(r) == rays
