"""The fused Triton MLP (models.fused_mlp) against its slow twin and the layered float16 engine.

The kernel keeps the trunk's activations on chip; its arithmetic is the float16 engine's (float16
operands, float32 sums, each layer rounded to float16), so it must agree with the twin
(models._reference.fused_mlp_field: the same roundings as plain torch ops) and with the layered engine
(models.nerf.NeRF._trunk_padded + _composed_head) to a few float16 ulps, the order of each dot
product's sums being the only difference. On the CPU the kernel runs in Triton's interpreter, in a
child process (TRITON_INTERPRET is read when Triton is imported); on CUDA, compiled, in this one.
"""
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from models.engine import Engine
from tests.fused_mlp_cases import HALF, NETWORKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP16_TOL = 2e-3         # relative: a few float16 ulps (2^-11 = 4.9e-4 each) of the output's scale


def _close(a, b, tol=FP16_TOL):
    a, b = a.float(), b.float()
    assert a.shape == b.shape
    assert torch.isfinite(a).all()
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= tol * max(scale, 1.0), f"max |diff| {err} at scale {scale}"


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("fused_mlp") / "cases.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "tests.fused_mlp_cases", str(out)], cwd=ROOT, env=env, check=True,
                   timeout=300)
    return torch.load(out)


def _check(results, name):
    res = results[name]
    kernel_keys = [k for k in res if k.startswith("kernel_")]
    if name == "odd_input":            # the renderer's buffer does not fit the kernel: the layered path ran
        assert not kernel_keys
        for k in ("sigma", "logits", "features", "density", "plain_input"):
            assert torch.equal(res[f"path_kernel_{k}"], res[f"path_layered_{k}"])
        return
    assert len(kernel_keys) == 6       # colour + features, colour only, density only
    for k in kernel_keys:              # the kernel against its twin
        _close(res[k], res["twin_" + k[len("kernel_"):]])
    for k in ("sigma", "logits", "features", "density", "plain_input"):   # NeRF.field: kernel path vs layered
        _close(res[f"path_kernel_{k}"], res[f"path_layered_{k}"])
    # and the float16 result against the float32 network (eight layers of float16 rounding)
    _close(res["path_kernel_logits"], res["fp32_logits"], tol=3e-2)
    if "render_kernel_rgb" in res:
        # rgb and depth (the fine samples' positions follow the coarse weights' rounding, so their
        # features are compared above, at the same points, not here)
        for k in ("rgb", "depth"):
            _close(res[f"render_kernel_{k}"], res[f"render_layered_{k}"], tol=5e-3)
        assert res["render_kernel_fine_features"].shape == res["render_layered_fine_features"].shape
        assert res["render_layered_rgb"].abs().max() > 0.05       # a render with something in it


@pytest.mark.parametrize("name", [n[0] for n in NETWORKS])
def test_kernel_agrees_with_twin_and_layered_engine_interpreted(interpreted, name):
    _check(interpreted, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: the compiled kernel")
def test_kernel_agrees_with_twin_and_layered_engine_cuda():
    pytest.importorskip("triton")
    from tests.fused_mlp_cases import run_cases
    results = run_cases("cuda")
    for name, *_ in NETWORKS:
        _check(results, name)


def test_kernel_path_is_cuda_float16_inference_only():
    e = Engine(precision=HALF)
    assert e.path(False, "cuda").kernel and not e.path(False, "cpu").kernel      # None: CUDA only
    assert not e.path(True, "cuda").kernel                                       # never with autograd
    assert not Engine().path(False, "cuda").kernel                               # float32 engine
    assert replace(e, mlp_kernel=True).path(False, "cpu").kernel                 # the tests' interpreter run
    assert not replace(e, mlp_kernel=False).path(False, "cuda").kernel


def test_kernel_refuses_a_float32_input():
    pytest.importorskip("triton")
    from models import fused_mlp
    from models.nerf import NeRF
    with pytest.raises(ValueError, match="float16"):
        fused_mlp.field(NeRF(W=32), torch.zeros(4, 64), torch.zeros(1, 16, dtype=torch.float16), 4)
