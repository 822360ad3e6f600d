"""The tables and the plot of a reproduction run (experiments/reproduce.py), read back from the
stages' metrics.json files, so they can be rebuilt at any time (`--collect`).

results.json:
    name, scenes, label_spaces, dims, regimes, methods (display names), metrics (keys),
    values: {space: {dim: {scene | "mean": {method: {regime: {metric: value in % or null}}}}}},
    labelled_fraction: {space: {regime: {scene | "mean": labelled training pixels / all}}},
    views: {space: {dim: {scene: {method: {regime: {split, count, digest} or null}}}}}: the test
        views each cell was scored on (its metrics.json `views`; older files: their split and count),
    missing: ["scene / space / dim / method / regime", ...] (cells without a finished stage)
Nothing in it depends on the machine, the paths or the number of processes (timings are in
timings/process_<i>.json), so every way of running the same YAML writes the same file.

A comparison is only one on the same views: every finished cell of one scene in one table (label
space and dimension) must carry the same view set, or `write_results` refuses (InputError naming
the cells and their views) and writes no table.

results.md: one table per label space and dimension; one row per scene and method, then the
mean over the scenes (shown only when every scene has the value); one column per regime and
metric. miou_vs_sparsity.png: mean mIoU against the labelled fraction of the training pixels
(log scale), one line per method, one panel per label space and dimension (drawn with OpenCV).
"""
import glob
import math
import os

import cv2
import numpy as np

from experiments.layout import METHODS, METRIC_NAMES, cell_metrics, read_json, seed_dir
from utils.atomic import write_json_atomic, write_text_atomic
from utils.errors import InputError
from utils.image_io import read_label_png, write_png

MEAN = "mean"
COLOURS = {"plain": (120, 120, 120), "jnerf": (214, 39, 40), "semantic_joint": (31, 119, 180),
           "semantic_finetune": (44, 160, 44), "jnerf_keep": (255, 127, 14)}


def _pct(m, key):
    v = m.get(key) if isinstance(m, dict) else None
    return None if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else 100.0 * float(v)


def labelled_fraction(folder):
    """Labelled training pixels / all training pixels of a saved seed folder, or None."""
    info = read_json(os.path.join(folder, "seeds.json"))
    if not info:
        return None
    total = int(info["num_train"]) * int(info["height"]) * int(info["width"])
    count = sum(int((read_label_png(p) > 0).sum()) for p in glob.glob(os.path.join(folder, "semantic_class_*.png")))
    return count / total if total else None


def cell_views(m):
    """{split, count, digest} of the views a metrics dict was scored on (digest None for files written
    before the `views` entry existed: their split and count stand for it), or None."""
    if not isinstance(m, dict):
        return None
    v = m.get("views")
    if isinstance(v, dict):
        return dict(split=v.get("split"), count=v.get("count"), digest=v.get("digest"))
    return dict(split=m.get("test_split", "test"), count=m.get("test_views"), digest=None)


def _view_key(v):
    return v["digest"] or (v["split"], v["count"])


def view_conflicts(res):
    """Lines naming the tables (scene / label space / dimension) whose finished cells were scored
    on different views, each cell with its views."""
    lines = []
    for space, dims in res["views"].items():
        for dim, scenes in dims.items():
            for scene, methods in scenes.items():
                cells = [(f"{method} / {regime}", v) for method, regimes in methods.items()
                         for regime, v in regimes.items() if v is not None]
                if len({_view_key(v) for _, v in cells}) > 1:
                    what = "; ".join(f"{name}: {v['split']}, {v['count']} view(s)"
                                     + (f" [{v['digest']}]" if v["digest"] else " [no digest]") for name, v in cells)
                    lines.append(f"{scene} / {space} / {dim.upper()}: {what}")
    return lines


def _mean(values):
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def check_cell(m, path, space, scene, digests):
    """A cell's metrics belong in its table: the table's label space, and the same scene (the digest
    of its training cameras) as the scene's other cells (`digests`: scene name -> (digest, path))."""
    recorded = m.get("label_space")
    if recorded is not None and recorded != space:
        raise InputError(f"{path} holds {recorded} labels but is the cell of the {space} table; the run folder mixes "
                         "label spaces (a copied or moved stage folder?): rerun that stage")
    digest = (m.get("scene") or {}).get("digest") if isinstance(m.get("scene"), dict) else None
    if digest is None:
        return
    seen = digests.setdefault(scene, (digest, path))
    if seen[0] != digest:
        raise InputError(f"{path} holds the results of another scene ({m['scene'].get('name')}) than {seen[1]} "
                         f"(scene '{scene}'); the run folder mixes scenes: rerun that stage")


