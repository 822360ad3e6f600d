"""The table and the plot of the shaping ablation (experiments/shaping_ablation.py), read back from
its stages' metrics.json files, so they can be rebuilt at any time (`--collect`).

ablation.json:
    scene, seeds, sizes, test_views (the views every cell was scored on, or null when the cells
    disagree), same_test_views, same_clicks (every row of a seed read the same saved clicks),
    rows: [{key, title, flags (added to the paper's command; null for the plain NeRF), what,
            seeds: {seed: {psnr, delta_psnr, miou_2d, miou_3d, initial_lr, views: {psnr, psnr_scored,
                    propagate_2d, propagate_3d}, resolution: {...}, clicks: {...}}},
            mean: {psnr, delta_psnr, miou_2d, miou_3d}}],
    missing: ["seed S / row / metric", ...]
PSNR in dB over all test views (the mean of the per-view PSNRs), delta_psnr against the plain NeRF
of the same seed, mIoU in % (one click per class). A mean is shown only when every seed has it.
ablation.md: the table (mean, then the seeds' values), what each row isolates. ablation.png: a
bar per row (the mean) and a dot per seed, for PSNR, 2D and 3D mIoU (matplotlib when installed,
else drawn with OpenCV).
"""
import math
import os

import cv2
import numpy as np

from experiments.layout import read_json
from utils.atomic import write_json_atomic, write_text_atomic
from utils.image_io import write_png

METRICS = (("psnr", "test PSNR (dB)"), ("delta_psnr", "PSNR vs plain (dB)"), ("miou_2d", "2D mIoU (%)"),
           ("miou_3d", "3D mIoU (%)"))


def _num(v, scale=1.0):
    return scale * float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _mean(values):
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _cell(base):
    """One seed's values of one row (its folder `base`)."""
    psnr = read_json(os.path.join(base, "psnr", "metrics.json")) or {}
    prop = {d: read_json(os.path.join(base, f"propagate_{d}", "metrics.json")) or {} for d in ("2d", "3d")}
    train = read_json(os.path.join(base, "train", "metrics.json")) or {}
    start = train.get("fine_tune") or {}
    views = dict(psnr=psnr.get("test_views"), psnr_scored=len(psnr.get("test_psnr_per_view") or []) or None,
                 propagate_2d=prop["2d"].get("test_views"), propagate_3d=prop["3d"].get("test_views"))
    return dict(psnr=_num(psnr.get("test_psnr")), miou_2d=_num(prop["2d"].get("miou"), 100.0),
                miou_3d=_num(prop["3d"].get("miou"), 100.0), initial_lr=_num(start.get("initial_lr")),
                lr_schedule=start.get("lr_schedule"), optimizer_state=start.get("optimizer_state"),
                views=views, resolution={d: prop[d].get("resolution") for d in ("2d", "3d")},
                clicks={d: (prop[d].get("seed_dir"), prop[d].get("seeds")) if prop[d] else None for d in ("2d", "3d")})


def collect(out_dir, scene, sizes, variants, row_dir):
    """The table dict (module doc) of the finished stages; variants: name -> Variant, row_dir(out_dir,
    seed, name) -> the row's folder."""
    seeds = [str(s) for s in sizes["seeds"]]
    rows, missing = [], []
    for name in sizes["variants"]:
        v = variants[name]
        cells = {str(s): _cell(row_dir(out_dir, s, name)) for s in sizes["seeds"]}
        rows.append(dict(key=name, title=v.title, flags=None if v.flags is None else list(v.flags), what=v.what,
                         seeds=cells))
    plain = next(r for r in rows if r["key"] == "plain")
    for row in rows:
        for s in seeds:
            c, p = row["seeds"][s], plain["seeds"][s]["psnr"]
            c["delta_psnr"] = None if c["psnr"] is None or p is None else c["psnr"] - p
            for key in ("psnr", "miou_2d", "miou_3d"):
                if c[key] is None:
                    missing.append(f"seed {s} / {row['key']} / {key}")
        row["mean"] = {k: _mean([row["seeds"][s][k] for s in seeds]) for k, _ in METRICS}
    counts = {c["views"][k] for r in rows for c in r["seeds"].values() for k in c["views"] if c["views"][k] is not None}
    resolutions = {tuple(c["resolution"][d]) for r in rows for c in r["seeds"].values() for d in ("2d", "3d")
                   if c["resolution"][d]}
    same_views = len(counts) == 1 and len(resolutions) <= 1
    same_clicks = all(len({c["clicks"][d] for r in rows for d in ("2d", "3d")
                           for c in [r["seeds"][s]] if c["clicks"][d] is not None}) <= 1 for s in seeds)
    return dict(scene=scene, seeds=[int(s) for s in seeds], sizes=sizes, test_views=counts.pop() if same_views else None,
                same_test_views=same_views, same_clicks=same_clicks, rows=rows, missing=missing)


