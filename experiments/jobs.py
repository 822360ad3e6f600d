"""Stages (experiments.stages.Stage) as `python main.py` subprocesses, up to N at a time, each
once the stages it waits for are complete.

The markers are the runner's (experiments/stages.py): a complete stage is skipped, an
interrupted training stage continues from its checkpoint (--resume), any other incomplete stage
starts over (--overwrite), seeds are saved by the first stage that needs them and read by the
later ones (so a stage that reads seeds must wait for the one that writes them). With one job
the stages print to the console; with several, each writes <log_dir>/<stage folder>.log and a
failed stage's last lines are printed. A failed stage does not stop the others; the stages that
wait for it are not run. On a GPU machine slot k runs on GPU gpus[k % len(gpus)]; on the CPU each
process gets cores / jobs threads (unless OMP_NUM_THREADS is set).
"""
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Tuple

from experiments.stages import MARKER, Stage, identity, stage_command, stage_done, started_path
from utils.atomic import write_json_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Job:
    stage: Stage
    after: Tuple[str, ...] = ()           # save_dirs of the stages that must be complete first


def _tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class _Running:
    def __init__(self, job, slot, argv, proc, log_path, log_file):
        self.job, self.slot, self.argv, self.proc = job, slot, argv, proc
        self.log_path, self.log_file = log_path, log_file
        self.t0 = time.time()


def run_jobs(jobs, n_jobs=1, gpus=(), log_dir=None, poll_s=0.2):
    """Run `jobs` (in list order as they become ready); returns dict(ran {title: seconds},
    skipped [titles complete already], failed {title: message})."""
    dirs = {j.stage.save_dir for j in jobs}
    unknown = [a for j in jobs for a in j.after if a not in dirs]
    if unknown:
        raise ValueError(f"a job waits for {unknown[0]}, which is no job's folder")
    n_jobs = max(1, int(n_jobs))
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // n_jobs))
    pending, running = list(jobs), []
    done, broken = set(), set()
    ran, skipped, failed = {}, [], {}
    free = list(range(n_jobs))
    try:
        while pending or running:
            for job in list(pending):
                if not free:
                    break
                st = job.stage
                if any(a in broken for a in job.after):
                    pending.remove(job)
                    broken.add(st.save_dir)
                    failed[st.title] = "not run: a stage it waits for failed"
                    continue
                if not all(a in done for a in job.after):
                    continue
                pending.remove(job)
                if stage_done(st):
                    print(f"[jobs] done already: {st.title}", flush=True)
                    done.add(st.save_dir)
                    skipped.append(st.title)
                    continue
                running.append(_start(job, free.pop(0), gpus, log_dir if n_jobs > 1 else None, env))
            if not running:
                if pending:
                    raise RuntimeError(f"no stage can start: {pending[0].stage.title} waits for {pending[0].after}")
                break
            time.sleep(poll_s)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                free.append(r.slot)
                free.sort()
                message = _finish(r)
                st = r.job.stage
                if message is None:
                    done.add(st.save_dir)
                    ran[st.title] = time.time() - r.t0
                else:
                    broken.add(st.save_dir)
                    failed[st.title] = message
    except KeyboardInterrupt:
        for r in running:                 # they got the Ctrl-C too: let the training ones save a checkpoint
            try:
                r.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                r.proc.kill()
            if r.log_file is not None:
                r.log_file.close()
        raise
    return dict(ran=ran, skipped=skipped, failed=failed)


def _start(job, slot, gpus, log_dir, env):
    st = job.stage
    argv = stage_command(st)              # before the start record: it decides between --resume and --overwrite
    if gpus:
        argv += ["--gpu", str(gpus[slot % len(gpus)])]
    os.makedirs(st.save_dir, exist_ok=True)
    marker = os.path.join(st.save_dir, MARKER)
    if os.path.exists(marker):
        os.remove(marker)
    write_json_atomic(started_path(st.save_dir), identity(st))
    cmd = [sys.executable, os.path.join(ROOT, "main.py")] + argv
    print(f"[jobs] start{'' if not gpus else f' (GPU {argv[-1]})'}: {st.title}\n$ python main.py {shlex.join(argv)}",
          flush=True)
    log_path = log_file = None
    if log_dir is not None:
        rel = os.path.relpath(st.save_dir, st.out_dir) if st.out_dir else os.path.basename(st.save_dir)
        log_path = os.path.join(log_dir, rel.replace(os.sep, "__") + ".log")
        os.makedirs(log_dir, exist_ok=True)
        log_file = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT if log_file else None)
    return _Running(job, slot, argv, proc, log_path, log_file)


def _finish(r):
    """None when the stage completed (its marker written), else why not."""
    if r.log_file is not None:
        r.log_file.close()
    st, rc = r.job.stage, r.proc.returncode
    if rc in (130, 143, -2, -15):
        raise KeyboardInterrupt
    missing = [p for p in st.outputs if not os.path.isfile(p)]
    seconds = time.time() - r.t0
    if rc != 0 or missing:
        message = f"exit code {rc}" + (f"; missing {missing[0]}" if missing else "")
        tail = _tail(r.log_path) if r.log_path else ""
        print(f"[jobs] FAILED ({message}): {st.title}" + (f"; log {r.log_path}:\n{tail}" if tail else ""),
              file=sys.stderr, flush=True)
        return message
    write_json_atomic(os.path.join(st.save_dir, MARKER), dict(identity(st), command=r.argv, seconds=round(seconds, 3)))
    print(f"[jobs] done in {seconds:.1f} s: {st.title}", flush=True)
    return None
