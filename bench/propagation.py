"""Time label propagation: 2D and 3D, sparse and dense, and the growth with the number of seeds.

    python bench/propagation.py                      # CUDA when present, else the CPU
    python bench/propagation.py --views 6 --height 60 --width 80 --agg_steps 200   # a quick CPU run

Setting (defaults): the original's network (8 x 256, skip at 4, view branch) with random
weights, 64 coarse + 128 fine samples, 180 test views at 320 x 240 seen from random poses, one
labelled training frame whose label map holds the seed classes in blocks. The whole propagation
mode runs as main.py runs it (propagation/run.py: seeds, Jacobians, directions, the test-view
pass, PNG and video writing, metrics), so the figures are end to end; the table separates the
test-view pass (one render of every test view plus all responses, labels and confusion on the
device) from writing the PNGs. The original needs one full render of the test views per seed
(about 170 s on its setup), i.e. about 31 min for 10 seeds.

Prints Markdown tables with the device name; record them in docs/PERFORMANCE.md.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.scene import Intrinsics, Scene, Split  # noqa: E402
from main import parse_options  # noqa: E402
from models.checkpoints import checkpoint_data, write_checkpoint  # noqa: E402
from models.factory import build_renderer  # noqa: E402
from models.render_views import render_chunk_size  # noqa: E402
from propagation.run import propagate  # noqa: E402
from utils.precision import PRECISIONS  # noqa: E402

SPARSE = ["--sparse_views", "--sparse_ratio", "0.995", "--label_propagation", "--partial_perc", "0",
          "--rgb_layer", "--mean_gradient"]
DENSE = ["--sparse_views", "--sparse_ratio", "0.995", "--rgb_layer", "--adaptive_selection",
         "--num_comb", "20", "--num_iters", "5", "--train_agg"]


def block_labels(height, width, classes, gen):
    """[H, W] map with `classes` classes (1..classes) in a grid of blocks, void (0) in a 4-pixel border."""
    cols = int(np.ceil(np.sqrt(classes * width / height)))
    rows = int(np.ceil(classes / cols))
    v = torch.arange(height)[:, None] * rows // height
    u = torch.arange(width)[None, :] * cols // width
    lab = (v * cols + u) % classes + 1
    lab[:4], lab[-4:], lab[:, :4], lab[:, -4:] = 0, 0, 0, 0
    perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(classes, generator=gen) + 1])
    return perm[lab]


def look_at(eye, target):
    f = target - eye
    f = f / f.norm()
    r = torch.linalg.cross(f, torch.tensor([0.0, 0.0, 1.0]))
    r = r / r.norm()
    d = torch.linalg.cross(f, r)
    pose = torch.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = r, d, f, eye
    return pose


def random_scene(views, height, width, classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    poses = []
    for i in range(views + 1):
        eye = torch.rand(3, generator=gen) * torch.tensor([2.0, 2.0, 0.5]) - torch.tensor([1.0, 1.0, -1.0])
        target = torch.rand(3, generator=gen) * 2.0 - 1.0
        poses.append(look_at(eye, target))
    poses = torch.stack(poses)
    train_sem = block_labels(height, width, classes, gen)[None]
    test_sem = torch.randint(0, classes + 1, (views, height, width), generator=gen)
    dummy = torch.zeros(1, 1, 1, 3)
    intr = Intrinsics(width / 2.0, width / 2.0, (width - 1) / 2.0, (height - 1) / 2.0)
    return Scene("bench", "", height, width, intr,
                 Split(ids=[0], rgb=dummy, poses=poses[:1], semantic=train_sem),
                 Split(ids=list(range(1, views + 1)), rgb=dummy, poses=poses[1:], semantic=test_sem),
                 semantic_classes=np.arange(classes + 1), near=0.1, far=10.0)


def options_for(save_dir, kind, extra, n_samples, n_importance, agg_steps):
    """RunOptions of a propagation run reading the checkpoint <save_dir>/random.ckpt."""
    argv = ["--config_file", "configs/replica_room0_config.yaml", "--save_dir", save_dir, "--seed", "0",
            "--N_samples", str(n_samples), "--N_importance", str(n_importance), "--agg_steps", str(agg_steps),
            "--ckpt_path", os.path.join(save_dir, "random.ckpt"), f"--propagate_{kind}", *extra]
    return parse_options(argv)[1]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(kind, flags, scene, device, args, precision="fp32"):
    """One propagation run in a temporary folder; returns (timings dict, label maps [T, H, W])."""
    import cv2
    if device.type == "cuda":      # fp16: tf32 matmuls plus the float16 inference engine
        torch.backends.cuda.matmul.allow_tf32 = precision in ("tf32", "fp16")
        torch.backends.cudnn.allow_tf32 = precision in ("tf32", "fp16")
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp, kind, flags, args.n_samples, args.n_importance, args.agg_steps)
        torch.manual_seed(0)
        renderer = build_renderer(opts.model, device, PRECISIONS[precision])
        write_checkpoint(opts.ckpt_path, checkpoint_data(0, renderer))     # random weights
        renderer.eval()
        sync(device)
        t0 = time.perf_counter()
        metrics = propagate(opts, scene, renderer, np.random.default_rng(0))
        sync(device)
        wall = time.perf_counter() - t0
        out = tmp if kind == "2d" else os.path.join(tmp, "test_render")
        labels = np.stack([cv2.imread(os.path.join(out, f"{i}_label.png"), cv2.IMREAD_UNCHANGED)
                           for i in range(len(scene.test))])
    t = dict(metrics["timings"])
    t["wall"] = wall
    t["directions_count"] = metrics["num_directions"]
    return t, labels


def profile_view(args, device):
    """--profile: where the time of one test view goes (render vs responses), under several
    precisions, and the top CUDA kernels of the render."""
    from models.rays import image_rays
    from propagation.responses import perturbation_matrices, render_chunks, responses_2d, responses_3d
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp, "2d", SPARSE, args.n_samples, args.n_importance, 10)
    torch.manual_seed(0)
    renderer = build_renderer(opts.model, device, opts.precision).eval()
    sc = random_scene(4, args.height, args.width, 10)
    rays = [image_rays(p.to(device), args.height, args.width, sc.intrinsics, 0.1, 10.0) for p in sc.test.poses]
    chunk = render_chunk_size(renderer)
    gen = torch.Generator().manual_seed(0)
    M = perturbation_matrices(torch.randn(10, 3, 128, generator=gen, dtype=torch.float64) * 1e-2, 0.1,
                              device=device)

    def one(r, what, autocast=None):
        for _, out in render_chunks(renderer, r, chunk):
            fine = out["fine"]
            if autocast is not None:
                fine = type(fine)(*(x.float() for x in fine))
            if what == "2d":
                responses_2d(fine, M)
            elif what == "3d":
                responses_3d(fine, M)

    def timed(what, prec, autocast=None):
        torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
        ctx = (torch.autocast(device.type, dtype=autocast) if autocast is not None
               else torch.autocast(device.type, enabled=False))
        times = []
        with ctx:
            for i, r in enumerate(rays):
                sync(device)
                t = time.perf_counter()
                one(r, what, autocast)
                sync(device)
                times.append(time.perf_counter() - t)
        return 1000 * float(np.median(times[1:]))

    rows = ["| pass | precision | ms per view |", "| --- | --- | ---: |"]
    for what in ("render", "2d", "3d"):
        for prec in (["fp32", "tf32"] if device.type == "cuda" else ["fp32"]):
            rows.append(f"| {what} | {prec} | {timed(what, prec):.1f} |")
            print(rows[-1], flush=True)
    if device.type == "cuda":
        rows.append(f"| render | bf16 autocast | {timed('render', 'tf32', torch.bfloat16):.1f} |")
        print(rows[-1], flush=True)
        if args.try_compile:
            # what a compiled field would give (the networks are swapped for compiled wrappers
            # for this measurement only; compile time is not included)
            nets = (renderer.coarse, renderer.fine)
            renderer.coarse, renderer.fine = (torch.compile(n, dynamic=True) for n in nets)
            try:
                for prec, ac in (("tf32", None), ("tf32", torch.bfloat16)):
                    timed("render", prec, ac)          # compile
                    rows.append(f"| render, torch.compile | {prec if ac is None else 'bf16 autocast'} | "
                                f"{timed('render', prec, ac):.1f} |")
                    print(rows[-1], flush=True)
            finally:
                renderer.coarse, renderer.fine = nets
        from torch.profiler import ProfilerActivity, profile
        torch.backends.cuda.matmul.allow_tf32 = True
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            one(rays[0], "2d")
            sync(device)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))
    print("\n## One test view\n\n" + "\n".join(rows))
    if device.type == "cuda":
        aggregator_check(device)


def aggregator_check(device, pixels=76800, labels=10, sets=5):
    """Eager vs CUDA-graphed aggregator training: same parameters after 300 steps, and the time
    per step of each."""
    from propagation.aggregator import train_aggregator
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(-1, labels, (pixels,), generator=gen)
    x = torch.rand(sets, pixels, labels, generator=gen) + 0.5 * torch.nn.functional.one_hot(y.clamp(min=0), labels)
    x, y = x.to(device), y.to(device)
    out = {}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for graphed in (False, True):
            torch.manual_seed(0)
            model, info = train_aggregator(x, y, labels, steps=103, rng=np.random.default_rng(0), device=device,
                                           progress=False, graphed=graphed)
            out[graphed] = torch.cat([p.detach().flatten() for p in model.parameters()])
            steps = 2000 if not graphed else 20000
            sync(device)
            t = time.perf_counter()
            train_aggregator(x, y, labels, steps=steps, rng=np.random.default_rng(0), device=device,
                             progress=False, graphed=graphed)
            sync(device)
            out[f"us{graphed}"] = 1e6 * (time.perf_counter() - t) / steps
        diff = float((out[False] - out[True]).abs().max())
        print(f"\nAggregator ({pixels} pixels, {labels} labels, {'tf32' if tf32 else 'fp32'}): eager "
              f"{out['usFalse']:.0f} us/step, CUDA graphs {out['usTrue']:.0f} us/step (200k steps: "
              f"{0.2 * out['usTrue']:.1f} s); max parameter difference eager vs graphs after 103 steps {diff:.2e}")


def fmt(x):
    return f"{x:.2f}" if x is not None else "-"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=180, help="test views of the sparse 10-seed runs")
    p.add_argument("--sub_views", type=int, default=18,
                   help="test views of the dense, scaling and fp32 runs (the test-view pass is linear in the views)")
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--n_samples", type=int, default=64)
    p.add_argument("--n_importance", type=int, default=128)
    p.add_argument("--agg_steps", type=int, default=20000,
                   help="aggregator steps in the dense runs (main.py's default is 200000; the table gives the "
                        "time per step)")
    p.add_argument("--scaling", type=int, nargs="*", default=[1, 10, 50], help="seed counts for the scaling table")
    p.add_argument("--skip_dense", action="store_true")
    p.add_argument("--quiet", action="store_true", help="hide the runs' own output")
    p.add_argument("--profile", action="store_true", help="only profile the pass over one test view")
    p.add_argument("--try_compile", action="store_true", help="with --profile: also time torch.compile'd networks")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.profile:
        return profile_view(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    prec = "tf32" if device.type == "cuda" else "fp32"
    log = open(os.devnull, "w") if args.quiet else None

    def quiet(fn, *a, **k):
        if log is None:
            return fn(*a, **k)
        old = sys.stdout
        sys.stdout = log
        try:
            return fn(*a, **k)
        finally:
            sys.stdout = old

    scenes = {}

    def scene(classes, views):
        """The first `views` test views of the scene with `classes` seed classes (one scene per
        class count, so runs on fewer views see the same labelled frame and the same views)."""
        if classes not in scenes:
            scenes[classes] = random_scene(max(args.views, args.sub_views), args.height, args.width, classes)
        full = scenes[classes]
        if views == len(full.test):
            return full
        t = full.test
        sub = Split(ids=t.ids[:views], rgb=t.rgb, poses=t.poses[:views], semantic=t.semantic[:views])
        return Scene(full.name, full.root, full.height, full.width, full.intrinsics, full.train, sub,
                     semantic_classes=full.semantic_classes, near=full.near, far=full.far)

    t_start = time.perf_counter()
    quiet(run_one, "2d", SPARSE, random_scene(2, args.height, args.width, 2), device,
          argparse.Namespace(**{**vars(args), "agg_steps": 10}))          # warm-up: CUDA context, kernels

    header = (f"Device: {name}; test views at {args.width}x{args.height}; the original's 8x256 network with random "
              f"weights, {args.n_samples}+{args.n_importance} samples; torch {torch.__version__}\n")
    rows = ["| setting | precision | test views | seeds | directions | Jacobians + directions (s) | aggregator (s) | "
            "test-view pass (s) | per view (ms) | PNG + video writing (s) | total (s) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def add(label, t, views, seeds, precision):
        rows.append(f"| {label} | {precision} | {views} | {seeds} | {t['directions_count']} | {fmt(t['directions'])} | "
                    f"{fmt(t.get('aggregator'))} | {fmt(t['test_views'])} | {1000 * t['test_views'] / views:.1f} | "
                    f"{fmt(t['writing'])} | {fmt(t['total'])} |")
        print(rows[-1], flush=True)

    labels = {}
    for kind in ("2d", "3d"):
        t, lab = quiet(run_one, kind, SPARSE, scene(10, args.views), device, args, prec)
        labels[(kind, prec)] = lab
        add(f"{kind.upper()} sparse", t, args.views, 10, prec)
    agree, notes = None, []
    if device.type == "cuda":
        for kind in ("2d", "3d"):
            t, lab = quiet(run_one, kind, SPARSE, scene(10, args.views), device, args, "fp16")
            labels[(kind, "fp16")] = lab
            add(f"{kind.upper()} sparse", t, args.views, 10, "fp16")
        t, lab = quiet(run_one, "2d", SPARSE, scene(10, args.sub_views), device, args, "fp32")
        add("2D sparse", t, args.sub_views, 10, "fp32")
        agree = float(np.mean(lab == labels[("2d", prec)][:args.sub_views]))
        agree16 = {k: float(np.mean(labels[(k, "fp16")] == labels[(k, prec)])) for k in ("2d", "3d")}
    if not args.skip_dense:
        for kind in ("2d", "3d"):
            t, _ = quiet(run_one, kind, DENSE, scene(10, args.sub_views), device, args, prec)
            add(f"{kind.upper()} dense (20 candidates x 5 rounds, aggregator {args.agg_steps} steps)", t,
                args.sub_views, 10, prec)
            if t.get("aggregator"):
                per = t["aggregator"] / args.agg_steps
                notes.append(f"{kind.upper()} dense aggregator: {1e6 * per:.0f} us per step, i.e. about "
                             f"{200000 * per:.0f} s for main.py's default 200000 steps")
    print("\n## Propagation, end to end\n\n" + header + "\n" + "\n".join(rows))
    for n in notes:
        print("\n" + n)
    if agree is not None:
        print(f"\nLabel agreement tf32 vs fp32 over the first {args.sub_views} views (2D sparse): {agree:.5f}")
        print(f"Label agreement fp16 engine vs tf32 over {args.views} views: 2D {agree16['2d']:.5f}, "
              f"3D {agree16['3d']:.5f}")

    if args.scaling:
        srows = ["| seeds | 2D test-view pass (s) | 3D test-view pass (s) | 2D per view (ms) | 3D per view (ms) |",
                 "| ---: | ---: | ---: | ---: | ---: |"]
        for n in args.scaling:
            t2, _ = quiet(run_one, "2d", SPARSE, scene(n, args.sub_views), device, args, prec)
            t3, _ = quiet(run_one, "3d", SPARSE, scene(n, args.sub_views), device, args, prec)
            per2, per3 = (1000 * t["test_views"] / args.sub_views for t in (t2, t3))
            srows.append(f"| {n} | {fmt(t2['test_views'])} | {fmt(t3['test_views'])} | {per2:.1f} | {per3:.1f} |")
            print(srows[-1], flush=True)
        print(f"\n## Seed-count scaling ({prec}, {args.sub_views} test views)\n\n" + header + "\n" + "\n".join(srows))
        print("\nThe original renders every test view once per seed, plus once unperturbed: linear in the seed count.")
    print(f"\nBench wall time: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
