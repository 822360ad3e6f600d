"""Labels for every frame of the capture (`--label_all_frames`): the annotation export.

Every frame (training and test, and any other the capture lists) is rendered once at the NeRF's
resolution, labelled by the propagation plan (propagation/testviews.py `view_scores`: the same
responses, post-processing and argmax as the test views) and brought back to the frame's own
pixels (propagation/upsample.py: guided by the colour frame, or nearest). Written into `out_dir`:

    labels/<frame>.png        uint16 raw class ids (the ids of classes.json; 0 never appears)
    labels_vis/<frame>.png    the frame with the label colours over it (half and half)
    confidence/<frame>.png    uint8, 255 x the winner's relative margin (s1 - s2) / s1
    classes.json              [{id, name, colour}] of the label space
    export.json               what made the labels: their fingerprint (network weights, directions,
                              settings), checkpoint, seeds, direction rule, upsampling, render size
    summary.md                frames, settings, and the pixel count of every class

<frame> is the frame's file stem (datasets/sources.py FrameSource.name). Every file is written
atomically (utils/atomic.py); labels/<frame>.png last, so a frame whose three files exist is
complete and a second run skips it without rendering (resume after an interruption). A folder
whose classes.json holds other classes, or whose export.json has another fingerprint (labels of
another checkpoint, other clicks, other directions or settings), is refused rather than mixed.
"""
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List

import numpy as np
import torch
from tqdm import tqdm

from datasets.frames import read_png
from propagation.testviews import confidence, view_scores
from propagation.upsample import check_mode, grey, upsample_scores
from utils.atomic import write_json_atomic, write_text_atomic
from utils.errors import InputError
from utils.image_io import read_label_png, write_png
from utils.label_outputs import valid_colour_map

FOLDERS = ("labels", "labels_vis", "confidence")
PROVENANCE = "export.json"
OVERLAY = 0.5


@dataclass(frozen=True)
class ExportClasses:
    raw_ids: np.ndarray                           # [C'] raw id of each evaluation label
    names: List[str]                              # [C'] class names
    colours: np.ndarray                           # [C', 3] uint8

    def as_json(self):
        return [dict(id=int(r), name=n, colour=[int(c) for c in col])
                for r, n, col in zip(self.raw_ids, self.names, self.colours)]


def export_classes(scene):
    """The scene's evaluation label space as raw ids, names and colours."""
    raw = np.asarray(scene.semantic_classes)[1:].astype(np.int64)
    names = scene.class_names or {}
    return ExportClasses(raw, [names.get(int(r), str(int(r))) for r in raw], valid_colour_map(scene))


def frame_paths(out_dir, name):
    return [os.path.join(out_dir, folder, f"{name}.png") for folder in FOLDERS]


def is_complete(out_dir, name):
    return all(os.path.isfile(p) for p in frame_paths(out_dir, name))


