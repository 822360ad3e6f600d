"""The graph-captured training step (training/graphs.py) and its device pieces against the eager
step and the host code they replace.

On the CPU the step function of the graph path runs uncaptured: it must update the weights as
`Trainer.train_step` does (same batch stream, same random draws, same Adam). The device twins of
the shaping supervision (descriptor gather, the sequential threshold scan, the masks) must equal
the host code bit for bit. With CUDA, a replayed graph must equal the uncaptured function.
"""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from datasets.dino_io import DescriptorStore
from datasets.scene import Intrinsics, Scene, Split
from main import parse_options
from utils.options import SemanticOptions
from models.factory import build_renderer
from training.contrastive import adaptive_threshold_scan, adaptive_threshold_scan_device, threshold_masks, \
    threshold_masks_device
from training.graphs import FastStep, fast_step_reason
from training.shaping import DeviceDescriptors, ShapingObjective, build_shaper
from training.semantic import SemanticObjective
from training.trainer import Trainer

PAPER_FLAGS = ["--load_dino", "--contrastive_2d", "--contrastive_starting_step", "0", "--contrastive_step", "1",
               "--wgt_img", "1", "--wgt_contrastive", "1e-2", "--wgt_gradient", "1e-2", "--rgb_layer",
               "--pos_threshold", "0.8", "--neg_threshold", "0.8", "--adaptive_threshold", "--gt_feature_sim",
               "--gradient_norm_loss", "--contrastive_abs"]


# ---------------------------------------------------------------------------------------------- scan
def _clustered_sim(n, seed, dim=8):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, dim, generator=gen)
    f = centres[torch.randint(0, 4, (n,), generator=gen)] + 0.7 * torch.randn(n, dim, generator=gen)
    f = f / f.norm(dim=1, keepdim=True)
    return (f @ f.T).float()


