"""`python -m experiments.reproduce experiments/<name>.yaml`: the paper's comparison in one command.

For every scene of the YAML (docs/REPRODUCE.md has the format): a plain NeRF, Jacobi shaping from
it (JacobiNeRF), and for every label space (semantic, instance) x label regime (one click per
class, --partial_perc regions, sparse-view ratios, dense views): the seeds (made once, saved, read
by every method), 2D and 3D label propagation through the plain and the shaped checkpoints, and
the Semantic-NeRF baseline (joint and/or fine-tune protocol, each evaluated in 2D and 3D). Then
results.md / results.json (per scene and the mean; one row per method, one column per regime and
metric) and miou_vs_sparsity.png in the output folder (experiments/results.py).

Every stage is a `main.py` command run in-process (`main.main(argv)`); each is printed so it can
be rerun by hand. A stage is skipped when its completion marker (`<stage>/.stage_complete`,
written last) records the same command and config, and its outputs exist; an interrupted training
stage continues from its latest checkpoint (--resume), any other incomplete stage starts again
(--overwrite). So a crashed or killed run is resumed by running the same command again, and a
second call of a finished run does no work.

Several processes share the scenes, whole scenes each, through the launcher that started them:
- `torchrun --nproc_per_node G [--nnodes N ...] -m experiments.reproduce X.yaml`: rank RANK of
  WORLD_SIZE takes scenes RANK, RANK + WORLD_SIZE, ...; its stages run on cuda:LOCAL_RANK (--gpu);
  the ranks meet at a torch.distributed barrier (NCCL on GPUs, gloo on CPUs) and rank 0 writes the
  combined results (the output folder must be one all ranks see);
- a SLURM job array (`sbatch --array=0-K ...`): task SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of
  SLURM_ARRAY_TASK_COUNT takes its share the same way; every task writes the results of the scenes
  finished so far, so the last one to finish writes the whole table (or run with --collect).
Both combine (an array of torchrun jobs). There is no scheduler of its own.
"""
import argparse
import datetime
import hashlib
import json
import os
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import yaml

import main as jnerf_main
from datasets.seeds import seed_folder_name
from datasets.synthetic import generate_scene, scene_complete
from experiments.layout import DIMS, LABEL_SPACES, METHODS, cell_metrics, regime_dir, scene_dir, seed_dir
from experiments.layout import slug as _slug
from experiments.results import collect_results, write_results
from models.checkpoints import latest_checkpoint
from utils.atomic import write_json_atomic, write_text_atomic
from utils.errors import InputError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = ".stage_complete"          # in the stage's folder, written last


def started_path(save_dir):
    """The record of a started stage's command, beside its folder (--overwrite clears the folder)."""
    return os.path.join(os.path.dirname(os.path.normpath(save_dir)), f".{os.path.basename(os.path.normpath(save_dir))}.started")
DEFAULT_METRICS = ("miou", "total_accuracy", "class_average_accuracy")
TRAINING_KINDS = ("plain", "jnerf", "semantic_joint", "semantic_finetune")


# ---------------------------------------------------------------------------------- the YAML

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
    methods = _choices(raw.get("methods") or list(METHODS), METHODS, f"{path}: methods")
    spaces = _choices(raw.get("label_spaces") or ["semantic"], LABEL_SPACES, f"{path}: label_spaces")
    dims = _choices(raw.get("dims") or list(DIMS), DIMS, f"{path}: dims")
    stages = raw.get("stages") or {}
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


# ---------------------------------------------------------------------------------- stages

