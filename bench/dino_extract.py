"""Frames per second of the DINO ViT-S/8 descriptor extraction (issue 5).

    python bench/dino_extract.py                   # CUDA if present; about 1-2 minutes
    python bench/dino_extract.py --load_size 120   # quick CPU smoke run

For 320x240 and 640x480 frames (both become 480x360 at load size 360, so the network cost is
the same; the Lanczos resize and PNG decoding differ), float32 and half (float16 autocast,
CUDA only), stride 4, key facet of block 11. Two numbers per row:
- network: `VisionTransformer.facet` on a ready batch, synchronised (the GPU-bound part);
- end to end: `datasets.extract_dino` on a temporary scene of random PNGs: decoding, resize,
  network, copy back and writing the 16 MB files, i.e. what a user waits for;
- for half rows, the worst per-patch cosine similarity to the float32 descriptors (random
  weights and image, so only indicative of the precision loss).
Random weights: speed does not depend on their values, and no weights file is needed.
Prints one Markdown table; record it in docs/PERFORMANCE.md.
"""
import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import extract_dino as ex  # noqa: E402
from models import vit  # noqa: E402

SIZES = ((320, 240), (640, 480))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_fps(model, device, in_hw, batch, half, iters, budget_s, warmup):
    x = torch.randn(batch, 3, *in_hw, device=device)
    ctx = lambda: torch.autocast(device.type, dtype=torch.float16, enabled=half)  # noqa: E731
    with torch.inference_mode():
        for _ in range(warmup):
            with ctx():
                model.facet(x, 11, "key").float()
        sync(device)
        t0, n = time.perf_counter(), 0
        while n < iters and (n == 0 or time.perf_counter() - t0 < budget_s):
            with ctx():
                model.facet(x, 11, "key").float()
            sync(device)
            n += 1
    return n * batch / (time.perf_counter() - t0)


def half_agreement(model, device, in_hw):
    """Worst per-patch cosine similarity of half vs float32 descriptors (random image)."""
    x = torch.randn(1, 3, *in_hw, device=device, generator=torch.Generator(device).manual_seed(0))
    with torch.inference_mode():
        ref = model.facet(x, 11, "key").float()
        with torch.autocast(device.type, dtype=torch.float16):
            got = model.facet(x, 11, "key").float()
    return torch.nn.functional.cosine_similarity(ref, got, dim=-1).min().item()


def write_scene(root, size, frames):
    from PIL import Image
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "rgb"), exist_ok=True)
    # smooth noise: decodes like a photo rather than like white noise
    base = rng.integers(0, 256, (frames, size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    for i in range(frames):
        Image.fromarray(base[i]).resize(size, Image.BILINEAR).save(os.path.join(root, "rgb", f"rgb_{i}.png"))


def end_to_end_fps(root, weights, out_folder, args, half, device, batch):
    argv = ["--dataset_dir", root, "--weights", weights, "--ids", "all", "--load_size",
            str(args.load_size), "--stride", "4", "--batch_size", str(batch),
            "--out_folder", out_folder, "--device", str(device)] + (["--half"] if half else [])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        stats = ex.extract(ex.build_parser().parse_args(argv))
    return stats["frames"] / stats["seconds"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load_size", type=int, default=360)
    p.add_argument("--batch_size", type=int, default=None, help="default 8 on CUDA, 1 on CPU")
    p.add_argument("--frames", type=int, default=None, help="end-to-end frames per row (default 3 batches)")
    p.add_argument("--cap_s", type=float, default=110, help="skip remaining rows after this many seconds")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch = args.batch_size or (8 if cuda else 1)
    frames = args.frames or (3 * batch if cuda else 1)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    t_begin = time.perf_counter()

    model = vit.VisionTransformer(stride=4).eval()
    with torch.no_grad():
        model.pos_embed.normal_()
    model = model.to(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, vit.WEIGHTS_NAME)
        torch.save(model.state_dict(), weights)
        precisions = [("float32", False)] + ([("half (fp16 autocast)", True)] if cuda else [])
        for size in SIZES:
            root = os.path.join(tmp, f"scene_{size[0]}x{size[1]}")
            write_scene(root, size, frames)
            in_w, in_h = ex.resized_size(*size, args.load_size)
            grid = model.grid(in_h, in_w)
            for label, half in precisions:
                if time.perf_counter() - t_begin > args.cap_s:
                    rows.append((size, label, batch, grid, None, None, None))
                    continue
                net = network_fps(model, device, (in_h, in_w), batch, half, iters=10 if cuda else 1,
                                  budget_s=8.0, warmup=1)
                e2e = end_to_end_fps(root, weights, f"dino_{label.split()[0]}", args, half, device, batch)
                cos = half_agreement(model, device, (in_h, in_w)) if half else None
                rows.append((size, label, batch, grid, net, e2e, cos))
                if cuda:
                    torch.cuda.empty_cache()

    print(f"\nDINO ViT-S/8 descriptors, stride 4, key of block 11, load size {args.load_size} "
          f"-- device: {name}, torch {torch.__version__}\n")
    print("| input | precision | batch | grid | network fps | end-to-end fps | 180 frames (s) "
          "| min cosine vs fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, label, b, grid, net, e2e, cos in rows:
        if net is None:
            print(f"| {size[0]}x{size[1]} | {label} | {b} | {grid[0]}x{grid[1]} | skipped (time cap) | | |")
            continue
        print(f"| {size[0]}x{size[1]} | {label} | {b} | {grid[0]}x{grid[1]} | {net:.2f} | {e2e:.2f} "
              f"| {180 / e2e:.1f} | {'-' if cos is None else f'{cos:.5f}'} |")
    if not cuda:
        print("\n(no CUDA: half precision is not measured; on CPU it is ignored by the command)")
    print(f"\nbench wall time {time.perf_counter() - t_begin:.0f} s")


if __name__ == "__main__":
    main()
