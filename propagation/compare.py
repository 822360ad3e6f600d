"""The comparison the paper makes: the same seeds propagated through different checkpoints
(plain NeRF vs JacobiNeRF), side by side in one Markdown table.

    from propagation.compare import compare_runs
    print(compare_runs({'plain NeRF': m1, 'JacobiNeRF': m2}))   # metrics dicts or metrics.json paths

    python -m propagation.compare "plain NeRF=runs/p/metrics.json" "JacobiNeRF=runs/j/metrics.json"

Rows: mIoU, mIoU over valid classes, total accuracy, class-average accuracy (all in %), then the
IoU of every class given by the seeds. With exactly two runs a last column gives the difference
(second minus first). A run that trained an aggregator also contributes its plain-argmax ('_wo')
result as an extra column.
"""
import json
import math
import os
import sys

from utils.errors import InputError, run_cli

SUMMARY = (("mIoU", "miou"), ("mIoU (valid classes)", "miou_validclass"),
           ("total accuracy", "total_accuracy"), ("class-average accuracy", "class_average_accuracy"))


def _load(m):
    """A metrics dict, or the one in a propagation run's metrics.json (InputError naming the file)."""
    if not isinstance(m, str):
        return m
    if os.path.isdir(m):
        inside = os.path.join(m, "metrics.json")
        hint = f" such as {inside}" if os.path.isfile(inside) else ""
        raise InputError(f"{m} is a folder; expected a propagation run's metrics.json{hint}")
    if not os.path.isfile(m):
        raise InputError(f"{m} does not exist (expected the metrics.json of a --propagate_2d / --propagate_3d run)")
    try:
        with open(m) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"{m} is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or "miou" not in data:
        mode = data.get("mode") if isinstance(data, dict) else None
        what = f"a '{mode}' run's metrics" if mode else "no propagation metrics (no 'miou')"
        raise InputError(f"{m} holds {what}; compare the metrics.json of --propagate_2d / --propagate_3d runs")
    return data


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _pct(x):
    return "n/a" if x is None else f"{100.0 * x:.2f}"


def _columns(runs):
    cols = {}
    for name, m in runs.items():
        m = _load(m)
        cols[name] = m
        wo = m.get("without_aggregator") if isinstance(m, dict) else None
        if isinstance(wo, dict) and "miou" in wo:
            cols[f"{name} (argmax, no aggregator)"] = dict(wo, class_names=m.get("class_names"),
                                                           given_classes=m.get("given_classes"))
    return cols


def compare_runs(runs, per_class=True):
    """Markdown table comparing runs {column name: metrics dict or metrics.json path}."""
    cols = _columns(runs)
    names = list(cols)
    diff = len(names) == 2
    header = "| metric (%) | " + " | ".join(names) + (" | difference |" if diff else " |")
    lines = [header, "| --- | " + " | ".join("---:" for _ in names) + (" | ---: |" if diff else " |")]

    def row(label, values):
        cells = [_pct(v) for v in values]
        if diff:
            a, b = values
            cells.append("n/a" if a is None or b is None else f"{100.0 * (b - a):+.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for label, key in SUMMARY:
        row(label, [_num(cols[n].get(key)) for n in names])
    if per_class:
        given = sorted({int(c) for n in names for c in (cols[n].get("given_classes") or [])})
        class_names = next((cols[n].get("class_names") for n in names if cols[n].get("class_names")), None)
        for c in given:
            label = class_names[c] if class_names and c < len(class_names) else f"class {c}"
            values = []
            for n in names:
                ious = cols[n].get("ious") or []
                values.append(_num(ious[c]) if c < len(ious) else None)
            row(f"IoU {label}", values)
    views = {cols[n].get("test_views") for n in names if cols[n].get("test_views") is not None}
    note = f"\n{views.pop()} test views per run." if len(views) == 1 else ""
    return "\n".join(lines) + "\n" + note + ("\n" if note else "")


def main(argv=None):
    """The command line: 0, or 2 with one `error:` line for a missing or non-propagation metrics.json."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    runs = {}
    for item in argv:
        name, _, path = item.rpartition("=")
        runs[name or path] = path
    return run_cli(lambda: print(compare_runs(runs)))


if __name__ == "__main__":
    sys.exit(main())