def check_classes_file(out_dir, classes):
    path = os.path.join(out_dir, "classes.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        raise InputError(f"{path}: unreadable; remove the label folder {out_dir} or choose another") from None
    if old != classes.as_json():
        raise InputError(f"{path}: this label folder holds other classes than this run's; remove {out_dir} or "
                         "choose another folder")


def overlay(rgb, labels, colours):
    """[H, W, 3] uint8: half the frame (float [0, 1]), half the label colour."""
    col = colours[labels].astype(np.float64) / 255.0
    return np.round(255 * np.clip((1 - OVERLAY) * rgb + OVERLAY * col, 0, 1)).astype(np.uint8)


def read_frame_rgb(source):
    img = read_png(source.path, "colour")
    if img.ndim != 3:
        raise InputError(f"{source.path}: expected a colour image, got shape {img.shape}")
    return img.astype(np.float64) / (65535.0 if img.dtype == np.uint16 else 255.0)


def label_frame(renderer, cameras, index, source, plan, mode):
    """(evaluation labels [H, W] int64, confidence [H, W] float, original rgb [H, W, 3]) of one frame
    at its original resolution."""
    hw = (cameras.height, cameras.width)
    rays = cameras.image_rays(index, renderer.device, torch.float32)
    view = view_scores(renderer, rays, plan, *hw)
    rgb = read_frame_rgb(source)
    if rgb.shape[:2] != (source.height, source.width):
        raise InputError(f"{source.path} is {rgb.shape[1]}x{rgb.shape[0]}, the capture says "
                         f"{source.width}x{source.height}")
    guide = torch.from_numpy(grey(rgb)) if mode == "guided" else None
    scores = upsample_scores(view.scores, source, hw, guide, mode)
    idx = scores.argmax(0)
    labels = view.score_labels.to(idx.device)[idx].cpu().numpy().astype(np.int64)
    if scores is view.scores:                       # the render grid itself: the test views' labels
        labels = view.labels.cpu().numpy().astype(np.int64)
    return labels, confidence(scores).cpu().numpy(), rgb


def label_fingerprint(renderer, plan, mode, render_size):
    """sha256 (hex) of everything the labels depend on: the network weights, the propagation plan
    (directions, mixing, aggregator, post-processing flags), the upsampling mode and render size."""
    h = hashlib.sha256()

    def add(name, value):
        h.update(name.encode())
        if torch.is_tensor(value):
            h.update(value.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        else:
            h.update(repr(value).encode())

    for name, t in renderer.state_dict().items():
        add(name, t)
    for name in ("kind", "M", "mixer", "channel_labels", "agg_labels", "no_abs", "normalize_2d", "noisy_2d"):
        value = getattr(plan, name)
        add(name, value if value is not None else "none")
    if plan.aggregator is not None:
        for name, t in plan.aggregator.state_dict().items():
            add("aggregator." + name, t)
    for k, pts in enumerate(plan.seed_points or []):
        add(f"seed_points.{k}", pts)
    add("upsample", mode)
    add("render_size", tuple(render_size))
    return h.hexdigest()


def export_labels(renderer, cameras, sources, plan, classes, options, about=None):
    """Label every frame of `cameras` (models.cameras.Cameras of all frames, render resolution;
    `sources` the FrameSources in the same order) with the propagation `plan` into
    options.out_dir (module docstring). `about`: what made the labels (checkpoint, seeds, rule),
    recorded in export.json with the labels' fingerprint. Returns the summary dict of `write_all_frames`."""
    mode = check_mode(options.upsample)
    hw = (cameras.height, cameras.width)
    provenance = dict(fingerprint=label_fingerprint(renderer, plan, mode, hw), upsample=mode, render_size=list(hw),
                      **(about or {}))
    return write_all_frames(lambda gid, src: label_frame(renderer, cameras, gid, src, plan, mode), sources,
                            classes, options, hw, provenance)


def check_provenance(out_dir, sources, provenance):
    """A resume continues the same labels: a folder whose export.json has another fingerprint (or
    that holds labels without one) is refused rather than mixed."""
    path = os.path.join(out_dir, PROVENANCE)
    old = None
    if os.path.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
    elif not any(is_complete(out_dir, src.name) for src in sources):
        return
    if old is not None and old.get("fingerprint") == provenance["fingerprint"]:
        return
    if old is None:
        why = f"labels without {PROVENANCE} (their origin is unknown)"
    else:
        differ = [f"{k} {old.get(k)!r} there, {v!r} here" for k, v in provenance.items()
                  if k != "fingerprint" and old.get(k) != v]
        why = "the labels of another propagation (" + ("; ".join(differ) if differ else
                                                       "other network weights or directions") + ")"
    raise InputError(f"--label_all_frames {out_dir} holds {why}; remove that folder or choose another (a "
                     "propagation repeats exactly with the same checkpoint, clicks and --seed)")


def write_all_frames(label_fn, sources, classes, options, render_size=None, provenance=None):
    """The writer: label_fn(global id, FrameSource) -> (evaluation labels [H, W], confidence [H, W]
    in [0, 1], rgb [H, W, 3] in [0, 1]) at the frame's size, called only for frames not yet complete.
    provenance: what made the labels, with its 'fingerprint' (export_labels); a folder of other
    labels is refused (check_provenance), and the dict is written as export.json."""
    mode = check_mode(options.upsample)
    out = options.out_dir
    check_classes_file(out, classes)
    if provenance is not None:
        check_provenance(out, sources, provenance)
    for folder in FOLDERS:
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    write_json_atomic(os.path.join(out, "classes.json"), classes.as_json())     # first: a resume checks it
    if provenance is not None:
        write_json_atomic(os.path.join(out, PROVENANCE), provenance)
    ids = list(range(len(sources))) if options.frames is None else [int(i) for i in options.frames]
    counts = np.zeros(len(classes.raw_ids), np.int64)
    lut = np.full(int(classes.raw_ids.max()) + 2, len(classes.raw_ids), np.int64)
    lut[classes.raw_ids] = np.arange(len(classes.raw_ids))
    done = rendered = 0
    pending = []
    with ThreadPoolExecutor(max(1, options.workers)) as pool:
        for gid in tqdm(ids, desc="label all frames", unit="frame", dynamic_ncols=True, disable=not options.progress):
            src = sources[gid]
            lab_path, vis_path, conf_path = frame_paths(out, src.name)
            if is_complete(out, src.name):
                raw = read_label_png(lab_path)
                done += 1
            else:
                labels, conf, rgb = label_fn(gid, src)
                raw = classes.raw_ids[labels].astype(np.uint16)
                pending.append(pool.submit(_write_frame, lab_path, vis_path, conf_path, raw, labels, conf, rgb,
                                           classes.colours))       # the overlay is made by the writer thread
                rendered += 1
            counts += np.bincount(lut[np.minimum(raw.ravel().astype(np.int64), len(lut) - 1)],
                                  minlength=len(classes.raw_ids) + 1)[:len(classes.raw_ids)]
            while len(pending) > 4 * max(1, options.workers):
                pending.pop(0).result()
        for p in pending:
            p.result()
    summary = dict(out_dir=out, frames=len(ids), rendered=rendered, resumed=done, upsample=mode,
                   render_size=None if render_size is None else list(render_size),
                   pixel_counts={n: int(c) for n, c in zip(classes.names, counts)})
    write_text_atomic(os.path.join(out, "summary.md"), summary_markdown(summary, classes, counts))
    return summary


def _write_frame(lab_path, vis_path, conf_path, raw, labels, conf, rgb, colours):
    write_png(conf_path, np.round(np.clip(conf, 0, 1) * 255).astype(np.uint8))
    write_png(vis_path, overlay(rgb, labels, colours))
    write_png(lab_path, raw)            # last: its presence marks the frame complete


def summary_markdown(summary, classes, counts):
    total = max(1, int(counts.sum()))
    lines = ["# Labels of every frame", "",
             f"{summary['frames']} frames ({summary['rendered']} labelled in this run, {summary['resumed']} found "
             "complete)" + (f", rendered at {summary['render_size'][1]}x{summary['render_size'][0]}"
                            if summary["render_size"] else "") +
             f", brought to each frame's own resolution by '{summary['upsample']}' upsampling.", "",
             "| id | class | pixels | share |", "| ---: | --- | ---: | ---: |"]
    for r, n, c in zip(classes.raw_ids, classes.names, counts):
        lines.append(f"| {int(r)} | {n} | {int(c)} | {100.0 * c / total:.2f} % |")
    lines += ["", f"Total: {int(counts.sum())} pixels. Files: labels/ (uint16 ids of classes.json), labels_vis/, "
              "confidence/ (255 x the winner's relative margin over the runner-up)."]
    return "\n".join(lines) + "\n"
