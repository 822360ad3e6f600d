"""Where the device time of a step goes: torch.profiler kernel tables (CUDA; on the CPU, operators).

    python bench/profile_step.py --what step --precision mixed     # plain training step, eager
    python bench/profile_step.py --what agg                         # one aggregator step
    python bench/profile_step.py --what render --precision fp16     # one 320x240 view

The step is profiled eagerly (a graph replay hides its kernels from the profiler; its kernels are
the same). Prints the top kernels by device time per step, and their sum (kernel rows only:
operator rows repeat their kernels' time). Timings are for reading, never asserted.
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.nerf_step import BENCH_PRECISIONS, cli_precision, options_for, random_scene  # noqa: E402
from models.factory import build_renderer  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def table(prof, device, per, rows):
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    if device.type == "cuda":
        # operators report their kernels' device time too: keep the kernel rows, so nothing counts twice
        events = [e for e in events if e.device_type == DeviceType.CUDA] or events
    events.sort(key=lambda e: -getattr(e, key))
    total = sum(getattr(e, key) for e in events)
    print("| kernel / operator | calls per step | ms per step | share |")
    print("|---|---:|---:|---:|")
    for e in events[:rows]:
        t = getattr(e, key)
        print(f"| {e.key[:90]} | {e.count / per:.1f} | {t / 1e3 / per:.3f} | {100 * t / total:.1f} % |")
    print(f"| **sum** | | **{total / 1e3 / per:.3f}** | |")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--what", choices=["step", "agg", "render"], default="step")
    p.add_argument("--precision", default="tf32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--pixels", type=int, default=76800)
    p.add_argument("--labels", type=int, default=10)
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = a.precision in ("tf32", "fp16", "bf16", "mixed")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    print(f"### {a.what}, {a.precision}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}")
    if a.what == "agg":
        from propagation.aggregator import _train_eager
        from propagation.aggregator import ResponseAggregator, lr_schedule
        from tqdm import tqdm
        gen = torch.Generator().manual_seed(0)
        y = torch.randint(0, a.labels, (a.pixels,), generator=gen).to(device)
        x = torch.rand(5, a.pixels, a.labels, generator=gen).to(device)
        model = ResponseAggregator(a.labels).to(device)
        choice = torch.from_numpy(np.random.default_rng(0).integers(0, 5, size=200)).to(device)
        bar = tqdm(disable=True)

        def run(n):
            _train_eager(model, x, y, choice, lr_schedule(n, device), n, bar, 10**9)
        run(10)
        with profile(activities=acts) as prof:
            run(a.steps)
        table(prof, device, a.steps, a.rows)
        return
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp, ["--precision", cli_precision(a.precision), "--no_cuda_graph"])
        scene = random_scene()
        renderer = build_renderer(opts.model, device, BENCH_PRECISIONS[a.precision])
        if a.what == "step":
            trainer = Trainer(opts.train, scene, renderer, tmp, seed=0, log=False)
            for i in range(5):
                trainer.train_step(i)
            with profile(activities=acts) as prof:
                for i in range(5, 5 + a.steps):
                    trainer.train_step(i)
        else:
            renderer.eval()
            rays = scene.cameras(scene.test).image_rays(0, device)
            renderer.render_chunked(rays, keys=("rgb", "depth"))
            with profile(activities=acts) as prof:
                for _ in range(a.steps):
                    renderer.render_chunked(rays, keys=("rgb", "depth"))
        table(prof, device, a.steps, a.rows)


if __name__ == "__main__":
    main()
