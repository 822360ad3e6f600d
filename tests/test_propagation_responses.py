"""One-pass responses equal the original's perturb-and-re-render procedure (float64, < 1e-10),
and the closed-form pixel Jacobians equal autograd."""
import copy

import pytest
import torch

from models._reference import fine_samples_at
from models.rendering import composite_weights
from propagation._reference import point_responses_3d
from propagation.pixels import pixel_jacobians
from propagation.responses import Directions, cumulative_mixers, mixing_matrix, perturbation_matrices, \
    perturbed_weight, rerender_responses_2d, view_responses
from tests.tiny_models import tiny_camera, tiny_renderer

pytestmark = pytest.mark.usefixtures("one_thread")
T = 0.1


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    renderer = tiny_renderer()
    rays = tiny_camera(6, 8, 0.5, 4.0).image_rays(0)
    seeds = torch.tensor([3, 17, 29, 40])
    jac, _ = pixel_jacobians(renderer, rays[seeds])
    # several seeds: four single-pixel directions and the mean of the first two (a --mean_gradient label)
    deltas = torch.cat([jac, jac[:2].mean(0, keepdim=True)], 0)
    return renderer, rays, deltas


def perturbed_copy(renderer, delta, rgb=(255, 255, 255)):
    """The original's perturb_one_direction on a deep copy: W += t * diag(rgb)/255 @ delta."""
    net = copy.deepcopy(renderer)
    scale = torch.diag(torch.tensor(rgb, dtype=torch.float64) / 255.0)
    with torch.no_grad():
        net.fine.rgb_linear.weight += T * (scale @ delta)
    return net


def test_pixel_jacobians_equal_autograd(setup):
    renderer, rays, _ = setup
    pick = rays[[5, 22, 47]]
    jac, _ = pixel_jacobians(renderer, pick)
    w = renderer.fine.rgb_linear.weight
    for i in range(3):
        out = renderer.render_rays(pick[i:i + 1], False)
        (g,) = torch.autograd.grad(out["rgb"][0].mean(), w)
        assert torch.allclose(jac[i], g, atol=1e-13, rtol=0)
        # one channel (--random_channel)
        (g1,) = torch.autograd.grad(renderer.render_rays(pick[i:i + 1], False)["rgb"][0, 1], w)
        assert torch.allclose(pixel_jacobians(renderer, pick[i:i + 1], channel=1)[0][0], g1, atol=1e-13, rtol=0)


@pytest.mark.parametrize("no_abs", [False, True])
def test_one_pass_2d_equals_rerendering_per_seed(setup, no_abs):
    renderer, rays, deltas = setup
    with torch.no_grad():
        base = renderer.render_rays(rays, False)["rgb"]
        ref = []
        for d in deltas:
            rgb = perturbed_copy(renderer, d).render_rays(rays, False)["rgb"]
            ref.append((rgb - base).mean(-1) if no_abs else (rgb - base).abs().mean(-1))
    ref = torch.stack(ref, 1)
    assert ref.abs().max() > 1e-4            # the perturbation does something
    M = perturbation_matrices(deltas, T, dtype=torch.float64)
    eye = torch.eye(len(deltas), dtype=torch.float64)
    # small chunks and a tiny head budget exercise the ray and direction loops
    (one,), _ = view_responses(renderer, rays, M, [eye], "2d", no_abs, chunk=7, max_elements=100)
    assert (one - ref).abs().max() < 1e-10
    (again,), _ = rerender_responses_2d(renderer, rays, M, [eye], no_abs, chunk=11)
    assert (again - ref).abs().max() < 1e-10
    assert torch.equal(renderer.fine.rgb_linear.weight, setup[0].fine.rgb_linear.weight)