@pytest.mark.parametrize("n,lower,upper,tau,bounds", [
    (64, 3, 9, 0.8, (0.5, 0.9)),          # the paper's ratios at N = 64
    (64, 3, 9, 0.5005, (0.5, 0.9)),       # starts at the lower bound
    (64, 3, 9, 0.8995, (0.5, 0.9)),       # and at the upper one
    (40, 0, 40, 0.7, (0.5, 0.9)),         # bounds that can never be met
    (40, 41, -1, 0.7, (0.5, 0.9)),        # bounds that are always met
    (33, 10, 11, 0.2, (0.1, 0.3)),        # a tight band: tau moves at every anchor
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_device_scan_equals_host_scan_bit_for_bit(n, lower, upper, tau, bounds, seed):
    sim = _clustered_sim(n, seed)
    taus, final = adaptive_threshold_scan(sim.numpy(), tau, lower, upper, *bounds)
    tau_t = torch.tensor(tau, dtype=torch.float64)
    got = adaptive_threshold_scan_device(sim, tau_t, lower, upper, *bounds)
    assert got.dtype == torch.float64
    assert np.array_equal(got.numpy(), taus)          # every anchor's threshold, exactly
    assert float(tau_t) == final
    pos, neg = threshold_masks(sim.numpy(), taus)
    pos_d, neg_d = threshold_masks_device(sim, got)
    assert np.array_equal(pos_d.numpy(), pos) and np.array_equal(neg_d.numpy(), neg)


def test_device_scan_moves_the_threshold_both_ways():
    """The test is only worth something if the threshold actually moves: check it does."""
    sim = _clustered_sim(64, 0)
    tau_t = torch.tensor(0.8, dtype=torch.float64)
    taus = adaptive_threshold_scan_device(sim, tau_t, 3, 9, 0.5, 0.9)
    steps = np.diff(taus.numpy())
    assert (steps > 0).any() or (steps < 0).any()
    host, _ = adaptive_threshold_scan(sim.numpy(), 0.8, 3, 9, 0.5, 0.9, adaptive=False)
    fixed = adaptive_threshold_scan_device(sim, torch.tensor(0.8, dtype=torch.float64), 3, 9, 0.5, 0.9,
                                           adaptive=False)
    assert np.array_equal(fixed.numpy(), host)


def test_device_descriptor_gather_equals_the_store():
    gen = torch.Generator().manual_seed(0)
    grids = torch.randn(3, 5, 7, 6, generator=gen).half()
    store = DescriptorStore(grids, (12, 16))
    frame = torch.randint(0, 3, (50,), generator=gen)
    v, u = torch.randint(0, 12, (50,), generator=gen), torch.randint(0, 16, (50,), generator=gen)
    assert torch.equal(DeviceDescriptors(store, "cpu").gather(frame, v, u), store.gather(frame, v, u))


# ---------------------------------------------------------------------------------------------- steps
def random_scene(n_frames=4, height=12, width=16, grid=(5, 6), dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    poses = torch.eye(4).repeat(n_frames, 1, 1)
    poses[:, :3, 3] = torch.randn(n_frames, 3, generator=gen) * 0.3
    centres = torch.randn(4, dim, generator=gen)
    grids = (centres[torch.randint(0, 4, (n_frames, *grid), generator=gen)]
             + 0.5 * torch.randn(n_frames, *grid, dim, generator=gen)).half()
    split = Split(ids=list(range(n_frames)), rgb=torch.rand(n_frames, height, width, 3, generator=gen),
                  poses=poses, semantic=torch.zeros(n_frames, height, width, dtype=torch.long),
                  features=DescriptorStore(grids, (height, width)))
    intr = Intrinsics(width / 2, width / 2, (width - 1) / 2, (height - 1) / 2)
    return Scene("random", "", height, width, intr, split, split, semantic_classes=np.array([0]))


def make_trainer(tmp_path, device, shaping=False, extra=(), width=16, n_rays=24, fused_adam=True):
    """A trainer on `random_scene`; shaping: False (plain), True (the paper's shaping command),
    'joint' / 'finetune' (the Semantic-NeRF baseline on random seed labels, a third of the pixels
    labelled, 5 classes)."""
    method = {False: "plain", True: "shape"}.get(shaping, shaping)
    _, opts = parse_options(["--config_file", "configs/synthetic_room.yaml", "--save_dir", str(tmp_path),
                             "--seed", "0", "--N_rays", str(n_rays), "--N_samples", "8", "--N_importance", "8",
                             "--lrate", "1e-2", *(PAPER_FLAGS if method == "shape" else []), *extra])
    opts = replace(opts, model=replace(opts.model, netwidth=width, netwidth_fine=width),
                   train=replace(opts.train, logging=replace(opts.train.logging, step_save_ckpt=10**9)))
    scene = random_scene()
    torch.manual_seed(0)
    renderer = build_renderer(opts.model, device, opts.precision)
    objective = None
    if method == "shape":
        objective = ShapingObjective(opts.train, build_shaper(opts, scene, renderer, None)[0])
    elif method in ("joint", "finetune"):
        gen = torch.Generator().manual_seed(1)
        labels = torch.randint(0, 5, scene.train.semantic.shape, generator=gen)
        labels[torch.rand(labels.shape, generator=gen) > 0.33] = -1
        objective = SemanticObjective(opts.train, SemanticOptions(protocol=method), renderer, labels, 5)
    trainer = Trainer(opts.train, scene, renderer, str(tmp_path), objective, seed=0, log=False)
    if fused_adam:      # the graph path runs the fused Adam kernel; so does the eager step on CUDA
        groups = [{"params": g["params"]} for g in trainer.optimizer.param_groups]
        trainer.optimizer = torch.optim.Adam(groups, lr=trainer.opts.lrate, betas=(0.9, 0.999), fused=True)
    return trainer


def weights(trainer):
    """Every trained weight: the networks', then the objective's own modules' (the heads)."""
    params = list(trainer.renderer.parameters()) + [p for m in trainer.objective.modules() for p in m.parameters()]
    return [p.detach().clone() for p in params]


def run_steps(trainer, steps, fast=None, seed=5):
    logs = []
    for step in steps:
        torch.manual_seed(seed + step)
        if fast is None:
            out = trainer.train_step(step)[0]
        else:
            out = fast(step)[0]
        logs.append({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()})
    return logs


@pytest.mark.parametrize("shaping", [False, True, "joint", "finetune"])
def test_graph_step_function_equals_the_eager_step_on_cpu(tmp_path, shaping, one_thread):
    """Same batches, same random draws, same Adam: the graph path's step function (run
    uncaptured) leaves the same weights, logs, Adam state and shaping threshold as the eager
    step, step after step; for every objective (plain, shaping, Semantic-NeRF joint and
    fine-tune)."""
    eager = make_trainer(tmp_path / "a", "cpu", shaping)
    graph = make_trainer(tmp_path / "b", "cpu", shaping)
    assert eager.fast_step() is None and "CUDA" in eager.fast_reason   # CPU runs stay eager
    fast = FastStep(graph, capture=False)
    for w0, w1 in zip(weights(eager), weights(graph)):
        assert torch.equal(w0, w1)
    le = run_steps(eager, range(6))
    lg = run_steps(graph, range(6), fast)
    for a, b in zip(weights(eager), weights(graph)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (a - b).abs().max()
    for a, b in zip(le, lg):
        assert a.keys() == b.keys()
        for k in a:
            assert math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-9), (k, a[k], b[k])
    assert eager.optimizer.param_groups[0]["lr"] == graph.optimizer.param_groups[0]["lr"]
    assert len(eager.optimizer.state) == len(weights(eager)) - (len(list(eager.renderer.parameters()))
                                                                if shaping == "finetune" else 0)
    for p0, p1 in zip(eager.optimizer.state.values(), graph.optimizer.state.values()):
        assert float(p0["step"]) == float(p1["step"]) == 6
        assert torch.allclose(p0["exp_avg_sq"], p1["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    assert eager.batcher.state_dict()["pos"] == graph.batcher.state_dict()["pos"]
    if shaping in ("joint", "finetune"):
        assert le[-1]["Train/Metric/labelled_rays"] > 0 and "Train/Loss/semantic_loss" in lg[-1]
        moved = [not torch.equal(a, b) for a, b in zip(weights(eager), weights(make_trainer(tmp_path / "c", "cpu",
                                                                                               shaping)))]
        nerf = len(list(eager.renderer.parameters()))
        assert all(moved[nerf:]) and (any(moved[:nerf]) == (shaping == "joint"))   # fine-tune: the NeRF is frozen
    elif shaping:
        assert eager.objective.shaper.tau == graph.objective.shaper.tau
        assert eager.objective.shaper.steps == graph.objective.shaper.steps == 6
        assert eager.objective.shaper.tau != 0.8                     # the threshold moved
        s0, s1 = eager.objective.shaper.summary(), graph.objective.shaper.summary()
        assert math.isclose(s0["mean_pos_ratio"], s1["mean_pos_ratio"], rel_tol=1e-12)
        assert s0["pos_threshold_final"] == s1["pos_threshold_final"]


def test_device_loss_equals_the_host_loss_in_float64(tmp_path):
    """The shaping loss of the device path equals the host path's, in float64 on the CPU, with
    the threshold state carried over several batches."""
    tr = make_trainer(tmp_path, "cpu", shaping=True)
    tr.renderer.double()
    host = tr.objective.shaper
    dev = build_shaper(*_shaper_args(tmp_path))[0]
    dev.to_device("cpu")
    for step in range(4):
        batch = tr.batcher.next()
        batch = batch._replace(rays=batch.rays.double())
        torch.manual_seed(step)
        out = tr.renderer.render_rays(batch.rays, train=True, keep_fine=True)
        a, la = host.loss(tr.renderer, out, batch, step)
        b, lb = dev.device_loss(tr.renderer, out, batch, step)
        assert float(a.detach()) == float(b.detach())
        assert host.tau == dev.tau
        for k in la:
            assert float(la[k]) == float(lb[k]), k
        ga = torch.autograd.grad(a, tr.renderer.fine.rgb_linear.weight, retain_graph=True)[0]
        gb = torch.autograd.grad(b, tr.renderer.fine.rgb_linear.weight)[0]
        assert torch.equal(ga, gb)


def _shaper_args(tmp_path):
    tr = make_trainer(tmp_path / "twin", "cpu", shaping=True)
    _, opts = parse_options(["--config_file", "configs/synthetic_room.yaml", "--save_dir", str(tmp_path),
                             "--seed", "0", "--N_rays", "24", "--N_samples", "8", "--N_importance", "8",
                             *PAPER_FLAGS])
    return opts, tr.scene, tr.renderer, None


def test_unsupported_shaping_options_stay_eager(tmp_path):
    tr = make_trainer(tmp_path, "cpu", shaping=True, extra=["--random_channel"])
    assert tr.objective.shaper.device_reason() is not None and tr.objective.capture_reason().startswith("shaping:")
    assert fast_step_reason(tr) is not None


def test_no_cuda_graph_flag(tmp_path):
    _, opts = parse_options(["--config_file", "configs/synthetic_room.yaml", "--save_dir", str(tmp_path),
                             "--no_cuda_graph"])
    assert opts.train.cuda_graph is False
    _, opts = parse_options(["--config_file", "configs/synthetic_room.yaml", "--save_dir", str(tmp_path)])
    assert opts.train.cuda_graph is True


# ---------------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@cuda
@pytest.mark.parametrize("precision", ["fp32", "mixed"])
@pytest.mark.parametrize("shaping", [False, True, "joint", "finetune"])
def test_replayed_graph_equals_the_uncaptured_step(tmp_path, shaping, precision):
    """Same inputs and RNG state: a graph replay updates the weights as the step function run
    eagerly; and both follow the eager train_step (fused Adam) to float32 rounding (mixed: float16
    passes with the loss scale, to float16 rounding against the eager step). Every objective:
    plain, shaping, Semantic-NeRF joint and fine-tune."""
    dev = torch.device("cuda")
    width = 64
    prec = ["--precision", precision]
    a = make_trainer(tmp_path / "a", dev, shaping, width=width, n_rays=64, extra=prec)
    b = make_trainer(tmp_path / "b", dev, shaping, width=width, n_rays=64, extra=prec)
    c = make_trainer(tmp_path / "c", dev, shaping, width=width, n_rays=64, extra=["--no_cuda_graph", *prec])
    assert (a.scaler is not None) == (precision == "mixed")
    loose = 10.0 if precision == "mixed" else 1.0
    fa, fb = FastStep(a, capture=True, warmup=2), FastStep(b, capture=False)
    assert c.fast_step() is None
    steps = range(8)
    la = run_steps(a, steps, fa)
    lb = run_steps(b, steps, fb)
    lc = run_steps(c, steps)
    assert fa.graphs, "the graph was not captured"
    d_ab = max(float((wa - wb).abs().max()) for wa, wb in zip(weights(a), weights(b)))
    d_ac = max(float((wa - wc).abs().max()) for wa, wc in zip(weights(a), weights(c)))
    print(f"{precision} shaping={shaping}: max |w_graph - w_uncaptured| = {d_ab:.3e}, max |w_graph - w_eager| = {d_ac:.3e}; "
          f"final loss {la[-1]['Train/Loss/total_loss']:.9f} / {lb[-1]['Train/Loss/total_loss']:.9f} / "
          f"{lc[-1]['Train/Loss/total_loss']:.9f}" + (f"; tau {a.objective.shaper.tau} / {b.objective.shaper.tau} / {c.objective.shaper.tau}"
                                                        if shaping is True else ""))
    for wa, wb, wc in zip(weights(a), weights(b), weights(c)):
        assert torch.allclose(wa, wb, rtol=1e-5, atol=1e-7), (wa - wb).abs().max()
        assert torch.allclose(wa, wc, rtol=1e-4 * loose, atol=1e-6 * loose), (wa - wc).abs().max()
    for x, y, z in zip(la, lb, lc):
        for k in x:
            assert math.isclose(x[k], y[k], rel_tol=1e-5, abs_tol=1e-9), (k, x[k], y[k])
            assert math.isclose(x[k], z[k], rel_tol=1e-3 * loose, abs_tol=1e-6 * loose), (k, x[k], z[k])
    if shaping is True:
        # the same device code: the same threshold; the host path's float32 similarities may
        # round differently (CPU BLAS order), which can move a borderline anchor by one step
        assert a.objective.shaper.tau == b.objective.shaper.tau
        assert abs(a.objective.shaper.tau - c.objective.shaper.tau) <= 0.0015


def test_capture_safe_cumprod_equals_torch_cumprod():
    """The compositing cumprod of the captured step: torch.cumprod's values and, for inputs
    without zeros (transmittance factors), its gradients, without the host check."""
    from models.rendering import _CumprodNoZeros
    gen = torch.Generator().manual_seed(0)
    x = (1.0 - torch.rand(7, 33, generator=gen, dtype=torch.float64) + 1e-10).requires_grad_()
    g = torch.randn(7, 33, generator=gen, dtype=torch.float64)
    a = torch.cumprod(x, -1)
    b = _CumprodNoZeros.apply(x)
    assert torch.equal(a, b)
    ga, = torch.autograd.grad(a, x, g)
    gb, = torch.autograd.grad(b, x, g)
    assert torch.allclose(ga, gb, rtol=1e-12, atol=0)
    print("max |grad diff| =", float((ga - gb).abs().max()))


def test_each_objective_states_its_precisions(tmp_path):
    """An objective refuses a --precision it does not train in, in one line naming both (shaping's
    float16 training passes are unchecked); the others take every mode."""
    from training.objectives import check_precision
    from utils.errors import NotSupportedError
    from utils.precision import PRECISIONS as ALL
    shaped = make_trainer(tmp_path / "s", "cpu", shaping=True).objective
    with pytest.raises(NotSupportedError, match=r"--precision mixed is not supported for Jacobi shaping"):
        check_precision(shaped, "mixed")
    for name in ("fp32", "tf32", "fp16"):
        check_precision(shaped, name)
    for method in (False, "joint", "finetune"):
        objective = make_trainer(tmp_path / str(method), "cpu", shaping=method).objective
        for name in ALL:
            check_precision(objective, name)