@dataclass
class Stage:
    kind: str                             # plain | jnerf | propagate | semantic_joint | semantic_finetune
    title: str
    save_dir: str
    argv: List[str]                       # the main.py command without run-control flags
    outputs: List[str]                    # files that exist when the stage is complete
    config: str
    seeds: bool = False                   # uses seeds: --visualise_save the first time, else --load_saved
    out_dir: str = ""                     # the run's folder; markers record paths relative to it
    deps: List[str] = field(default_factory=list)   # folders of the stages whose checkpoints it reads

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
                        [plain_ckpt, os.path.join(plain_dir, "metrics.json")], config))
    ckpts = {"plain": plain_ckpt}
    if "jnerf" in plan.methods:
        d = os.path.join(root, "jnerf")
        ckpts["jnerf"] = _final_ckpt(d, st["jnerf"]["N_iters"])
        stages.append(Stage("jnerf", f"{scene.name}: Jacobi shaping (JacobiNeRF)", d,
                            common + ["--save_dir", d, "--ckpt_path", plain_ckpt, "--N_iters",
                                      str(st["jnerf"]["N_iters"])] + st["jnerf"]["flags"],
                            [ckpts["jnerf"], os.path.join(d, "metrics.json")], config, deps=[plain_dir]))
    prop_flags = st.get("propagate", {}).get("flags", [])
    for space in scene.label_spaces:
        space_flags = ["--test_instance"] if space == "instance" else []
        for regime in plan.regimes:
            base = regime_dir(plan.out_dir, scene.name, space, regime.name)
            seeded = common + regime.flags + space_flags + ["--seed_dir", seeds]
            for method in plan.methods:
                where = f"{scene.name}: {space}, {regime.name}: {METHODS[method]}"
                if method in ("plain", "jnerf"):
                    for dim in plan.dims:
                        metrics = cell_metrics(plan.out_dir, scene.name, space, regime.name, method, dim)
                        d = os.path.dirname(metrics)
                        stages.append(Stage("propagate", f"{where}, {dim.upper()} propagation", d,
                                            seeded + [f"--propagate_{dim}", "--rgb_layer", "--ckpt_path", ckpts[method],
                                                      "--save_dir", d] + regime.propagation + prop_flags,
                                            [metrics], config, seeds=True,
                                            deps=[os.path.dirname(os.path.dirname(ckpts[method]))]))
                else:
                    d = os.path.join(base, method)
                    n = st[method]["N_iters"]
                    mode = (["--semantic_finetune", "--ckpt_path", plain_ckpt] if method == "semantic_finetune"
                            else ["--semantic_nerf"])
                    stages.append(Stage(method, f"{where}", d,
                                        seeded + mode + ["--save_dir", d, "--N_iters", str(n)] + st[method]["flags"],
                                        [_final_ckpt(d, n)] + [cell_metrics(plan.out_dir, scene.name, space,
                                                                            regime.name, method, k) for k in DIMS],
                                        config, seeds=True, deps=[plain_dir] if method == "semantic_finetune" else []))
    for stage in stages:
        stage.out_dir = plan.out_dir
    return stages


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def identity(stage):
    """What a stage's markers record: its command (paths relative to the output folder), the
    scene config's hash, and per stage it reads a checkpoint of, that stage's own identity hash, so
    a changed plain NeRF stage reruns everything built on it."""
    deps = {}
    for d in stage.deps:
        m = _read_json(os.path.join(d, MARKER)) or {}
        rel = os.path.relpath(d, stage.out_dir) if stage.out_dir else d
        deps[rel] = hashlib.sha256(json.dumps([m.get("argv"), m.get("config_sha"), m.get("deps")],
                                              sort_keys=True).encode()).hexdigest()[:16]
    return dict(argv=stage.key, config_sha=_sha(stage.config), deps=deps)


def _same(record, ident):
    return isinstance(record, dict) and all(record.get(k) == v for k, v in ident.items())


def stage_done(stage):
    """The marker records this stage's identity, and every output exists."""
    return _same(_read_json(os.path.join(stage.save_dir, MARKER)), identity(stage)) \
        and all(os.path.isfile(p) for p in stage.outputs)


def stage_command(stage):
    """The argv to run now: resume an interrupted training stage of the same command, otherwise
    start over (--overwrite); seeds saved the first time (--visualise_save), read afterwards."""
    argv = list(stage.argv)
    same = _same(_read_json(started_path(stage.save_dir)), identity(stage))
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
        raise KeyboardInterrupt
    missing = [p for p in stage.outputs if not os.path.isfile(p)]
    if rc != 0 or missing:
        raise InputError(f"stage '{stage.title}' failed (exit code {rc}"
                         + (f"; missing {missing[0]}" if missing else "") + "); see the messages above")
    seconds = time.time() - t0
    write_json_atomic(marker, dict(identity(stage), command=argv, seconds=round(seconds, 3)))
    return seconds


# ---------------------------------------------------------------------------------- scenes

def _merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def prepare_scene(plan, scene):
    """The scene's data (a synthetic room generated once into data_root) and its config file
    (<out>/<scene>/config.yaml: the scene's config, dataset_dir set, for a synthetic room its
    width and height, then config_overrides applied)."""
    if scene.synthetic is not None:
        params = dict(variant=0, frames=150, width=80, height=60, seed=0)
        params.update({k: int(v) for k, v in scene.synthetic.items()})
        data = os.path.join(plan.data_root, _slug(scene.name))
        if not scene_complete(data, **params):
            print(f"[reproduce] generating synthetic room {params} in {data}", flush=True)
            generate_scene(data, frames=params["frames"], width=params["width"], height=params["height"],
                           seed=params["seed"], variant=params["variant"], stats=False)
    else:
        data = scene.dataset_dir
    with open(scene.config) as f:
        cfg = yaml.safe_load(f)
    if scene.synthetic is not None:        # frames are loaded at the size they were generated at
        cfg.setdefault("experiment", {}).update(width=params["width"], height=params["height"])
    _merge(cfg, json.loads(json.dumps(plan.config_overrides)))
    cfg.setdefault("experiment", {})["dataset_dir"] = os.path.abspath(data)
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


# ---------------------------------------------------------------------------------- launchers

