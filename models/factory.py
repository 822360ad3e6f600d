"""Build the renderer (networks, encoders, sampling options, engine) from typed model options."""
from dataclasses import replace

import torch

from models.encoding import build_encoders
from models.nerf import NeRF
from models.engine import Engine
from models.rendering import Renderer, RenderOptions
from utils.errors import InputError, NotSupportedError
from utils.precision import FP32


def render_options(model):
    """RenderOptions of a utils.options.ModelOptions."""
    return RenderOptions(n_samples=model.n_samples, n_importance=model.n_importance, perturb=model.perturb,
                         raw_noise_std=model.raw_noise_std, white_bkgd=model.white_bkgd, chunk=model.chunk,
                         netchunk=model.netchunk)


def build_renderer(model, device, precision=FP32, engine=None):
    """Coarse + fine NeRF and their encoders on `device` (model: utils.options.ModelOptions; rays
    carry their own near/far, the scene's depth range).
    precision: the utils.precision.Precision of the run (resolved here for the device: the CPU runs
    float32 whatever the choice); engine: an Engine whose knobs to keep (benchmarks), its precision
    replaced by the resolved one."""
    pos_enc, dir_enc = build_encoders(model.multires, model.multires_views, model.i_embed)
    coarse = NeRF(model.netdepth, model.netwidth, pos_enc.out_dim, dir_enc.out_dim)
    fine = NeRF(model.netdepth_fine, model.netwidth_fine, pos_enc.out_dim, dir_enc.out_dim)
    engine = replace(engine or Engine(), precision=precision.on(device))
    return Renderer(coarse, fine, pos_enc, dir_enc, render_options(model), engine).to(device)


def select_device(gpu=""):
    """CUDA device `gpu` (an index; '' = 0; a list '1,2' takes the first) when CUDA is present, else
    the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    text = str(gpu or "0").split(",")[0].strip() or "0"
    try:
        index = int(text)
    except ValueError:
        raise NotSupportedError(f"--gpu {text!r}: expected a CUDA device index") from None
    if index >= torch.cuda.device_count():
        raise InputError(f"--gpu {index}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         "(the YAML's experiment.gpu is used when --gpu is not given)")
    return torch.device(f"cuda:{index}")
