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

The pieces: experiments/plan.py (the YAML into a Plan), experiments/stages.py (the stages of a
scene, their markers, running them), experiments/launch.py (the shares of torchrun ranks and SLURM
tasks, the barrier), experiments/results.py (the tables and the plot), experiments/estimate.py
(--estimate: the projected time of every stage, scene and process); this module is the entry.
"""
import os
import shlex
import sys
import time
import traceback

import torch

import main as jnerf_main
from experiments.estimate import DEFAULT_CALIBRATION_STEPS, estimate_markdown, project_plan
from experiments.launch import Group, device_flags, my_scenes, shard
from experiments.layout import scene_dir
from experiments.plan import load_plan
from experiments.results import collect_results, write_results
from experiments.stages import run_scene, scene_stages
from utils.atomic import write_json_atomic, write_text_atomic
from utils.config import ArgumentParser
from utils.errors import InputError, run_cli
from utils.rundir import exit_on_sigterm

RESUME_HINT = "run the same command again to continue"


def reproduce(yaml_path, out_dir=None, data_root=None, collect_only=False, dry_run=False):
    """Run (or with collect_only, only tabulate) the plan of `yaml_path`; returns
    dict(results, ran {scene: {stage: seconds}}, failed {scene: message}, wall_s)."""
    t0 = time.time()
    plan = load_plan(yaml_path, out_dir, data_root)
    check_folders(plan, collect_only)
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


def check_folders(plan, collect_only=False):
    """The output and data folders are folders (or can be), and --collect reads a run that exists."""
    for flag, path in (("--out_dir", plan.out_dir), ("--data_root", plan.data_root)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{flag} {path} is a file, not a folder (from {plan.path} or the command line)")
    if collect_only:
        from experiments.layout import scene_dir as folder_of
        if not any(os.path.isdir(folder_of(plan.out_dir, s.name)) for s in plan.scenes):
            raise InputError(f"--collect: {plan.out_dir} holds no scene folder of {plan.path} "
                             f"({', '.join(s.name for s in plan.scenes)}); check --out_dir (nothing was written)")


def estimate(yaml_path, out_dir=None, data_root=None, processes=None,
             calibration_steps=DEFAULT_CALIBRATION_STEPS):
    """--estimate: print the projected time of the plan of `yaml_path` on this machine (and write it
    to <out_dir>/estimate.md), calibrating the rates no earlier run recorded; returns
    experiments.estimate.project_plan's dict. processes: how many share the scenes (unset: the
    launcher's count, 1 when started by python)."""
    plan = load_plan(yaml_path, out_dir, data_root)
    check_folders(plan)
    _, count, local, world = shard()
    if world > 1:
        raise InputError("--estimate runs in one process: start it with python, not torchrun "
                         "(--processes N projects N processes)")
    est = project_plan(plan, processes or count, calibration_steps, local)
    text = estimate_markdown(plan, est)
    print("\n" + text, flush=True)
    write_text_atomic(os.path.join(plan.out_dir, "estimate.md"), text)
    return est


def main(argv=None):
    p = ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n")[0])
    p.add_argument("yaml", help="the reproduction YAML (e.g. experiments/demo.yaml)")
    p.add_argument("--out_dir", default=None, help="output folder (unset: the YAML's out_dir, else runs/reproduce_<name>)")
    p.add_argument("--data_root", default=None, help="where synthetic rooms are generated (unset: <out_dir>/data)")
    p.add_argument("--collect", action="store_true", help="only write the results of the stages already finished")
    p.add_argument("--dry_run", action="store_true", help="print this process's stage commands and exit")
    p.add_argument("--estimate", action="store_true",
                   help="print each stage's projected time on this machine and the totals per scene and process "
                        "(rates of earlier runs in out_dir, else short calibration runs in <out_dir>/estimate)")
    p.add_argument("--processes", type=int, default=None,
                   help="with --estimate: processes sharing the scenes (unset: the launcher's, 1 under python)")
    p.add_argument("--calibration_steps", type=int, default=DEFAULT_CALIBRATION_STEPS,
                   help="with --estimate: training (and aggregator) steps of a calibration run")
    box = {}

    def go():
        args = p.parse_args(argv)
        if not args.estimate and (args.processes is not None
                                  or args.calibration_steps != DEFAULT_CALIBRATION_STEPS):
            raise InputError("--processes and --calibration_steps go with --estimate")
        if args.calibration_steps < 2:
            raise InputError(f"--calibration_steps {args.calibration_steps}: expected at least 2 (a steady rate "
                             "needs steps after the first)")
        if args.processes is not None and args.processes < 1:
            raise InputError(f"--processes {args.processes}: expected at least 1")
        if args.estimate:
            estimate(args.yaml, args.out_dir, args.data_root, args.processes, args.calibration_steps)
            return
        box.update(reproduce(args.yaml, args.out_dir, args.data_root, args.collect, args.dry_run))

    try:
        rc = run_cli(go)
    except KeyboardInterrupt:               # a second Ctrl-C while run_cli reported the first
        rc = 130
    if rc == 130:
        print(f"[reproduce] {RESUME_HINT}", file=sys.stderr, flush=True)
    if rc == 0 and box.get("failed"):
        return 1
    return rc


if __name__ == "__main__":
    exit_on_sigterm(RESUME_HINT)     # a message, the stage's lock released (with blocks), exit 143
    jnerf_main.configure_threads()
    sys.exit(main())
