"""Time one Jacobi shaping step (the README's J-NeRF flags) and check its loss against the slow,
literal definition.

    python bench/shaping_step.py                          # CUDA when present: fp32 and tf32
    python bench/shaping_step.py --netwidth 64 --rays 64  # a quick CPU run

A step is the whole training step of the paper's command: sample N rays, render coarse + fine
(64 + 128 samples, the original's 8 x 256 networks), photometric loss, per-ray Jacobians of
rgb_linear, the adaptive-threshold scan over N anchors, the contrastive and gradient-norm terms,
one backward, Adam. Descriptors are random float16 grids of the original's 89 x 119 x 384 size
(gathered per batch on the host, as with --load_on_cpu). Prints Markdown tables; record them in
docs/PERFORMANCE.md. The original takes 7.6-8.0 s per step on an H100 at N = 64.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datasets.dino_io import DescriptorStore  # noqa: E402
from datasets.scene import Intrinsics, Scene, Split  # noqa: E402
from main import parse_options  # noqa: E402
from models.factory import build_renderer  # noqa: E402
from training._reference import slow_shaping  # noqa: E402
from training.shaping import build_shaper  # noqa: E402
from training.trainer import Trainer  # noqa: E402

README_FLAGS = ["--load_dino", "--load_on_cpu", "--feature_dim", "384", "--contrastive_2d",
                "--contrastive_starting_step", "0", "--contrastive_step", "1", "--wgt_img", "1",
                "--wgt_contrastive", "1e-2", "--wgt_gradient", "1e-2", "--rgb_layer", "--pos_threshold", "0.8",
                "--neg_threshold", "0.8", "--adaptive_threshold", "--gt_feature_sim", "--gradient_norm_loss",
                "--contrastive_abs", "--training_mode"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_scene(n_frames=20, height=240, width=320, grid=(89, 119), dim=384):
    gen = torch.Generator().manual_seed(0)
    poses = torch.eye(4).repeat(n_frames, 1, 1)
    poses[:, :3, 3] = torch.randn(n_frames, 3, generator=gen) * 0.3
    # descriptors: a few cluster directions plus noise, so the thresholds see structure
    centres = torch.randn(8, dim, generator=gen)
    which = torch.randint(0, 8, (n_frames, *grid), generator=gen)
    grids = (centres[which] + 0.8 * torch.randn(n_frames, *grid, dim, generator=gen)).half()
    split = Split(ids=list(range(n_frames)), rgb=torch.rand(n_frames, height, width, 3, generator=gen),
                  poses=poses, semantic=torch.zeros(n_frames, height, width, dtype=torch.long),
                  features=DescriptorStore(grids, (height, width)))
    intr = Intrinsics(width / 2, width / 2, (width - 1) / 2, (height - 1) / 2)
    return Scene("random", "", height, width, intr, split, split, semantic_classes=torch.tensor([0]).numpy())


def options_for(save_dir, n_rays, args, shaping=True, more=()):
    """RunOptions of the README's command (or plain training) at the benchmark's sizes."""
    extra = (README_FLAGS if shaping else []) + list(more)
    config = os.path.join(ROOT, "configs", "replica_room0_config.yaml")
    _, opts = parse_options(["--config_file", config, "--save_dir", save_dir,
                             "--seed", "0", *extra, "--N_rays", str(n_rays), "--N_samples", str(args.samples),
                             "--N_importance", str(args.importance)])
    model = replace(opts.model, netwidth=args.netwidth, netwidth_fine=args.netwidth)
    train = replace(opts.train, logging=replace(opts.train.logging, step_save_ckpt=10**9))
    return replace(opts, model=model, train=train)


def make_trainer(device, n_rays, args, scene, tmp, shaping=True, more=()):
    opts = options_for(tmp, n_rays, args, shaping, more)
    torch.manual_seed(0)
    renderer = build_renderer(opts.model, device, opts.precision)
    shaper = build_shaper(opts, scene, renderer, None)[0] if shaping else None
    return Trainer(opts.train, scene, renderer, tmp, shaper=shaper, seed=0, log=False)


def time_steps(device, precision, n_rays, args, scene, shaping=True, adam=None, host=None):
    """Median step time; `adam` 'foreach' swaps in the multi-tensor Adam (the default on CUDA is
    the fused one); `host` (a list) receives the median host time of a step: the time until
    train_step returns, before the device is synchronised (= the step is launch-bound when it is
    close to the step time)."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(device, n_rays, args, scene, tmp, shaping, ["--no_cuda_graph"])
        if adam == "foreach":
            params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
            trainer.optimizer = torch.optim.Adam(params, lr=trainer.opts.lrate, betas=(0.9, 0.999), foreach=True)
        host_times = []
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(args.warmup + args.steps):
            sync(device)
            t = time.perf_counter()
            trainer.train_step(i)
            host_times.append(time.perf_counter() - t)
            sync(device)
            times.append(time.perf_counter() - t)
        if host is not None:
            host.append(statistics.median(host_times[args.warmup:]))
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        tau = trainer.shaper.tau if shaping else float("nan")
        return statistics.median(times[args.warmup:]), peak, tau


