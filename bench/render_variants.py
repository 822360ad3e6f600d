"""Time one 320x240 view render under engine variants (fused epilogue, chunk size, bf16, compile).

    python bench/render_variants.py
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.nerf_step import options_for, random_scene  # noqa: E402
from models.factory import build_renderer  # noqa: E402
from models.engine import Engine  # noqa: E402


def time_render(renderer, rays, reps=5, autocast=None):
    times = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=autocast, enabled=autocast is not None):
            out = renderer.render_chunked(rays, train=False, keys=("rgb",))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]), out["rgb"].float()


def main():
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    opts = options_for("/tmp/rv")
    base = build_renderer(opts.model, dev).eval()
    scene = random_scene(2)
    rays = scene.cameras(scene.test).image_rays(0, dev)
    print(f"device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}")
    print("| variant | render 320x240 | max |rgb - ref| |")
    print("|---|---|---|")

    r = base.with_engine(Engine(fused=False, pad_k=False, compose_head=False))
    t, ref = time_render(r, rays)
    print(f"| eager, tf32, netchunk 1M | {t*1e3:.0f} ms | 0 |", flush=True)
    for name, eng in (("fused epilogue", (True, False, False)), ("fused + padded K=64", (True, True, False)),
                      ("fused + composed head", (True, False, True)), ("fused + padded + composed (default)",
                                                                         (True, True, True))):
        fused, pad, compose = eng
        r = base.with_engine(Engine(fused=fused, pad_k=pad, compose_head=compose))
        t, out = time_render(r, rays)
        print(f"| {name}, tf32 | {t*1e3:.0f} ms | {(out-ref).abs().max():.2e} |", flush=True)
    r.opts.netchunk = 4 * 1024 * 1024
    t, out = time_render(r, rays)
    print(f"| default, netchunk 4M | {t*1e3:.0f} ms | {(out-ref).abs().max():.2e} |", flush=True)
    r.opts.netchunk = 1024 * 1024
    t, out = time_render(r, rays, autocast=torch.bfloat16)
    print(f"| default, bf16 autocast | {t*1e3:.0f} ms | {(out-ref).abs().max():.2e} |", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    t, out = time_render(r, rays)
    print(f"| default, fp32 | {t*1e3:.0f} ms | {(out-ref).abs().max():.2e} |", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        time_render(r, rays, reps=1)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    try:
        r = base.with_engine(Engine(fused=False, pad_k=False, compose_head=False))
        r.coarse.field = torch.compile(r.coarse.field, dynamic=True)
        r.fine.field = torch.compile(r.fine.field, dynamic=True)
        t0 = time.perf_counter()
        time_render(r, rays, reps=1)
        warm = time.perf_counter() - t0
        t, out = time_render(r, rays)
        print(f"| torch.compile (dynamic), tf32 | {t*1e3:.0f} ms (compile {warm:.0f} s) | {(out-ref).abs().max():.2e} |")
    except Exception as exc:  # compile is optional
        print(f"| torch.compile | failed: {exc.__class__.__name__} | |")


if __name__ == "__main__":
    main()
