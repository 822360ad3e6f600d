"""The plan of a reproduction run: its YAML (docs/REPRODUCE.md has the format) read and checked
as a whole into a `Plan` (scenes, stage lengths and flags, regimes, label spaces, dims, methods,
metrics) before anything runs: every key known (a near miss gets "did you mean"), numbers where
numbers belong (an integer where steps are counted: `N_iters: 2.7` is refused, not truncated),
method, label-space, dim and metric names from their lists, `config_overrides` keys checked against
the option table, and every stage's command checked as main.py would (experiments/plan_check.py).
A bad key stops with one InputError naming the file and the key."""
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

import yaml

from experiments.layout import DEFAULT_METHODS, DIMS, KEEP_FLAGS, LABEL_SPACES, METHODS, TRAINING_KINDS
from experiments.layout import slug as _slug
from utils.config import parse_number
from utils.declarations import did_you_mean
from utils.errors import InputError
from utils.metrics import METRIC_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_METRICS = ("miou", "total_accuracy", "class_average_accuracy")
STAGE_KINDS = TRAINING_KINDS + ("propagate",)
TOP_KEYS = ("name", "out_dir", "data_root", "seed", "scenes", "config_overrides", "flags", "stages", "regimes",
            "label_spaces", "dims", "methods", "metrics", "barrier_timeout_s")
SCENE_KEYS = ("name", "config", "dataset_dir", "synthetic", "flags", "label_spaces")
SYNTHETIC_KEYS = {"variant": 0, "frames": 1, "width": 8, "height": 8, "seed": 0}     # key: smallest value
REGIME_KEYS = ("name", "flags", "propagation")


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


class Reader:
    """Checked reads of the plan's YAML; every error names the file and the key."""

    def __init__(self, path):
        self.path = path

    def error(self, where, text):
        return InputError(f"{self.path}: {where}: {text}")

    def mapping(self, value, where, allowed):
        if not isinstance(value, dict):
            raise self.error(where, f"expected a mapping of {', '.join(allowed)}, got {value!r}")
        for key in value:
            if key not in allowed:
                raise self.error(where, f"unknown key {key!r}{did_you_mean(key, allowed)}; expected some of "
                                        f"{', '.join(allowed)}")
        return value

    def text(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or str(value).strip() == "":
            raise self.error(where, f"expected a non-empty string, got {value!r}")
        return str(value)

    def path_text(self, value, where):
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, f"expected a path, got {value!r}")
        return value

    def number(self, value, where, integer=False, low=None, positive=False):
        """A number (YAML arithmetic strings such as 250e3 included, as in the run config)."""
        try:
            number = parse_number(value) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise self.error(where, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if integer:
            if float(number) != int(number):
                raise self.error(where, f"expected an integer, got {value!r}")
            number = int(number)
        if low is not None and number < low:
            raise self.error(where, f"{number}: expected at least {low}")
        if positive and number <= 0:
            raise self.error(where, f"{number}: expected a number > 0")
        return number

    def flags(self, value, where):
        if value is None:
            return []
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (str, int, float))
                                              for v in value):
            raise self.error(where, f"expected a list of flags and values such as [--N_rays, 256], got {value!r}")
        return [str(v) for v in value]

    def choices(self, value, allowed, where):
        if not isinstance(value, list) or not value:
            raise self.error(where, f"expected a non-empty list of some of {', '.join(allowed)}, got {value!r}")
        for v in value:
            if v not in allowed:
                raise self.error(where, f"unknown {v!r}{did_you_mean(v, allowed)}; expected some of "
                                        f"{', '.join(allowed)}")
        if len(set(value)) != len(value):
            raise self.error(where, f"{value!r} names one twice")
        return list(value)


def _path(p, base):
    """A path of the YAML: absolute, or relative to the working directory if it exists there, else
    to the repository."""
    if p is None or os.path.isabs(p) or os.path.exists(p):
        return p
    alt = os.path.join(ROOT, p)
    return alt if os.path.exists(alt) else p


def load_plan(path, out_dir=None, data_root=None, check_stages=True):
    """The Plan of a reproduction YAML (InputError naming the key on a bad value); check_stages: also
    check every stage's main.py command (experiments/plan_check.py)."""
    if not os.path.isfile(path):
        raise InputError(f"{path} does not exist (expected a reproduction YAML such as experiments/demo.yaml)")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML ({exc})") from None
    plan = plan_from_dict(raw, path, out_dir, data_root)
    if check_stages:
        from experiments.plan_check import check_plan        # main.py's option table: imported when used
        check_plan(plan)
    return plan


