"""`python -m datasets.synthetic ...`: the command line of the synthetic scene generator.

--format replica (default) writes the Replica layout into --out; --format nerfstudio writes a
transforms.json capture without labels into --out and the ground truth beside it (--gt_out,
default <out>_ground_truth; datasets/synthetic/capture.py)."""
import argparse
import json
import sys

from datasets.synthetic.capture import write_capture
from datasets.synthetic.generate import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, generate_scene
from utils.errors import InputError


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=(
        "Write a built-in SYNTHETIC furnished room in the Replica (Semantic-NeRF) layout, "
        "with synthetic DINO-like descriptors."))
    ap.add_argument("--out", required=True, help="output folder (the dataset_dir)")
    ap.add_argument("--variant", type=int, default=0, help="room: 0 living room (default), 1 bedroom")
    ap.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    ap.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    ap.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no_dino", action="store_true", help="do not write dino/ descriptors")
    ap.add_argument("--supersample", type=int, default=3, help="sub-pixel rays per axis (odd)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: automatic)")
    ap.add_argument("--no_stats", action="store_true", help="skip the descriptor statistics")
    ap.add_argument("--format", choices=("replica", "nerfstudio"), default="replica",
                    help="replica: the Semantic-NeRF layout with labels; nerfstudio: a transforms.json capture "
                         "without labels, the ground truth in --gt_out")
    ap.add_argument("--gt_out", default=None, help="--format nerfstudio: the ground-truth folder "
                                                   "(default <out>_ground_truth)")
    a = ap.parse_args(argv)
    try:
        if a.format == "nerfstudio":
            summary = write_capture(a.out, a.gt_out, a.frames, a.width, a.height, a.seed, not a.no_dino,
                                    a.supersample, a.workers, stats=not a.no_stats, variant=a.variant)
        elif a.gt_out:
            raise InputError("--gt_out belongs to --format nerfstudio (the Replica layout keeps its labels)")
        else:
            summary = generate_scene(a.out, a.frames, a.width, a.height, a.seed, not a.no_dino,
                                     a.supersample, a.workers, stats=not a.no_stats, variant=a.variant)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps({k: v for k, v in summary.items() if k != "objects"}, indent=1))
    return 0