# ---------------------------------------------------------------------------------- Markdown

def _fmt(v, signed=False):
    return "n/a" if v is None else (f"{v:+.2f}" if signed else f"{v:.2f}")


def _with_seeds(row, key, seeds, signed=False):
    per = ", ".join(_fmt(row["seeds"][s][key], signed) for s in seeds)
    return f"{_fmt(row['mean'][key], signed)} ({per})" if len(seeds) > 1 else _fmt(row["mean"][key], signed)


def markdown(table):
    sz, seeds = table["sizes"], [str(s) for s in table["seeds"]]
    views = table["test_views"]
    lines = [f"# Shaping ablation: {table['scene']}", "",
             f"Network {sz['netdepth']} x {sz['netwidth']}, {sz['N_samples']} + {sz['N_importance']} samples; plain "
             f"NeRF {sz['plain_iters']} steps at {sz['plain_rays']} rays; every shaping run {sz['shape_iters']} "
             f"steps from its last checkpoint (the paper's command, 64 rays a step, with the row's flags); seeds "
             f"{', '.join(seeds)}. Test PSNR over all {views if views is not None else '(differing!)'} test views; "
             "mIoU from one click per class (the same clicks for every row of a seed), 2D and 3D propagation "
             "(--mean_gradient) on the same test views. Each cell: the mean over the seeds (each seed's value).", "",
             "| row | flags added to the paper's command | test PSNR (dB) | PSNR vs plain (dB) | 2D mIoU (%) | "
             "3D mIoU (%) | shaping starts at lr |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in table["rows"]:
        flags = "(no shaping)" if row["flags"] is None else (f"`{' '.join(row['flags'])}`" if row["flags"] else "none")
        lrs = [row["seeds"][s]["initial_lr"] for s in seeds]
        lr = "" if row["flags"] is None else ("n/a" if lrs[0] is None else f"{lrs[0]:.3g}")
        lines.append(f"| {row['title']} | {flags} | {_with_seeds(row, 'psnr', seeds)} | "
                     f"{_with_seeds(row, 'delta_psnr', seeds, True)} | {_with_seeds(row, 'miou_2d', seeds)} | "
                     f"{_with_seeds(row, 'miou_3d', seeds)} | {lr} |")
    lines += ["", "What each row isolates:", ""]
    lines += [f"- **{row['title']}** (`{row['key']}`): {row['what']}." for row in table["rows"]]
    lines += ["", "Every stage's command: commands.sh; the numbers: ablation.json.", ""]
    if not table["same_test_views"] or not table["same_clicks"]:
        lines += ["**Warning**: the cells were not all scored on the same test views and clicks (ablation.json).", ""]
    if table["missing"]:
        lines += [f"Missing ({len(table['missing'])}, stages not finished): " + "; ".join(table["missing"][:20]), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the plot

PANELS = (("psnr", "test PSNR (dB)"), ("miou_2d", "2D mIoU, one click (%)"), ("miou_3d", "3D mIoU, one click (%)"))
PANEL_W, PANEL_H, LEFT, TOP, BOTTOM = 460, 400, 60, 40, 130
FONT = cv2.FONT_HERSHEY_SIMPLEX
BAR, DOT = (70, 130, 180), (20, 20, 20)


def _text(img, text, org, scale=0.42, angle=False):
    if not angle:
        cv2.putText(img, text, org, FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
        return
    (w, h), _ = cv2.getTextSize(text, FONT, scale, 1)
    patch = np.full((h + 6, w + 4, 3), 255, np.uint8)
    cv2.putText(patch, text, (2, h + 2), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    patch = np.rot90(patch)                        # reads bottom to top
    x, y = org
    ph, pw = patch.shape[:2]
    y0, x0 = max(0, y), max(0, x - pw // 2)
    region = img[y0:y0 + ph, x0:x0 + pw]
    region[...] = np.minimum(region, patch[:region.shape[0], :region.shape[1]])


def _panel(table, key, title):
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    rows, seeds = table["rows"], [str(s) for s in table["seeds"]]
    values = [v for r in rows for v in [r["mean"][key]] + [r["seeds"][s][key] for s in seeds] if v is not None]
    top = max(values + [1.0])
    y_max = 10 ** math.floor(math.log10(top)) * math.ceil(top / 10 ** math.floor(math.log10(top)) + 0.01)
    # PSNR differences of a few dB on ~35 dB: the axis starts below the lowest value; mIoU at 0
    y_min = max(0.0, 5.0 * math.floor((min(values) - 2.0) / 5.0)) if key == "psnr" and values else 0.0
    pw, ph = PANEL_W - LEFT - 20, PANEL_H - TOP - BOTTOM

    def py(v):
        return TOP + ph - int(round(ph * (max(v, y_min) - y_min) / (y_max - y_min)))

    _text(img, title, (LEFT, 24), 0.5)
    cv2.rectangle(img, (LEFT, TOP), (LEFT + pw, TOP + ph), (0, 0, 0), 1)
    for k in range(6):
        y = TOP + ph - int(round(ph * k / 5))
        cv2.line(img, (LEFT - 4, y), (LEFT, y), (0, 0, 0), 1)
        _text(img, f"{y_min + (y_max - y_min) * k / 5:.3g}", (6, y + 4), 0.38)
    slot = pw / max(1, len(rows))
    for i, r in enumerate(rows):
        cx = int(LEFT + slot * (i + 0.5))
        mean = r["mean"][key]
        if mean is not None:
            cv2.rectangle(img, (int(cx - slot * 0.35), py(mean)), (int(cx + slot * 0.35), TOP + ph - 1), BAR, -1)
            (w, _), _ = cv2.getTextSize(f"{mean:.1f}", FONT, 0.34, 1)
            _text(img, f"{mean:.1f}", (cx - w // 2, py(mean) - 5), 0.34)
        for j, s in enumerate(seeds):
            v = r["seeds"][s][key]
            if v is not None:
                x = int(round(cx + (j - (len(seeds) - 1) / 2) * 6))
                cv2.circle(img, (x, py(v)), 3, DOT, -1, cv2.LINE_AA)
        _text(img, r["key"], (cx, TOP + ph + 6), 0.38, angle=True)
    return img


def plot_image(table):
    """The figure [H, W, 3] uint8 RGB drawn with OpenCV: one panel per metric."""
    return np.concatenate([_panel(table, k, t) for k, t in PANELS], axis=1)


def _plot_matplotlib(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, seeds = table["rows"], [str(s) for s in table["seeds"]]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4.5))
    for ax, (key, title) in zip(axes, PANELS):
        xs = np.arange(len(rows))
        ax.bar(xs, [r["mean"][key] if r["mean"][key] is not None else 0 for r in rows], color="#4682b4")
        for j, s in enumerate(seeds):
            pts = [(x + (j - (len(seeds) - 1) / 2) * 0.12, r["seeds"][s][key]) for x, r in zip(xs, rows)
                   if r["seeds"][s][key] is not None]
            if pts:
                ax.plot(*zip(*pts), "k.", ms=6)
        ax.set_xticks(xs, [r["key"] for r in rows], rotation=60, ha="right")
        ax.set_title(title)
    fig.suptitle(f"Shaping ablation: {table['scene']} (bars: mean; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out_dir, table):
    """ablation.json, ablation.md and ablation.png in out_dir; returns the Markdown."""
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, "ablation.json"), table)
    text = markdown(table)
    write_text_atomic(os.path.join(out_dir, "ablation.md"), text)
    path = os.path.join(out_dir, "ablation.png")
    try:
        _plot_matplotlib(table, path)
    except ImportError:                    # matplotlib is not a requirement
        write_png(path, plot_image(table))
    print(text, flush=True)
    return text
