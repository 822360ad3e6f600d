"""Time a plain NeRF training step and a 320x240 view render; optionally compare PSNR per precision.

    python bench/nerf_step.py                    # timings (fp32 and tf32 on CUDA, fp32 on CPU)
    python bench/nerf_step.py --psnr_steps 3000  # also train on the synthetic room per precision

The network and sampling are the original's (8x256, 64 + 128 samples, 1024 rays). Prints one
Markdown table; record it in docs/PERFORMANCE.md with the device line.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.registry import load_scene  # noqa: E402
from datasets.scene import Intrinsics, Scene, Split  # noqa: E402
from main import parse_options  # noqa: E402
from models.factory import build_renderer  # noqa: E402
from models.render_views import render_views  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_scene(n_frames=20, height=240, width=320):
    gen = torch.Generator().manual_seed(0)
    poses = torch.eye(4).repeat(n_frames, 1, 1)
    poses[:, :3, 3] = torch.randn(n_frames, 3, generator=gen) * 0.3
    split = Split(ids=list(range(n_frames)), rgb=torch.rand(n_frames, height, width, 3, generator=gen),
                  poses=poses, semantic=torch.zeros(n_frames, height, width, dtype=torch.long))
    intr = Intrinsics(width / 2, width / 2, (width - 1) / 2, (height - 1) / 2)
    return Scene("random", "", height, width, intr, split, split, semantic_classes=torch.tensor([0]).numpy())


def options_for(save_dir, extra=()):
    """RunOptions of the paper's Replica config (8 x 256, 64 + 128 samples, 1024 rays), no checkpoints."""
    _, opts = parse_options(["--config_file", "configs/replica_room0_config.yaml", "--save_dir", save_dir,
                             "--seed", "0", *extra])
    train = replace(opts.train, logging=replace(opts.train.logging, step_save_ckpt=10**9))
    return replace(opts, train=train)


def time_step(device, precision, steps, warmup):
    """fp16 = tf32 training plus the float16 inference engine for the render (--precision fp16)."""
    torch.backends.cuda.matmul.allow_tf32 = precision in ("tf32", "fp16")
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp)
        scene = random_scene()
        renderer = build_renderer(opts.model, device)
        trainer = Trainer(opts.train, scene, renderer, tmp, seed=0, log=False)
        times = []
        for i in range(warmup + steps):
            sync(device)
            t = time.perf_counter()
            trainer.train_step(i)
            sync(device)
            times.append(time.perf_counter() - t)
        step = statistics.median(times[warmup:])
        renderer.eval()
        if precision == "fp16":
            renderer.inference_dtype = torch.float16
        rays = scene.cameras(scene.test).image_rays(0, device)
        rtimes = []
        for i in range(1 + max(1, steps // 10)):
            sync(device)
            t = time.perf_counter()
            renderer.render_chunked(rays, train=False, keys=("rgb", "depth"))
            sync(device)
            rtimes.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        return step, statistics.median(rtimes[1:]), peak


def psnr_run(device, precision, steps, data_dir):
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp)
        data = replace(opts.data, dataset_dir=data_dir, width=320, height=240)
        train = replace(opts.train, n_iters=steps)
        torch.manual_seed(0)
        scene = load_scene(data)
        renderer = build_renderer(opts.model, device)
        trainer = Trainer(train, scene, renderer, tmp, seed=0, log=False)
        t = time.perf_counter()
        for i in range(steps):
            trainer.train_step(i)
        sync(device)
        elapsed = time.perf_counter() - t
        renderer.eval()
        cameras = scene.cameras(scene.test)
        out = render_views(renderer, cameras, scene.test.rgb, None, progress=False)
        renderer.inference_dtype = torch.float16 if device.type == "cuda" else None
        half = render_views(renderer, cameras, scene.test.rgb, None, progress=False)
        diff = (half["rgb"].float() - out["rgb"].float()).abs().max().item()
        return out["psnr"], elapsed, half["psnr"], diff


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--psnr_steps", type=int, default=0, help="also train this many steps on the synthetic room")
    p.add_argument("--data", default=None, help="synthetic room folder (generated if missing)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    precisions = ["fp32", "tf32", "fp16"] if device.type == "cuda" else ["fp32"]
    print(f"device: {name}; torch {torch.__version__}")
    print("| precision | train step (1024 rays, 64+128) | render 320x240 view | peak GPU memory |")
    print("|---|---|---|---|")
    for prec in precisions:
        step, view, peak = time_step(device, prec, args.steps, args.warmup)
        print(f"| {prec} | {step * 1e3:.1f} ms | {view * 1e3:.0f} ms | {peak:.1f} GiB |", flush=True)
    if args.psnr_steps:
        data = args.data or os.path.join(tempfile.gettempdir(), "jnerf_bench_room")
        if not os.path.isdir(data):
            from datasets.synthetic import generate_scene
            generate_scene(data, frames=150, width=320, height=240, seed=0)
        print(f"\nPSNR on the synthetic room test views after {args.psnr_steps} steps")
        print("(each model's test views rendered twice: with its own precision, and with the float16 "
              "inference engine of --precision fp16)")
        print("| training precision | test PSNR | training time | test PSNR, fp16 render | max abs(rgb diff) |")
        print("|---|---|---|---|---|")
        for prec in precisions[:2]:
            value, elapsed, half, diff = psnr_run(device, prec, args.psnr_steps, data)
            print(f"| {prec} | {value:.2f} dB | {elapsed:.1f} s | {half:.2f} dB | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
