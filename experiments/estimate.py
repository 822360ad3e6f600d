"""`python -m experiments.reproduce X.yaml --estimate`: what a plan will cost on this machine, stage
by stage, per scene and per process, before it runs.

A training stage (plain, jnerf, semantic_joint, semantic_finetune) takes its fixed seconds +
N_iters x its seconds per step: the `steady_seconds_per_step` of a metrics.json
(`seconds_per_step` where a file lacks it). A propagation stage takes its fixed seconds + views x
its seconds per test view ((timings.test_views + timings.writing) / test_views) + with
--train_agg, agg_steps x the aggregator's seconds per step. The fixed seconds are what the
recorded run took besides its steps (and views): the stage's whole time (the `seconds` its marker
records: start-up, data loading, warm-up and graph capture, the final test render or evaluation,
directions and selection) less the steps (views, aggregator steps) times their rates; without a
marker, the timed part of metrics.json (the training loop; propagation's timings.total) stands
for the whole. So a finished stage projects to the time it took.

A stage's rate comes, in this order, from: its own metrics.json in the plan's out_dir (a finished
stage, or one that ran before with other flags or steps); another stage of the plan that runs at
the same speed (`Stage.speed_key`: the kind, for propagation the dim, label space and propagation
flags); a calibration run: that stage in <out_dir>/estimate/ on the plan's first scene (that has
it), training for --calibration_steps steps (and as many aggregator steps at most), run through
main.py like any stage (markers, so a second --estimate reuses it). The test views of a scene come
from its own propagation records, else from those of the calibration runs' scene.

Processes share the scenes as the launcher does (experiments/launch.py: scenes i, i + n, ...).
"""
import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

import main as jnerf_main
from experiments.launch import device_flags, my_scenes
from experiments.layout import read_json, scene_dir
from experiments.plan import TRAINING_KINDS
from experiments.stages import MARKER, prepare_scene, run_stage, scene_stages, stage_done
from utils.errors import InputError

CALIBRATION_DIR = "estimate"          # below the plan's out_dir
DEFAULT_CALIBRATION_STEPS = 300


@dataclass
class Rate:
    per_unit: float                       # seconds per training step, or per test view
    fixed: float = 0.0                    # seconds of the recorded run besides its steps and views
    agg_per_step: Optional[float] = None  # propagation with an aggregator: seconds per aggregator step
    views: Optional[int] = None           # test views of the run that recorded it
    path: str = ""                        # its metrics.json


@dataclass
class Row:
    scene: str
    title: str
    kind: str                             # the stage's kind (propagate_2d / _3d for propagation)
    units: int                            # training steps, or test views
    unit: str                             # "step" | "view"
    rate: float                           # seconds per unit
    fixed: float                          # seconds besides units x rate (aggregator steps included)
    seconds: float                        # the projection
    source: str                           # where the rate (and the views) came from
    done: bool                            # complete already (a run would skip it)


def recorded_rate(stage):
    """The Rate in the stage folder's metrics.json, or None (no file, or no step / view timed)."""
    path = os.path.join(stage.save_dir, "metrics.json")
    m = read_json(path)
    if not isinstance(m, dict):
        return None
    marker = read_json(os.path.join(stage.save_dir, MARKER))   # written after this metrics.json, same run
    wall = marker.get("seconds") if isinstance(marker, dict) else None
    if stage.kind in TRAINING_KINDS:
        rate, steps = m.get("steady_seconds_per_step") or m.get("seconds_per_step"), int(m.get("steps") or 0)
        if not rate or steps < 1:
            return None
        whole = float(wall if wall is not None else m.get("seconds", 0.0))
        return Rate(float(rate), max(0.0, whole - steps * float(rate)), views=m.get("test_views"), path=path)
    t, views = m.get("timings") or {}, int(m.get("test_views") or 0)
    if views < 1 or "test_views" not in t:
        return None
    per_views = float(t["test_views"]) + float(t.get("writing", 0.0))
    agg = m.get("aggregator") or {}
    agg_rate = agg.get("steady_seconds_per_step") or (agg["seconds"] / agg["steps"] if agg.get("steps") else None)
    agg_seconds = float(agg_rate) * int(agg["steps"]) if agg_rate else 0.0
    whole = float(wall if wall is not None else t.get("total", sum(float(v) for v in t.values())))
    return Rate(per_views / views, max(0.0, whole - per_views - agg_seconds),
                float(agg_rate) if agg_rate else None, views, path)


