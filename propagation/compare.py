"""The comparison the paper makes: the same seeds propagated through different checkpoints
(plain NeRF vs JacobiNeRF), side by side in one Markdown table.

    from propagation.compare import compare_runs
    print(compare_runs({'plain NeRF': m1, 'JacobiNeRF': m2}))   # metrics dicts or metrics.json paths

    python -m propagation.compare "plain NeRF=runs/p/metrics.json" "JacobiNeRF=runs/j/metrics.json"

Rows: mIoU, mIoU over valid classes, total accuracy, class-average accuracy (all in %), then the
IoU of every class given by the seeds. With exactly two runs a last column gives the difference
(second minus first). A run that trained an aggregator also contributes its plain-argmax ('_wo')
result as an extra column.

Only like with like: runs of another label space (semantic classes against instance ids), another
scene (`scene`: its name and the digest of its training cameras) or other test views (`views`:
split, ids, resolution) are refused with one line naming both. A file written before a record
existed is tabled with a warning line saying what could not be checked. 2D and 3D runs of one scene
and label space may share a table (the same views are scored).
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


def _where(name, source):
    return f"'{name}' ({source})" if isinstance(source, str) else f"'{name}'"


def check_comparable(runs, loaded):
    """InputError when two runs differ in label space, scene or test views; returns the warning
    lines for runs that do not record their scene or views (written before these records)."""
    names = list(loaded)
    if len(names) < 2:
        return []
    first = names[0]
    checks = (("label_space", lambda m: m.get("label_space"), "labels"),
              ("scene", lambda m: (m.get("scene") or {}).get("digest"), "scene"),
              ("views", lambda m: (m.get("views") or {}).get("digest"), "test views"))
    for key, value, what in checks:
        known = [(n, value(loaded[n])) for n in names if value(loaded[n]) is not None]
        for n, v in known[1:]:
            a, va = known[0]
            if v != va:
                raise InputError(f"cannot compare {_where(a, runs[a])} with {_where(n, runs[n])}: other {what} "
                                 f"({_describe(key, loaded[a])} vs {_describe(key, loaded[n])}); compare runs of one "
                                 "label space, scene and set of test views")
    warnings = []
    for n in names:
        lacking = [k for k in ("scene", "views") if not isinstance(loaded[n].get(k), dict)]
        if lacking:
            warnings.append(f"warning: {_where(n, runs[n])} records no {' and no '.join(lacking)} (written before "
                            f"they were recorded): its {' and '.join(lacking)} are not checked against "
                            f"{_where(first, runs[first]) if n != first else 'the others'}")
    return warnings


def _describe(key, m):
    if key == "label_space":
        return f"{m.get('label_space')}"
    if key == "scene":
        return f"{m['scene'].get('name')} {m['scene'].get('digest', '')[:8]}"
    v = m["views"]
    return f"{v.get('split')} split, {v.get('count')} views {v.get('digest', '')[:8]}"


def _columns(runs):
    cols = {}
    loaded = {name: _load(m) for name, m in runs.items()}
    for line in check_comparable(runs, loaded):
        print(line, file=sys.stderr, flush=True)
    for name, m in loaded.items():
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
