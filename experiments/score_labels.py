"""Score an exported label folder (propagation/export.py: labels/<frame>.png, classes.json) against
ground truth kept apart from the capture, e.g. the built-in room's `<capture>_ground_truth`.

    python -m experiments.score_labels LABEL_DIR GT_DIR [--frames all|train|test] [--json OUT]

GT_DIR is either a Replica-layout folder (labels in `semantic_class/semantic_class_<n>.png`) or a
folder of label PNGs named like the exported frames. Both hold raw class ids, 0 = void. A
Replica-layout folder scores the labels exported from a capture through its `capture_frames.json`
(what `python -m datasets.synthetic --format nerfstudio` writes: capture file -> frame number), and
those exported from the Replica layout itself (frames `rgb_<n>`) by their number. Frames are taken in
the loaders' order (digit runs compared as numbers); `--frames train|test` keeps the frames of the
Replica split rule (train 0, 5, 10, ...; test = train + 2) in that order.

The metrics are utils/metrics.py's, in the label space of classes.json: ground-truth pixels that are
void or of a class the labels do not have are ignored, exactly as propagation scores its test
views against the seeded classes (utils/label_outputs.py `seed_class_confusion`).
"""
import argparse
import json
import os
import re
import sys

import numpy as np

from datasets.nerfstudio_meta import natural_key
from datasets.scene import replica_split_ids
from utils.errors import InputError, run_cli
from utils.image_io import read_label_png
from utils.metrics import ConfusionAccumulator, to_jsonable


def read_classes(label_dir):
    path = os.path.join(label_dir, "classes.json")
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing (LABEL_DIR is the folder the label export wrote)")
    with open(path) as f:
        classes = json.load(f)
    return np.array([int(c["id"]) for c in classes], np.int64), [c["name"] for c in classes]


def ground_truth_files(gt_dir, names):
    """{frame name: GT label PNG} for the exported frame names."""
    if not os.path.isdir(os.path.join(gt_dir, "semantic_class")):
        return {n: os.path.join(gt_dir, f"{n}.png") for n in names}
    by_stem = {}
    mapping = os.path.join(gt_dir, "capture_frames.json")
    if os.path.isfile(mapping):
        with open(mapping) as f:
            frames = json.load(f)["frames"]
        by_stem = {os.path.splitext(os.path.basename(k))[0]: v for k, v in frames.items()}
    for n in names:                                       # the Replica layout's own frames: rgb_<n>
        match = re.fullmatch(r"rgb_(\d+)", n)
        if match and n not in by_stem:
            by_stem[n] = int(match.group(1))
    return {n: os.path.join(gt_dir, "semantic_class", f"semantic_class_{by_stem[n]}.png")
            for n in names if n in by_stem}


def score(label_dir, gt_dir, frames="all"):
    """Metrics dict (utils.metrics) of the exported labels against the ground truth."""
    raw_ids, class_names = read_classes(label_dir)
    folder = os.path.join(label_dir, "labels")
    names = sorted((os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(".png")), key=natural_key)
    if frames != "all":
        train, test = replica_split_ids(len(names))
        names = [names[i] for i in (train if frames == "train" else test)]
    gt_files = ground_truth_files(gt_dir, names)
    lut = np.full(max(int(raw_ids.max()), 65535) + 1, -1, np.int64)
    lut[raw_ids] = np.arange(len(raw_ids))
    acc = ConfusionAccumulator(len(raw_ids), ignore_labels=(-1,))
    for n in names:
        if n not in gt_files or not os.path.isfile(gt_files[n]):
            raise InputError(f"{gt_dir}: no ground truth for frame {n} (expected {gt_files.get(n, n + '.png')})")
        pred, gt = read_label_png(os.path.join(folder, f"{n}.png")), read_label_png(gt_files[n])
        if pred.shape != gt.shape:
            raise InputError(f"{gt_files[n]} is {gt.shape[1]}x{gt.shape[0]} but the labels of {n} are "
                             f"{pred.shape[1]}x{pred.shape[0]}")
        acc.add(lut[gt.astype(np.int64)], lut[pred.astype(np.int64)])
    m = acc.metrics()
    m.update(frames=len(names), class_names=class_names, class_ids=raw_ids.tolist())
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.score_labels", description=__doc__.splitlines()[0])
    ap.add_argument("label_dir")
    ap.add_argument("gt_dir")
    ap.add_argument("--frames", choices=("all", "train", "test"), default="all")
    ap.add_argument("--json", default=None, help="write the metrics here too")
    a = ap.parse_args(argv)

    def run():
        m = score(a.label_dir, a.gt_dir, a.frames)
        print(f"{m['frames']} frames: mIoU {100 * m['miou']:.2f} %, total accuracy {100 * m['total_accuracy']:.2f} %, "
              f"class-average accuracy {100 * m['class_average_accuracy']:.2f} %")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(to_jsonable(m), f, indent=1)
    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
