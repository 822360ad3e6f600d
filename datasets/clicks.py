"""Labels from the user: a clicks file (`--clicks FILE`) and painted scribbles (`--scribbles DIR`),
turned into the same `datasets.seeds.Seeds` the simulated clicks make, so every consumer of seeds
(the sparse rules, dense selection, the aggregator, the Semantic-NeRF baseline) runs on them.

Clicks file (YAML, or JSON when it ends in .json): a list of clicks, or a mapping with `clicks`
and an optional `classes` list (datasets/label_space.py):

    classes: [{name: wall, id: 93, colour: [120, 120, 120]}, {name: chair, id: 20}]
    clicks:
      - {frame: images/frame_00000.png, x: 41, y: 17, label: chair}
      - {frame: 5, x: 3.5, y: 40, label: 93}

- `frame`: the frame's file as the capture lists it, its base name or stem, or its global frame id
  (an integer: the position in the loader's frame order); it must be a training frame;
- `x`, `y`: column and row in the frame's ORIGINAL image (the file the user clicked on, before
  undistortion and the resize to the config size), 0 <= x < width, 0 <= y < height; pixel (i, j)
  covers [i, i + 1) x [j, j + 1). The click labels the scene pixel that contains the pixel's centre
  after the loader's mapping (datasets/sources.py: undistortion, then the resize);
- `label`: a class name or a raw class id.
Two clicks on one scene pixel with different labels are refused; with the same label they count once.

Scribbles: `DIR/<frame>.png` named like the frames (their stem, e.g. frame_00000.png), at the
original image size, single-channel raw class ids, 0 = unlabelled; an optional `DIR/classes.yaml`
(or .json) holds a `classes` list. Several painted pixels that fall in one scene pixel give it their
most frequent class (ties: the smaller id). Clicks and scribbles may be combined; a click that
disagrees with a scribbled scene pixel is refused.

Classes: on a scene with ground-truth labels, labels are the scene's raw ids (names from the
file's classes with ids, or the scene's names); on a scene without labels the file's `classes`
list is the label space (ids 1, 2, ... in list order unless given); without a list, names become
classes 1, 2, ... in order of first use, or integer labels are the ids. Every error is one line
naming the file and the entry (its index and content).
"""
import json
import os
from dataclasses import dataclass, replace
from typing import List, Optional

import numpy as np
import yaml

from datasets.frames import read_png
from datasets.label_space import LabelSpace, palette_colour, parse_classes, resolve_label, scene_space
from datasets.seeds import Seeds
from datasets.sources import FrameSource
from utils.errors import InputError

CLICK_KEYS = ("frame", "x", "y", "label")


@dataclass(frozen=True)
class Click:
    index: int            # position in the file
    frame: object         # file name or global frame id, as written
    x: float
    y: float
    label: object         # class name or raw id, as written

    def where(self, path):
        return f"{path}: click {self.index} (frame={self.frame!r}, x={self.x}, y={self.y}, label={self.label!r})"


@dataclass(frozen=True)
class ClickFile:
    path: str
    clicks: List[Click]
    classes: Optional[LabelSpace] = None


def _load_yaml_or_json(path):
    if not os.path.isfile(path):
        raise InputError(f"{path}: clicks file missing")
    try:
        with open(path) as f:
            text = f.read()
        return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(f"{path}: not readable {'JSON' if path.endswith('.json') else 'YAML'} ({first})") from None


