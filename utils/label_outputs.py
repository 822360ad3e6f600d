"""What a label-map evaluation writes (label propagation and the Semantic-NeRF baseline alike):
label PNGs, colourised maps, error maps, a video, metrics; and the shared evaluation pieces
(the confusion restricted to the seeded classes, class names, colours, down-scaled GT maps).
Below training/ and propagation/ so both use one definition.

Per test view i (2D into <save_dir>/, 3D into <save_dir>/test_render/, as the original):
- `<i>_label<sfx>.png`      label ids in the evaluation space (valid classes 0..C'-1), uint8
                            (uint16 when an id exceeds 255);
- `<i>_vis_label<sfx>.png`  the colourised label map, in RGB order;
- `<i>_confidence<sfx>.png` (propagation) the winner's relative margin (s1 - s2) / s1 over the
                            runner-up label's score, times 255 (propagation/testviews.py);
- `<i>_error_map<sfx>.png`  255 where the label differs from the ground truth on non-void
                            pixels (utils.colormaps.error_map); not written without ground truth;
- 3D only: `<i>_gt_label.png`  the ground truth in the same encoding, void = 255 (65535 for
                            uint16);
plus `vis_label<sfx>.mp4`. sfx = '' for the result, '_wo' for the plain argmax when an
aggregator was trained. PNGs are written by a thread pool: propagation's while the next view is
computed (`ViewOutputWriter`), the baseline's after its pass (`write_view_outputs`).
docs/PROPAGATION.md, decision 16, lists how the original's files differ.
"""
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch.nn.functional as F

from utils.atomic import write_json_atomic, write_text_atomic
from utils.background import HostCopy
from utils.colormaps import colourise_labels, error_map, label_colormap
from utils.image_io import write_png, write_video
from utils.metrics import ConfusionAccumulator, metrics_table_markdown, to_jsonable


def seed_class_confusion(num_classes, given, device):
    """A ConfusionAccumulator (on `device`) of test labels against the ground truth restricted to
    the seeded classes `given`: GT pixels that are void or of another class are ignored, and the
    valid-class means run over the given classes."""
    given_mask = np.isin(np.arange(int(num_classes)), np.asarray(given))
    return ConfusionAccumulator(num_classes, ignore_labels=(-1, *np.flatnonzero(~given_mask).tolist()),
                                class_mask=given_mask, device=device)


def scaled_labels(labels, factor):
    """GT maps [T, H, W] down-scaled by `factor` with nearest neighbours (the original's rule)."""
    if factor == 1:
        return labels
    h, w = labels.shape[-2] // factor, labels.shape[-1] // factor
    x = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")
    return x[:, 0].round().long()


def valid_colour_map(scene, instance=False):
    """[C', 3] uint8 colours of the evaluation labels 0..C'-1 (void excluded)."""
    if instance:
        n = len(scene.instance_classes) if scene.instance_classes is not None else 256
        return label_colormap(n)[1:]
    if scene.colour_map is not None and len(scene.colour_map) >= scene.num_classes:
        return np.asarray(scene.colour_map, dtype=np.uint8)[1:]
    return label_colormap(scene.num_classes)[1:]


def class_names(scene, instance=False):
    """Names of the evaluation labels: '<name> (<raw id>)' when the scene knows them
    (`scene.class_names`: a clicks file's classes; scene_info.json of the synthetic room), else the
    raw id."""
    if instance:
        ids = scene.instance_classes[1:] if scene.instance_classes is not None else []
        return [f"instance {int(i)}" for i in ids]
    names = dict(getattr(scene, "class_names", None) or {})
    info = os.path.join(scene.root or "", "scene_info.json")
    if not names and scene.root and os.path.isfile(info):
        try:
            with open(info) as f:
                names = {int(k): v for k, v in json.load(f).get("classes", {}).items()}
        except (ValueError, OSError):
            names = {}
    out = []
    for raw in np.asarray(scene.semantic_classes)[1:]:
        out.append(f"{names[int(raw)]} ({int(raw)})" if int(raw) in names else str(int(raw)))
    return out


def _encoding(num_classes):
    return (np.uint8, 255) if num_classes <= 255 else (np.uint16, 65535)


def write_view_files(out_dir, i, lab, gt, colours, suffix="", write_gt=False, confidence=None):
    """The PNGs of view i (module doc): label map `lab` [H, W] (numpy ints), its ground truth `gt`
    [H, W] (None: no error or GT maps), `confidence` [H, W] uint8 or None. Returns (written paths,
    the colourised frame of the video)."""
    dtype, void_code = _encoding(len(colours))
    paths = [os.path.join(out_dir, f"{i}_label{suffix}.png")]
    write_png(paths[-1], lab.astype(dtype))
    vis = colourise_labels(lab, colours)
    paths.append(os.path.join(out_dir, f"{i}_vis_label{suffix}.png"))
    write_png(paths[-1], vis)
    if confidence is not None:
        paths.append(os.path.join(out_dir, f"{i}_confidence{suffix}.png"))
        write_png(paths[-1], np.asarray(confidence, dtype=np.uint8))
    if gt is None:
        return paths, vis
    paths.append(os.path.join(out_dir, f"{i}_error_map{suffix}.png"))
    write_png(paths[-1], error_map(lab, gt))
    if write_gt:
        g = np.where(gt >= 0, gt, void_code).astype(dtype)
        paths.append(os.path.join(out_dir, f"{i}_gt_label.png"))
        write_png(paths[-1], g)
    return paths, vis