def test_colour_matrix_perturbs_only_the_chosen_channels(setup):
    renderer, rays, deltas = setup
    rgb = (255, 0, 0)
    with torch.no_grad():
        base = renderer.render_rays(rays, False)["rgb"]
        after = perturbed_copy(renderer, deltas[0], rgb).render_rays(rays, False)["rgb"]
    ref = (after - base).abs().mean(-1)
    assert torch.all((after - base)[:, 1:] == 0)
    M = perturbation_matrices(deltas[:1], T, rgb, dtype=torch.float64)
    (one,), _ = view_responses(renderer, rays, M, [torch.eye(1, dtype=torch.float64)], "2d")
    assert (one[:, 0] - ref).abs().max() < 1e-10


@pytest.mark.parametrize("no_abs", [False, True])
def test_one_pass_3d_equals_the_original_perturb_and_rerun(setup, no_abs):
    renderer, rays, deltas = setup
    with torch.no_grad():
        out = renderer.render_rays(rays, False, keep_fine=True)
        fine = out["fine"]
        dir_norm = torch.linalg.norm(rays[:, 3:6], dim=-1, keepdim=True)
        ref_q, ref_r = [], []
        for d in deltas:
            raw = fine_samples_at(perturbed_copy(renderer, d), rays, fine.z)
            diff = (raw.rgb_logits - fine.rgb_logits).mean(-1)
            r = diff if no_abs else diff.abs()
            weights = composite_weights(raw.sigma_raw, fine.z, dir_norm)      # the perturbed net's densities
            ref_r.append(r)
            ref_q.append((weights * r).sum(-1))
    ref_q, ref_r = torch.stack(ref_q, -1), torch.stack(ref_r, -1)
    M = perturbation_matrices(deltas, T, dtype=torch.float64)
    assert (point_responses_3d(fine, M, no_abs) - ref_r).abs().max() < 1e-10
    # closed form t * |u . h|, u = channel mean of the direction
    u = deltas.mean(1)
    closed = T * (fine.features @ u.T)
    assert (closed.abs() if not no_abs else closed).sub(ref_r).abs().max() < 1e-10
    eye = torch.eye(len(deltas), dtype=torch.float64)
    (one,), _ = view_responses(renderer, rays, M, [eye], "3d", no_abs, chunk=9)
    assert ref_q.abs().max() > 1e-5
    assert (one - ref_q).abs().max() < 1e-10


def test_label_mixing_averages_a_labels_directions(setup):
    renderer, rays, deltas = setup
    owner = torch.tensor([0, 1, 1, 2, 2])
    dirs = Directions(deltas, owner, 3)
    M = perturbation_matrices(dirs.deltas, T, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)
    mix = mixing_matrix(owner, 3, dtype=torch.float64)
    (per_dir, per_label), _ = view_responses(renderer, rays, M, [eye, mix], "2d")
    expect = torch.stack([per_dir[:, 0], per_dir[:, 1:3].mean(1), per_dir[:, 3:5].mean(1)], 1)
    assert (per_label - expect).abs().max() < 1e-14
    assert torch.equal(mixing_matrix(owner, 3, merge=True, dtype=torch.float64), eye)
    cum = cumulative_mixers(owner, 3, 2, dtype=torch.float64)
    assert torch.equal(cum[0][:, 1], torch.tensor([0, 1, 0, 0, 0], dtype=torch.float64))
    assert torch.equal(cum[1][:, 2], torch.tensor([0, 0, 0, 0.5, 0.5], dtype=torch.float64))


def test_perturbed_weight_moves_and_restores_the_exact_weight(setup):
    renderer, _, deltas = setup
    w = renderer.fine.rgb_linear.weight
    before = w.detach().clone()
    delta = T * deltas[0]
    with perturbed_weight(renderer, delta):
        assert torch.equal(w, before + delta)
    assert torch.equal(w, before)
    with pytest.raises(RuntimeError, match="render failed"):
        with perturbed_weight(renderer, delta):
            raise RuntimeError("render failed")
    assert torch.equal(w, before)