def read_clicks(path):
    """Parse and check a clicks file's own content (the scene is checked by `seeds_from_clicks`)."""
    data = _load_yaml_or_json(path)
    classes = None
    if isinstance(data, dict):
        unknown = set(data) - {"clicks", "classes"}
        if unknown:
            raise InputError(f"{path}: unknown top-level key(s) {sorted(unknown)} (expected clicks, classes)")
        if "classes" in data:
            classes = parse_classes(data["classes"], path)
        data = data.get("clicks")
    if data is None or data == []:
        raise InputError(f"{path}: no clicks (expected a list of {{frame, x, y, label}})")
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of clicks {{frame, x, y, label}}, found {type(data).__name__}")
    clicks = []
    for k, e in enumerate(data):
        at = f"{path}: click {k} {e!r}"
        if not isinstance(e, dict):
            raise InputError(f"{at}: expected a mapping {{frame, x, y, label}}")
        missing = [key for key in CLICK_KEYS if key not in e]
        if missing:
            raise InputError(f"{at}: missing {', '.join(repr(m) for m in missing)}")
        unknown = set(e) - set(CLICK_KEYS)
        if unknown:
            raise InputError(f"{at}: unknown key(s) {sorted(unknown)}")
        for key in ("x", "y"):
            v = e[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise InputError(f"{at}: {key} {v!r}: expected a pixel coordinate (a number)")
        if isinstance(e["frame"], bool) or not isinstance(e["frame"], (int, str)):
            raise InputError(f"{at}: frame {e['frame']!r}: expected a file name or a frame number")
        if isinstance(e["label"], bool) or not isinstance(e["label"], (int, str)):
            raise InputError(f"{at}: label {e['label']!r}: expected a class name or an integer class id")
        clicks.append(Click(k, e["frame"], float(e["x"]), float(e["y"]), e["label"]))
    return ClickFile(path, clicks, classes)


# ----------------------------------------------------------------------------- frames

class FrameIndex:
    """Finds a frame by file name or id and gives its FrameSource and training position."""

    def __init__(self, scene):
        self.scene = scene
        self.train_pos = {int(g): k for k, g in enumerate(scene.train.ids)}
        self.names = {}
        for g, src in enumerate(scene.frames or []):
            for key in (src.file, os.path.normpath(src.file), os.path.basename(src.file), src.name):
                self.names.setdefault(key, g)

    def count(self):
        return len(self.scene.frames) if self.scene.frames else None

    def find(self, frame, where):
        """Global frame id of `frame` (a name or an id); InputError naming `where` otherwise."""
        if isinstance(frame, int):
            n = self.count()
            if frame < 0 or (n is not None and frame >= n):
                raise InputError(f"{where}: no frame {frame} (frame ids run 0..{(n or 1) - 1})")
            return frame
        hit = self.names.get(frame, self.names.get(os.path.normpath(frame)))
        if hit is None:
            known = ", ".join(src.file for src in (self.scene.frames or [])[:3])
            raise InputError(f"{where}: unknown frame '{frame}' (frames are named like {known or 'nothing'}; "
                             "or give the frame id)")
        return hit

    def train_position(self, gid, where):
        if gid not in self.train_pos:
            ids = list(self.train_pos)
            shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
            raise InputError(f"{where}: frame {gid} is not a training frame; labels go on training frames "
                             f"(ids {shown})")
        return self.train_pos[gid]

    def source(self, gid):
        """The frame's FrameSource; a loader without one: the scene image itself."""
        if self.scene.frames:
            return self.scene.frames[gid]
        s = self.scene
        i = s.intrinsics
        return FrameSource(str(gid), str(gid), "", s.height, s.width, (i.fx, i.fy, i.cx, i.cy))


# ----------------------------------------------------------------------------- label space

def user_space(scene, declared, labels, where):
    """The LabelSpace user labels resolve in (module docstring, 'Classes')."""
    if scene.has_labels:
        space = scene_space(scene)
        if declared is None:
            return space, space.by_name()
        names = dict(space.by_name())
        for raw, name in declared.names.items():
            if declared.explicit_ids:
                if raw not in space.names:
                    raise InputError(f"{where}: class '{name}' (id {raw}) does not occur in this scene's labels "
                                     f"(ids {sorted(space.names)[:12]})")
                names[name] = raw
            elif name not in names:
                raise InputError(f"{where}: class '{name}' is not a class of this scene (its classes: "
                                 f"{', '.join(sorted(space.by_name())[:12])}); give the classes their ids")
        return space, names
    if declared is not None:
        return declared, declared.by_name()
    strings = [lab for lab in labels if isinstance(lab, str)]
    ints = [lab for lab in labels if not isinstance(lab, str)]
    if strings and ints:
        raise InputError(f"{where}: labels mix class names and ids without a 'classes' list; use one or list "
                         "the classes")
    if strings:
        order = list(dict.fromkeys(strings))
        names = {k + 1: n for k, n in enumerate(order)}
    else:
        names = {int(i): str(int(i)) for i in sorted(set(ints)) if int(i) > 0}
        bad = [i for i in ints if int(i) < 1]
        if bad:
            raise InputError(f"{where}: class id {bad[0]}: ids start at 1 (0 is unlabelled)")
    space = LabelSpace(names, {r: palette_colour(r) for r in names}, explicit_ids=not strings)
    return space, space.by_name()


def apply_space(scene, space):
    """The scene with `space` as its label space where it has no ground truth (names and colours)."""
    if space.from_scene:
        return scene if scene.class_names else replace(scene, class_names=dict(space.names))
    return replace(scene, semantic_classes=space.ids, class_names=dict(space.names), colour_map=space.colour_map())


# ----------------------------------------------------------------------------- seeds

def click_pixels(clicks, scene, space, names, index=None):
    """{(train position, v, u): (raw id, click)} of the clicks; InputError on a bad click."""
    index = index or FrameIndex(scene)
    hw = (scene.height, scene.width)
    out = {}
    for c in clicks.clicks:
        where = c.where(clicks.path)
        gid = index.find(c.frame, where)
        pos = index.train_position(gid, where)
        src = index.source(gid)
        if not (0 <= c.x < src.width and 0 <= c.y < src.height):
            raise InputError(f"{where}: pixel outside the {src.width}x{src.height} image {src.file} (x in "
                             f"[0, {src.width}), y in [0, {src.height}), the original image's pixels)")
        u, v = src.scene_pixels(np.floor(c.x), np.floor(c.y), hw)
        u, v = int(u), int(v)
        if not (0 <= u < hw[1] and 0 <= v < hw[0]):
            raise InputError(f"{where}: the pixel falls outside the undistorted image")
        raw = resolve_label(c.label, space, where, names)
        prev = out.get((pos, v, u))
        if prev is not None and prev[0] != raw:
            raise InputError(f"{where}: conflicts with {prev[1].where(clicks.path).split(': ', 1)[1]}: both fall "
                             f"on scene pixel (u={u}, v={v}) of frame {gid} with different labels")
        out[(pos, v, u)] = (raw, c)
    return out


def seeds_from_clicks(clicks, scene, space=None, names=None, scribbled=None):
    """Seeds of a ClickFile on `scene`: labels [N_train, H, W] (scene label indices, 0 = unlabelled)
    with a 1 at each clicked pixel's class, mask_ids = the clicked training frames. `space`/`names`
    default to user_space(scene, clicks.classes, ...); `scribbled` (labels of scribbles) is merged."""
    if space is None:
        space, names = user_space(scene, clicks.classes, [c.label for c in clicks.clicks], clicks.path)
    pixels = click_pixels(clicks, scene, space, names)
    labels = np.zeros((len(scene.train.ids), scene.height, scene.width), np.int64) if scribbled is None \
        else scribbled.copy()
    for (pos, v, u), (raw, c) in pixels.items():
        k = space.index(raw)
        if labels[pos, v, u] not in (0, k):
            raise InputError(f"{c.where(clicks.path)}: disagrees with the scribble on that pixel "
                             f"({space.names[int(space.ids[labels[pos, v, u]])]})")
        labels[pos, v, u] = k
    mask = labels.reshape(len(labels), -1).max(1) > 0
    info = dict(source="clicks", clicks_file=os.path.abspath(clicks.path), clicks=len(clicks.clicks),
                labelled_frames=np.flatnonzero(mask).tolist(),
                classes={int(r): n for r, n in space.names.items()},
                pixels=[dict(click=c.index, frame=int(scene.train.ids[pos]), u=u, v=v, raw_id=int(raw))
                        for (pos, v, u), (raw, c) in pixels.items()])
    name = "clicks_" + os.path.splitext(os.path.basename(clicks.path))[0]
    return Seeds(mask_ids=mask, labels=labels, folder_name=name, info=info)


def read_scribbles(folder):
    """{frame name (file stem): (path, label image)} and the folder's optional classes."""
    if not os.path.isdir(folder):
        raise InputError(f"--scribbles {folder}: folder missing (painted label PNGs named like the frames)")
    classes = None
    for name in ("classes.yaml", "classes.yml", "classes.json"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            data = _load_yaml_or_json(p)
            classes = parse_classes(data.get("classes") if isinstance(data, dict) else data, p)
            break
    images = {}
    for f in sorted(os.listdir(folder)):
        if f.lower().endswith(".png"):
            p = os.path.join(folder, f)
            img = read_png(p, "scribble")
            if img.ndim != 2:
                raise InputError(f"{p}: a {img.shape[2]}-channel image; expected single-channel class ids "
                                 "(0 = unlabelled)")
            images[os.path.splitext(f)[0]] = (p, img)
    if not images:
        raise InputError(f"--scribbles {folder}: no .png files")
    return images, classes


def scribble_labels(images, scene, space, names, index=None):
    """labels [N_train, H, W] (scene indices) from the scribble images (module docstring)."""
    index = index or FrameIndex(scene)
    hw = (scene.height, scene.width)
    labels = np.zeros((len(scene.train.ids), hw[0], hw[1]), np.int64)
    painted = 0
    for stem, (path, img) in images.items():
        gid = index.find(stem, path)
        pos = index.train_position(gid, path)
        src = index.source(gid)
        if img.shape != (src.height, src.width):
            raise InputError(f"{path} is {img.shape[1]}x{img.shape[0]}; its frame {src.file} is "
                             f"{src.width}x{src.height} (paint on the original image's size)")
        yy, xx = np.nonzero(img)
        if len(yy) == 0:
            continue
        raws = img[yy, xx].astype(np.int64)
        for raw in np.unique(raws):
            if int(raw) not in space.names:
                shown = sorted(space.names)[:12]
                raise InputError(f"{path}: class id {int(raw)} at pixel (x={int(xx[raws == raw][0])}, "
                                 f"y={int(yy[raws == raw][0])}) is not a known class (ids {shown})")
        u, v = src.scene_pixels(xx, yy, hw)
        ok = (u >= 0) & (u < hw[1]) & (v >= 0) & (v < hw[0])
        k = np.array([space.index(r) for r in raws[ok]], np.int64)
        cell = v[ok] * hw[1] + u[ok]
        # majority per scene pixel (ties: the smaller index, i.e. the smaller raw id)
        counts = np.zeros((hw[0] * hw[1], len(space.ids)), np.int64)
        np.add.at(counts, (cell, k), 1)
        best = counts.argmax(1)
        best[counts.max(1) == 0] = 0
        labels[pos] = best.reshape(hw)
        painted += len(yy)
    if painted == 0:
        raise InputError(f"--scribbles: no painted pixel (every pixel is 0) in {len(images)} file(s)")
    return labels


def with_user_labels(scene, options):
    """`scene` with the user's labels (UserLabelOptions) as `scene.seeds`, and their classes as its
    label space when it has no ground truth. None of either: the scene unchanged."""
    if not options.clicks and not options.scribbles:
        return scene
    clicks = read_clicks(options.clicks) if options.clicks else None
    images, declared = read_scribbles(options.scribbles) if options.scribbles else (None, None)
    if clicks is not None and clicks.classes is not None:
        declared = clicks.classes
    where = options.clicks or options.scribbles
    used = [c.label for c in clicks.clicks] if clicks else []
    if images is not None and declared is None and not scene.has_labels:
        used += sorted({int(r) for _, img in images.values() for r in np.unique(img) if r})
    space, names = user_space(scene, declared, used, where)
    scene = apply_space(scene, space)
    index = FrameIndex(scene)
    scribbled = scribble_labels(images, scene, space, names, index) if images is not None else None
    if clicks is not None:
        seeds = seeds_from_clicks(clicks, scene, space, names, scribbled)
        if scribbled is not None:
            seeds.info.update(source="clicks+scribbles", scribbles=os.path.abspath(options.scribbles))
            seeds = replace(seeds, folder_name=seeds.folder_name + "_scribbles")
    else:
        mask = scribbled.reshape(len(scribbled), -1).max(1) > 0
        seeds = Seeds(mask_ids=mask, labels=scribbled, folder_name="scribbles",
                      info=dict(source="scribbles", scribbles=os.path.abspath(options.scribbles),
                                labelled_frames=np.flatnonzero(mask).tolist(),
                                classes={int(r): n for r, n in space.names.items()}))
    return replace(scene, seeds=seeds)
