"""The fused MLP kernel's cases (tests/test_fused_mlp.py): each runs the kernel and its twins on one
network and input, on any device. On the CPU the kernel runs in Triton's interpreter, which reads
TRITON_INTERPRET=1 when Triton is imported, so the test runs this module in a process of its own:

    TRITON_INTERPRET=1 python -m tests.fused_mlp_cases OUT.pt

and reads the saved outputs. On CUDA the test calls `run_cases` in its own process (compiled kernel).
"""
import sys
from dataclasses import replace

import torch

from models import fused_mlp
from models._reference import fused_mlp_field
from models.encoding import PositionalEncoding
from models.engine import Engine
from models.nerf import NeRF
from models.rendering import Renderer, RenderOptions
from utils.precision import PRECISIONS

# (name, D, W, skips, position frequencies, points per ray, rays, block_m)
NETWORKS = [
    ("paper", 8, 256, (4,), 10, 7, 5, 16),          # the paper's network; 35 points: a masked tail
    ("narrow", 8, 64, (4,), 10, 9, 23, 64),         # 207 points over 4 programs of 64
    ("no_skip", 3, 32, (), 4, 5, 3, 16),            # input_ch 27 -> C = 32, no skip
    ("skip_after_0", 4, 64, (0,), 10, 4, 4, 16),    # the skip layer right after the first
    ("odd_input", 8, 64, (4,), 6, 3, 5, 16),        # input_ch 39: the renderer's buffer is padded to 40,
]                                                   # not the kernel's 64: the layered path runs instead
HALF = PRECISIONS["fp16"]


def _net(D, W, skips, freqs, seed):
    gen = torch.Generator().manual_seed(seed)
    pos, dirs = PositionalEncoding(freqs, input_scale=10.0), PositionalEncoding(4)
    net = NeRF(D, W, pos.out_dim, dirs.out_dim, skips=skips)
    with torch.no_grad():                    # weights of realistic scale, non-zero biases
        for p in net.parameters():
            scale = 1.4 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return net, pos, dirs


def run_cases(device="cpu"):
    """{case: {output name: tensor on the CPU}} for every network: the kernel (`field`), its slow twin
    (models._reference.fused_mlp_field), NeRF.field through the kernel path and through the layered half engine
    (colour with and without features, density only), and one render of a few rays both ways."""
    out = {}
    for i, (name, D, W, skips, freqs, S, B, bm) in enumerate(NETWORKS):
        net, pos, dirs = _net(D, W, skips, freqs, seed=i)
        net = net.to(device)
        pos, dirs = pos.to(device), dirs.to(device)
        gen = torch.Generator().manual_seed(100 + i)
        pts = (torch.randn(B, S, 3, generator=gen) * 4).to(device)
        vd = torch.nn.functional.normalize(torch.randn(B, 3, generator=gen), dim=-1).to(device)
        d_enc = dirs(vd)[:, None, :]
        enc = net.encoded_input(pos, pts, torch.float16)
        res = {}
        if fused_mlp.supports(net, torch.float16) and enc.buf.shape[1] >= fused_mlp.input_width(net) \
                and net.input_ch + (-net.input_ch) % 8 == fused_mlp.input_width(net):
            view = net.view_bias(d_enc)[:, 0].half()
            for colour, features in ((True, True), (True, False), (False, False)):
                tag = "colour" if colour and features else "no_features" if colour else "density"
                got = fused_mlp.field(net, enc.buf, view, S, colour, features, block_m=bm, num_warps=4)
                ref = fused_mlp_field(net, enc.buf, view, S, colour, features)
                for k, a, b in zip(("sigma", "logits", "features"), got, ref):
                    if b is not None:
                        res[f"kernel_{tag}_{k}"], res[f"twin_{tag}_{k}"] = a.cpu(), b.cpu()
        kernel = replace(Engine(precision=HALF), mlp_kernel=True).path(False, device)
        layered = replace(Engine(precision=HALF), mlp_kernel=False).path(False, device)
        for tag, path in (("path_kernel", kernel), ("path_layered", layered)):
            with torch.no_grad():
                f = net.field(net.encoded_input(pos, pts, torch.float16), d_enc, path)
                res[f"{tag}_sigma"], res[f"{tag}_logits"] = f.sigma_raw.cpu(), f.rgb_logits.cpu()
                res[f"{tag}_features"] = f.rgb_features.cpu()
                res[f"{tag}_density"] = net.density(net.encoded_input(pos, pts, torch.float16), path).cpu()
                res[f"{tag}_plain_input"] = net.field(pos(pts).half(), d_enc, path).rgb_logits.cpu()
        with torch.no_grad():
            res["fp32_logits"] = net(pos(pts), d_enc).rgb_logits.cpu()
        if name == "narrow":                 # one render of 12 rays, coarse + fine, both engines
            coarse, fine = _net(D, W, skips, freqs, seed=50)[0], _net(D, W, skips, freqs, seed=51)[0]
            with torch.no_grad():            # dense enough for the weights to matter
                coarse.alpha_linear.bias.fill_(2.0)
                fine.alpha_linear.bias.fill_(2.0)
            r = Renderer(coarse.to(device), fine.to(device), pos, dirs,
                         RenderOptions(16, 16, perturb=0.0, raw_noise_std=0.0))
            o = torch.randn(12, 3, generator=gen) * 0.2
            d = torch.nn.functional.normalize(torch.randn(12, 3, generator=gen), dim=-1)
            rays = torch.cat((o, d, torch.full((12, 1), 0.5), torch.full((12, 1), 4.0), d), 1).to(device)
            for tag, mlp in (("render_kernel", True), ("render_layered", False)):
                with torch.no_grad():
                    rr = r.with_engine(Engine(precision=HALF, mlp_kernel=mlp)).render_rays(rays, False, keep_fine=True)
                res[f"{tag}_rgb"], res[f"{tag}_depth"] = rr["rgb"].cpu(), rr["depth"].cpu()
                res[f"{tag}_fine_features"] = rr["fine"].features.cpu()
        out[name] = res
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.save(run_cases(), sys.argv[1])