def shard():
    """(index, count, local_rank, world_size) of this process: torchrun's RANK / WORLD_SIZE /
    LOCAL_RANK combined with a SLURM array's task index and count."""
    env = os.environ
    rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    local = int(env.get("LOCAL_RANK", 0))
    task = int(env.get("SLURM_ARRAY_TASK_ID", 0)) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    tasks = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    if not (0 <= rank < world) or not (0 <= task < tasks):
        raise InputError(f"RANK {rank} / WORLD_SIZE {world}, SLURM array task {task} of {tasks}: out of range")
    return task * world + rank, tasks * world, local, world


def my_scenes(scenes, index, count):
    """Whole scenes per process: scenes index, index + count, ..."""
    return scenes[index::count]


class Group:
    """torch.distributed when started by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo otherwise."""

    def __init__(self, world, local_rank, timeout_s):
        self.world, self.local_rank = world, local_rank
        self.active = world > 1
        self.cuda = torch.cuda.is_available()
        if self.active:
            import torch.distributed as dist
            backend = "nccl" if self.cuda else "gloo"
            if self.cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
            self.rank = dist.get_rank()
        else:
            self.rank = 0

    def barrier(self):
        if self.active:
            import torch.distributed as dist
            if self.cuda:
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def close(self):
        if self.active:
            import torch.distributed as dist
            dist.destroy_process_group()


def device_flags(local_rank):
    """The stages' --gpu: this process's GPU (LOCAL_RANK) when there is CUDA."""
    return ["--gpu", str(local_rank)] if torch.cuda.is_available() else []


# ---------------------------------------------------------------------------------- entry

def reproduce(yaml_path, out_dir=None, data_root=None, collect_only=False, dry_run=False):
    """Run (or with collect_only, only tabulate) the plan of `yaml_path`; returns
    dict(results, ran {scene: {stage: seconds}}, failed {scene: message}, wall_s)."""
    t0 = time.time()
    plan = load_plan(yaml_path, out_dir, data_root)
    index, count, local, world = shard()
    mine = my_scenes(plan.scenes, index, count)
    if dry_run:
        for scene in mine:
            config = os.path.join(scene_dir(plan.out_dir, scene.name), "config.yaml")
            for stage in scene_stages(plan, scene, config):
                print(f"# {stage.title}\npython main.py {shlex.join(stage.argv)}")
        return dict(results=None, ran={}, failed={}, wall_s=0.0)
    group = None if collect_only else Group(world, local, plan.barrier_timeout_s)
    ran, failed = {}, {}
    try:
        if not collect_only:
            print(f"[reproduce] {plan.name}: process {index} of {count} takes scenes {[s.name for s in mine]}"
                  + (f" on cuda:{local}" if torch.cuda.is_available() else ""), flush=True)
            for scene in mine:
                t1 = time.time()
                try:
                    ran[scene.name] = run_scene(plan, scene, device_flags(local))
                except Exception as exc:            # the other scenes (and ranks) go on; reported below
                    if not isinstance(exc, InputError):
                        traceback.print_exc()
                    failed[scene.name] = f"{type(exc).__name__}: {exc}"
                    print(f"[reproduce] scene {scene.name} failed: {exc}", file=sys.stderr, flush=True)
                ran.setdefault(scene.name, {})["total"] = time.time() - t1
            timing = dict(process=index, processes=count, scenes=[s.name for s in mine], stages=ran, failed=failed,
                          wall_s=time.time() - t0, device=f"cuda:{local}" if torch.cuda.is_available() else "cpu")
            write_json_atomic(os.path.join(plan.out_dir, "timings", f"process_{index:03d}.json"), timing)
            group.barrier()
        results = None
        if collect_only or group.rank == 0:
            results = collect_results(plan)
            write_results(plan, results)
            print(f"\n[reproduce] results: {os.path.join(plan.out_dir, 'results.md')}", flush=True)
    finally:
        if group is not None:
            group.close()
    return dict(results=results, ran=ran, failed=failed, wall_s=time.time() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n")[0])
    p.add_argument("yaml", help="the reproduction YAML (e.g. experiments/demo.yaml)")
    p.add_argument("--out_dir", default=None, help="output folder (unset: the YAML's out_dir, else runs/reproduce_<name>)")
    p.add_argument("--data_root", default=None, help="where synthetic rooms are generated (unset: <out_dir>/data)")
    p.add_argument("--collect", action="store_true", help="only write the results of the stages already finished")
    p.add_argument("--dry_run", action="store_true", help="print this process's stage commands and exit")
    args = p.parse_args(argv)
    box = {}

    def go():
        box.update(reproduce(args.yaml, args.out_dir, args.data_root, args.collect, args.dry_run))

    rc = run_cli(go)
    if rc == 0 and box.get("failed"):
        return 1
    return rc


if __name__ == "__main__":
    jnerf_main.configure_threads()
    sys.exit(main())