def time_fast(device, precision, n_rays, args, scene, graph, shaping=True):
    """(mean step time over args.steps consecutive steps with one sync at the end, tau after) for
    the --precision `precision` step, graph-captured or eager (--no_cuda_graph)."""
    torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    # bf16 is not a --precision choice (withheld, docs/PERFORMANCE.md): fp16 plus the renderer's switch
    more = ["--precision", "fp16" if precision == "bf16" else precision] + ([] if graph else ["--no_cuda_graph"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(device, n_rays, args, scene, tmp, shaping, more)
        if precision == "bf16" and device.type == "cuda":
            trainer.renderer.train_dtype = torch.bfloat16
        for i in range(args.warmup):
            trainer.train_step(i)
        sync(device)
        t = time.perf_counter()
        for i in range(args.warmup, args.warmup + args.steps):
            trainer.train_step(i)
        sync(device)
        tau = trainer.shaper.tau if shaping else float("nan")
        return (time.perf_counter() - t) / args.steps, tau, trainer.fast_reason


def loss_check(device, args, scene):
    """The fast loss against the literal loops of the original (training/_reference.py), float64 on
    the CPU with one training-mode render shared by both; then the fast path on `device` in fp32
    and tf32 against CPU float64 on one deterministic (evaluation-mode) render."""
    cpu = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = make_trainer(cpu, 64, args, scene, tmp)
        ref.renderer.double()
        batch = ref.batcher.next()
        batch = batch._replace(rays=batch.rays.double())
        shaper = ref.shaper
        torch.manual_seed(1)
        out = ref.renderer.render_rays(batch.rays, train=True, keep_fine=True)
        t = time.perf_counter()
        fast, logs = shaper.loss(ref.renderer, out, batch, 0)
        t_fast = time.perf_counter() - t
        tau_fast = shaper.tau
        feats = scene.train.features.gather(batch.frame, batch.v, batch.u)
        t = time.perf_counter()
        slow, slow_nce, _, tau_slow = slow_shaping(ref.renderer, out, batch.rays, shaper.opts, 0.8, feats=feats)
        t_slow = time.perf_counter() - t
        rows.append(("CPU float64, training-mode render", float(fast.detach()), float(slow.detach()),
                     f"{tau_fast:.3f} / {tau_slow:.3f}", f"{t_fast * 1e3:.1f} ms vs {t_slow:.2f} s"))
        # device precision: evaluation-mode render (deterministic), same weights and rays
        shaper.tau = 0.8
        out = ref.renderer.render_rays(batch.rays, train=False, keep_fine=True)
        base = float(shaper.loss(ref.renderer, out, batch, 0)[0].detach())
        if device.type == "cuda":
            ref.renderer.float().to(device)
            dev_batch = batch._replace(rays=batch.rays.float().to(device))
            for precision in ("fp32", "tf32"):
                torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
                shaper.tau = 0.8
                out = ref.renderer.render_rays(dev_batch.rays, train=False, keep_fine=True)
                value = float(shaper.loss(ref.renderer, out, dev_batch, 0)[0].detach())
                rows.append((f"{precision} on {device.type}, evaluation-mode render", value, base,
                             "", f"rel. diff {abs(value - base) / abs(base):.1e}"))
    print("\nLoss check at N = 64 (wgt_contrastive * L_NCE + wgt_gradient * L_norm)")
    print("| setting | fast path | reference | tau after the step (fast / slow) | note |")
    print("|---|---|---|---|---|")
    for name, a, b, tau, note in rows:
        print(f"| {name} | {a:.12f} | {b:.12f} | {tau} | {note} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rays", default="64,128,256,1024", help="comma-separated N_rays values")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--netwidth", type=int, default=256)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--importance", type=int, default=128)
    p.add_argument("--no_check", action="store_true", help="skip the loss check against the slow definition")
    p.add_argument("--fast_only", action="store_true", help="only the CUDA-graph table (eager tf32, graph tf32, bf16)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    precisions = ["fp32", "tf32"] if device.type == "cuda" else ["fp32"]
    scene = random_scene()
    print(f"device: {name}; torch {torch.__version__}; network 8 x {args.netwidth}; "
          f"{args.samples} + {args.importance} samples; median of {args.steps} steps after {args.warmup}")
    if args.fast_only:
        args.rays, args.no_check = "", True
    print("\n| N_rays | precision | plain step | shaping step | peak GPU memory | tau after the run |")
    print("|---|---|---|---|---|---|")
    for n in [int(x) for x in args.rays.split(",") if x]:
        for prec in precisions:
            plain = time_steps(device, prec, n, args, scene, shaping=False)[0] if n == 64 else None
            step, peak, tau = time_steps(device, prec, n, args, scene)
            plain_txt = f"{plain * 1e3:.1f} ms" if plain is not None else ""
            print(f"| {n} | {prec} | {plain_txt} | {step * 1e3:.1f} ms | {peak:.0f} MiB | {tau:.3f} |", flush=True)
    if device.type == "cuda" and not args.fast_only:
        print("\nN_rays 64, tf32: Adam variant and host (launch) time; a step whose host time is close to its "
              "total is bound by kernel launches, not by the GPU")
        print("| Adam | plain step | plain host | shaping step | shaping host |")
        print("|---|---|---|---|---|")
        for adam in ("fused", "foreach"):
            hp, hs = [], []
            tp = time_steps(device, "tf32", 64, args, scene, shaping=False, adam=adam, host=hp)[0]
            ts = time_steps(device, "tf32", 64, args, scene, adam=adam, host=hs)[0]
            print(f"| {adam} | {tp*1e3:.1f} ms | {hp[0]*1e3:.1f} ms | {ts*1e3:.1f} ms | {hs[0]*1e3:.1f} ms |",
                  flush=True)
    if device.type == "cuda":
        print("\nN_rays 64: the whole step as one CUDA graph against the eager step (mean of consecutive steps, "
              "one sync at the end)")
        print("| precision | step | plain step | shaping step | tau after the run | eager because |")
        print("|---|---|---|---|---|---|")
        variants = ((("tf32", False), ("tf32", True), ("bf16", True)) if args.fast_only else
                    (("fp32", False), ("fp32", True), ("tf32", False), ("tf32", True), ("bf16", True)))
        for prec, graph in variants:
            tp = time_fast(device, prec, 64, args, scene, graph, shaping=False)[0]
            ts, tau, why = time_fast(device, prec, 64, args, scene, graph)
            print(f"| {prec} | {'CUDA graph' if graph else 'eager'} | {tp * 1e3:.2f} ms | {ts * 1e3:.2f} ms | "
                  f"{tau:.3f} | {why or ''} |", flush=True)
    if not args.no_check:
        loss_check(device, args, scene)


if __name__ == "__main__":
    main()
