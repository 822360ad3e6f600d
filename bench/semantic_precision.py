"""The Semantic-NeRF baseline under --precision mixed against fp32: test PSNR and 2D / 3D mIoU of
the joint protocol, same seeds, through main.py (the runner's semantic_joint stage).

    python bench/semantic_precision.py --work /tmp/jnerf_pipe            # GPU: the 900-frame room
    python bench/semantic_precision.py --work /tmp/sp --small --steps 20  # a CPU rehearsal

For every seed and precision one `main.py --semantic_nerf` run from scratch on the same labels (one
click per class on one training view: `--sparse_views --sparse_ratio 0.995 --label_propagation
--partial_perc 0`; the seed labels are a function of --seed, so both precisions train on the same
pixels: checked), the paper's network and sampling, `--steps` steps, scored on every test view at
1/--viz of the resolution. Runs go in parallel (`--jobs`): on one GPU they share it (the timings of
this script are not step times: bench/nerf_step.py --methods measures those). Prints a table per
run and the mean difference mixed - fp32 against the project's precision bound (PSNR within
0.2 dB, mIoU within 0.5 points: docs/PERFORMANCE.md).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.pipeline import make_config, make_scene  # noqa: E402

CLICKS = ["--sparse_views", "--sparse_ratio", "0.995", "--label_propagation", "--partial_perc", "0"]
BOUND = dict(psnr=0.2, miou=0.5)       # dB, points


def run(argv, log):
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
    return rc, time.time() - t0


def read(path):
    with open(path) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/jnerf_pipeline", help="holds room/ (made if missing, as bench/pipeline.py)")
    p.add_argument("--frames", type=int, default=900)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--workers", type=int, default=max(1, min(16, os.cpu_count() or 1)))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--precisions", default="fp32,mixed")
    p.add_argument("--viz", type=int, default=4, help="--test_viz_factor of the scoring renders")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--small", action="store_true", help="CPU rehearsal: the demo's network and sizes")
    a = p.parse_args()
    if a.small:
        a.frames, a.width, a.height = min(a.frames, 40), 80, 60
    os.makedirs(a.work, exist_ok=True)
    scene, _ = make_scene(a.work, a.frames, a.width, a.height, a.workers)
    cfg = make_config(a.work, scene, a.width, a.height, a.small)
    out = os.path.join(a.work, "semantic_precision")
    os.makedirs(out, exist_ok=True)
    runs = [(int(s), prec) for s in a.seeds.split(",") for prec in a.precisions.split(",")]

    def one(run_id):
        seed, prec = run_id
        save = os.path.join(out, f"seed{seed}_{prec}")
        argv = ["--config_file", cfg, "--save_dir", save, "--overwrite", "--seed", str(seed), "--precision", prec,
                "--semantic_nerf", "--N_iters", str(a.steps), "--test_viz_factor", str(a.viz), *CLICKS,
                "--seed_dir", os.path.join(save, "seeds"), "--visualise_save"]
        if a.small:
            argv += ["--N_samples", "16", "--N_importance", "16", "--N_rays", "256", "--lrate", "5e-3"]
        rc, wall = run(argv, save + ".log")
        if rc != 0:
            return run_id, dict(rc=rc, wall=wall)
        m = read(os.path.join(save, "metrics.json"))
        return run_id, dict(rc=0, wall=wall, psnr=m["test_psnr"], miou2d=100 * m["semantic_2d"]["miou"],
                            miou3d=100 * m["semantic_3d"]["miou"], pixels=m["labelled_pixels"],
                            views=m["semantic_2d"]["views"]["digest"], step=m.get("steady_seconds_per_step"))

    with ThreadPoolExecutor(a.jobs) as pool:
        results = dict(pool.map(one, runs))
    print(f"\nSemantic-NeRF joint, {a.steps} steps, one click per class, {a.frames}-frame {a.width}x{a.height} room, "
          f"scored at 1/{a.viz}")
    print("| seed | precision | test PSNR | 2D mIoU | 3D mIoU | labelled pixels | wall (shared GPU) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (seed, prec), r in sorted(results.items()):
        if r["rc"]:
            print(f"| {seed} | {prec} | failed (rc {r['rc']}, {seed}_{prec}.log) | | | | |")
            continue
        print(f"| {seed} | {prec} | {r['psnr']:.2f} dB | {r['miou2d']:.2f} | {r['miou3d']:.2f} | {r['pixels']} | "
              f"{r['wall']:.0f} s |")
    precs = a.precisions.split(",")
    if len(precs) == 2 and all(r["rc"] == 0 for r in results.values()):
        ref, cand = precs
        seeds = sorted({s for s, _ in runs})
        assert all(results[(s, ref)]["pixels"] == results[(s, cand)]["pixels"] for s in seeds), "seeds differ"
        assert all(results[(s, ref)]["views"] == results[(s, cand)]["views"] for s in seeds), "views differ"
        print(f"\nmean over seeds {seeds}, {cand} - {ref}:")
        for key, name, bound in (("psnr", "test PSNR (dB)", BOUND["psnr"]), ("miou2d", "2D mIoU (points)", BOUND["miou"]),
                                 ("miou3d", "3D mIoU (points)", BOUND["miou"])):
            d = [results[(s, cand)][key] - results[(s, ref)][key] for s in seeds]
            mean = sum(d) / len(d)
            print(f"- {name}: {mean:+.2f} (per seed {', '.join(f'{x:+.2f}' for x in d)}; bound {bound}): "
                  f"{'within' if abs(mean) <= bound else 'OUTSIDE'}")


if __name__ == "__main__":
    main()
