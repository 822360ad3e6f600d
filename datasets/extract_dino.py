"""DINO ViT-S/8 descriptors for a Replica-layout scene, one command.

    python -m datasets.extract_dino --dataset_dir room_0/Sequence_1 \
        --weights dino_deitsmall8_pretrain.pth            # the 180 training frames

writes `<dataset_dir>/dino/dino_<i>.pth` ([1, 1, rows*cols, 384] float32, the original's
format) and `dino/descriptor_meta.json` (grid and settings) for `--load_dino`. A folder holding a
`transforms.json` (a nerfstudio capture, `--dataset_type nerfstudio`) works too: its frames are
taken in the loader's order (i = global frame id, datasets/nerfstudio.py `frame_order`), `train`
is the loader's training split, and frames the loader resamples (lens distortion, other
intrinsics) are resampled the same way before the network sees them, so the descriptors align
with the loaded images. Defaults are
the original pipeline's: shorter side resized to 360 with Lanczos, ImageNet normalisation,
patch stride 4, key facet of block 11, no binning.

Why it looks the way it does:
- frames are batched (one size per scene) and image decoding / file writing run in
  threads, so the GPU is not idle while PNGs are decoded or 16 MB files are written;
- existing files are skipped, so an interrupted run resumes; a folder made with other
  settings is refused instead of being silently mixed (the sidecar records one setting);
- `--half` = float16 autocast on CUDA. On CPU it is ignored (with a note): CPU float16/bfloat16
  matmuls are often slower than float32 and the result would differ for no gain.
"""
import argparse
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datasets import dino_io
from datasets.frames import image_size as header_size
from datasets.frames import list_frames, read_png
from datasets.nerfstudio import frame_order
from datasets.scene import replica_split_ids
from datasets.sources import resample_to_common
from models import vit
from utils.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_NAME = "dino_vits8"
SETTING_KEYS = ("model", "load_size", "stride", "layer", "facet", "bin", "grid", "dim")


