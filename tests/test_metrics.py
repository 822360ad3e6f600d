"""utils/metrics.py (the confusion accumulator, its metrics and outputs) against a hand-computed
confusion matrix, against sklearn (the original's `calculate_segmentation_metrics` rewritten as a
reference) and against the pixel-by-pixel reference utils/_reference.segmentation_metrics."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from utils._reference import segmentation_metrics as reference_metrics
from utils.label_outputs import finish_metrics
from utils.metrics import METRIC_KEYS, ConfusionAccumulator, metrics_table_markdown

# 4 classes. Class 0: in GT, partly right. Class 1: in GT, never predicted. Class 2: only
# predicted. Class 3: nowhere (IoU NaN). Two void pixels, one prediction out of range (7), one
# true label out of range (9): those four pixels are dropped.
TRUE = np.array([0, 0, 0, 0, 1, 1, 1, -1, -1, 0, 9])
PRED = np.array([0, 0, 2, 1, 0, 2, 2, 0, 3, 7, 0])
HAND_CONF = np.array([[2, 1, 1, 0],
                      [1, 0, 2, 0],
                      [0, 0, 0, 0],
                      [0, 0, 0, 0]])


def _close(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


def accumulated(true, pred, c, ignore_labels=(-1,), class_mask=None):
    """The fast path on everything at once: one ConfusionAccumulator.add."""
    return ConfusionAccumulator(c, ignore_labels, class_mask).add(true, pred).metrics()


BOTH = pytest.mark.parametrize("metrics", [accumulated, reference_metrics], ids=["accumulator", "reference"])


@BOTH
def test_hand_computed_example(metrics):
    m = metrics(TRUE, PRED, 4)
    assert np.array_equal(m["confusion_matrix"], HAND_CONF)
    # IoU_c = M_cc / (row_c + col_c - M_cc): rows [4,3,0,0], cols [3,1,3,0]
    assert np.allclose(m["ious"][:3], [2 / 5, 0.0, 0.0]) and math.isnan(m["ious"][3])
    assert _close(m["miou"], (0.4 + 0 + 0) / 3)
    assert _close(m["miou_validclass"], (0.4 + 0) / 2)          # existing = classes with GT pixels
    assert _close(m["total_accuracy"], 2 / 7)
    assert _close(m["class_average_accuracy"], (2 / 4 + 0 / 3) / 2)
    assert _close(m["class_average_accuracy_validclass"], 0.25)
    assert m["num_pixels"] == 7


@BOTH
def test_class_mask_and_extra_ignored_labels(metrics):
    m = metrics(TRUE, PRED, 4, class_mask=np.array([True, False, True, True]))
    assert _close(m["miou_validclass"], 0.4) and _close(m["class_average_accuracy_validclass"], 0.5)
    assert _close(m["miou"], 0.4 / 3)                            # the mask does not touch mIoU
    # ignoring class 1 as a true label drops its row; its predictions in other rows still count
    m = metrics(TRUE, PRED, 4, ignore_labels=(-1, 1))
    assert np.array_equal(m["confusion_matrix"], [[2, 1, 1, 0], [0] * 4, [0] * 4, [0] * 4])
    assert np.allclose(m["ious"][:3], [2 / 4, 0, 0]) and _close(m["miou"], 0.5 / 3)
    assert _close(m["total_accuracy"], 0.5)


@BOTH
def test_nothing_left_gives_nan_not_an_error(metrics):
    m = metrics(np.full(5, -1), np.zeros(5, int), 3)
    assert m["num_pixels"] == 0 and all(math.isnan(m[k]) for k in
                                        ("miou", "miou_validclass", "total_accuracy", "class_average_accuracy"))


def _original_metrics(true, pred, c, ignore, class_mask=None):
    """The original's algorithm written with sklearn, as an independent reference."""
    true, pred = true.reshape(-1), pred.reshape(-1)
    valid = np.ones(true.shape, bool)
    for label in ignore:
        valid &= true != label
    conf = sk_confusion_matrix(true[valid], pred[valid], labels=list(range(c)))
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = conf / conf.sum(1, keepdims=True).astype(float)
        ious = np.array([conf[k, k] / (conf[k].sum() + conf[:, k].sum() - conf[k, k]) for k in range(c)])
    missing = np.isnan(norm.sum(1))
    existing = ~missing if class_mask is None else class_mask & ~missing
    return dict(miou=np.nanmean(ious), miou_validclass=np.mean(ious[existing]),
                total_accuracy=np.trace(conf) / conf.sum(), class_average_accuracy=np.nanmean(np.diag(norm)),
                class_average_accuracy_validclass=np.nanmean(np.diag(norm)[existing]), ious=ious, conf=conf)


