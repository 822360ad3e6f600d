"""ScanNet loader for exported frames, with the original's defects fixed.

    scene_dir/                          (e.g. scans/scene0004_00)
      <scene>.txt                       ScanNet's info file: fx_color, fy_color, mx_color, my_color,
                                        colorWidth, colorHeight ("key = value" lines)
      scannetv2-labels.combined.tsv     raw ScanNet label id (column 0) -> NYU40 id (column 4)
      renders/color/<id>.jpg            colour frames (any size; the size must match the .txt)
      renders/pose/<id>.txt             4x4 camera-to-world (OpenCV axes), one per colour frame
      label-filt/<id>.png               raw ScanNet label ids (8- or 16-bit)
      instance-filt/<id>.png            instance ids, 0 = unannotated (optional folder)
      renders/dino/dino_<k>.pth         optional descriptors; k = position in the valid list

Behaviour (the original's unless noted):
- colour frames are ordered by the integer file name; frames whose pose has a non-finite entry
  are skipped and every index below is a position in the list of the remaining ("valid") frames;
- split: train = valid[::sample_step], test = train + sample_step // 2 (those in range);
  `--training_mode` (or an empty test list): test = [0];
- colour, label and instance maps are zero-padded by 2 rows at top and bottom (968 -> 972, so
  4:3) and resized to the config size (bilinear / nearest, OpenCV rules);
- intrinsics: cy += 2, then fx, cx scale by W / colorWidth and fy, cy by H / (colorHeight + 4)
  (the same factor as the original whenever the config is 4:3; the original asserts that);
- labels: raw id -> NYU40 id via the tsv, then contiguous indices with void = NYU40 0 first.
Fixes (README, "ScanNet"): test and visualisation rays use the same calibrated intrinsics as the
training rays (the original ignored the principal point there); instance ids are kept whole
(the original cast them to int8) and remapped like the classes; raw ids missing from the tsv
become void (the original left them unmapped, mixing raw and NYU40 ids); nothing is written
into the dataset folder; the info file's colour size is read, not asserted to be 1296x968.
"""
import csv
import dataclasses
import glob
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from datasets.descriptors import FeatureOptions
from datasets.frames import read_png
from datasets.poses import check_poses
from datasets.scene import Intrinsics, Scene, Split, label_classes, remap_labels, replica_split_ids, resize_image
from utils.colormaps import label_colormap
from utils.declarations import Option, OptionGroup
from utils.errors import InputError

PAD_ROWS = 2                      # rows of zeros added at the top and at the bottom
INFO_KEYS = ("fx_color", "fy_color", "mx_color", "my_color", "colorWidth", "colorHeight")
LABEL_TSV = "scannetv2-labels.combined.tsv"
LABEL_COLUMNS = {"nyu40": (4, 41), "nyu13": (5, 14)}   # tsv column, palette size (void included)
_INT_NAME = re.compile(r"^(\d+)\.jpg$")


# -- small readers ---------------------------------------------------------------------------
def read_scene_info(root):
    """The `key = value` info file `<scene>.txt` -> (dict, path)."""
    name = os.path.basename(os.path.normpath(root))
    path = os.path.join(root, f"{name}.txt")
    if not os.path.isfile(path):
        # a renamed scene folder: accept the one .txt at the top level that holds colour intrinsics
        found = [p for p in sorted(glob.glob(os.path.join(root, "*.txt"))) if _has_key(p, "fx_color")]
        if len(found) != 1:
            raise InputError(f"{path}: missing ScanNet info file (expected 'key = value' lines with "
                             f"{', '.join(INFO_KEYS)})")
        path = found[0]
    info = {}
    try:
        with open(path, "r") as f:
            for line in f:
                if "=" in line:
                    key, value = line.split("=", 1)
                    info[key.strip()] = value.strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable ScanNet info file ({exc})") from exc
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)} (expected 'key = value' lines)")
    out = {}
    for key in INFO_KEYS:
        try:
            out[key] = float(info[key])
        except ValueError:
            raise InputError(f"{path}: {key} = {info[key]!r} is not a number") from None
    for key in ("colorWidth", "colorHeight"):
        if out[key] != int(out[key]) or out[key] <= 0:
            raise InputError(f"{path}: {key} = {info[key]!r}; expected a positive integer")
        out[key] = int(out[key])
    if "axisAlignment" in info:
        try:
            out["axisAlignment"] = np.array([float(v) for v in info["axisAlignment"].split()]).reshape(4, 4)
        except ValueError:
            pass  # only exposed for convenience; the loader does not need it
    return out, path


