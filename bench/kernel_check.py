"""The precision policy for a faster inference path, from two main.py runs of one command: with the
path (default) and without it (e.g. --no_mlp_kernel), on the same checkpoint, seeds and views.

    python bench/kernel_check.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]
    python bench/kernel_check.py --pipeline /tmp/jnerf_pipe [--plain_steps 800]    # the fused MLP, on the GPU

--pipeline WORK: after bench/pipeline.py has run its plain, shape and sparse stages in WORK, render
the plain checkpoint's test views with and without the fused MLP (`--render_only`, `--no_mlp_kernel`),
run the two sparse propagation commands again with --no_mlp_kernel (bench/pipeline.py --tag
_layered: the same checkpoint and seeds), and compare the three pairs.

Per pair: the label PNGs (`<i>_label.png`, 2D in the folder, 3D in test_render/) that agree pixel
for pixel (policy: >= 99.5 %), the mIoU difference in points (policy: <= 0.5), and for renders
(metrics.json with test_psnr) the PSNR difference (policy: <= 0.2 dB). Prints a Markdown table.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.image_io import read_label_png  # noqa: E402


def label_maps(run):
    names = [p for p in glob.glob(os.path.join(run, "**", "*_label.png"), recursive=True)
             if not p.endswith(("_gt_label.png", "_vis_label.png"))]
    return {os.path.relpath(p, run): p for p in names}


def compare(a, b):
    ma = json.load(open(os.path.join(a, "metrics.json")))
    mb = json.load(open(os.path.join(b, "metrics.json")))
    row = [os.path.basename(a.rstrip("/")), os.path.basename(b.rstrip("/"))]
    la, lb = label_maps(a), label_maps(b)
    common = sorted(set(la) & set(lb))
    if common:
        same = total = 0
        for k in common:
            x, y = read_label_png(la[k]), read_label_png(lb[k])
            same += int((x == y).sum())
            total += x.size
        frac = same / total
        row.append(f"{100 * frac:.3f} % of {total} px in {len(common)} maps ({'ok' if frac >= 0.995 else 'FAIL'})")
    else:
        row.append("-")
    if "miou" in ma and ma["miou"] is not None and mb.get("miou") is not None:
        d = 100 * (ma["miou"] - mb["miou"])
        verdict = "ok" if abs(d) <= 0.5 else "FAIL"
        row.append(f"{100 * ma['miou']:.2f} vs {100 * mb['miou']:.2f} ({d:+.2f} points, {verdict})")
    else:
        row.append("-")
    if "test_psnr" in ma and "test_psnr" in mb:
        d = ma["test_psnr"] - mb["test_psnr"]
        row.append(f"{ma['test_psnr']:.3f} vs {mb['test_psnr']:.3f} dB ({d:+.3f}, {'ok' if abs(d) <= 0.2 else 'FAIL'})")
    else:
        row.append("-")
    return row


def pipeline_pairs(work, plain_steps, precision="mixed"):
    """Run the layered twins of the pipeline's kernel runs in `work`; the (kernel, layered) pairs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = os.path.join(work, "pipeline.yaml")
    ckpt = os.path.join(work, "plain", "checkpoints", f"{plain_steps:06d}.ckpt")
    common = [sys.executable, "main.py", "--config_file", cfg, "--gpu", "0", "--seed", "0", "--precision",
              precision, "--overwrite", "--render_only", "--ckpt_path", ckpt]
    for tag, extra in (("render_kernel", []), ("render_layered", ["--no_mlp_kernel"])):
        subprocess.run([*common, *extra, "--save_dir", os.path.join(work, tag)], cwd=root, check=True)
    subprocess.run([sys.executable, "bench/pipeline.py", "--work", work, "--precision", precision, "--stages",
                    "3d_sparse,2d_sparse", "--tag", "_layered", "--extra=--no_mlp_kernel"], cwd=root, check=True)
    return [os.path.join(work, n) for n in ("render_kernel", "render_layered", "p3s", "p3s_layered",
                                            "p2s", "p2s_layered")]


def main():
    runs = sys.argv[1:]
    if runs[:1] == ["--pipeline"]:
        steps = int(runs[runs.index("--plain_steps") + 1]) if "--plain_steps" in runs else 800
        runs = pipeline_pairs(runs[1], steps)
    if not runs or len(runs) % 2:
        sys.exit("usage: python bench/kernel_check.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]")
    print("| run | against | labels equal | mIoU | test PSNR |\n|---|---|---|---|---|")
    for a, b in zip(runs[::2], runs[1::2]):
        print("| " + " | ".join(compare(a, b)) + " |")


if __name__ == "__main__":
    main()
