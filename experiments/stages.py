"""The stages of a reproduction run and their completion markers.

`scene_stages` lists one scene's `main.py` commands in run order (plain NeRF, shaping, then per
label space and regime the propagation and Semantic-NeRF stages); `run_scene` prepares the
scene's data and config and runs them in-process (`main.main(argv)`), each printed so it can be
rerun by hand. A stage is skipped when its marker (`<stage>/.stage_complete`, written last)
records the same command and config and its outputs exist; an interrupted training stage
continues from its latest checkpoint (--resume), any other incomplete stage starts again
(--overwrite).
"""
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import List

import yaml

import main as jnerf_main
from datasets.seeds import seed_folder_name
from datasets.synthetic import generate_scene, scene_complete
from experiments.layout import (DIMS, METHODS, SHAPING_METHODS, TRAINING_KINDS, cell_metrics, merge_into, read_json,
                                regime_dir, scene_dir, seed_dir)
from experiments.layout import slug as _slug
from models.checkpoints import latest_checkpoint
from utils.atomic import write_json_atomic, write_text_atomic
from utils.errors import InputError

MARKER = ".stage_complete"          # in the stage's folder, written last


def started_path(save_dir):
    """The record of a started stage's command, beside its folder (--overwrite clears the folder)."""
    return os.path.join(os.path.dirname(os.path.normpath(save_dir)), f".{os.path.basename(os.path.normpath(save_dir))}.started")


@dataclass
class Stage:
    kind: str                             # plain | jnerf | jnerf_keep | propagate | semantic_joint | semantic_finetune
    title: str
    save_dir: str
    argv: List[str]                       # the main.py command without run-control flags
    outputs: List[str]                    # files that exist when the stage is complete
    config: str
    seeds: bool = False                   # uses seeds: --visualise_save the first time, else --load_saved
    out_dir: str = ""                     # the run's folder; markers record paths relative to it
    deps: List[str] = field(default_factory=list)   # folders of the stages whose checkpoints it reads
    steps: int = 0                        # training steps (N_iters) of a training stage
    # stages with the same speed_key run at the same rate (experiments/estimate.py): the kind, and
    # for propagation its dim, label space and propagation flags (the selection, the aggregator)
    rate_group: str = ""

    @property
    def speed_key(self):
        return self.rate_group or self.kind

    @property
    def key(self):
        """The command as the markers record it: paths under out_dir written as <out_dir>/..., so
        a run folder can be moved or copied and still be resumed."""
        if not self.out_dir:
            return list(self.argv)
        return [a.replace(self.out_dir, "<out_dir>", 1) if a.startswith(self.out_dir) else a for a in self.argv]


def _final_ckpt(save_dir, n_iters):
    return os.path.join(save_dir, "checkpoints", f"{n_iters:06d}.ckpt")