def _has_key(path, key):
    try:
        with open(path, "r") as f:
            return any(line.split("=", 1)[0].strip() == key for line in f if "=" in line)
    except (OSError, UnicodeDecodeError):
        return False


def read_label_mapping(path, column=4):
    """{raw ScanNet id: NYU id} from the tsv (header row skipped; column 0 and `column`)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing label table (ScanNet's {LABEL_TSV}: column 0 = ScanNet "
                         f"id, column {column} = NYU id)")
    mapping = {}
    try:
        with open(path, "r", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: unreadable label table ({exc})") from exc
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            mapping[int(row[0])] = int(row[column])
        except (ValueError, IndexError):
            raise InputError(f"{path}: line {line_no} has no integer ScanNet id (column 0) and "
                             f"NYU id (column {column})") from None
    if not mapping:
        raise InputError(f"{path}: the label table has no rows")
    return mapping


def list_colour_frames(folder):
    """Sorted frame ids of `<folder>/<id>.jpg`."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: colour frame folder missing (expected renders/color/<id>.jpg; "
                         "see docs/SCANNET.md for exporting them from the .sens file)")
    ids = sorted(int(m.group(1)) for m in map(_INT_NAME.match, os.listdir(folder)) if m)
    if not ids:
        raise InputError(f"{folder}: no <id>.jpg colour frames found")
    return ids


def read_pose(path):
    """One 4x4 camera-to-world matrix (16 numbers, any line layout) as float64."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing camera pose for this colour frame (expected a 4x4 "
                         "camera-to-world matrix)")
    try:
        with open(path, "r") as f:
            values = [float(v) for v in f.read().split()]
    except ValueError as exc:
        raise InputError(f"{path}: not a table of numbers ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable pose file ({exc})") from exc
    if len(values) != 16:
        raise InputError(f"{path}: {len(values)} numbers; expected 16 (a 4x4 camera-to-world matrix)")
    return np.array(values, dtype=np.float64).reshape(4, 4)


# -- geometry and split ----------------------------------------------------------------------
def scannet_intrinsics(info, height, width):
    """Calibrated colour intrinsics after the 2-row padding and the resize to height x width."""
    sx = width / info["colorWidth"]
    sy = height / (info["colorHeight"] + 2 * PAD_ROWS)
    return Intrinsics(fx=info["fx_color"] * sx, fy=info["fy_color"] * sy,
                      cx=info["mx_color"] * sx, cy=(info["my_color"] + PAD_ROWS) * sy)


def scannet_split_ids(num_valid, step, training_mode=False):
    """train = 0, step, 2*step, ...; test = train + step // 2 where in range (positions)."""
    if num_valid <= 0:
        raise InputError("ScanNet scene has no frame with a finite pose")
    return replica_split_ids(num_valid, training_mode, step)   # the same rule, another step


def pad_rows(img):
    return np.pad(img, ((PAD_ROWS, PAD_ROWS), (0, 0)) + ((0, 0),) * (img.ndim - 2))


