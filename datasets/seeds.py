"""The given labels ("seeds") of label propagation and label-supervised shaping: the original's
label sparsification chain (sparse views, simulated clicks and regions).

Label maps here are [N, H, W] integer maps of the N training frames with 0 = void/unlabelled
(the loader's `semantic` or `instance`); evaluation labels are these minus 1.

Differences from the original (Semantic-NeRF's `replica_datasets.py`), all deliberate:
- randomness comes from an explicit numpy Generator `rng` (the original is unseeded);
- clicks are drawn only on the frames that keep labels (mask_ids True); the original clicked
  every training frame and zeroed the others when loading, which gives the same seeds;
- seeds are saved to and loaded from `seed_dir` (the run's folder), never into the dataset;
  a folder is written under a temporary name and renamed, so a half-written one never looks
  complete; only the labelled frames' PNGs are written (the others are all void);
- the even frame sampling drops the original's `K > N/2` assertion, which fires through
  rounding (e.g. 7 frames at ratio 0.51); the formula itself works for any count, and a ratio
  that drops every frame is refused with a message instead of a ZeroDivisionError.
"""
import json
import os
import shutil
import sys
from dataclasses import dataclass, field

import cv2
import numpy as np

from utils.colormaps import label_colormap
from utils.errors import InputError
from utils.image_io import read_label_png, write_png
from utils.metrics import to_jsonable

_KERNEL = np.ones((5, 5), np.uint8)


@dataclass
class Seeds:
    mask_ids: np.ndarray          # bool [N]: training frames that keep labels
    labels: np.ndarray            # int64 [N, H, W]: 0 = unlabelled; all 0 where mask_ids is False
    folder_name: str              # e.g. 'partial_perc_0.0', 'user_click_3', 'dense'
    info: dict = field(default_factory=dict)   # how they were made (also written as seeds.json)


# ----------------------------------------------------------------------------- frame sampling

def _even_indices(total, count):
    """`count` indices spread over range(total): q*i + min(i, r) with (q, r) = divmod(total, count)."""
    q, r = divmod(total, count)
    return [q * i + min(i, r) for i in range(count)]


def sample_label_maps(num_train, sparse_ratio, random_sample, rng):
    """bool mask_ids [N]: K = int(N * sparse_ratio) frames lose their labels. With (q, r) =
    divmod(N, n): n = K evenly spaced frames q*i + min(i, r) are dropped when the ratio is at most
    0.5, else n = N - K such frames are kept; random_sample drops K frames drawn by `rng`."""
    num_train = int(num_train)
    ratio = float(sparse_ratio)
    if not 0.0 <= ratio <= 1.0:
        raise InputError(f"--sparse_ratio {sparse_ratio}: expected a fraction in [0, 1] of training "
                         "frames whose labels are dropped")
    k = int(num_train * ratio)              # frames dropped (Python float product, as the original)
    keep = num_train - k
    mask = np.ones(num_train, dtype=bool)
    if k == 0:
        return mask
    if keep == 0:
        raise InputError(f"--sparse_ratio {sparse_ratio} drops the labels of all {num_train} training "
                         "frames; use a smaller ratio (0.995 keeps one frame out of 180)")
    if random_sample:
        mask[:k] = False
        rng.shuffle(mask)
    elif ratio <= 0.5:
        mask[_even_indices(num_train, k)] = False
    else:
        mask[:] = False
        mask[_even_indices(num_train, keep)] = True
    return mask


def sample_specific_labels(frame_ids, train_ids):
    """bool mask_ids with True at the training index of each given global frame id."""
    train_ids = [int(t) for t in train_ids]
    mask = np.zeros(len(train_ids), dtype=bool)
    if len(frame_ids) == 1 and frame_ids[0] is None:   # the original's "no supervision" case
        return mask
    position = {t: i for i, t in enumerate(train_ids)}
    for f in frame_ids:
        if int(f) not in position:
            shown = ", ".join(map(str, train_ids[:6])) + (", ..." if len(train_ids) > 6 else "")
            raise InputError(f"--label_map_ids: frame {f} is not a training frame "
                             f"(training frames are {shown})")
        mask[position[int(f)]] = True
    return mask


# ----------------------------------------------------------------------------- clicks

def _class_pixels(frame):
    """{class: flat pixel indices} for the valid classes (!= 0) of one frame, from one sort."""
    flat = frame.reshape(-1)
    order = np.argsort(flat, kind="stable")
    classes, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
    return {int(c): order[s:s + n] for c, s, n in zip(classes, starts, counts) if c != 0}