def write_view_outputs(out_dir, labels, gt, colours, suffix="", write_gt=False, workers=4, video=True,
                       confidence=None):
    """Write the per-view files of label maps `labels` [T, H, W] (numpy ints, evaluation ids)
    against `gt` [T, H, W] (evaluation ids, -1 void; None for a scene without ground truth: no
    error or GT maps). `confidence` [T, H, W] uint8 adds `<i>_confidence<sfx>.png`. Returns the
    list of written paths."""
    os.makedirs(out_dir, exist_ok=True)

    def one(i):
        return write_view_files(out_dir, i, labels[i], None if gt is None else gt[i], colours, suffix, write_gt,
                                None if confidence is None else confidence[i])

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = list(pool.map(one, range(len(labels))))
    written = [p for ps, _ in done for p in ps]
    if video and done:
        path = os.path.join(out_dir, f"vis_label{suffix}.mp4")
        if write_video(path, [vis for _, vis in done]):
            written.append(path)
    return written


def split_name(training_mode):
    """The test split a run of --training_mode (or not) scores on."""
    return "frame 0 (--training_mode)" if training_mode else "test"


def view_set(split, ids, height, width):
    """What a metrics file was scored on (its `views` entry): the split, the view ids, their count,
    and a digest of the ids and the label-map size. Two numbers are only comparable when their
    digests are equal (the runner's and propagation.compare's tables refuse to mix them)."""
    ids = [int(i) for i in ids]
    text = f"{','.join(map(str, ids))}@{int(height)}x{int(width)}"
    return dict(split=split, ids=ids, count=len(ids), resolution=[int(height), int(width)],
                digest=hashlib.sha1(text.encode()).hexdigest()[:16])


class ViewOutputWriter:
    """`write_view_outputs` one view at a time, while the next view is computed: `add` takes a view's
    label maps as device tensors, copies them to the host without a sync and has `pool` (a
    utils.background.BackgroundWriter) write its PNGs; `finish` writes the videos once every view
    is written. The same files as `write_view_outputs` over all views (tests/test_background_writes.py)."""

    def __init__(self, out_dir, gt, colours, write_gt, pool):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.gt, self.colours, self.write_gt, self.pool = out_dir, gt, colours, write_gt, pool
        self.frames = {"": [], "_wo": []}

    def add(self, i, labels, confidence=None, labels_wo=None):
        """View i: labels [H, W] (and the plain argmax next to an aggregator, `labels_wo`), confidence
        [H, W] uint8; tensors on any device."""
        copy = HostCopy([t for t in (labels, confidence, labels_wo) if t is not None])
        gt = None if self.gt is None else self.gt[i]

        def write():
            host = iter(copy.get())
            lab = next(host).numpy()
            conf = next(host).numpy() if confidence is not None else None
            out = [write_view_files(self.out_dir, i, lab, gt, self.colours, "", self.write_gt, conf)[1]]
            if labels_wo is not None:
                out.append(write_view_files(self.out_dir, i, next(host).numpy(), gt, self.colours, "_wo")[1])
            return out

        f = self.pool.submit(write)
        self.frames[""].append((f, 0))
        if labels_wo is not None:
            self.frames["_wo"].append((f, 1))

    def finish(self):
        """The videos vis_label.mp4 (and vis_label_wo.mp4), once every view's PNGs are written."""
        for suffix, frames in self.frames.items():
            if frames:
                vis = [f.result()[k] for f, k in frames]
                self.pool.submit(write_video, os.path.join(self.out_dir, f"vis_label{suffix}.mp4"), vis)


def finish_metrics(save_dir, metrics, wo=None, names=None, title="propagation"):
    """Write metrics.json (NaN as null) and metrics.md (a row for the plain-argmax result too
    when there is one), each atomically; return the Markdown table."""
    if wo is not None:
        metrics["without_aggregator"] = wo
    write_json_atomic(os.path.join(save_dir, "metrics.json"), to_jsonable(metrics))
    rows = {title: metrics} if wo is None else {f"{title} (aggregator)": metrics, f"{title} (argmax, _wo)": wo}
    table = metrics_table_markdown(rows, names)
    write_text_atomic(os.path.join(save_dir, "metrics.md"), f"# {title}\n\n" + table)
    return table


def summary_line(m):
    def pct(x):
        x = to_jsonable(x)
        return "n/a" if x is None else f"{100 * x:.2f}"
    return (f"mIoU {pct(m['miou'])} | mIoU (valid classes) {pct(m['miou_validclass'])} | total acc "
            f"{pct(m['total_accuracy'])} | class-avg acc {pct(m['class_average_accuracy'])}")
