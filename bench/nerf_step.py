"""Time a plain NeRF training step and a 320x240 view render; optionally compare PSNR per precision.

    python bench/nerf_step.py                    # fp32 / tf32 / bf16, eager and CUDA graph (CPU: fp32)
    python bench/nerf_step.py --variants tf32:graph,mixed:graph,bf16:graph
    python bench/nerf_step.py --psnr_steps 1000 --data ROOM --psnr_precisions bf16,fp32 --psnr_seeds 0,1

The network and sampling are the original's (8x256, 64 + 128 samples, 1024 rays). Prints one
Markdown table; record it in docs/PERFORMANCE.md with the device line.
"""
import argparse
import gc
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
from models.engine import Engine  # noqa: E402
from models.factory import build_renderer  # noqa: E402
from models.render_views import render_views  # noqa: E402
from training.semantic import SemanticObjective  # noqa: E402
from training.trainer import Trainer  # noqa: E402
from utils.options import SemanticOptions  # noqa: E402
from utils.precision import PRECISIONS, Precision  # noqa: E402


def release(device):
    """Free the last run's graphs and buffers before the next one is captured: a CUDA graph of the
    previous trainer destroyed by the garbage collector in the middle of the next capture
    invalidated that capture (seen once on the H200: fp32 runs, then tf32 plain, then tf32 joint)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


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


# bf16 is not a --precision choice (withheld, docs/PERFORMANCE.md): the benchmarks build it as a
# Precision value of their own, fp16 with bfloat16 training passes
BF16 = Precision("bf16", "fp16 with bfloat16 training passes (withheld)", tf32=True, inference_dtype=torch.float16,
                 train_dtype=torch.bfloat16)
BENCH_PRECISIONS = dict(PRECISIONS, bf16=BF16)


def cli_precision(precision):
    """The --precision of a benchmark precision (bf16 runs as fp16 plus its own Precision value)."""
    return "fp16" if precision == "bf16" else precision


def objective_for(method, opts, scene, renderer):
    """The training objective of a benchmark method: plain NeRF, or the Semantic-NeRF baseline
    ('joint' / 'finetune') on random seed labels (1 % of the pixels, 20 classes: the step's cost
    does not depend on how many are labelled)."""
    if method == "plain":
        return None
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 20, scene.train.semantic.shape, generator=gen)
    labels[torch.rand(labels.shape, generator=gen) > 0.01] = -1
    return SemanticObjective(opts.train, SemanticOptions(protocol=method), renderer, labels, 20)


def time_step(device, precision, steps, warmup, graph=True, method="plain"):
    """fp16 = tf32 training plus the float16 inference engine for the render (--precision fp16);
    mixed = --precision mixed (float16 training passes with the loss scale, the float16 engine);
    bf16 = fp16 plus bfloat16 training passes (its own Precision value; not a --precision choice).
    graph: the CUDA-graph step (else --no_cuda_graph); method: plain | joint | finetune
    (`objective_for`).
    The step time is the mean over `steps` consecutive steps with one sync at the end (the
    graphed step never waits for the device, so per-step syncs would measure latency instead)."""
    torch.backends.cuda.matmul.allow_tf32 = precision in ("tf32", "fp16", "bf16", "mixed")
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp, ["--precision", cli_precision(precision)] + ([] if graph else ["--no_cuda_graph"]))
        scene = random_scene()
        renderer = build_renderer(opts.model, device, BENCH_PRECISIONS[precision])
        trainer = Trainer(opts.train, scene, renderer, tmp, objective_for(method, opts, scene, renderer), seed=0,
                          log=False)
        for i in range(warmup):
            trainer.train_step(i)
        sync(device)
        t = time.perf_counter()
        for i in range(warmup, warmup + steps):
            trainer.train_step(i)
        sync(device)
        step = (time.perf_counter() - t) / steps
        renderer.eval()
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


def psnr_run(device, precision, steps, data_dir, seed=0, view_step=6, both=True):
    """Train `steps` plain steps at `precision` (the CUDA-graph step where allowed) on the room in
    `data_dir`, seed `seed`; render every `view_step`-th test view with the model's own engine
    (float32 for fp32/tf32, the float16 engine for bf16/fp16) and with the float32 engine.
    Returns (PSNR own engine, seconds, PSNR float32 engine, max |rgb difference| between them)."""
    torch.backends.cuda.matmul.allow_tf32 = precision in ("tf32", "fp16", "bf16", "mixed")
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp, ["--precision", cli_precision(precision), "--seed", str(seed)])
        data = replace(opts.data, dataset_dir=data_dir, width=320, height=240)
        train = replace(opts.train, n_iters=steps)
        torch.manual_seed(seed)
        scene = load_scene(data)
        renderer = build_renderer(opts.model, device, BENCH_PRECISIONS[precision])
        trainer = Trainer(train, scene, renderer, tmp, seed=seed, log=False)
        t = time.perf_counter()
        for i in range(steps):
            trainer.train_step(i)
        sync(device)
        elapsed = time.perf_counter() - t
        renderer.eval()
        idx = list(range(0, len(scene.test), view_step))
        cameras = scene.cameras(scene.test).subset(idx)
        gt = scene.test.rgb[idx]
        own = render_views(renderer, cameras, gt, None, progress=False)
        half = renderer.engine.precision.inference_dtype is not None
        full = own if (not half or not both) else render_views(renderer.with_engine(Engine()), cameras, gt, None,
                                                                 progress=False)
        diff = (own["rgb"].float() - full["rgb"].float()).abs().max().item()
        return own["psnr"], elapsed, full["psnr"], diff


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--psnr_steps", type=int, default=0, help="also train this many steps on the synthetic room")
    p.add_argument("--data", default=None, help="synthetic room folder (generated if missing)")
    p.add_argument("--psnr_precisions", default="fp32,bf16")
    p.add_argument("--psnr_seeds", default="0,1")
    p.add_argument("--own_engine_only", action="store_true", help="render each model with its own engine only")
    p.add_argument("--variants", default="", help="comma-separated precision[:graph] list, e.g. tf32,bf16:graph")
    p.add_argument("--methods", default="plain", help="comma-separated: plain, joint, finetune (Semantic-NeRF)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    variants = ([("fp32", False), ("fp32", True), ("tf32", False), ("tf32", True), ("bf16", False), ("bf16", True)]
                if device.type == "cuda" else [("fp32", False)])
    if args.variants:
        variants = [(v.split(":")[0], v.endswith(":graph")) for v in args.variants.split(",") if v != "none"]
    print(f"device: {name}; torch {torch.__version__}")
    print("| method | precision | step | train step (1024 rays, 64+128) | / plain | render 320x240 view (its engine) "
          "| peak GPU memory |")
    print("|---|---|---|---|---|---|---|")
    for prec, graph in variants:
        plain = None
        for method in args.methods.split(","):
            step, view, peak = time_step(device, prec, args.steps, args.warmup, graph, method)
            release(device)
            plain = step if method == "plain" else plain
            ratio = f"{step / plain:.2f}x" if plain else "-"
            print(f"| {method} | {prec} | {'CUDA graph' if graph else 'eager'} | {step * 1e3:.2f} ms | {ratio} | "
                  f"{view * 1e3:.0f} ms | {peak:.1f} GiB |", flush=True)
    if args.psnr_steps:
        data = args.data or os.path.join(tempfile.gettempdir(), "jnerf_bench_room")
        if not os.path.isdir(data):
            from datasets.synthetic import generate_scene
            generate_scene(data, frames=150, width=320, height=240, seed=0)
        print(f"\nPSNR on the synthetic room test views (every 6th) after {args.psnr_steps} steps")
        print("(each model's test views rendered with its own engine and with the float32 engine)")
        print("| training precision | seed | test PSNR | training time | test PSNR, float32 render | max abs(rgb diff) |")
        print("|---|---|---|---|---|---|")
        for seed in [int(x) for x in args.psnr_seeds.split(",")]:
            for prec in args.psnr_precisions.split(","):
                value, elapsed, full, diff = psnr_run(device, prec, args.psnr_steps, data, seed,
                                                      both=not args.own_engine_only)
                print(f"| {prec} | {seed} | {value:.2f} dB | {elapsed:.1f} s | {full:.2f} dB | {diff:.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
