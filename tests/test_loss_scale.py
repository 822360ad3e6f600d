"""--precision mixed: the fused bias+ReLU training layer against the eager pair, the device-side
dynamic loss scale (training/loss_scale.py) against unscaled float32 training and PyTorch's rule,
and the graph step function with the scale against the eager step (skipped steps included)."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.engine import Engine, Path
from models.nerf import NeRF, _Linear
from training.graphs import FastStep
from training.loss_scale import LOSS_SCALE_TAG, LossScaler
from tests.test_graphs import make_trainer, run_steps, weights


@pytest.mark.parametrize("relu", [True, False])
def test_fused_linear_equals_the_eager_ops_in_float64(relu):
    """Values and the three gradients of the training layer (epilogue ReLU, GEMV bias gradient)
    equal [relu](linear) in float64 (with the ReLU a third or more of the outputs are cut, so the
    mask matters)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, 12, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(9, 12, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(7, 5, 9, dtype=torch.float64, generator=gen)
    ref = F.linear(x, w, b)
    ref = F.relu(ref) if relu else ref
    got = _Linear.apply(x, w, b, relu)
    if relu:
        assert 0.2 < float((ref == 0).double().mean()) < 0.8
    assert torch.allclose(got, ref, rtol=1e-14, atol=1e-14)
    for a, c in zip(torch.autograd.grad(ref, (x, w, b), g), torch.autograd.grad(got, (x, w, b), g)):
        assert torch.allclose(a, c, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: _Linear.apply(*t, relu), (x[:2, :2], w, b))


def test_network_with_the_epilogue_layers_is_the_network():
    """The training layers' epilogue (Path.epilogue: on by default on CUDA only) changes nothing
    but rounding: the layered and the mixed pass, values and parameter gradients, in float64."""
    torch.manual_seed(0)
    net = NeRF(W=32).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 63, dtype=torch.float64, generator=gen)
    d = torch.randn(4, 1, 27, dtype=torch.float64, generator=gen)
    params = list(net.parameters())
    results = []
    for flag in (False, True):
        for path in (Path(True, epilogue=flag), Path(True, torch.float64, epilogue=flag)):
            out = net.field(x, d, path)
            loss = out.rgb_logits.square().sum() + out.sigma_raw.square().sum() + out.rgb_features.sum()
            results.append((out[:3], torch.autograd.grad(loss, params)))
    for ref, got in ((results[0], results[2]), (results[1], results[3])):
        for a, c in zip(ref[0], got[0]):
            assert torch.allclose(a, c, rtol=1e-12, atol=1e-12)
        for a, c in zip(ref[1], got[1]):
            assert torch.allclose(a, c, rtol=1e-10, atol=1e-12)
    assert not Engine().path(True, "cpu").epilogue       # CPU default: the eager pair


def test_scaler_follows_the_gradscaler_rule():
    """Skip and halve on a non-finite gradient, double after `interval` clean steps, unscale by
    division, and a state that round-trips."""
    s = LossScaler("cpu", init=8.0, interval=3)
    loss = torch.tensor(2.0)
    assert float(s.scaled(loss)) == 16.0
    grads = [torch.tensor([8.0, -16.0]), torch.tensor([4.0])]
    s.unscale_(grads)
    assert not s.skipped() and grads[0].tolist() == [1.0, -2.0] and grads[1].tolist() == [0.5]
    s.update()
    assert float(s.scale) == 8.0 and int(s.growth_tracker) == 1
    for _ in range(2):
        s.unscale_([torch.ones(2)])
        s.update()
    assert float(s.scale) == 16.0 and int(s.growth_tracker) == 0
    s.unscale_([torch.tensor([1.0, math.inf])])
    assert s.skipped()
    s.update()
    assert float(s.scale) == 8.0 and int(s.growth_tracker) == 0
    s.unscale_([torch.tensor([math.nan])])
    assert s.skipped()
    t = LossScaler("cpu")
    t.load_state_dict(s.state_dict())
    assert float(t.scale) == 8.0 and s.state_dict() == {"scale": 8.0, "growth_tracker": 0}