def plan_from_dict(raw, path, out_dir=None, data_root=None):
    """The Plan of the YAML's mapping `raw` (read from `path`), every key checked."""
    r = Reader(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of keys (name, scenes, stages, regimes, ...)")
    r.mapping(raw, "the plan", TOP_KEYS)
    name = r.text(raw["name"], "name") if raw.get("name") is not None \
        else os.path.splitext(os.path.basename(path))[0]
    out = out_dir or (r.path_text(raw["out_dir"], "out_dir") if raw.get("out_dir") is not None
                      else os.path.join("runs", f"reproduce_{name}"))
    root = data_root or (r.path_text(raw["data_root"], "data_root") if raw.get("data_root") is not None
                         else os.path.join(out, "data"))
    methods = r.choices(raw.get("methods", list(DEFAULT_METHODS)), list(METHODS), "methods")
    spaces = r.choices(raw.get("label_spaces", ["semantic"]), list(LABEL_SPACES), "label_spaces")
    dims = r.choices(raw.get("dims", list(DIMS)), list(DIMS), "dims")
    metrics = r.choices(raw.get("metrics", list(DEFAULT_METRICS)), list(METRIC_KEYS), "metrics")
    stages = _stages(r, raw.get("stages") or {}, methods)
    regimes = _regimes(r, raw.get("regimes"))
    scenes = _scenes(r, raw.get("scenes"), spaces)
    overrides = raw.get("config_overrides") or {}
    if not isinstance(overrides, dict):
        raise r.error("config_overrides", f"expected a mapping of config sections, got {overrides!r}")
    return Plan(name=name, path=path, out_dir=str(out), data_root=str(root),
                seed=r.number(raw.get("seed", 0), "seed", integer=True, low=0), scenes=scenes,
                flags=r.flags(raw.get("flags"), "flags"), config_overrides=overrides, stages=stages,
                regimes=regimes, label_spaces=spaces, dims=dims, methods=methods, metrics=metrics,
                barrier_timeout_s=float(r.number(raw.get("barrier_timeout_s", 7 * 24 * 3600), "barrier_timeout_s",
                                                 positive=True)))


def _stages(r, raw, methods):
    r.mapping(raw, "stages", STAGE_KINDS)
    if "jnerf_keep" in methods and "jnerf_keep" not in raw and isinstance(raw.get("jnerf"), dict):
        # the paper's shaping stage with the options that keep the picture (docs/SHAPING.md)
        raw = dict(raw, jnerf_keep=dict(raw["jnerf"], flags=r.flags(raw["jnerf"].get("flags"), "stages.jnerf.flags")
                                        + list(KEEP_FLAGS)))
    for kind in ("plain",) + tuple(m for m in methods if m != "plain"):
        if not isinstance(raw.get(kind), dict) or "N_iters" not in raw[kind]:
            raise r.error(f"stages.{kind}.N_iters", f"missing (steps of the {METHODS[kind]} stage)")
    out = {}
    for kind, v in raw.items():
        where = f"stages.{kind}"
        if kind in TRAINING_KINDS:
            r.mapping(v, where, ("N_iters", "flags"))
            out[kind] = dict(N_iters=r.number(v["N_iters"], f"{where}.N_iters", integer=True, low=1),
                             flags=r.flags(v.get("flags"), f"{where}.flags"))
        else:
            r.mapping(v or {}, where, ("flags",))
            out[kind] = dict(flags=r.flags((v or {}).get("flags"), f"{where}.flags"))
    return out


def _regimes(r, raw):
    if raw is not None and not isinstance(raw, list):
        raise r.error("regimes", f"expected a list of regimes, got {raw!r}")
    regimes = []
    for i, v in enumerate(raw or []):
        where = f"regimes[{i}]"
        if not isinstance(v, dict) or "name" not in v:
            raise r.error(where, "needs a name and its seed flags")
        r.mapping(v, where, REGIME_KEYS)
        regimes.append(Regime(r.text(v["name"], f"{where}.name"), r.flags(v.get("flags"), f"{where}.flags"),
                              r.flags(v.get("propagation") or ["--mean_gradient"], f"{where}.propagation")))
    if not regimes:
        raise InputError(f"{r.path}: regimes is empty (e.g. one click per class: --sparse_views --sparse_ratio "
                         "0.995 --label_propagation --partial_perc 0)")
    if len({_slug(x.name) for x in regimes}) != len(regimes):
        raise InputError(f"{r.path}: two regimes have the same name")
    return regimes


def _synthetic(r, value, where):
    if isinstance(value, dict):
        r.mapping(value, where, tuple(SYNTHETIC_KEYS))
        return {k: r.number(v, f"{where}.{k}", integer=True, low=SYNTHETIC_KEYS[k]) for k, v in value.items()}
    return {"variant": r.number(value, where, integer=True, low=0)}


def _scenes(r, raw, spaces):
    if raw is not None and not isinstance(raw, list):
        raise r.error("scenes", f"expected a list of scenes, got {raw!r}")
    scenes = []
    for i, s in enumerate(raw or []):
        where = f"scenes[{i}]"
        if not isinstance(s, dict) or "name" not in s or "config" not in s:
            raise r.error(where, "needs a name and a config")
        r.mapping(s, where, SCENE_KEYS)
        name = r.text(s["name"], f"{where}.name")
        if ("dataset_dir" in s) == ("synthetic" in s):
            raise InputError(f"{r.path}: {where} ({name}) needs exactly one of dataset_dir and synthetic")
        config = _path(r.path_text(s["config"], f"{where}.config"), r.path)
        if not os.path.isfile(config):
            raise InputError(f"{r.path}: {where}.config {s['config']} does not exist")
        synthetic = _synthetic(r, s["synthetic"], f"{where}.synthetic") if "synthetic" in s else None
        dataset_dir = r.path_text(s["dataset_dir"], f"{where}.dataset_dir") if "dataset_dir" in s else None
        scenes.append(SceneSpec(name, config, dataset_dir, synthetic, r.flags(s.get("flags"), f"{where}.flags"),
                                r.choices(s.get("label_spaces", spaces), list(LABEL_SPACES),
                                          f"{where}.label_spaces")))
    if not scenes:
        raise InputError(f"{r.path}: scenes is empty")
    if len({_slug(s.name) for s in scenes}) != len(scenes):
        raise InputError(f"{r.path}: two scenes have the same name")
    return scenes