def collect_results(plan):
    """The results dict (module doc) of the finished stages of `plan` (experiments.plan.Plan)."""
    scenes = [s.name for s in plan.scenes]
    regimes = [r.name for r in plan.regimes]
    values, fractions, missing, views, digests = {}, {}, [], {}, {}
    for space in plan.label_spaces:
        fractions[space] = {r: {} for r in regimes}
        for dim in plan.dims:
            table = values.setdefault(space, {}).setdefault(dim, {})
            for scene in plan.scenes:
                rows = table[scene.name] = {}
                seen = views.setdefault(space, {}).setdefault(dim, {})[scene.name] = {}
                for method in plan.methods:
                    row = rows[METHODS[method]] = {}
                    seen_row = seen[METHODS[method]] = {}
                    for regime in plan.regimes:
                        path = cell_metrics(plan.out_dir, scene.name, space, regime.name, method, dim)
                        m = read_json(path) if space in scene.label_spaces else None
                        if m is not None:
                            check_cell(m, path, space, scene.name, digests)
                        if m is None:
                            missing.append(f"{scene.name} / {space} / {dim} / {METHODS[method]} / {regime.name}")
                        row[regime.name] = {k: _pct(m, k) for k in plan.metrics}
                        seen_row[regime.name] = cell_views(m)
                        if m and m.get("seeds") and scene.name not in fractions[space][regime.name]:
                            fractions[space][regime.name][scene.name] = labelled_fraction(
                                os.path.join(seed_dir(plan.out_dir, scene.name), m["seeds"]))
            table[MEAN] = {METHODS[method]: {r: {k: _mean([table[s][METHODS[method]][r][k] for s in scenes])
                                                 for k in plan.metrics} for r in regimes}
                           for method in plan.methods}
        for r in regimes:
            got = [fractions[space][r].get(s) for s in scenes]
            fractions[space][r] = {s: fractions[space][r].get(s) for s in scenes}
            fractions[space][r][MEAN] = _mean(got)
    return dict(name=plan.name, scenes=scenes, label_spaces=list(plan.label_spaces), dims=list(plan.dims),
                regimes=regimes, methods=[METHODS[m] for m in plan.methods], method_keys=list(plan.methods),
                metrics=list(plan.metrics), values=values, labelled_fraction=fractions, views=views, missing=missing)


def _fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


def _frac(v):
    return "n/a" if v is None else f"{100 * v:.3g} %"


def results_markdown(res):
    """The Markdown of results.md."""
    metric_names = [METRIC_NAMES.get(k, k) for k in res["metrics"]]
    lines = [f"# Reproduction: {res['name']}", "",
             "Values in %, over the test views pooled, counting only ground-truth pixels of the classes the seeds "
             "give (as label propagation's metrics). plain NeRF and JacobiNeRF propagate the seeds through the plain "
             "and the shaped checkpoint; Semantic-NeRF is trained on the same seeds: joint = NeRF and semantic heads "
             "from scratch (Semantic-NeRF's protocol), fine-tune = the heads on the frozen plain NeRF. 2D labels "
             "pixels of the rendered test views; 3D labels the 3D sample points and renders them into the test "
             "views. mean = the mean over the scenes (n/a unless every scene has the value). Every cell of a scene "
             "was scored on the same test views (results.json `views`).", ""]
    for space in res["label_spaces"]:
        for dim in res["dims"]:
            table = res["values"][space][dim]
            lines += [f"## {space.capitalize()} labels, {dim.upper()}", ""]
            header = ["scene", "method"] + [f"{r} {n}" for r in res["regimes"] for n in metric_names]
            lines += ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * (len(header) - 2)]
            for scene in res["scenes"] + [MEAN]:
                for method in res["methods"]:
                    cells = [_fmt(table[scene][method][r][k]) for r in res["regimes"] for k in res["metrics"]]
                    name = f"**{scene}**" if scene == MEAN else scene
                    lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
            lines.append("")
        frac = res["labelled_fraction"][space]
        lines += [f"Labelled training pixels ({space}): " + ", ".join(
            f"{r} {_frac(frac[r][MEAN])}" for r in res["regimes"]), ""]
    if res["missing"]:
        lines += [f"Missing ({len(res['missing'])} cells, stages not finished): "
                  + "; ".join(res["missing"][:20]) + (" ..." if len(res["missing"]) > 20 else ""), ""]
    return "\n".join(lines)


def write_results(plan, res):
    """results.json, results.md and miou_vs_sparsity.png in plan.out_dir; InputError (nothing
    written) when a table would mix cells scored on different views (`view_conflicts`)."""
    conflicts = view_conflicts(res)
    if conflicts:
        raise InputError("results: cells of one table were scored on different test views, so they are not a "
                         "comparison (score every method on the scene's test split; docs/REPRODUCE.md):\n  "
                         + "\n  ".join(conflicts))
    os.makedirs(plan.out_dir, exist_ok=True)
    write_json_atomic(os.path.join(plan.out_dir, "results.json"), res)
    text = results_markdown(res)
    write_text_atomic(os.path.join(plan.out_dir, "results.md"), text)
    write_png(os.path.join(plan.out_dir, "miou_vs_sparsity.png"), plot_miou(res))
    print(text, flush=True)
    return text