def test_float16_gradients_underflow_without_the_scale():
    """Why the scale exists: the activation gradients of a NeRF-sized loss are below float16's
    range. Unscaled, most weight-gradient entries of a float16 pass are exactly zero; with the
    scale they follow the float32 pass's (float16 rounding through eight layers)."""
    torch.manual_seed(0)
    net = NeRF(W=32)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, 63, generator=gen)
    d = torch.randn(64, 1, 27, generator=gen)
    params = list(net.parameters())
    layer = [p is net.pts_linears[1].weight for p in params].index(True)

    def grads(dtype, scale):
        out = net.forward_mixed(x, d, dtype) if dtype != torch.float32 else net(x, d)
        loss = 1e-4 * (out.rgb_logits.mean() + out.sigma_raw.mean())      # gradients of ~1e-8 per element
        return [g / scale for g in torch.autograd.grad(loss * scale, params)]

    ref = grads(torch.float32, 1.0)[layer]
    plain = grads(torch.float16, 1.0)[layer]
    scaled = grads(torch.float16, 2.0 ** 16)[layer]
    assert float((plain == 0).double().mean()) > 0.5 > float((ref == 0).double().mean())
    err = lambda g: float((g - ref).abs().max() / ref.abs().max())        # noqa: E731
    assert err(scaled) < 0.05 < 0.5 < err(plain), (err(scaled), err(plain))


def _with_scaler(trainer, **kw):
    trainer.scaler = LossScaler(trainer.device, **kw)
    return trainer


def test_scaled_float32_training_equals_unscaled_training(tmp_path, one_thread):
    """In float32 a power-of-two scale is exact: 6 steps with the scale leave the weights of 6
    steps without it, bit for bit (so the scale adds no error of its own)."""
    ref = make_trainer(tmp_path / "a", "cpu", fused_adam=False)
    got = _with_scaler(make_trainer(tmp_path / "b", "cpu", fused_adam=False))
    run_steps(ref, range(6))
    logs = run_steps(got, range(6))
    for a, b in zip(weights(ref), weights(got)):
        assert torch.equal(a, b)
    assert logs[-1][LOSS_SCALE_TAG] == 2.0 ** 16


def _poison(trainer, factor):
    """Multiply one weight's gradient by the device scalar `factor` (inf: a non-finite step)."""
    trainer.renderer.fine.pts_linears[2].weight.register_hook(lambda g: g * factor)


@pytest.mark.parametrize("shaping", [False, True])
def test_graph_step_with_the_scale_equals_the_eager_step(tmp_path, shaping, one_thread):
    """The graph path's step function (uncaptured, CPU) with the scale against the eager step
    with it, over a step whose gradient is not finite (skipped: weights, moments and step
    counters unchanged, the scale halved) and clean steps after (the scale doubles every 2)."""
    factor = torch.full((), math.inf)
    eager = _with_scaler(make_trainer(tmp_path / "a", "cpu", shaping), interval=2)
    graph = _with_scaler(make_trainer(tmp_path / "b", "cpu", shaping), interval=2)
    for tr in (eager, graph):
        _poison(tr, factor)
    fast = FastStep(graph, capture=False)
    w0 = weights(eager)
    le = run_steps(eager, range(1))
    lg = run_steps(graph, range(1), fast)
    assert le[0][LOSS_SCALE_TAG] == lg[0][LOSS_SCALE_TAG] == 2.0 ** 15      # skipped and halved
    for a, b, c in zip(w0, weights(eager), weights(graph)):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert all(float(st["step"]) == 0 for st in graph.optimizer.state.values())
    assert all(float(st.get("step", 0)) == 0 for st in eager.optimizer.state.values())
    factor.fill_(1.0)
    le += run_steps(eager, range(1, 8))
    lg += run_steps(graph, range(1, 8), fast)
    assert [row[LOSS_SCALE_TAG] for row in le] == [2.0 ** k for k in (15, 15, 16, 16, 17, 17, 18, 18)]
    for a, b in zip(weights(eager), weights(graph)):      # the lr as a float32 tensor: rounding only
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
    assert any(not torch.equal(a, b) for a, b in zip(w0, weights(eager)))
    for a, b in zip(le, lg):
        assert a.keys() == b.keys()
        for k in a:
            assert math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-9), (k, a[k], b[k])
    for st in list(eager.optimizer.state.values()) + list(graph.optimizer.state.values()):
        assert float(st["step"]) == 7
    assert eager.scaler.state_dict() == graph.scaler.state_dict()
    if shaping:
        assert eager.objective.shaper.tau == graph.objective.shaper.tau


def test_the_scale_is_saved_and_restored(tmp_path, one_thread):
    """The checkpoint carries the scale, so --resume continues with it."""
    tr = _with_scaler(make_trainer(tmp_path / "a", "cpu"), init=2.0 ** 10)
    run_steps(tr, range(3))
    path = tr.save(2)
    again = _with_scaler(make_trainer(tmp_path / "b", "cpu"))
    again.restore(path, resume=True)
    assert again.scaler.state_dict() == tr.scaler.state_dict() == {"scale": 1024.0, "growth_tracker": 3}
