"""Tiny models for the tests: a random coarse + fine renderer, a camera, a checkpoint of the
network a config builds (no training)."""
import os

import torch

import main as jnerf_main
from models.cameras import Cameras, Intrinsics
from models.checkpoints import checkpoint_data, write_checkpoint
from models.encoding import PositionalEncoding
from models.factory import build_renderer
from models.nerf import NeRF
from models.rendering import Renderer, RenderOptions


def tiny_renderer(seed=0, width=16, n_samples=8, n_importance=8, dtype=torch.float64):
    """A small coarse+fine NeRF with random weights and a density bias that makes the compositing
    weights non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    pos, dirs = PositionalEncoding(3, input_scale=10.0), PositionalEncoding(2)
    coarse = NeRF(8, width, pos.out_dim, dirs.out_dim)
    fine = NeRF(8, width, pos.out_dim, dirs.out_dim)
    with torch.no_grad():
        for net in (coarse, fine):
            for p in net.parameters():
                scale = 1.0 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
            net.alpha_linear.bias.fill_(0.5)
            net.rgb_linear.weight.mul_(3.0)
    r = Renderer(coarse, fine, pos, dirs, RenderOptions(n_samples, n_importance, perturb=1.0, raw_noise_std=1.0))
    return r.to(dtype).eval()


def tiny_camera(height=6, width=8, near=0.5, far=4.0):
    """Cameras of one float64 view of `height` x `width` pixels."""
    intr = Intrinsics(width / 2.0, width / 2.0, (width - 1) / 2.0, (height - 1) / 2.0)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, 3] = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    return Cameras(pose[None], intr, height, width, near, far)


def write_tiny_checkpoint(config, path, seed=0, extra=()):
    """A checkpoint of the network the config builds, with random weights (no training)."""
    torch.manual_seed(seed)
    _, opts = jnerf_main.parse_options(["--config_file", config, "--save_dir", os.path.dirname(path), *extra])
    renderer = build_renderer(opts.model, torch.device("cpu"))
    with torch.no_grad():
        renderer.fine.alpha_linear.bias.fill_(0.5)
        renderer.coarse.alpha_linear.bias.fill_(0.5)
    return write_checkpoint(path, checkpoint_data(1, renderer))