def _frames(labels, mask_ids):
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected label maps [N, H, W], got shape {labels.shape}")
    if mask_ids is None:
        return labels, np.ones(len(labels), dtype=bool)
    mask_ids = np.asarray(mask_ids).astype(bool)
    if mask_ids.shape != (len(labels),):
        raise ValueError(f"mask_ids has shape {mask_ids.shape}, expected ({len(labels)},)")
    return labels, mask_ids


def _grow_region(class_mask, seed, target, rng):
    """The region of a class (perc > 0), grown until it covers `target` pixels: the seed mask is
    dilated by a 5x5 box again and again (the dilated mask itself, not its intersection with the
    class, exactly as the original), and the region is its intersection with the class; when a
    dilation adds no class pixel, a new random seed is placed in the uncovered part of the class.

    Works on the class's bounding box: iterated box dilations of seeds inside a rectangle,
    cropped to it, equal the crop of the full-image result, and only the crop meets the class."""
    ys, xs = np.nonzero(class_mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    cls = class_mask[y0:y1, x0:x1]
    grown = np.zeros(cls.shape, np.uint8)
    grown[seed[0] - y0, seed[1] - x0] = 1
    region = grown.astype(bool)
    covered = 1
    while covered < target:
        before = covered
        grown = cv2.dilate(grown, _KERNEL)
        region = grown.astype(bool) & cls
        covered = int(region.sum())
        if covered == before:
            uy, ux = np.nonzero(cls & ~region)
            j = rng.integers(len(uy))
            grown[uy[j], ux[j]] = 1
    out = np.zeros_like(class_mask)
    out[y0:y1, x0:x1] = region
    return out


def simulate_user_click_partial(labels, perc, rng, mask_ids=None):
    """perc = 0: one uniformly random pixel per valid class per labelled frame; perc > 0: a grown
    region covering at least int(perc/100 * |class|) pixels of each class. Everything else is 0,
    and frames with mask_ids False are all 0."""
    perc = float(perc)
    if not 0.0 <= perc <= 100.0:
        raise InputError(f"--partial_perc {perc}: expected a percentage in [0, 100]")
    labels, mask_ids = _frames(labels, mask_ids)
    p = perc / 100.0
    out = np.zeros_like(labels)
    for i in np.flatnonzero(mask_ids):
        frame = labels[i]
        flat_out = out[i].reshape(-1)
        for c, pix in _class_pixels(frame).items():
            seed = int(pix[rng.integers(len(pix))])
            if perc == 0:
                flat_out[seed] = c
                continue
            region = _grow_region(frame == c, divmod(seed, frame.shape[1]), int(p * len(pix)), rng)
            out[i][region] = c
    return out


def simulate_user_clicks(labels, num_click, rng, mask_ids=None):
    """`num_click` distinct random pixels per valid class per labelled frame (all of a class's
    pixels if it has fewer)."""
    num_click = int(num_click)
    if num_click < 1:
        raise InputError(f"--num_click {num_click}: expected at least 1 click per class")
    labels, mask_ids = _frames(labels, mask_ids)
    out = np.zeros_like(labels)
    for i in np.flatnonzero(mask_ids):
        flat_out = out[i].reshape(-1)
        for c, pix in _class_pixels(labels[i]).items():
            chosen = pix if len(pix) <= num_click else pix[rng.choice(len(pix), num_click, replace=False)]
            flat_out[chosen] = c
    return out


# ----------------------------------------------------------------------------- checks

def seed_classes(seeds, eval_space=False):
    """Sorted class ids that have at least one labelled pixel (void 0 excluded). `eval_space`
    gives them as evaluation labels (minus 1), the label space of the propagation outputs."""
    labels = seeds.labels[seeds.mask_ids]
    ids = np.unique(labels)
    ids = ids[ids > 0].astype(np.int64)
    return ids - 1 if eval_space else ids


def frame_advice(flags):
    """How to label other training frames under the flags that made the seeds (`_flags`): the click
    branches ignore --label_map_ids (as the original), so the advice differs per branch."""
    flags = flags or {}
    if flags.get("label_propagation") or flags.get("user_click"):
        if not flags.get("sparse_views"):
            return "the clicks go to every training frame, so the scene's label maps hold only void"
        return ("the clicked frames are those --sparse_ratio keeps (--label_map_ids does not apply to clicks): "
                "choose a smaller --sparse_ratio, or --random_sample with another --seed")
    if flags.get("sparse_views") and flags.get("label_map_ids"):
        return "choose other frames with --label_map_ids"
    if flags.get("sparse_views"):
        return "choose a smaller --sparse_ratio, or the frames with --label_map_ids"
    return "every training frame is labelled, so the scene's label maps hold only void"


def check_seeds(seeds, scene_classes=None):
    """InputError when the seeds label nothing, or label a class that does not occur in the scene
    (`scene_classes`: the ids, 0 = void, that occur in the scene's label maps)."""
    where = f"seeds '{seeds.folder_name}'"
    frames = np.flatnonzero(seeds.mask_ids)
    if len(frames) == 0:
        raise InputError(f"{where}: no training frame keeps labels; {frame_advice(seeds.info.get('flags'))}")
    classes = seed_classes(seeds)
    if len(classes) == 0:
        raise InputError(f"{where}: the labelled training frames {frames.tolist()[:10]} contain no "
                         f"labelled pixel (only void); {frame_advice(seeds.info.get('flags'))}")
    if scene_classes is not None:
        known = set(int(c) for c in np.asarray(scene_classes).reshape(-1))
        absent = [int(c) for c in classes if int(c) not in known]
        if absent:
            raise InputError(f"{where}: label ids {absent} do not occur in this scene (its classes are "
                             f"{sorted(known - {0})}); the seeds were made for another scene or label set")
    return classes


# ----------------------------------------------------------------------------- save / load

def _flags(opts):
    """The flags that made the seeds (recorded in seeds.json under the original's names)."""
    return dict(sparse_views=opts.sparse_views, sparse_ratio=opts.sparse_ratio,
                label_map_ids=list(opts.label_map_ids), random_sample=opts.random_sample,
                label_propagation=opts.label_propagation, partial_perc=opts.partial_perc,
                user_click=opts.user_click, num_click=opts.num_click, test_instance=opts.instance)


def save_seeds(seeds, seed_dir, colour_map=None):
    """Write `<seed_dir>/<folder_name>/`: semantic_class_<i>.png (label ids, uint8 unless larger)
    and vis_sem_class_<i>.png for each labelled frame i, mask_ids.npy and seeds.json. Written to
    a temporary folder first, then renamed into place."""
    final = os.path.join(seed_dir, seeds.folder_name)
    tmp = os.path.join(seed_dir, f".{seeds.folder_name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    top = int(seeds.labels.max()) if seeds.labels.size else 0
    if colour_map is None or len(colour_map) <= top:
        colour_map = label_colormap(max(256, top + 1))
    colour_map = np.asarray(colour_map, dtype=np.uint8)
    dtype = np.uint8 if top <= 255 else np.uint16
    for i in np.flatnonzero(seeds.mask_ids):
        write_png(os.path.join(tmp, f"semantic_class_{i}.png"), seeds.labels[i].astype(dtype))
        write_png(os.path.join(tmp, f"vis_sem_class_{i}.png"), colour_map[seeds.labels[i]])
    np.save(os.path.join(tmp, "mask_ids.npy"), seeds.mask_ids.astype(bool))
    with open(os.path.join(tmp, "seeds.json"), "w") as f:
        json.dump(to_jsonable(seeds.info), f, indent=1, allow_nan=False)
    old = os.path.join(seed_dir, f".{seeds.folder_name}.old{os.getpid()}")
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _missing(path, what):
    return InputError(f"{what} {path} is missing: --load_saved reads seeds saved by an earlier run; "
                      "run the same command once without --load_saved and with --visualise_save "
                      "(and the same --seed_dir/--save_dir) to write them")


def read_saved_mask(folder, num_train):
    path = os.path.join(folder, "mask_ids.npy")
    if not os.path.isfile(path):
        raise _missing(path, "saved seed file")
    try:
        mask = np.load(path).astype(bool).reshape(-1)
    except (ValueError, OSError) as exc:
        raise InputError(f"saved seed file {path} is not a readable .npy array ({exc})") from None
    if len(mask) != num_train:
        raise InputError(f"saved seed file {path} is for {len(mask)} training frames, this dataset has "
                         f"{num_train}; write the seeds again with --visualise_save")
    return mask


def load_seeds(folder, mask_ids, shape):
    """Labels [N, H, W] int64 read from `folder` for the frames with mask_ids True (0 elsewhere)."""
    if not os.path.isdir(folder):
        raise _missing(folder, "seed folder")
    saved = read_saved_mask(folder, len(mask_ids))
    lacking = np.flatnonzero(mask_ids & ~saved).tolist()
    if lacking:
        raise InputError(f"saved seeds in {folder} have no labels for training frames {lacking[:10]} that this "
                         "run labels (different --sparse_views/--sparse_ratio?); rerun the saving command "
                         "with the same sparse flags and --visualise_save")
    labels = np.zeros(shape, dtype=np.int64)
    for i in np.flatnonzero(mask_ids):
        path = os.path.join(folder, f"semantic_class_{i}.png")
        if not os.path.isfile(path):
            raise _missing(path, "saved seed file")
        img = read_label_png(path)
        if img.shape != tuple(shape[1:]):
            raise InputError(f"saved seed file {path} is {img.shape[1]}x{img.shape[0]} but the training "
                             f"frames are {shape[2]}x{shape[1]}; write the seeds again at this resolution")
        labels[i] = img
    return labels


# ----------------------------------------------------------------------------- main.py's chain

def _frame_mask(opts, n, rng, folder):
    """mask_ids for the click branches: sample_label_maps when --sparse_views, else all frames.
    A random sample cannot be recomputed, so --load_saved reads it back (as the original)."""
    if not opts.sparse_views:
        return np.ones(n, dtype=bool)
    if opts.load_saved and opts.random_sample:
        return read_saved_mask(folder, n)
    return sample_label_maps(n, opts.sparse_ratio, opts.random_sample, rng)


def seed_folder_name(opts):
    if opts.label_propagation:
        name = f"partial_perc_{float(opts.partial_perc) / 100.0}"     # the original's p = perc/100
    elif opts.user_click:
        name = f"user_click_{int(opts.num_click)}"
    elif opts.sparse_views:
        ids = list(opts.label_map_ids)
        if ids:
            name = "label_maps_" + "_".join("none" if x is None else str(x) for x in ids)
        else:
            name = f"sparse_views_sr{float(opts.sparse_ratio)}" + ("_random" if opts.random_sample else "")
    else:
        name = "dense"
    return ("instance_" if opts.instance else "") + name


def make_seeds(labels_train, opts, rng, train_ids=None, colour_map=None):
    """The labels propagation starts from, in the original main.py's branch order:
    --label_propagation (partial clicks) > --user_click > --sparse_views (--label_map_ids or
    sample_label_maps, dense maps on the kept frames) > dense labels on every frame.

    `labels_train` [N, H, W] (0 = void; instance maps with --test_instance); `opts` a
    utils.options.SeedOptions; `rng` a numpy Generator. With --visualise_save the seeds are written
    to `opts.seed_dir`; with --load_saved the click seeds are read back from there.
    """
    if rng is None:
        rng = np.random.default_rng()
    seed_dir = opts.seed_dir
    if not seed_dir:
        raise ValueError("make_seeds needs opts.seed_dir (default <save_dir>/seeds)")
    labels = np.asarray(labels_train.detach().cpu() if hasattr(labels_train, "detach") else labels_train)
    labels = labels.astype(np.int64, copy=False)
    n = len(labels)
    name = seed_folder_name(opts)
    folder = os.path.join(seed_dir, name)
    load = bool(opts.load_saved)
    clicks = opts.label_propagation or opts.user_click

    if clicks:
        mask = _frame_mask(opts, n, rng, folder)
        if load:
            out = load_seeds(folder, mask, labels.shape)
            # hand-made seeds may differ from the GT on purpose, so this only warns
            wrong = int(((out > 0) & (out != labels)).sum())
            if wrong:
                print(f"warning: {wrong} labelled pixels of the seeds in {folder} differ from this "
                      "dataset's labels (seeds made for another scene?)", file=sys.stderr)
        elif opts.label_propagation:
            out = simulate_user_click_partial(labels, opts.partial_perc, rng, mask)
        else:
            out = simulate_user_clicks(labels, opts.num_click, rng, mask)
    else:
        if opts.sparse_views:
            ids = list(opts.label_map_ids)
            if ids:
                if train_ids is None:
                    raise ValueError("make_seeds needs train_ids with --label_map_ids")
                mask = sample_specific_labels(ids, train_ids)
            else:
                mask = _frame_mask(opts, n, rng, folder)
        else:
            mask = np.ones(n, dtype=bool)
        out = np.where(mask[:, None, None], labels, 0)

    info = dict(folder_name=name, flags=_flags(opts), rng_seed=opts.rng_seed,
                num_train=n, height=int(labels.shape[1]), width=int(labels.shape[2]),
                labelled_frames=np.flatnonzero(mask).tolist(),
                train_ids=None if train_ids is None else [int(t) for t in train_ids],
                loaded_from=os.path.abspath(folder) if (load and clicks) else None)
    seeds = Seeds(mask_ids=mask, labels=out, folder_name=name, info=info)
    info["classes"] = seed_classes(seeds).tolist()
    saved_json = os.path.join(folder, "seeds.json")
    if load and clicks and os.path.isfile(saved_json):
        try:
            with open(saved_json) as f:
                info["saved_info"] = json.load(f)  # e.g. the rng seed the saved clicks were drawn with
        except (OSError, ValueError):
            info["saved_info"] = None              # descriptive only: the PNGs are what matter
    if opts.visualise_save and not load:
        save_seeds(seeds, seed_dir, colour_map)
    return seeds
