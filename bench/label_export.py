"""Time the label export (`--label_all_frames`): labels for every frame of a capture, after shaping.

    python bench/label_export.py                                   # 900 frames at 320x240 (CUDA when present)
    python bench/label_export.py --frames 6 --width 32 --height 24 --netwidth 16 --samples 8 8   # a quick CPU run

Setting (defaults): the built-in room written as a capture of `--frames` frames at `--width` x
`--height` (`python -m datasets.synthetic --format nerfstudio`, no descriptors), one click per class
from its ground truth (experiments/room_clicks.py), the original's network (8 x 256, 64 coarse + 128
fine samples) with random weights standing in for the shaped checkpoint (the export's cost does not
depend on the weights), trained at the capture's own size. main.py then runs
`--dataset_type nerfstudio --propagate_2d --rgb_layer --mean_gradient --clicks ... --label_all_frames`
as a user would; the export's time is the `label_all_frames` entry of the run's metrics.json
(every frame rendered once, labelled, upsampled and its three PNGs written), apart from the seeds'
directions and the test views before it.

Prints one Markdown table; docs/PERFORMANCE.md ("Label export") has the command for the H200.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main as jnerf_main  # noqa: E402
from datasets.synthetic import write_capture  # noqa: E402
from experiments.room_clicks import choose_clicks, class_maps, clicks_document  # noqa: E402
from models.checkpoints import checkpoint_data, write_checkpoint  # noqa: E402
from models.factory import build_renderer, select_device  # noqa: E402
from utils.precision import DEFAULT_PRECISION, PRECISIONS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_capture(work, frames, width, height):
    """The room as a capture in work/capture (reused when its parameters match) and its clicks file."""
    cap = os.path.join(work, "capture")
    marker = os.path.join(cap, ".complete")
    want = dict(frames=frames, width=width, height=height)
    have = None
    if os.path.isfile(marker):
        with open(marker) as f:
            info = json.load(f)
        have = {k: info.get(k) for k in want}
    if have != want:
        write_capture(cap, os.path.join(work, "capture_ground_truth"), frames, width, height, dino=False,
                      supersample=1, stats=False)
    room, maps = class_maps(frames, width, height)
    clicks = os.path.join(work, "clicks.yaml")
    with open(clicks, "w") as f:
        yaml.safe_dump(clicks_document(room, choose_clicks(maps)), f, sort_keys=False)
    return cap, clicks


def make_config(work, cap, width, height, netwidth):
    with open(os.path.join(ROOT, "configs", "nerfstudio_example.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["experiment"].update(dataset_dir=cap, width=width, height=height)
    cfg["model"].update(netwidth=netwidth, netwidth_fine=netwidth)
    path = os.path.join(work, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def make_checkpoint(config, work, flags):
    """A checkpoint of the config's network with random weights (density bias 0.5: non-trivial weights)."""
    torch.manual_seed(0)
    _, opts = jnerf_main.parse_options(["--config_file", config, "--save_dir", work, *flags])
    renderer = build_renderer(opts.model, torch.device("cpu"))
    with torch.no_grad():
        renderer.coarse.alpha_linear.bias.fill_(0.5)
        renderer.fine.alpha_linear.bias.fill_(0.5)
    return write_checkpoint(os.path.join(work, "random", "000000.ckpt"), checkpoint_data(0, renderer))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=900)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--netwidth", type=int, default=256, help="network width (the original's: 256)")
    ap.add_argument("--samples", type=int, nargs=2, default=(64, 128), metavar=("COARSE", "FINE"))
    ap.add_argument("--precision", default=DEFAULT_PRECISION, choices=tuple(PRECISIONS))
    ap.add_argument("--upsample", default="guided", choices=("guided", "nearest"))
    ap.add_argument("--work", default=None, help="folder for the capture and the runs (kept; default: a temporary "
                                                 "folder, removed)")
    a = ap.parse_args(argv)
    work = a.work or tempfile.mkdtemp(prefix="label_export_")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        cap, clicks = make_capture(work, a.frames, a.width, a.height)
        print(f"[bench] capture of {a.frames} frames at {a.width}x{a.height} in {time.perf_counter() - t0:.1f} s: "
              f"{cap}", flush=True)
        config = make_config(work, cap, a.width, a.height, a.netwidth)
        flags = ["--dataset_type", "nerfstudio", "--N_samples", str(a.samples[0]), "--N_importance",
                 str(a.samples[1]), "--precision", a.precision, "--seed", "0"]
        ckpt = make_checkpoint(config, work, flags)
        device = select_device("0")
        out = os.path.join(work, "labels")
        t0 = time.perf_counter()
        rc = jnerf_main.main(["--config_file", config, "--save_dir", out, "--overwrite", *flags, "--gpu", "0",
                              "--propagate_2d", "--rgb_layer", "--mean_gradient", "--ckpt_path", ckpt,
                              "--clicks", clicks, "--label_all_frames", os.path.join(out, "all_frames_bench"),
                              "--label_upsample", a.upsample])
        wall = time.perf_counter() - t0
        if rc != 0:
            return rc
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)
        seconds = m["timings"]["label_all_frames"]
        frames = m["label_export"]["frames"]
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"\nLabel export on {name} ({a.precision}; network {a.netwidth} wide, {a.samples[0]} + {a.samples[1]} "
              f"samples; {len(m['given_classes'])} clicked classes; '{a.upsample}' upsampling):\n")
        print("| frames | resolution | seconds | frames/s | test views before it | main.py wall |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        print(f"| {frames} | {a.width}x{a.height} | {seconds:.2f} | {frames / seconds:.1f} | "
              f"{m['test_views']} in {m['timings']['test_views']:.2f} s | {wall:.1f} s |")
        return 0
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