@BOTH
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_random_data(seed, metrics):
    rng = np.random.default_rng(seed)
    c = 9
    true = rng.integers(-1, c + 2, size=(3, 40, 50))        # includes void and out-of-range labels
    pred = rng.integers(-1, c + 2, size=(3, 40, 50))
    true[true == 4] = 5                                      # class 4 absent from GT, still predicted
    pred[pred == 6] = 0                                      # class 6 absent from the prediction
    ignore = (-1, 2)
    mask = rng.random(c) < 0.7
    ref = _original_metrics(true, pred, c, ignore, mask)
    m = metrics(true, pred, c, ignore_labels=ignore, class_mask=mask)
    assert np.array_equal(m["confusion_matrix"], ref["conf"])
    for k in ("miou", "miou_validclass", "total_accuracy", "class_average_accuracy",
              "class_average_accuracy_validclass"):
        assert _close(m[k], float(ref[k])), k
    assert np.allclose(m["ious"], ref["ious"], equal_nan=True)


def test_accumulator_view_by_view_equals_a_pixel_loop():
    """Six views added one at a time equal the pixel-by-pixel count of all of them at once."""
    rng = np.random.default_rng(3)
    true = rng.integers(-1, 8, size=(6, 30, 20))              # 7: a true label out of range
    pred = rng.integers(-1, 8, size=(6, 30, 20))
    mask = np.array([1, 1, 0, 1, 1, 1, 0], bool)
    acc = ConfusionAccumulator(7, ignore_labels=(-1, 3), class_mask=mask)
    for v in range(6):
        acc.add(true[v], pred[v])
    a, ref = acc.metrics(), reference_metrics(true, pred, 7, ignore_labels=(-1, 3), class_mask=mask)
    assert np.array_equal(a["confusion_matrix"], ref["confusion_matrix"])
    assert a["num_pixels"] == ref["num_pixels"] > 0
    assert ref["confusion_matrix"][3].sum() == 0 and ref["confusion_matrix"][:, 3].sum() > 0
    assert np.allclose(a["ious"], ref["ious"], rtol=0, atol=1e-12, equal_nan=True)
    for k in METRIC_KEYS:
        assert _close(a[k], ref[k]), k


def test_finish_metrics_json_and_markdown(tmp_path):
    m = accumulated(TRUE, PRED, 4)
    run = dict(m, mode="propagate_2d", seconds=np.float32(1.5), views=np.int64(3))
    table = finish_metrics(str(tmp_path), run, wo=accumulated(TRUE, np.zeros_like(PRED), 4),
                           names=["wall", "floor", "chair", "lamp"], title="shaped")
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["ious"][3] is None and data["views"] == 3 and data["seconds"] == 1.5
    assert data["confusion_matrix"] == HAND_CONF.tolist()
    assert data["without_aggregator"]["confusion_matrix"] == [[5, 0, 0, 0], [3, 0, 0, 0], [0] * 4, [0] * 4]
    md = (tmp_path / "metrics.md").read_text()
    assert md == "# shaped\n\n" + table
    assert "| shaped (aggregator) | 13.33 | 20.00 | 28.57 | 25.00 | 25.00 |" in md
    assert "| shaped (argmax, _wo) | 31.25 |" in md              # IoUs 5/8, 0 (prediction 7 is now 0)
    assert "| wall | 40.00 | 62.50 |" in md and "lamp" not in md      # class 3 has no IoU in any run
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert metrics_table_markdown({"x": m}).count("\n") > 3
