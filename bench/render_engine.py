"""Image renders of the paper's network (8 x 256, 64 + 128 samples, random weights): one view per
engine variant, and a set of views written to disk with the PNG writing in the caller or overlapped
with the renders (models/render_views.py).

    python bench/render_engine.py                       # CUDA: 320x240, the fp16 engine
    python bench/render_engine.py --height 60 --width 80 --views 4     # a CPU-sized run

Variants (models.engine.Engine): `slow encoding` = fused_encoding off (the positions encoded,
cast and copied into the trunk's input buffer: the slow twin), `default` = encoded straight into
the buffer. Each row: median of --repeats renders of one view after a warm-up, and the largest
|rgb - slow twin| (0: the same arithmetic). On CUDA also: the points per network call (netchunk)
and rays per render call swept around the config's (chunk sizes for the device: activation blocks
that stay in L2 against launch counts), and the fp32 engine's render of the same weights as the
precision reference (|rgb - fp32| of the fp16 engine, for the policy's PSNR bound).
Prints Markdown tables.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.nerf_step import options_for, random_scene  # noqa: E402
from models.factory import build_renderer  # noqa: E402
from models.render_views import psnr, render_views  # noqa: E402
from utils.precision import PRECISIONS  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--views", type=int, default=30, help="views of the written set")
    p.add_argument("--precision", default=None, help="default: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--sweep", action="store_true", help="on the CPU too: netchunk and render-chunk variants "
                   "(always on CUDA)")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = a.precision or ("fp16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = PRECISIONS[precision].tf32
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp, ["--precision", precision])
        torch.manual_seed(0)
        base = build_renderer(opts.model, device, PRECISIONS[precision]).eval()
        scene = random_scene(n_frames=max(a.views, 2), height=a.height, width=a.width)
        rays = scene.cameras(scene.test).image_rays(0, device)
        keys = ("rgb", "depth", "disp")
        variants = [("slow encoding (twin)", replace(base.engine, fused_encoding=False)),
                    ("encoding into the buffer" + (" (default)" if device.type == "cuda" else ""),
                     replace(base.engine, fused_encoding=True))]
        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
        print(f"\ndevice: {dev_name}; precision {precision}; view {a.width}x{a.height}, 64 + 128 samples, "
              f"median of {a.repeats}\n")
        print("| engine | one view | max abs(rgb - twin) |\n|---|---:|---:|")
        ref = None
        for name, engine in variants:
            r = base.with_engine(engine)
            sec, out = timed(lambda: r.render_chunked(rays, keys=keys), device, a.repeats)
            ref = out if ref is None else ref
            print(f"| {name} | {1e3 * sec:.1f} ms | {float((out['rgb'] - ref['rgb']).abs().max()):.2e} |")
        if device.type == "cuda" or a.sweep:       # points per network call and rays per render call
            from models.rendering import Renderer
            for netchunk in (1 << 18, 1 << 19, 1 << 21):
                r = Renderer(base.coarse, base.fine, base.pos_enc, base.dir_enc, replace(base.opts, netchunk=netchunk),
                             base.engine).eval()
                sec, got = timed(lambda: r.render_chunked(rays, keys=keys), device, a.repeats)
                print(f"| default, netchunk {netchunk >> 10}k points (config: {base.opts.netchunk >> 10}k) | "
                      f"{1e3 * sec:.1f} ms | {float((got['rgb'] - ref['rgb']).abs().max()):.2e} |")
            for chunk in (1 << 13, 1 << 16):
                sec, got = timed(lambda: base.render_chunked(rays, chunk=chunk, keys=keys), device, a.repeats)
                print(f"| default, {chunk} rays per render call (config: {base.opts.chunk}) | {1e3 * sec:.1f} ms | "
                      f"{float((got['rgb'] - ref['rgb']).abs().max()):.2e} |")
        if device.type == "cuda" and precision != "fp32":
            fp32 = base.with_engine(replace(base.engine, precision=PRECISIONS["fp32"].on(device)))
            torch.backends.cuda.matmul.allow_tf32 = False
            exact = fp32.render_chunked(rays, keys=keys)
            torch.backends.cuda.matmul.allow_tf32 = PRECISIONS[precision].tf32
            mse = float(((out["rgb"] - exact["rgb"]) ** 2).mean())
            print(f"| {precision} engine vs fp32 engine | | {float((out['rgb'] - exact['rgb']).abs().max()):.2e} "
                  f"(PSNR of the difference {psnr(mse):.1f} dB) |")
        cams = scene.cameras(scene.test)
        n = min(a.views, len(cams))
        cams = cams.subset(list(range(n)))
        gt = scene.test.rgb[:n]
        print(f"\n{n} views rendered and written (rgb, depth, vis_depth, disp PNGs, two videos):\n")
        print("| writing | wall | per view |\n|---|---:|---:|")
        for writers in (0, 4, 0, 4):
            out_dir = os.path.join(tmp, f"w{writers}")
            sync(device)
            t = time.perf_counter()
            render_views(base, cams, gt, out_dir, progress=False, writers=writers)
            sync(device)
            sec = time.perf_counter() - t
            print(f"| {'in the caller' if writers == 0 else f'{writers} background threads'} | {sec:.2f} s | "
                  f"{1e3 * sec / n:.0f} ms |")
        np.random.seed(0)


if __name__ == "__main__":
    main()
