"""Segmentation metrics from a confusion matrix, and their JSON / Markdown outputs.

The original builds one sklearn confusion matrix over all test pixels of all test views
(`calculate_segmentation_metrics`; its literal one-shot form is utils/_reference.py, for the
tests). Here `confusion_counts` is the one implementation of the counting: a scatter-add of 0/1
weights in torch, so it runs on the device where the labels are, never synchronises with the
host, and counts several matrices at once. `ConfusionAccumulator` (adds views one at a time,
e.g. on the GPU during propagation) is built on it. Every number is computed from the confusion
matrix alone, so accumulating view by view equals counting everything at once.

Label space: evaluation labels (void = -1, valid classes 0..C'-1), rows = true, cols = pred.
"""
import numpy as np
import torch

METRIC_KEYS = ("miou", "miou_validclass", "total_accuracy", "class_average_accuracy",
               "class_average_accuracy_validclass")


def _nanmean(x):
    """Mean over the non-NaN entries; NaN (not a masked constant or a warning) when there are none."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def confusion_counts(true, pred, num_classes, true_ok=None):
    """[G, C, C] int64 confusion matrices (rows = true) of G pairs of label maps.

    true, pred: integer tensors [G, N] (or shapes that broadcast to it), on any device.
    A pixel counts in M[g, t, p] when 0 <= t < C and 0 <= p < C (sklearn's `labels=`) and, if
    `true_ok` [C] bool is given, true_ok[t]. Counting is a scatter-add of 0/1 weights: no
    boolean indexing, hence no host synchronisation on CUDA.
    """
    c = int(num_classes)
    t, p = torch.broadcast_tensors(torch.as_tensor(true).long(), torch.as_tensor(pred).long())
    t, p = t.reshape(-1, t.shape[-1]), p.reshape(-1, p.shape[-1])
    keep = (t >= 0) & (t < c) & (p >= 0) & (p < c)
    t, p = t.clamp(0, c - 1), p.clamp(0, c - 1)
    if true_ok is not None:
        keep &= true_ok.to(t.device)[t]
    g = t.shape[0]
    index = (torch.arange(g, device=t.device)[:, None] * c + t) * c + p
    counts = torch.zeros(g * c * c, dtype=torch.int64, device=t.device)
    counts.scatter_add_(0, index.reshape(-1), keep.reshape(-1).to(torch.int64))
    return counts.reshape(g, c, c)


def _true_ok(num_classes, ignore_labels):
    """[C] bool: False at the ignored labels that lie in 0..C-1 (the others are dropped anyway)."""
    ok = torch.ones(int(num_classes), dtype=torch.bool)
    for label in ignore_labels or ():
        if 0 <= int(label) < int(num_classes):
            ok[int(label)] = False
    return ok


def _as_tensor(x):
    """A torch view of label maps given as a tensor, a numpy array or a list."""
    return x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))


def class_ious(conf):
    """IoU_c = M_cc / (row_c + col_c - M_cc) of float confusion matrices [..., C, C] (numpy or
    torch, rows = true); NaN where class c is neither true nor predicted, 0 if only predicted."""
    diag = conf.diagonal(0, -2, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return diag / (conf.sum(-1) + conf.sum(-2) - diag)


def metrics_from_confusion(conf, class_mask=None):
    """Every metric of the original's evaluation from a confusion matrix [C, C] (rows = true):
    mIoU = nan-mean of the class IoUs; mIoU over the valid classes = mean IoU of the classes
    with GT pixels (and class_mask True); total accuracy = trace / sum; class-average accuracy =
    nan-mean of the recalls M_cc / row_c (and over the valid classes)."""
    conf = np.asarray(conf, dtype=np.int64)
    c = conf.shape[0]
    rows, diag = conf.sum(1), np.diagonal(conf).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = diag / rows                      # diagonal of the row-normalised matrix; NaN: empty row
    ious = class_ious(conf.astype(np.float64))    # NaN only if absent from GT and prediction; 0 if only predicted
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


class ConfusionAccumulator:
    """The confusion matrix of (true, pred) label maps added one view at a time, kept on
    `device` (adding never waits for the device); `metrics()` equals one call on everything.

    Pixels whose true label is in `ignore_labels`, or whose true or predicted label lies outside
    0..C-1, are dropped; `class_mask` [C] bool restricts the valid-class means."""

    def __init__(self, num_classes, ignore_labels=(-1,), class_mask=None, device=None):
        self.num_classes = int(num_classes)
        self.class_mask = None if class_mask is None else np.asarray(class_mask, dtype=bool)
        self.true_ok = _true_ok(self.num_classes, ignore_labels).to(device)
        self.counts = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def add(self, true, pred):
        true, pred = _as_tensor(true).reshape(-1), _as_tensor(pred).reshape(-1)
        if true.shape != pred.shape:
            raise ValueError(f"true and pred differ in size: {true.numel()} vs {pred.numel()} pixels")
        dev = self.counts.device
        self.counts += confusion_counts(true[None].to(dev), pred[None].to(dev), self.num_classes, self.true_ok)[0]
        return self

    @property
    def confusion(self):
        """[C, C] int64 numpy counts, rows = true."""
        return self.counts.cpu().numpy()

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