def str2bool(value):
    """`--bin`, `--bin True` and `--bin False` all work, as in the reference extractor."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m datasets.extract_dino",
                                description="Extract DINO ViT-S/8 descriptors into <dataset_dir>/dino/.")
    p.add_argument("--dataset_dir", required=True, help="Replica-layout folder holding rgb/rgb_<i>.png")
    p.add_argument("--weights", default=None, help=f"path to {vit.WEIGHTS_NAME} (never downloaded)")
    p.add_argument("--ids", default="train",
                   help="'train' (frames 0, 5, 10, ... in numeric order, the shaping step's), "
                        "'all', or a comma list of frame numbers")
    p.add_argument("--load_size", type=int, default=360,
                   help="shorter image side after the Lanczos resize (0: keep the size)")
    p.add_argument("--stride", type=int, default=4, help="patch-embedding stride (divides 8)")
    p.add_argument("--layer", type=int, default=11, help="block whose facet is taken (0..11)")
    p.add_argument("--facet", default="key", help="key | query | value | token")
    p.add_argument("--bin", nargs="?", const=True, default=False, type=str2bool,
                   help="log-binned descriptors (17x the channels)")
    p.add_argument("--half", action="store_true", help="float16 autocast on CUDA (ignored on CPU)")
    p.add_argument("--batch_size", type=int, default=8, help="frames per forward pass")
    p.add_argument("--out_folder", default="dino", help="output folder, relative to --dataset_dir")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    return p


def check_settings(args):
    if args.facet not in vit.FACETS:
        raise InputError(f"--facet {args.facet!r}: expected one of {', '.join(vit.FACETS)}")
    if not 0 <= args.layer < vit.DEPTH:
        raise InputError(f"--layer {args.layer}: expected 0..{vit.DEPTH - 1}")
    if args.stride < 1 or vit.PATCH % args.stride:
        raise InputError(f"--stride {args.stride}: must divide the patch size {vit.PATCH} (1, 2, 4 or 8)")
    if args.load_size != 0 and args.load_size < vit.PATCH:
        raise InputError(f"--load_size {args.load_size}: expected 0 (keep) or at least {vit.PATCH}")
    if args.batch_size < 1:
        raise InputError(f"--batch_size {args.batch_size}: expected at least 1")


def is_capture(root):
    """A nerfstudio capture: transforms.json and no Replica rgb/ folder."""
    return os.path.isfile(os.path.join(root, "transforms.json")) and not os.path.isdir(os.path.join(root, "rgb"))


def select_frames(root, ids):
    """[(frame number, image)] chosen by --ids, in numeric order; the image is the rgb path, or a
    datasets.sources.FrameSource for a capture."""
    if not os.path.isdir(root):
        raise InputError(f"--dataset_dir {root}: folder does not exist")
    if is_capture(root):
        sources, train = frame_order(root)
        rgb, train_numbers = {n: src for n, src in sources}, train
        folder = os.path.join(root, "transforms.json")
    else:
        folder = os.path.join(root, "rgb")
        rgb = list_frames(folder, "rgb")
        if rgb is None:
            raise InputError(f"{folder}: folder missing (expected rgb/rgb_<i>.png frames, or a transforms.json "
                             "capture)")
        if not rgb:
            raise InputError(f"{folder}: no rgb_<i>.png frames found")
        train_numbers = None
    numbers = sorted(rgb)
    spec = str(ids).strip()
    if spec == "train":
        chosen = (train_numbers if train_numbers is not None
                  else [numbers[i] for i in replica_split_ids(len(numbers))[0]])
    elif spec == "all":
        chosen = numbers
    else:
        try:
            chosen = sorted({int(s) for s in spec.split(",") if s.strip()})
        except ValueError:
            raise InputError(f"--ids {ids!r}: expected 'train', 'all' or a comma list of frame "
                             "numbers such as 0,5,10") from None
        if not chosen:
            raise InputError(f"--ids {ids!r}: no frame numbers given")
        absent = [n for n in chosen if n not in rgb]
        if absent and train_numbers is not None:
            raise InputError(f"--ids: {folder} has no frame {absent[0]} (frame ids run 0..{len(numbers) - 1})")
        if absent:
            raise InputError(f"--ids: no {os.path.join(folder, f'rgb_{absent[0]}.png')} "
                             f"({len(absent)} of the requested frames are missing)")
    return [(n, rgb[n]) for n in chosen]


def resized_size(width, height, load_size):
    """torchvision Resize(int): the shorter side becomes load_size, the longer one
    int(load_size * long / short). Returns (width, height)."""
    if not load_size:
        return width, height
    if width <= height:
        return load_size, int(load_size * height / width)
    return int(load_size * width / height), load_size


def open_rgb(path):
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:
        raise InputError(f"{path}: unreadable rgb image ({exc.__class__.__name__}: {exc})") from exc
    return img.convert("RGB")


def _name(image):
    return image if isinstance(image, str) else image.path


def open_frame(image):
    """A PIL RGB image of an rgb path, or of a capture frame (a FrameSource) resampled into the
    common camera exactly as datasets/nerfstudio.py resamples it (before its resize)."""
    if isinstance(image, str):
        return open_rgb(image)
    if not image.resampled:
        return open_rgb(image.path)
    a = read_png(image.path, "colour")
    peak = 65535.0 if a.dtype == np.uint16 else 255.0
    a = resample_to_common(a.astype(np.float32) / peak, image, cv2.INTER_LINEAR)
    return Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))


def load_image(path, load_size):
    """[3, h, w] float32: Lanczos resize (PIL), then /255 and ImageNet normalisation."""
    img = open_frame(path)
    size = resized_size(*img.size, load_size)
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


def image_size(path):
    """(width, height) from the header only (a capture frame: the size after resampling)."""
    if not isinstance(path, str):
        return (int(path.target[5]), int(path.target[4]))
    return header_size(path)


def check_existing(out_dir, settings, done):
    """Refuse to add to a folder whose descriptors were made differently."""
    meta = dino_io.read_meta(out_dir)
    if meta is not None:
        for key in SETTING_KEYS:
            if key in meta and meta[key] != settings[key]:
                raise InputError(f"{out_dir}: existing descriptors were made with {key}={meta[key]} "
                                 f"({dino_io.META_NAME}); this run gives {key}={settings[key]}. "
                                 "Use another --out_folder or delete that folder")
    elif done:
        path = done[0]
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            shape = tuple(data.shape)
        except Exception:
            shape = None
        rows, cols = settings["grid"]
        if shape != (1, 1, rows * cols, settings["dim"]):
            raise InputError(f"{path}: existing file has shape {shape}, this run writes "
                             f"(1, 1, {rows * cols}, {settings['dim']}); use another --out_folder "
                             "or delete the old files")


def prefetch(pool, items, fn, depth):
    """Yield fn(item) in order, computing up to `depth` items ahead in `pool`."""
    queue = deque()
    it = iter(items)
    for item in it:
        queue.append(pool.submit(fn, item))
        if len(queue) >= depth:
            break
    while queue:
        result = queue.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            queue.append(pool.submit(fn, nxt))
        yield result


def select_device(name):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: expected cpu, cuda or cuda:<n>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


def extract(args):
    """Run the extraction for parsed `args`; returns {"frames": written, "seconds": wall time}."""
    check_settings(args)
    frames = select_frames(args.dataset_dir, args.ids)
    out_dir = os.path.join(args.dataset_dir, args.out_folder)

    # One grid per folder (the sidecar holds one): all chosen frames must have the same size.
    w0, h0 = image_size(frames[0][1])
    in_w, in_h = resized_size(w0, h0, args.load_size)
    model = vit.VisionTransformer(stride=args.stride)
    if min(in_h, in_w) < vit.PATCH:
        raise InputError(f"{_name(frames[0][1])}: {in_w}x{in_h} pixels after --load_size {args.load_size}; "
                         f"expected at least {vit.PATCH} pixels per side")
    grid = model.grid(in_h, in_w)
    dim = vit.DIM * (17 if args.bin else 1)
    settings = dict(model=MODEL_NAME, load_size=args.load_size, stride=args.stride,
                    layer=args.layer, facet=args.facet, bin=bool(args.bin), grid=list(grid),
                    dim=dim, input_hw=[in_h, in_w])

    path_of = {n: os.path.join(out_dir, f"dino_{n}.pth") for n, _ in frames}
    done = [path_of[n] for n, _ in frames if os.path.isfile(path_of[n])]
    check_existing(out_dir, settings, done)
    todo = [(n, p) for n, p in frames if not os.path.isfile(path_of[n])]
    if not todo:
        print(f"all {len(frames)} descriptor files already exist in {out_dir}; nothing to do")
        return {"frames": 0, "seconds": 0.0}
    for n, p in todo:
        if image_size(p) != (w0, h0):
            raise InputError(f"{_name(p)}: {image_size(p)[0]}x{image_size(p)[1]} pixels, but "
                             f"{_name(frames[0][1])} is {w0}x{h0}; one descriptor folder holds one grid")

    device = select_device(args.device)
    vit.load_dino_weights(model, args.weights)
    model = model.eval().to(device)
    use_half = bool(args.half) and device.type == "cuda"
    if args.half and not use_half:
        print("note: --half is ignored on CPU (float32 is used)")
    print(f"{len(todo)} of {len(frames)} frames to extract ({len(done)} already done) on {device}"
          f"{' (float16 autocast)' if use_half else ''}; input {in_w}x{in_h}, grid "
          f"{grid[0]}x{grid[1]}, {args.facet} of block {args.layer}")

    # The sidecar is written once, up front: rewriting it from the writer threads would race.
    os.makedirs(out_dir, exist_ok=True)
    dino_io.write_meta(out_dir, settings)
    batches = [todo[i:i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
    readers = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)))
    writers = ThreadPoolExecutor(2)
    pending = deque()
    max_pending = max(2, 4 * args.batch_size * vit.DIM // dim)  # binned frames are 17x larger
    t_start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="dino", unit="frame", dynamic_ncols=True)
    try:
        # decoded one image per task, so all reader threads work while the GPU runs a batch
        decoded = prefetch(readers, todo, lambda item: load_image(item[1], args.load_size),
                           depth=3 * args.batch_size)
        for batch in batches:
            images = torch.stack([next(decoded) for _ in batch])
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16,
                                                        enabled=use_half):
                desc = model.facet(images.to(device, non_blocking=True), args.layer, args.facet)
                desc = desc.float()
                if args.bin:
                    desc = vit.log_bin(desc, grid)
            desc = desc.reshape(len(batch), grid[0], grid[1], -1).cpu()
            for (n, _), d in zip(batch, desc):
                # clone: a view would make torch.save write the whole batch's storage
                pending.append(writers.submit(dino_io.save_descriptor, path_of[n], d.clone()))
            while len(pending) > max_pending:  # bound the host memory held by writes
                pending.popleft().result()
            bar.update(len(batch))
        while pending:
            pending.popleft().result()
    finally:
        bar.close()
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True)
    elapsed = time.perf_counter() - t_start
    print(f"wrote {len(todo)} files to {out_dir} in {elapsed:.1f} s: "
          f"{1000 * elapsed / len(todo):.1f} ms per frame")
    return {"frames": len(todo), "seconds": elapsed}


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        extract(args)
        return 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