# -- the loader ------------------------------------------------------------------------------
class ScanNetLoader:
    """Reads one exported ScanNet scene. `load()` returns a `datasets.scene.Scene`."""

    def __init__(self, root, height, width, sample_step, training_mode=False, load_dino=False,
                 load_lseg=False, high_res_dino=False, feature_dim=384, feature_dtype=torch.float16,
                 near=0.1, far=10.0, pin_features=False, mode="nyu40", workers=8):
        self.root = root
        self.hw = (int(height), int(width))
        self.step = int(sample_step)
        self.training_mode = training_mode
        self.features = FeatureOptions.from_flags(load_dino, load_lseg, high_res_dino, feature_dim, feature_dtype,
                                                  pin_features)
        self.near, self.far = near, far
        if mode not in LABEL_COLUMNS:
            raise InputError(f"ScanNet label mode {mode!r}: expected one of {', '.join(LABEL_COLUMNS)}")
        self.mode = mode
        self.workers = workers

    def _p(self, *parts):
        return os.path.join(self.root, *parts)

    # -- discovery ---------------------------------------------------------------------------
    def _valid_frames(self):
        numbers = list_colour_frames(self._p("renders", "color"))
        with ThreadPoolExecutor(self.workers) as pool:
            poses = list(pool.map(lambda n: read_pose(self._p("renders", "pose", f"{n}.txt")), numbers))
        finite = [bool(np.isfinite(p).all()) for p in poses]
        keep = [k for k, ok in enumerate(finite) if ok]
        skipped = [n for n, ok in zip(numbers, finite) if not ok]     # ScanNet marks untracked frames with -inf
        check_poses([poses[k] for k in keep], lambda i: self._p("renders", "pose", f"{numbers[keep[i]]}.txt"))
        return [numbers[k] for k in keep], np.stack([poses[k] for k in keep]) if keep else None, skipped

    # -- one frame ---------------------------------------------------------------------------
    def _load_frame(self, number, info, lut, with_instance):
        size = (info["colorHeight"], info["colorWidth"])
        path = self._p("renders", "color", f"{number}.jpg")
        rgb = read_png(path, "colour")
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InputError(f"{path}: expected a colour image, got shape {rgb.shape}")
        if rgb.shape[:2] != size:
            raise InputError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} pixels; the info file says "
                             f"colorWidth x colorHeight = {size[1]}x{size[0]}")
        rgb = resize_image(pad_rows(rgb.astype(np.float32) / 255.0), self.hw, "linear")

        maps = []
        for folder in ("label-filt",) + (("instance-filt",) if with_instance else ()):
            lpath = self._p(folder, f"{number}.png")
            raw = read_png(lpath, folder)
            if raw.ndim != 2:
                raise InputError(f"{lpath}: expected a single-channel id image, got shape {raw.shape}")
            if raw.shape != size:
                raise InputError(f"{lpath}: {raw.shape[1]}x{raw.shape[0]} pixels; expected the colour "
                                 f"size {size[1]}x{size[0]}")
            maps.append(np.asarray(resize_image(pad_rows(raw.astype(np.int64)), self.hw, "nearest")))
        sem = maps[0]
        inside = sem < len(lut)
        nyu = np.full_like(sem, -1)
        nyu[inside] = lut[sem[inside]]
        unknown = np.unique(sem[nyu < 0])      # raw ids absent from the tsv -> void
        nyu[nyu < 0] = 0
        return (torch.as_tensor(rgb, dtype=torch.float32), nyu,
                maps[1] if with_instance else None, unknown)

    def _load_split(self, ids, numbers, info, lut, with_instance):
        with ThreadPoolExecutor(self.workers) as pool:
            frames = list(pool.map(lambda i: self._load_frame(numbers[i], info, lut, with_instance), ids))
        return dict(rgb=torch.stack([f[0] for f in frames]), sem=[f[1] for f in frames],
                    inst=[f[2] for f in frames] if with_instance else None,
                    unknown=set(int(u) for f in frames for u in f[3]))

    def load(self):
        if not os.path.isdir(self.root):
            raise InputError(f"dataset_dir {self.root!r} does not exist (set experiment.dataset_dir "
                             "in the YAML config to an exported ScanNet scene, see docs/SCANNET.md)")
        if self.step < 1:
            raise InputError(f"--sample_step {self.step}: expected a positive frame step")
        info, info_path = read_scene_info(self.root)
        column, palette_size = LABEL_COLUMNS[self.mode]
        mapping = read_label_mapping(self._p(LABEL_TSV), column)
        # lookup table raw id -> NYU id; -1 marks ids absent from the tsv (they become void)
        lut = np.full(max(max(mapping), 0) + 1, -1, dtype=np.int64)
        lut[list(mapping)] = list(mapping.values())
        lut[0] = 0
        if lut.max() >= palette_size or min(mapping.values()) < 0:
            bad = next(v for v in mapping.values() if not 0 <= v < palette_size)
            raise InputError(f"{self._p(LABEL_TSV)}: NYU id {bad} in column {column}; "
                             f"expected 0..{palette_size - 1} for mode {self.mode}")
        if not os.path.isdir(self._p("label-filt")):
            raise InputError(f"{self._p('label-filt')}: folder missing (expected label-filt/<id>.png "
                             f"for every colour frame, from ScanNet's <scene>_2d-label-filt.zip)")
        with_instance = os.path.isdir(self._p("instance-filt"))

        numbers, poses, skipped = self._valid_frames()
        train_ids, test_ids = scannet_split_ids(len(numbers), self.step, self.training_mode)
        train = self._load_split(train_ids, numbers, info, lut, with_instance)
        test = self._load_split(test_ids, numbers, info, lut, with_instance)

        classes = label_classes(train["sem"] + test["sem"])
        train_sem = torch.stack(remap_labels(train["sem"], classes))
        test_sem = torch.stack(remap_labels(test["sem"], classes))
        inst_classes = train_inst = test_inst = None
        if with_instance:
            inst_classes = label_classes(train["inst"] + test["inst"])
            train_inst = torch.stack(remap_labels(train["inst"], inst_classes))
            test_inst = torch.stack(remap_labels(test["inst"], inst_classes))

        features = None
        if self.features.kind:
            # renders/dino/dino_<k>.pth, k = position in the valid list (as the original)
            features = self.features.load(self._p("renders"), train_ids, self.hw, self.workers)

        H, W = self.hw
        poses_t = torch.from_numpy(poses.astype(np.float32))
        name = os.path.basename(os.path.normpath(self.root))
        extra = dict(frame_numbers=numbers, skipped_frames=skipped, sample_step=self.step,
                     info_file=info_path, label_mode=self.mode,
                     unmapped_raw_ids=sorted(train["unknown"] | test["unknown"]),
                     colour_size=(info["colorHeight"], info["colorWidth"]))
        if "axisAlignment" in info:
            extra["axis_alignment"] = info["axisAlignment"]
        if extra["unmapped_raw_ids"]:
            print(f"[jnerf] note: raw label ids {extra['unmapped_raw_ids'][:10]} are not in "
                  f"{LABEL_TSV}; they are treated as void", flush=True)
        print(f"[jnerf] scannet {name}: {len(numbers)} frames with finite poses "
              f"({len(skipped)} skipped), sample_step {self.step}: {len(train_ids)} train, "
              f"{len(test_ids)} test", flush=True)
        return Scene(
            name=name, root=self.root, height=H, width=W,
            intrinsics=scannet_intrinsics(info, H, W),   # shared by training, test and vis rays
            train=Split(ids=train_ids, rgb=train["rgb"], poses=poses_t[train_ids], semantic=train_sem,
                        instance=train_inst, features=features),
            test=Split(ids=test_ids, rgb=test["rgb"], poses=poses_t[test_ids], semantic=test_sem,
                       instance=test_inst),
            semantic_classes=classes, instance_classes=inst_classes,
            near=self.near, far=self.far, colour_map=nyu_colour_map(classes, palette_size),
            extra=extra)


