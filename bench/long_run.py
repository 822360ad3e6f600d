"""A long plain run through main.py: does the projected rate hold over tens of thousands of steps,
checkpoints every 100 steps included?

    python bench/long_run.py --work /tmp/jnerf_pipe --steps 50000          # on the GPU: about 6 minutes

The run is the pipeline's plain stage (bench/pipeline.py: the 900-frame 320x240 room, the paper's
config: 8 x 256, 1024 rays, 64 + 128 samples, a checkpoint every 100 steps, TensorBoard every
step) with --precision mixed (--precision to change it). The rate over time comes from the
checkpoints' modification times (written every 100 steps; on CUDA by the background writer, so a
file's time is when it landed): seconds per step in windows of --window steps, their median,
spread and slowest window, against the run's own steady rate (metrics.json) and the bench figure
given as --bench_ms. The projection of the README's 200k steps uses the median window rate.
Prints Markdown tables; the run folder is <work>/long_plain.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def checkpoint_times(run_dir):
    """[(step, mtime)] of the run's checkpoints, by step."""
    out = []
    for path in glob.glob(os.path.join(run_dir, "checkpoints", "*.ckpt")):
        name = os.path.basename(path)[:-5]
        if name.isdigit():
            out.append((int(name), os.path.getmtime(path)))
    return sorted(out)


def window_rates(times, window):
    """Seconds per step between checkpoints `window` steps apart: [(first step, last step, rate)]."""
    by_step = dict(times)
    rates = []
    steps = [s for s, _ in times]
    for s in steps:
        e = s + window
        if e in by_step:
            rates.append((s, e, (by_step[e] - by_step[s]) / window))
    return rates[::max(1, window // 100)] if rates else []


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/jnerf_pipe")
    p.add_argument("--steps", type=int, default=50000)
    p.add_argument("--window", type=int, default=5000)
    p.add_argument("--precision", default="mixed")
    p.add_argument("--bench_ms", type=float, default=5.98, help="the bench figure (bench/nerf_step.py) to compare with")
    p.add_argument("--timeout", type=int, default=560)
    a = p.parse_args()
    subprocess.run([sys.executable, "bench/pipeline.py", "--work", a.work, "--prepare_only"], cwd=ROOT, check=True)
    from bench.pipeline import make_config
    cfg = make_config(a.work, os.path.join(a.work, "room"), 320, 240, small=False)
    run_dir = os.path.join(a.work, "long_plain")
    cmd = [sys.executable, "main.py", "--config_file", cfg, "--gpu", "0", "--seed", "0", "--precision", a.precision,
           "--overwrite", "--save_dir", run_dir, "--N_iters", str(a.steps)]
    t0 = time.time()
    with open(os.path.join(a.work, "long_plain.log"), "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.time() - t0
    times = checkpoint_times(run_dir)
    metrics = {}
    if os.path.isfile(os.path.join(run_dir, "metrics.json")):
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics = json.load(f)
    rates = window_rates(times, a.window)
    print(f"\nplain run, {a.steps} steps, --precision {a.precision}: exit {rc}, wall {wall:.0f} s, "
          f"{len(times)} checkpoints (last at step {times[-1][0] if times else '-'})\n")
    print(f"| steps | ms / step (checkpoint times, {a.window}-step windows) |\n|---|---:|")
    for s, e, r in rates:
        print(f"| {s}-{e} | {1e3 * r:.3f} |")
    if rates:
        med = statistics.median(r for _, _, r in rates)
        worst = max(r for _, _, r in rates)
        steady = metrics.get("steady_seconds_per_step")
        first = times[0][1] - t0
        render = metrics.get("render_seconds")
        print(f"\n| measure | value |\n|---|---:|\n| median window | {1e3 * med:.3f} ms/step |\n"
              f"| slowest window | {1e3 * worst:.3f} ms/step ({100 * (worst / med - 1):+.1f} %) |\n"
              f"| steady rate in metrics.json | {'-' if steady is None else f'{1e3 * steady:.3f} ms/step'} |\n"
              f"| against the bench ({a.bench_ms} ms) | {100 * (1e3 * med / a.bench_ms - 1):+.1f} % |\n"
              f"| process start to checkpoint 0 | {first:.1f} s |\n"
              f"| final render of the test views | {'-' if render is None else f'{render:.1f} s'} |\n"
              f"| projected 200k steps (start + 200k x median + render) | "
              f"{(first + 2e5 * med + (render or 0)) / 60:.1f} min |")


if __name__ == "__main__":
    main()
