"""Compare the label maps and metrics of two propagation runs of the same checkpoint and seeds
(e.g. --precision fp32 against --precision bf16, whose renders use the float16 engine).

    python bench/label_agreement.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]

For each pair: the share of pixels with the same label over all test views (`<i>_label.png`, in
<run>/ for 2D and <run>/test_render/ for 3D) and the mIoU of each (metrics.json). Prints one
Markdown table. The precision policy asks >= 99.5 % agreement and mIoU within 0.5 points.
"""
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.image_io import read_label_png  # noqa: E402


def label_files(run):
    for sub in ("test_render", ""):
        files = sorted(glob.glob(os.path.join(run, sub, "*_label.png")))
        files = [f for f in files if os.path.basename(f).split("_")[0].isdigit()]
        if files:
            return {os.path.basename(f): f for f in files}
    return {}


def compare(a, b):
    fa, fb = label_files(a), label_files(b)
    common = sorted(set(fa) & set(fb))
    same = total = 0
    for name in common:
        la, lb = read_label_png(fa[name]), read_label_png(fb[name])
        same += int(np.count_nonzero(la == lb))
        total += la.size
    ma, mb = (json.load(open(os.path.join(r, "metrics.json"))) for r in (a, b))
    return len(common), 100.0 * same / max(1, total), 100 * (ma.get("miou") or 0), 100 * (mb.get("miou") or 0)


def main():
    runs = sys.argv[1:]
    print("| run A | run B | views | same label (%) | mIoU A (%) | mIoU B (%) | |mIoU diff| |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for a, b in zip(runs[::2], runs[1::2]):
        try:
            n, agree, ma, mb = compare(a, b)
        except (OSError, ValueError) as exc:
            print(f"| {a} | {b} | error: {exc} | | | | |")
            continue
        print(f"| {os.path.basename(a)} | {os.path.basename(b)} | {n} | {agree:.3f} | {ma:.2f} | {mb:.2f} | "
              f"{abs(ma - mb):.2f} |")


if __name__ == "__main__":
    main()