def nyu_colour_map(classes, palette_size=41):
    """[C, 3] uint8 colours of the scene's classes (row 0 = void): the VOC palette by NYU40 id."""
    return np.asarray(label_colormap(palette_size), dtype=np.uint8)[classes]


@dataclasses.dataclass(frozen=True)
class ScanNetOptions:
    sample_step: int              # step between training frames (required)


# The layout's own options (datasets.registry passes them to main.py; DataOptions.loader holds them).
SCANNET_OPTIONS = OptionGroup("ScanNet layout (--dataset_type scannet, docs/SCANNET.md)", ScanNetOptions, (
    Option("sample_step", int, None, "step between training frames (train = every sample_step-th valid frame)",
           "", keeps_yaml=True, required=True, low=1),
))


def load_scannet(data):
    """The exported ScanNet scene of a utils.options.DataOptions (`--dataset_type scannet`)."""
    loader = ScanNetLoader(
        data.dataset_dir, data.height, data.width, data.loader.sample_step, training_mode=data.training_mode,
        load_dino=data.load_dino, load_lseg=data.load_lseg, high_res_dino=data.high_res_dino,
        feature_dim=data.feature_dim, near=data.near, far=data.far, pin_features=data.load_on_cpu)
    return dataclasses.replace(loader.load(), convention=data.convention)
