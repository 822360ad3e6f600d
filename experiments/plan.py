"""The plan of a reproduction run: its YAML (docs/REPRODUCE.md has the format) read and checked
into a `Plan` (scenes, stage lengths and flags, regimes, label spaces, dims, methods, metrics).
A bad key stops with one InputError naming the file and the key."""
import os
from dataclasses import dataclass, field
from typing import List, Optional

import yaml

from experiments.layout import DEFAULT_METHODS, DIMS, KEEP_FLAGS, LABEL_SPACES, METHODS
from experiments.layout import slug as _slug
from utils.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_METRICS = ("miou", "total_accuracy", "class_average_accuracy")
TRAINING_KINDS = ("plain", "jnerf", "semantic_joint", "semantic_finetune", "jnerf_keep")


@dataclass
class Regime:
    name: str
    flags: List[str]                      # seed flags (--label_propagation --partial_perc P, --sparse_views ...)
    propagation: List[str]                # direction rule etc. of the propagation stages


@dataclass
class SceneSpec:
    name: str
    config: str                           # the scene's YAML config
    dataset_dir: Optional[str] = None     # a dataset folder, or None for a synthetic room
    synthetic: Optional[dict] = None      # generate_scene arguments (variant, frames, width, height, seed)
    flags: List[str] = field(default_factory=list)
    label_spaces: List[str] = field(default_factory=lambda: list(LABEL_SPACES))


@dataclass
class Plan:
    name: str
    path: str                             # the YAML file
    out_dir: str
    data_root: str
    seed: int
    scenes: List[SceneSpec]
    flags: List[str]
    config_overrides: dict
    stages: dict                          # kind -> {N_iters, flags}
    regimes: List[Regime]
    label_spaces: List[str]
    dims: List[str]
    methods: List[str]
    metrics: List[str]
    barrier_timeout_s: float


def _strs(value, where):
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{where}: expected a list of flags, got {value!r}")
    return [str(v) for v in value]


def _choices(values, allowed, where):
    values = list(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise InputError(f"{where}: {bad or 'empty'}; expected some of {', '.join(allowed)}")
    return values


def _path(p, base):
    """A path of the YAML: absolute, or relative to the working directory if it exists there, else
    to the repository."""
    if p is None or os.path.isabs(p) or os.path.exists(p):
        return p
    alt = os.path.join(ROOT, p)
    return alt if os.path.exists(alt) else p


def load_plan(path, out_dir=None, data_root=None):
    """The Plan of a reproduction YAML (InputError naming the key on a bad value)."""
    if not os.path.isfile(path):
        raise InputError(f"{path} does not exist (expected a reproduction YAML such as experiments/demo.yaml)")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of keys (name, scenes, stages, regimes, ...)")
    name = str(raw.get("name") or os.path.splitext(os.path.basename(path))[0])
    out = out_dir or raw.get("out_dir") or os.path.join("runs", f"reproduce_{name}")
    methods = _choices(raw.get("methods") or list(DEFAULT_METHODS), METHODS, f"{path}: methods")
    spaces = _choices(raw.get("label_spaces") or ["semantic"], LABEL_SPACES, f"{path}: label_spaces")
    dims = _choices(raw.get("dims") or list(DIMS), DIMS, f"{path}: dims")
    stages = raw.get("stages") or {}
    if "jnerf_keep" in methods and "jnerf_keep" not in stages and isinstance(stages.get("jnerf"), dict):
        # the paper's shaping stage with the options that keep the picture (docs/SHAPING.md)
        stages = dict(stages, jnerf_keep=dict(stages["jnerf"], flags=_strs(stages["jnerf"].get("flags"),
                                                                           f"{path}: stages.jnerf.flags")
                                              + list(KEEP_FLAGS)))
    for kind in ("plain",) + tuple(m for m in methods if m != "plain"):
        st = stages.get(kind)
        if not isinstance(st, dict) or "N_iters" not in st:
            raise InputError(f"{path}: stages.{kind}.N_iters is missing (steps of the {METHODS[kind]} stage)")
    stages = {k: dict(N_iters=int(v["N_iters"]), flags=_strs(v.get("flags"), f"{path}: stages.{k}.flags"))
              if k in TRAINING_KINDS else dict(flags=_strs((v or {}).get("flags"), f"{path}: stages.{k}.flags"))
              for k, v in stages.items()}
    regimes = []
    for i, r in enumerate(raw.get("regimes") or []):
        if not isinstance(r, dict) or "name" not in r:
            raise InputError(f"{path}: regimes[{i}] needs a name and its seed flags")
        regimes.append(Regime(str(r["name"]), _strs(r.get("flags"), f"{path}: regimes[{i}].flags"),
                              _strs(r.get("propagation") or ["--mean_gradient"], f"{path}: regimes[{i}].propagation")))
    if not regimes:
        raise InputError(f"{path}: regimes is empty (e.g. one click per class: --sparse_views --sparse_ratio 0.995 "
                         "--label_propagation --partial_perc 0)")
    if len({_slug(r.name) for r in regimes}) != len(regimes):
        raise InputError(f"{path}: two regimes have the same name")
    scenes = []
    for i, s in enumerate(raw.get("scenes") or []):
        if not isinstance(s, dict) or "name" not in s or "config" not in s:
            raise InputError(f"{path}: scenes[{i}] needs a name and a config")
        if ("dataset_dir" in s) == ("synthetic" in s):
            raise InputError(f"{path}: scenes[{i}] ({s['name']}) needs exactly one of dataset_dir and synthetic")
        config = _path(str(s["config"]), path)
        if not os.path.isfile(config):
            raise InputError(f"{path}: scenes[{i}].config {s['config']} does not exist")
        synthetic = s.get("synthetic")
        if synthetic is not None and not isinstance(synthetic, dict):
            synthetic = {"variant": int(synthetic)}
        scenes.append(SceneSpec(str(s["name"]), config, s.get("dataset_dir"), synthetic,
                                _strs(s.get("flags"), f"{path}: scenes[{i}].flags"),
                                _choices(s.get("label_spaces") or spaces, LABEL_SPACES, f"{path}: scenes[{i}].label_spaces")))
    if not scenes:
        raise InputError(f"{path}: scenes is empty")
    if len({_slug(s.name) for s in scenes}) != len(scenes):
        raise InputError(f"{path}: two scenes have the same name")
    return Plan(name=name, path=path, out_dir=str(out), data_root=str(data_root or raw.get("data_root")
                                                                       or os.path.join(out, "data")),
                seed=int(raw.get("seed", 0)), scenes=scenes, flags=_strs(raw.get("flags"), f"{path}: flags"),
                config_overrides=raw.get("config_overrides") or {}, stages=stages, regimes=regimes,
                label_spaces=spaces, dims=dims, methods=methods,
                metrics=list(raw.get("metrics") or DEFAULT_METRICS),
                barrier_timeout_s=float(raw.get("barrier_timeout_s", 7 * 24 * 3600)))