def aggregator_steps(stage, fallback_config=None):
    """Aggregator steps of a propagation stage (0 without --train_agg), as main.py resolves them."""
    if "--train_agg" not in stage.argv:
        return 0
    argv = list(stage.argv)
    i = argv.index("--config_file") + 1
    if fallback_config and not os.path.isfile(argv[i]):     # a scene not prepared yet: its source config
        argv[i] = fallback_config
    _, opts = jnerf_main.parse_options(argv)
    return int(opts.propagation.agg_steps) if opts.propagation.train_agg else 0


def calibration_plan(plan, steps):
    """The plan's training stages cut to `steps` steps, in <out_dir>/estimate/."""
    stages = {k: dict(v, N_iters=max(1, min(int(v["N_iters"]), steps))) if k in TRAINING_KINDS else dict(v)
              for k, v in plan.stages.items()}
    return dataclasses.replace(plan, out_dir=os.path.join(plan.out_dir, CALIBRATION_DIR), stages=stages)


def _config(plan, scene):
    return os.path.join(scene_dir(plan.out_dir, scene.name), "config.yaml")


def _with_deps(stages, chosen):
    """`chosen` stages and the stages whose checkpoints they read, in run order."""
    by_dir = {s.save_dir: s for s in stages}
    keep, todo = set(), list(chosen)
    while todo:
        s = todo.pop()
        if s.save_dir not in keep:
            keep.add(s.save_dir)
            todo += [by_dir[d] for d in s.deps if d in by_dir]
    return [s for s in stages if s.save_dir in keep]


def calibrate(plan, missing, steps, local_rank=0):
    """Run the calibration stages of the speed keys in `missing`; returns {key: (Rate, scene name)}
    (including calibrations recorded by an earlier call) and the titles of the stages that ran."""
    cal = calibration_plan(plan, steps)
    rates, ran, left = {}, [], set(missing)
    for scene in cal.scenes:
        if not left:
            break
        stages = scene_stages(cal, scene, _config(cal, scene))
        first = {}
        for s in stages:
            if s.speed_key in left:
                first.setdefault(s.speed_key, s)
        if not first:
            continue
        prepare_scene(cal, scene)          # data generated or found, the config written (once)
        for s in _with_deps(stages, first.values()):
            if s.kind == "propagate" and "--train_agg" in s.argv:      # the aggregator's rate needs few steps
                s.argv += ["--agg_steps", str(max(1, min(aggregator_steps(s), steps)))]
            if run_stage(s, device_flags(local_rank)) is not None:        # skipped when done already
                ran.append(s.title)
        for key, s in first.items():
            rate = recorded_rate(s)
            if rate is None:
                raise InputError(f"--estimate: the calibration stage '{s.title}' wrote no timed metrics.json "
                                 f"({os.path.join(s.save_dir, 'metrics.json')})")
            rates[key] = (rate, scene.name)
            left.discard(key)
    return rates, ran


