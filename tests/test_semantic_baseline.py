"""The Semantic-NeRF baseline's maths (models/semantic.py) against hand-worked values: the head,
rendered logits, the label cross-entropy, gradient paths of the two protocols, and a tiny fit."""
import time

import numpy as np
import pytest
import torch

from models.encoding import PositionalEncoding
from models.nerf import NeRF
from models._reference import point_logits_at, split_semantic_state
from models.rendering import Renderer, RenderOptions, render_logits
from models.semantic import (WGT_SEM, SemanticHead, load_semantic_state, predict_labels, semantic_logits,
                             semantic_loss, semantic_state)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tiny_nerf(width=16, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return NeRF(D=8, W=width, input_ch=63, input_ch_views=27).to(dtype)


def test_head_shape_names_and_a_plain_checkpoint_still_loads():
    head = SemanticHead(32, 5)
    names = [n for n, _ in head.named_parameters()]
    assert names == ["semantic_linear.0.0.weight", "semantic_linear.0.0.bias",
                     "semantic_linear.1.weight", "semantic_linear.1.bias"]
    assert head.semantic_linear[0][0].weight.shape == (16, 32)     # Linear(W, W/2)
    assert isinstance(head.semantic_linear[0][1], torch.nn.ReLU)
    assert head.semantic_linear[1].weight.shape == (5, 16)         # Linear(W/2, C)
    assert head(torch.randn(4, 7, 32)).shape == (4, 7, 5)
    net = tiny_nerf(32)
    assert not set(net.state_dict()) & set(head.state_dict())      # no clash with the NeRF's names
    assert not any(k.startswith("semantic") for k in net.state_dict())
    # a plain checkpoint's state loads strictly into a NeRF; the head's state lives beside it
    fresh = tiny_nerf(32, seed=1)
    fresh.load_state_dict(net.state_dict(), strict=True)
    # a state dict that embeds the branch (Semantic-NeRF style) splits into the two parts
    nerf_state, head_state = split_semantic_state({**net.state_dict(), **head.state_dict()})
    fresh.load_state_dict(nerf_state, strict=True)
    other = SemanticHead(32, 5)
    other.load_state_dict(head_state, strict=True)
    x = torch.randn(3, 32)
    assert torch.equal(other(x), head(x))
    coarse, fine = SemanticHead(32, 5), SemanticHead(32, 5)
    load_semantic_state(semantic_state(head, other), coarse, fine)
    assert torch.equal(coarse(x), head(x)) and torch.equal(fine(x), head(x))
    assert WGT_SEM == 4e-2


def test_logits_read_the_trunk_output_and_do_not_depend_on_the_view():
    net = tiny_nerf(16, dtype=torch.float64)
    head = SemanticHead(16, 3).double()
    x = torch.randn(2, 5, 63, dtype=torch.float64)
    s = semantic_logits(net, head, x)
    assert s.shape == (2, 5, 3)
    # by hand: the trunk (8 layers, skip at 4), then the head
    h = x
    for i, layer in enumerate(net.pts_linears):
        h = torch.relu(layer(h))
        if i == 4:
            h = torch.cat((x, h), -1)
    l1, l2 = head.semantic_linear[0][0], head.semantic_linear[1]
    assert torch.allclose(s, l2(torch.relu(l1(h))), atol=1e-12)
    with torch.no_grad():                                           # the inference path: same values
        assert torch.allclose(semantic_logits(net, head, x), s, atol=1e-10)


def test_render_logits_hand_worked():
    w = torch.tensor([[0.2, 0.5, 0.3],
                      [0.0, 1.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[[1.0, 0.0], [2.0, -1.0], [0.0, 4.0]],
                      [[9.0, 9.0], [-3.0, 5.0], [7.0, 7.0]]], dtype=torch.float64)
    # ray 0: (0.2*1 + 0.5*2 + 0.3*0, 0.2*0 + 0.5*(-1) + 0.3*4) = (1.2, 0.7); ray 1 picks sample 1
    expected = torch.tensor([[1.2, 0.7], [-3.0, 5.0]], dtype=torch.float64)
    assert torch.allclose(render_logits(w, s), expected, atol=1e-12)
    assert torch.equal(predict_labels(render_logits(w, s)), torch.tensor([0, 1]))


def _ce_by_hand(z, label):
    z = np.asarray(z, np.float64)
    log_softmax = z - np.log(np.sum(np.exp(z)))          # log softmax_k = z_k - log sum_j exp z_j
    return -log_softmax[label]


def test_semantic_loss_hand_computed_cross_entropy():
    coarse = torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, 2.0]], dtype=torch.float64, requires_grad=True)
    fine = torch.tensor([[0.0, -1.0, 2.0], [4.0, 4.0, 4.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, -1])                        # ray 1 unlabelled
    loss = semantic_loss(coarse, fine, labels)
    expected = _ce_by_hand([1.0, 2.0, 3.0], 0) + _ce_by_hand([0.0, -1.0, 2.0], 0)
    # = (log(e + e^2 + e^3) - 1) + (log(1 + e^-1 + e^2) - 0) = 2.4076059644 + 2.1698460196
    assert abs(expected - 4.5774519840) < 1e-9
    assert loss.dtype == torch.float64 and abs(loss.item() - expected) < 1e-12
    loss.backward()
    assert torch.all(coarse.grad[1] == 0) and torch.all(fine.grad[1] == 0)   # the unlabelled ray
    # d CE / d z = softmax(z) - onehot
    p = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    assert np.allclose(coarse.grad[0].numpy(), p - [1, 0, 0], atol=1e-12)
    # two labelled rays: the mean over labelled rays, coarse + fine
    both = semantic_loss(coarse, fine, torch.tensor([2, 1]))
    mean = ((_ce_by_hand([1.0, 2.0, 3.0], 2) + _ce_by_hand([0.5, -0.5, 2.0], 1)) / 2
            + (_ce_by_hand([0.0, -1.0, 2.0], 2) + _ce_by_hand([4.0, 4.0, 4.0], 1)) / 2)
    assert abs(both.item() - mean) < 1e-12
    assert abs(semantic_loss(None, fine, torch.tensor([2, 1])).item()
               - (_ce_by_hand([0.0, -1.0, 2.0], 2) + _ce_by_hand([4.0, 4.0, 4.0], 1)) / 2) < 1e-12
    assert torch.autograd.gradcheck(lambda c, f: semantic_loss(c, f, torch.tensor([1, -1])),
                                    (coarse.detach().requires_grad_(), fine.detach().requires_grad_()))


def test_semantic_loss_without_labelled_rays_is_zero_with_a_gradient_path():
    coarse = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    fine = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = semantic_loss(coarse, fine, torch.full((4,), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(coarse.grad == 0) and torch.all(fine.grad == 0)
    assert semantic_loss(coarse, fine, torch.full((4,), 255), ignore=255).item() == 0.0


def _setup(dtype=torch.float64):
    net = tiny_nerf(16, dtype=dtype)
    head = SemanticHead(16, 3).to(dtype)
    x = torch.randn(4, 6, 63, dtype=dtype)
    w = torch.softmax(torch.randn(4, 6, dtype=dtype), -1)
    return net, head, x, w, torch.tensor([0, 2, -1, 1])


def test_joint_training_gradients_reach_head_and_trunk():
    net, head, x, w, labels = _setup()
    S = render_logits(w, semantic_logits(net, head, x))
    semantic_loss(S, S, labels).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for i, layer in enumerate(net.pts_linears):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, i
    # the colour branch and density are not on the semantic path
    for mod in (net.alpha_linear, net.feature_linear, net.views_linears[0], net.rgb_linear):
        assert mod.weight.grad is None


def test_fine_tune_gradients_reach_only_the_head():
    net, head, x, w, labels = _setup()
    for p in net.parameters():
        p.requires_grad_(False)
    S = render_logits(w, semantic_logits(net, head, x))
    loss = semantic_loss(S, S, labels)
    loss.backward()
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    # same loss value as the joint path
    net_joint = tiny_nerf(16, dtype=torch.float64)
    S2 = render_logits(w, semantic_logits(net_joint, head, x))
    assert torch.allclose(semantic_loss(S2, S2, labels), loss, atol=1e-10)


def test_renderer_samples_feed_the_head():
    torch.manual_seed(0)
    pos, dirs = PositionalEncoding(10, input_scale=10.0), PositionalEncoding(4)
    r = Renderer(NeRF(W=16, input_ch=63, input_ch_views=27), NeRF(W=16, input_ch=63, input_ch_views=27), pos, dirs,
                 RenderOptions(n_samples=8, n_importance=8, perturb=0.0, raw_noise_std=0.0))
    head = SemanticHead(16, 4)
    o = torch.zeros(5, 3)
    d = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    rays = torch.cat((o, d, torch.full((5, 1), 0.1), torch.full((5, 1), 4.0), d), -1)
    out = r.render_rays(rays, train=False, keep_fine=True)
    fine = out["fine"]
    s = point_logits_at(r, r.fine, head, rays, fine.z)
    assert s.shape == (5, 16, 4)
    pts = o[:, None] + d[:, None] * fine.z[..., None]
    assert torch.allclose(s, head(r.fine.trunk(pos(pts))), atol=1e-6)
    S = render_logits(fine.weights, s)
    semantic_loss(None, S, torch.tensor([0, 1, 2, 3, -1])).backward()
    assert r.fine.pts_linears[0].weight.grad is not None and head.semantic_linear[1].weight.grad is not None


def test_head_fine_tuned_on_a_frozen_nerf_classifies_the_labelled_rays():
    t0 = time.time()
    torch.manual_seed(0)
    nets = [NeRF(D=8, W=32, input_ch=63, input_ch_views=27) for _ in range(2)]      # coarse, fine
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(False)
    heads = [SemanticHead(32, 4) for _ in range(2)]
    enc = PositionalEncoding(10, input_scale=10.0)
    R, S = 10, 16
    x = enc(torch.rand(R, S, 3) * 4 - 2)                                  # fixed samples along 10 rays
    w = torch.distributions.Dirichlet(torch.full((S,), 0.3)).sample((R,))  # fixed compositing weights
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, -1, -1])
    before = [p.clone() for p in nets[1].parameters()]
    # a random trunk's features are small, hence the large step (100% on seeds 0-9 measured)
    opt = torch.optim.Adam([p for h in heads for p in h.parameters()], lr=3e-2)
    first = None
    for _ in range(200):
        Sc = render_logits(w, semantic_logits(nets[0], heads[0], x))
        Sf = render_logits(w, semantic_logits(nets[1], heads[1], x))
        loss = semantic_loss(Sc, Sf, labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    with torch.no_grad():
        Sf = render_logits(w, semantic_logits(nets[1], heads[1], x))
        Sc = render_logits(w, semantic_logits(nets[0], heads[0], x))
    lab = labels >= 0
    assert torch.equal(predict_labels(Sf)[lab], labels[lab])           # 100% on the labelled rays
    assert torch.equal(predict_labels(Sc)[lab], labels[lab])
    assert all(torch.equal(a, b) for a, b in zip(before, nets[1].parameters()))   # the NeRF is untouched
    assert time.time() - t0 < 5.0
