"""Build the renderer (networks, encoders, sampling options) from the merged config."""
import torch

from models.encoding import build_encoders
from models.nerf import NeRF
from models.rendering import Renderer, RenderOptions
from utils.errors import NotSupportedError


def render_options(settings):
    r, m = settings.render, settings.model
    return RenderOptions(
        n_samples=int(r.get_num("N_samples")), n_importance=int(r.get_num("N_importance")),
        perturb=float(r.get_num("perturb", 1)), raw_noise_std=float(r.get_num("raw_noise_std", 0)),
        white_bkgd=bool(r.get("white_bkgd", False)),
        chunk=int(m.get_num("chunk", 1024 * 1024)), netchunk=int(m.get_num("netchunk", 1024 * 1024)))


def build_renderer(settings, device):
    r, m = settings.render, settings.model
    if not r.get("use_viewdirs", True):
        raise NotSupportedError("render.use_viewdirs: false is not supported (the shaped layer "
                                "rgb_linear exists only in the view-dependent network)")
    if int(r.get_num("N_importance")) <= 0:
        raise NotSupportedError("--N_importance 0 is not supported: shaping and propagation act on "
                                "the fine network (the original crashes here too)")
    if int(r.get_num("N_samples")) < 3:
        raise NotSupportedError("--N_samples must be at least 3 (importance sampling needs inner bins)")
    pos_enc, dir_enc = build_encoders(r)
    coarse = NeRF(int(m.get_num("netdepth", 8)), int(m.get_num("netwidth", 256)),
                  pos_enc.out_dim, dir_enc.out_dim)
    fine = NeRF(int(m.get_num("netdepth_fine", 8)), int(m.get_num("netwidth_fine", 256)),
                pos_enc.out_dim, dir_enc.out_dim)
    near, far = (float(v) for v in r.get("depth_range", [0.1, 10.0]))
    renderer = Renderer(coarse, fine, pos_enc, dir_enc, render_options(settings), near, far).to(device)
    if settings.exp.get("precision") == "fp16" and torch.device(device).type == "cuda":
        renderer.inference_dtype = torch.float16
    return renderer


def select_device(settings, args_gpu=None):
    """CUDA device `experiment.gpu` when CUDA is present, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    gpu = str(settings.exp.get("gpu", "0") or "0").split(",")[0].strip() or "0"
    try:
        index = int(gpu)
    except ValueError:
        raise NotSupportedError(f"--gpu {gpu!r}: expected a CUDA device index") from None
    if index >= torch.cuda.device_count():
        from utils.errors import InputError
        raise InputError(f"--gpu {index}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         "(the YAML's experiment.gpu is used when --gpu is not given)")
    return torch.device(f"cuda:{index}")