# ---------------------------------------------------------------------------------- the plot

PANEL_W, PANEL_H = 560, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 30, 50, 75
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img, text, org, scale=0.45, colour=(0, 0, 0), centre=False):
    (w, h), _ = cv2.getTextSize(text, FONT, scale, 1)
    x, y = org
    if centre:
        x -= w // 2
    cv2.putText(img, text, (int(x), int(y)), FONT, scale, colour, 1, cv2.LINE_AA)
    return w, h


def _panel(res, space, dim):
    """One panel [PANEL_H, PANEL_W, 3] RGB: mean mIoU per method against log10 labelled fraction."""
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    regimes = res["regimes"]
    frac = res["labelled_fraction"][space]
    xs_raw = [frac[r][MEAN] for r in regimes]
    if all(v is not None and v > 0 for v in xs_raw):
        xs = [math.log10(v) for v in xs_raw]
        axis = "labelled training pixels (log scale)"
    else:                                   # no seeds to measure: evenly spaced, in the YAML's order
        xs = list(range(len(regimes)))
        axis = "label regime"
    table = res["values"][space][dim][MEAN]
    series = {m: [table[m][r].get("miou") for r in regimes] for m in res["methods"]}
    top = max([v for s in series.values() for v in s if v is not None] + [10.0])
    y_max = min(100.0, 10.0 * math.ceil(top / 10.0 + 0.05))
    x0, x1 = min(xs), max(xs)
    pad = 0.08 * (x1 - x0) if x1 > x0 else 0.5
    x0, x1 = x0 - pad, x1 + pad
    pw, ph = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM

    def px(x, y):
        return (int(round(LEFT + (x - x0) / (x1 - x0) * pw)), int(round(TOP + ph - y / y_max * ph)))

    _text(img, f"{space} labels, {dim.upper()}: mean mIoU over the scenes", (PANEL_W // 2, 28), 0.55, centre=True)
    for k in range(0, 11):
        y = y_max * k / 10
        if k % 2 == 0:
            p = px(x0, y)
            cv2.line(img, (LEFT - 4, p[1]), (LEFT, p[1]), (0, 0, 0), 1)
            cv2.line(img, (LEFT + 1, p[1]), (LEFT + pw - 1, p[1]), (230, 230, 230), 1)
            _text(img, f"{y:.0f}", (LEFT - 8 - 7 * len(f"{y:.0f}"), p[1] + 4), 0.4)
    cv2.rectangle(img, (LEFT, TOP), (LEFT + pw, TOP + ph), (0, 0, 0), 1)
    _text(img, "mIoU (%)", (8, TOP - 10), 0.42)
    for i, (x, r) in enumerate(zip(xs, regimes)):
        p = px(x, 0)
        cv2.line(img, (p[0], TOP + ph), (p[0], TOP + ph + 4), (0, 0, 0), 1)
        label = r + (f" ({_frac(xs_raw[i])})" if xs_raw[i] is not None else "")
        _text(img, label, (p[0], TOP + ph + 18 + 14 * (i % 2)), 0.36, centre=True)
    _text(img, axis, (LEFT + pw // 2, PANEL_H - 12), 0.42, centre=True)
    for key, name in zip(res["method_keys"], res["methods"]):
        colour = COLOURS.get(key, (0, 0, 0))
        pts = [px(x, v) for x, v in sorted(zip(xs, series[name])) if v is not None]
        for a, b in zip(pts, pts[1:]):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 4, colour, -1, cv2.LINE_AA)
    return img


def plot_miou(res):
    """The figure [H, W, 3] uint8 RGB: a panel per (label space, dimension), a legend below."""
    rows = [np.concatenate([_panel(res, s, d) for d in res["dims"]], axis=1) for s in res["label_spaces"]]
    fig = np.concatenate(rows, axis=0)
    legend = np.full((40, fig.shape[1], 3), 255, np.uint8)
    x = 20
    for key, name in zip(res["method_keys"], res["methods"]):
        colour = COLOURS.get(key, (0, 0, 0))
        cv2.line(legend, (x, 20), (x + 30, 20), colour, 2, cv2.LINE_AA)
        cv2.circle(legend, (x + 15, 20), 4, colour, -1, cv2.LINE_AA)
        w, _ = _text(legend, name, (x + 38, 25), 0.45)
        x += 38 + w + 30
    return np.concatenate([fig, legend], axis=0)
