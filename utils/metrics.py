"""Segmentation metrics (spec 6.1) and their JSON / Markdown outputs.

The original builds one sklearn confusion matrix over all test pixels of all test views
(`calculate_segmentation_metrics`). Here the matrix is a single `np.bincount` (180 views of
320x240 is 13.8 M pixels), and `ConfusionAccumulator` adds views one at a time so evaluation
never stacks all predictions. Every number is computed from the confusion matrix alone, so the
one-shot call and the accumulator agree exactly.

Label space: evaluation labels (void = -1, valid classes 0..C'-1), rows = true, cols = pred.
"""
import json
import os

import numpy as np

METRIC_KEYS = ("miou", "miou_validclass", "total_accuracy", "class_average_accuracy",
               "class_average_accuracy_validclass")


def _as_numpy(x):
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _nanmean(x):
    """Mean over the non-NaN entries; NaN (not a masked constant or a warning) when there are none."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def confusion_matrix(true, pred, num_classes, ignore_labels=(-1,)):
    """[C, C] int64 counts, rows = true. Pixels whose true label is ignored are dropped, and so are
    pixels whose true or predicted label lies outside 0..C-1 (sklearn's `labels=` behaviour)."""
    c = int(num_classes)
    true = _as_numpy(true).reshape(-1)
    pred = _as_numpy(pred).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in size: {true.size} vs {pred.size} pixels")
    # Ignoring a label outside 0..C-1 changes nothing (those pixels are dropped anyway), so the
    # ignore list becomes a boolean lookup over the in-range labels: no np.isin over 13.8 M pixels.
    ignored = np.zeros(c, dtype=bool)
    for label in ignore_labels or ():
        if 0 <= int(label) < c:
            ignored[int(label)] = True
    counts = np.zeros(c * c, dtype=np.int64)
    step = 1 << 20          # blocks of 1 M pixels: int64 temporaries stay small and in cache
    for s in range(0, true.size, step):
        t = true[s:s + step].astype(np.int64)
        p = pred[s:s + step].astype(np.int64)
        keep = (t >= 0) & (t < c) & (p >= 0) & (p < c)
        t, p = t[keep], p[keep]
        if ignored.any():
            k = ~ignored[t]
            t, p = t[k], p[k]
        counts += np.bincount(t * c + p, minlength=c * c)
    return counts.reshape(c, c)


def metrics_from_confusion(conf, class_mask=None):
    """All the outputs of spec 6.1 from a confusion matrix (rows = true)."""
    conf = np.asarray(conf, dtype=np.int64)
    c = conf.shape[0]
    rows, cols, diag = conf.sum(1), conf.sum(0), np.diagonal(conf).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = diag / rows                      # diagonal of the row-normalised matrix; NaN: empty row
        ious = diag / (rows + cols - diag)        # NaN only if absent from GT and prediction; 0 if only predicted
    missing = rows == 0
    existing = ~missing if class_mask is None else (np.asarray(class_mask, dtype=bool).reshape(c) & ~missing)
    total = conf.sum()
    return dict(
        miou=_nanmean(ious),
        # plain mean over existing classes: their rows are non-empty, so their IoUs are defined
        miou_validclass=float(ious[existing].mean()) if existing.any() else float("nan"),
        total_accuracy=float(diag.sum() / total) if total else float("nan"),
        class_average_accuracy=_nanmean(recall),
        class_average_accuracy_validclass=_nanmean(recall[existing]),
        ious=ious,
        confusion_matrix=conf,
        num_pixels=int(total),
    )


def segmentation_metrics(true, pred, num_classes, ignore_labels=(-1,), class_mask=None):
    """The original's `calculate_segmentation_metrics`, as a dict (keys in METRIC_KEYS, plus
    `ious` [C'] with NaN where undefined, `confusion_matrix` [C', C'] and `num_pixels`)."""
    return metrics_from_confusion(confusion_matrix(true, pred, num_classes, ignore_labels), class_mask)


class ConfusionAccumulator:
    """Adds (true, pred) views one at a time; `metrics()` equals one call on everything."""

    def __init__(self, num_classes, ignore_labels=(-1,), class_mask=None):
        self.num_classes = int(num_classes)
        self.ignore_labels = tuple(ignore_labels or ())
        self.class_mask = class_mask
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def add(self, true, pred):
        self.confusion += confusion_matrix(true, pred, self.num_classes, self.ignore_labels)
        return self

    def metrics(self):
        return metrics_from_confusion(self.confusion, self.class_mask)


# ----------------------------------------------------------------------------- outputs

def to_jsonable(x):
    """Plain-Python copy of `x`: numpy/torch scalars and arrays converted, NaN/inf -> None."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def _fmt(v):
    return "n/a" if v is None or not np.isfinite(v) else f"{100.0 * float(v):.2f}"


def metrics_table_markdown(rows, class_names=None):
    """Markdown: one summary row per run (values in %), then per-class IoU with one column per
    run (transposed, because Replica has ~90 classes). Classes with no defined IoU in any run
    are left out."""
    names = list(rows)
    out = ["| run | mIoU | mIoU (valid classes) | total acc | class-avg acc | class-avg acc (valid) |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for n in names:
        m = rows[n]
        out.append(f"| {n} | " + " | ".join(_fmt(m.get(k)) for k in METRIC_KEYS) + " |")
    ious = {n: np.asarray(rows[n].get("ious", []), dtype=np.float64) for n in names}
    num = max((len(v) for v in ious.values()), default=0)
    shown = [c for c in range(num) if any(c < len(v) and np.isfinite(v[c]) for v in ious.values())]
    if shown:
        out += ["", "Per-class IoU (%):", "", "| class | " + " | ".join(names) + " |",
                "| --- | " + " | ".join("---:" for _ in names) + " |"]
        for c in shown:
            label = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            out.append(f"| {label} | " + " | ".join(_fmt(v[c] if c < len(v) else None)
                                                   for v in ious.values()) + " |")
    return "\n".join(out) + "\n"


def _write_atomic(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_metrics(save_dir, metrics, name="metrics", class_names=None):
    """Write `<name>.json` (NaN as null) and `<name>.md` into `save_dir`, each atomically.

    `metrics` is one metrics dict (it has 'miou') or a dict whose values include metrics dicts
    (e.g. {'shaped': {...}, 'plain': {...}, 'mode': ...}): every such entry is a table row."""
    os.makedirs(save_dir, exist_ok=True)
    _write_atomic(os.path.join(save_dir, f"{name}.json"),
                  json.dumps(to_jsonable(metrics), indent=1, allow_nan=False) + "\n")
    if "miou" in metrics:
        rows = {name: metrics}
    else:
        rows = {k: v for k, v in metrics.items() if isinstance(v, dict) and "miou" in v}
    if class_names is None:
        class_names = metrics.get("class_names")
    _write_atomic(os.path.join(save_dir, f"{name}.md"), f"# {name}\n\n" + metrics_table_markdown(rows, class_names))
    return rows