def scene_stages(plan, scene, config):
    """Every stage of one scene in run order (training first, then per label space and regime)."""
    root = scene_dir(plan.out_dir, scene.name)
    seeds = seed_dir(plan.out_dir, scene.name)
    common = ["--config_file", config, "--seed", str(plan.seed)] + plan.flags + scene.flags
    st = plan.stages
    stages = []
    plain_dir = os.path.join(root, "plain")
    plain_ckpt = _final_ckpt(plain_dir, st["plain"]["N_iters"])
    stages.append(Stage("plain", f"{scene.name}: plain NeRF", plain_dir,
                        common + ["--save_dir", plain_dir, "--N_iters", str(st["plain"]["N_iters"])] + st["plain"]["flags"],
                        [plain_ckpt, os.path.join(plain_dir, "metrics.json")], config, steps=st["plain"]["N_iters"]))
    ckpts = {"plain": plain_ckpt}
    for method in (m for m in SHAPING_METHODS if m in plan.methods):
        d = os.path.join(root, method)
        ckpts[method] = _final_ckpt(d, st[method]["N_iters"])
        stages.append(Stage(method, f"{scene.name}: Jacobi shaping ({METHODS[method]})", d,
                            common + ["--save_dir", d, "--ckpt_path", plain_ckpt, "--N_iters",
                                      str(st[method]["N_iters"])] + st[method]["flags"],
                            [ckpts[method], os.path.join(d, "metrics.json")], config, deps=[plain_dir],
                            steps=st[method]["N_iters"]))
    prop_flags = st.get("propagate", {}).get("flags", [])
    for space in scene.label_spaces:
        space_flags = ["--test_instance"] if space == "instance" else []
        for regime in plan.regimes:
            base = regime_dir(plan.out_dir, scene.name, space, regime.name)
            seeded = common + regime.flags + space_flags + ["--seed_dir", seeds]
            for method in plan.methods:
                where = f"{scene.name}: {space}, {regime.name}: {METHODS[method]}"
                if method == "plain" or method in SHAPING_METHODS:
                    for dim in plan.dims:
                        metrics = cell_metrics(plan.out_dir, scene.name, space, regime.name, method, dim)
                        d = os.path.dirname(metrics)
                        stages.append(Stage("propagate", f"{where}, {dim.upper()} propagation", d,
                                            seeded + [f"--propagate_{dim}", "--rgb_layer", "--ckpt_path", ckpts[method],
                                                      "--save_dir", d] + regime.propagation + prop_flags,
                                            [metrics], config, seeds=True,
                                            deps=[os.path.dirname(os.path.dirname(ckpts[method]))],
                                            rate_group=f"propagate_{dim} {space} "
                                                       + shlex.join(regime.propagation + prop_flags)))
                else:
                    d = os.path.join(base, method)
                    n = st[method]["N_iters"]
                    mode = (["--semantic_finetune", "--ckpt_path", plain_ckpt] if method == "semantic_finetune"
                            else ["--semantic_nerf"])
                    stages.append(Stage(method, f"{where}", d,
                                        seeded + mode + ["--save_dir", d, "--N_iters", str(n)] + st[method]["flags"],
                                        [_final_ckpt(d, n)] + [cell_metrics(plan.out_dir, scene.name, space,
                                                                            regime.name, method, k) for k in DIMS],
                                        config, seeds=True, deps=[plain_dir] if method == "semantic_finetune" else [],
                                        steps=n))
    for stage in stages:
        stage.out_dir = plan.out_dir
    return stages


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def identity(stage):
    """What a stage's markers record: its command (paths relative to the output folder), the
    scene config's hash, and per stage it reads a checkpoint of, that stage's own identity hash, so
    a changed plain NeRF stage reruns everything built on it."""
    deps = {}
    for d in stage.deps:
        m = read_json(os.path.join(d, MARKER)) or {}
        rel = os.path.relpath(d, stage.out_dir) if stage.out_dir else d
        deps[rel] = hashlib.sha256(json.dumps([m.get("argv"), m.get("config_sha"), m.get("deps")],
                                              sort_keys=True).encode()).hexdigest()[:16]
    return dict(argv=stage.key, config_sha=_sha(stage.config), deps=deps)


def _same(record, ident):
    return isinstance(record, dict) and all(record.get(k) == v for k, v in ident.items())


def stage_done(stage):
    """The marker records this stage's identity, and every output exists."""
    return _same(read_json(os.path.join(stage.save_dir, MARKER)), identity(stage)) \
        and all(os.path.isfile(p) for p in stage.outputs)


def stage_command(stage):
    """The argv to run now: resume an interrupted training stage of the same command, otherwise
    start over (--overwrite); seeds saved the first time (--visualise_save), read afterwards."""
    argv = list(stage.argv)
    same = _same(read_json(started_path(stage.save_dir)), identity(stage))
    if stage.kind in TRAINING_KINDS and same and latest_checkpoint(stage.save_dir):
        out, skip = [], False
        for a in argv:                     # --resume takes the latest checkpoint of the stage's own folder
            if skip:
                skip = False
            elif a == "--ckpt_path":
                skip = True
            else:
                out.append(a)
        argv = out + ["--resume"]
    else:
        argv = argv + ["--overwrite"]
    if stage.seeds:
        _, opts = jnerf_main.parse_options(argv)
        saved = os.path.isdir(os.path.join(opts.seeds.seed_dir, seed_folder_name(opts.seeds)))
        argv += ["--load_saved"] if saved else ["--visualise_save"]
    return argv


