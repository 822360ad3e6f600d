"""Slow reference implementations of the fast paths in utils/, for tests and benchmarks only.

Each function is the literal definition that a fast path replaces, kept short and obviously
correct and independent of the fast path's code; nothing in the package calls them.
"""
import math

import numpy as np


def segmentation_metrics(true, pred, num_classes, ignore_labels=(-1,), class_mask=None):
    """The original's `calculate_segmentation_metrics` on label maps of any shape, in one shot:
    the confusion matrix counted pixel by pixel in a Python loop, every metric written out class
    by class. Fast path: utils.metrics.ConfusionAccumulator (a scatter-add per view, on the
    labels' device) and its metrics(); the same keys are returned (METRIC_KEYS, `ious` with NaN
    where undefined, `confusion_matrix` [C, C] rows = true, `num_pixels`).

    A pixel is dropped when its true label is in `ignore_labels` or its true or predicted label
    lies outside 0..C-1; `class_mask` [C] bool restricts the valid-class means."""
    c = int(num_classes)
    ignored = {int(label) for label in ignore_labels or ()}
    conf = np.zeros((c, c), dtype=np.int64)
    for t, p in zip(np.asarray(true).reshape(-1).tolist(), np.asarray(pred).reshape(-1).tolist()):
        if t not in ignored and 0 <= t < c and 0 <= p < c:
            conf[t, p] += 1
    rows, cols = conf.sum(1), conf.sum(0)
    ious, recalls = [], []
    for k in range(c):
        union = rows[k] + cols[k] - conf[k, k]
        ious.append(conf[k, k] / union if union else math.nan)
        recalls.append(conf[k, k] / rows[k] if rows[k] else math.nan)
    valid = [rows[k] > 0 and (class_mask is None or bool(class_mask[k])) for k in range(c)]

    def mean(values):
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    total = int(conf.sum())
    return dict(miou=mean(ious),
                miou_validclass=mean([ious[k] for k in range(c) if valid[k]]),
                total_accuracy=int(np.trace(conf)) / total if total else math.nan,
                class_average_accuracy=mean(recalls),
                class_average_accuracy_validclass=mean([recalls[k] for k in range(c) if valid[k]]),
                ious=np.array(ious), confusion_matrix=conf, num_pixels=total)