def project_plan(plan, processes=1, calibration_steps=DEFAULT_CALIBRATION_STEPS, local_rank=0):
    """Project every stage of `plan` (module doc). Returns dict(rows [Row], scenes {name: dict(seconds,
    left)}, processes [dict(index, scenes, seconds, left)], wall_s (the longest process), calibrated
    [titles of the calibration stages run now])."""
    if processes < 1:
        raise InputError(f"--processes {processes}: expected at least 1")
    per_scene = {s.name: scene_stages(plan, s, _config(plan, s)) for s in plan.scenes}
    own, by_key, views = {}, {}, {}
    for name, stages in per_scene.items():
        for s in stages:
            r = recorded_rate(s)
            if r is not None:
                own[s.save_dir] = r
                by_key.setdefault(s.speed_key, []).append(r)
                if s.kind == "propagate" and name not in views:      # training may see another split
                    views[name] = int(r.views)                           # (--training_mode: frame 0)
    needed = {s.speed_key for stages in per_scene.values() for s in stages}
    cal, ran = calibrate(plan, sorted(needed - set(by_key)), calibration_steps, local_rank) \
        if needed - set(by_key) else ({}, [])
    for key, (rate, scene) in cal.items():      # the calibration scene's views, for scenes without records
        if key.startswith("propagate") and scene not in views:
            views[scene] = int(rate.views)
    rows = []
    out = plan.out_dir
    for scene in plan.scenes:
        for s in per_scene[scene.name]:
            if s.save_dir in own:
                rate, source = own[s.save_dir], "recorded: "
            elif s.speed_key in by_key:
                rate, source = by_key[s.speed_key][0], "recorded (same kind): "
            else:
                rate, source = cal[s.speed_key][0], "calibration: "
            source += os.path.relpath(rate.path, out)
            done = os.path.isfile(s.config) and stage_done(s)
            if s.kind in TRAINING_KINDS:
                rows.append(Row(scene.name, s.title, s.kind, s.steps, "step", rate.per_unit, rate.fixed,
                                rate.fixed + s.steps * rate.per_unit, source, done))
                continue
            n, note = views.get(scene.name), ""
            if n is None:                       # no propagation record of this scene: another scene's views
                other = next(iter(views), None)
                if other is None:
                    raise InputError(f"--estimate: no record gives the test views of {scene.name}")
                n, note = views[other], f"; views of {other}"
            agg = aggregator_steps(s, scene.config)
            fixed = rate.fixed + (agg * rate.agg_per_step if agg and rate.agg_per_step else 0.0)
            rows.append(Row(scene.name, s.title, s.speed_key.split()[0], n, "view", rate.per_unit, fixed,
                            n * rate.per_unit + fixed, source + note, done))
    scenes = {sc.name: dict(seconds=sum(r.seconds for r in rows if r.scene == sc.name),
                            left=sum(r.seconds for r in rows if r.scene == sc.name and not r.done))
              for sc in plan.scenes}
    procs = []
    for i in range(processes):
        mine = [sc.name for sc in my_scenes(plan.scenes, i, processes)]
        procs.append(dict(index=i, scenes=mine, seconds=sum(scenes[n]["seconds"] for n in mine),
                          left=sum(scenes[n]["left"] for n in mine)))
    return dict(rows=rows, scenes=scenes, processes=procs, wall_s=max(p["seconds"] for p in procs),
                calibrated=ran)


def duration(seconds):
    """Seconds as '42.0 s', '12.5 min' or '3.21 h'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def estimate_markdown(plan, est):
    """The projection as Markdown: a row per stage, then the totals per scene and per process."""
    lines = [f"# Projected time of {plan.name} on this machine", "",
             "| stage | kind | steps | s/step | fixed s | projected | rate from |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in est["rows"]:
        units = f"{r.units}" if r.unit == "step" else f"{r.units} views"
        per = f"{r.rate:.4g}" if r.unit == "step" else f"{r.rate:.4g} /view"
        lines.append(f"| {r.title}{' (done)' if r.done else ''} | {r.kind} | {units} | {per} | "
                     f"{r.fixed:.1f} | {duration(r.seconds)} | {r.source} |")
    lines += ["", "| scene | projected | left to run |", "| --- | ---: | ---: |"]
    lines += [f"| {n} | {duration(v['seconds'])} | {duration(v['left'])} |" for n, v in est["scenes"].items()]
    lines += ["", "| process | scenes | projected | left to run |", "| ---: | --- | ---: | ---: |"]
    lines += [f"| {p['index']} | {', '.join(p['scenes']) or '-'} | {duration(p['seconds'])} | {duration(p['left'])} |"
              for p in est["processes"]]
    lines += ["", f"{len(est['processes'])} process(es): the longest takes {duration(est['wall_s'])}."]
    return "\n".join(lines) + "\n"