def run_stage(stage, device_flags=()):
    """Run one stage through main.main (skipped when complete); returns its seconds or None."""
    if stage_done(stage):
        print(f"[reproduce] done already: {stage.title} ({stage.save_dir})", flush=True)
        return None
    argv = stage_command(stage) + list(device_flags)
    print(f"\n[reproduce] === {stage.title}\n$ python main.py {shlex.join(argv)}", flush=True)
    os.makedirs(stage.save_dir, exist_ok=True)
    marker = os.path.join(stage.save_dir, MARKER)
    if os.path.exists(marker):
        os.remove(marker)
    write_json_atomic(started_path(stage.save_dir), identity(stage))
    t0 = time.time()
    rc = jnerf_main.main(argv)
    if rc in (130, 143):                   # Ctrl-C / SIGTERM: the stage saved what it could; stop everything
        print(f"[reproduce] stopped ({'SIGINT' if rc == 130 else 'SIGTERM'}) in stage '{stage.title}'; "
              "run the same command again to continue", file=sys.stderr, flush=True)
        raise SystemExit(rc)
    missing = [p for p in stage.outputs if not os.path.isfile(p)]
    if rc != 0 or missing:
        raise InputError(f"stage '{stage.title}' failed (exit code {rc}"
                         + (f"; missing {missing[0]}" if missing else "") + "); see the messages above")
    seconds = time.time() - t0
    write_json_atomic(marker, dict(identity(stage), command=argv, seconds=round(seconds, 3)))
    return seconds


# ---------------------------------------------------------------------------------- scenes

def synthetic_params(plan, scene):
    """(generate_scene arguments, data folder) of a synthetic room."""
    params = dict(variant=0, frames=150, width=80, height=60, seed=0)
    params.update({k: int(v) for k, v in scene.synthetic.items()})
    return params, os.path.join(plan.data_root, _slug(scene.name))


def scene_config(plan, scene, data):
    """The scene's config dict: its YAML, dataset_dir `data`, for a synthetic room its width and height,
    then config_overrides applied."""
    with open(scene.config) as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise InputError(f"{scene.config}: does not hold a mapping of sections")
    if scene.synthetic is not None:        # frames are loaded at the size they were generated at
        params, _ = synthetic_params(plan, scene)
        cfg.setdefault("experiment", {}).update(width=params["width"], height=params["height"])
    merge_into(cfg, json.loads(json.dumps(plan.config_overrides)))
    cfg.setdefault("experiment", {})["dataset_dir"] = os.path.abspath(data)
    return cfg


def prepare_scene(plan, scene):
    """The scene's data (a synthetic room generated once into data_root) and its config file
    (<out>/<scene>/config.yaml: `scene_config`)."""
    if scene.synthetic is not None:
        params, data = synthetic_params(plan, scene)
        if not scene_complete(data, **params):
            print(f"[reproduce] generating synthetic room {params} in {data}", flush=True)
            generate_scene(data, frames=params["frames"], width=params["width"], height=params["height"],
                           seed=params["seed"], variant=params["variant"], stats=False)
    else:
        data = scene.dataset_dir
    cfg = scene_config(plan, scene, data)
    path = os.path.join(scene_dir(plan.out_dir, scene.name), "config.yaml")
    text = yaml.safe_dump(cfg, sort_keys=False)
    old = open(path).read() if os.path.isfile(path) else None
    if old != text:                        # rewritten only on a change, which reruns the stages
        write_text_atomic(path, text)
    return path


def run_scene(plan, scene, device_flags=()):
    """Every stage of one scene; returns {stage title: seconds} of the stages that ran."""
    os.makedirs(scene_dir(plan.out_dir, scene.name), exist_ok=True)
    t0 = time.time()
    config = prepare_scene(plan, scene)
    ran = {"scene data": time.time() - t0}
    for stage in scene_stages(plan, scene, config):
        seconds = run_stage(stage, device_flags)
        if seconds is not None:
            ran[stage.title] = seconds
    return ran
