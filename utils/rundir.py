"""Run folders: checked before any data is read, locked while a run is alive, never silently reused.

- `check_output_dir`: the folder is creatable and writable and is not a file;
- `RunLock`: `<save_dir>/.lock` holds the PID of the live run; a second run into the folder stops
  with a message naming that PID (a lock whose process is gone is stale and taken over);
- `check_run_dir` (before anything is read): a folder that already holds another run's results is
  refused unless the run continues it (`--resume`) or clears it (`--overwrite`, which keeps the
  seed folder: seeds are inputs a later run reads); `inputs_inside` lists the inputs that
  `--overwrite` would delete (the run refuses them);
- `start_run_dir` (once every input is validated and the checkpoint loaded, main.py): `--overwrite`
  clears the folder, a stale `metrics.json` is removed (it is written again only when the run
  finishes), temporary files of writes killed mid-way are removed. Until then nothing in the
  folder changes, so a run that stops on bad input leaves it as it was.

A run that has started can still stop on a fault; these are `RunStopped` exceptions that
`main.py` prints as one line with their own exit code (docs/RELIABILITY.md):
- `Diverged` (exit 1): a loss or weight became non-finite (`training.trainer`);
- `WriteFailed` (exit 1): a write failed (disk full, file size limit, read-only folder);
  `write_failure` turns the OSError into it;
- `Interrupted` (exit 130 for Ctrl-C, 143 for SIGTERM): the trainer saved a checkpoint at the
  current step; `resume_command` gives the command that continues the run.
`StopSignals` turns Ctrl-C / SIGTERM into a request the training loop answers between steps.
"""
import errno
import os
import shlex
import shutil
import signal
import socket
import sys
import threading

from utils.atomic import clean_orphans, pid_alive
from utils.errors import InputError

LOCK_NAME = ".lock"
METRICS_FILES = ("metrics.json", "metrics.md")
RUN_MARKERS = METRICS_FILES + ("exp_config.yaml",)


def check_output_dir(path, flag="--save_dir"):
    """Create `path` if needed and prove it writable; InputError naming `flag` otherwise."""
    if not path:
        raise InputError(f"{flag} is empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise InputError(f"{flag} {path} is not writable ({exc.strerror or exc})") from None


class RunLock:
    """`with RunLock(save_dir):` marks the folder as used by this process."""

    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False

    def owner(self):
        """PID of the live process holding the lock, or None (no lock, or a stale one)."""
        try:
            with open(self.path) as f:
                host, pid = f.read().split()[:2]
            pid = int(pid)
        except (OSError, ValueError):
            return None
        if host != socket.gethostname():
            return pid                     # another machine's run: assume it is alive
        return pid if pid_alive(pid) else None

    def acquire(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self.owner()
                if pid is not None:
                    where = os.path.dirname(self.path)
                    raise InputError(f"--save_dir {where} is in use by a running job (PID {pid}); wait for "
                                     f"it to finish or choose another --save_dir (remove {self.path} if that "
                                     "process is not a JacobiNeRF run)") from None
                os.remove(self.path)       # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return self
        raise InputError(f"cannot take the lock {self.path}")

    def release(self):
        if self.held and os.path.isfile(self.path):
            os.remove(self.path)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def previous_results(save_dir):
    """Names (relative to save_dir) that show an earlier run wrote here."""
    found = [n for n in RUN_MARKERS if os.path.isfile(os.path.join(save_dir, n))]
    ckpts = os.path.join(save_dir, "checkpoints")
    if os.path.isdir(ckpts):
        found += [f"checkpoints/{n}" for n in sorted(os.listdir(ckpts)) if n.endswith(".ckpt")][:3]
    return found


def clear_run_dir(save_dir, keep=()):
    """Remove everything in save_dir except the lock and the names in `keep`."""
    for name in os.listdir(save_dir):
        if name == LOCK_NAME or name in keep:
            continue
        path = os.path.join(save_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def check_run_dir(save_dir, resume=False, overwrite=False):
    """Refuse a folder holding another run's results unless resume/overwrite; changes nothing."""
    previous = previous_results(save_dir)
    if previous and not (resume or overwrite):
        shown = ", ".join(previous)
        raise InputError(f"--save_dir {save_dir} already holds a run ({shown}); pass --resume to continue it, "
                         "--overwrite to clear it, or choose another --save_dir")


def start_run_dir(save_dir, overwrite=False, keep=("seeds",)):
    """The run starts: remove orphan temporary files, clear the folder with overwrite (but `keep`),
    remove stale metrics."""
    clean_orphans(save_dir)
    if overwrite:
        clear_run_dir(save_dir, keep)
    for name in METRICS_FILES:
        path = os.path.join(save_dir, name)
        if os.path.isfile(path):
            os.remove(path)


def prepare_run_dir(save_dir, resume=False, overwrite=False, keep=("seeds",)):
    """check_run_dir, then start_run_dir (for callers with no inputs to validate in between)."""
    check_run_dir(save_dir, resume, overwrite)
    start_run_dir(save_dir, overwrite, keep)


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def inputs_inside(save_dir, inputs, keep=("seeds",)):
    """The (name, path) of `inputs` that --overwrite would delete: inside save_dir, not under a kept
    entry."""
    return [(name, p) for name, p in inputs if p and _inside(p, save_dir)
            and not any(_inside(p, os.path.join(save_dir, k)) for k in keep)]


# ---------------------------------------------------------------------------------- faults after the start

class RunStopped(Exception):
    """A started run stopped on a fault; `exit_code` is the process exit code, the message one line."""
    exit_code = 1
    prefix = "error: "


class Diverged(RunStopped):
    """A loss or a weight became non-finite (exit 1)."""


class WriteFailed(RunStopped):
    """A write failed: disk full, file size limit, read-only folder (exit 1)."""


class Interrupted(RunStopped):
    """Ctrl-C (exit 130) or SIGTERM (exit 143) during training; `checkpoint` holds step `step`."""
    prefix = ""

    def __init__(self, signum, step, checkpoint):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + int(signum)
        self.command = None
        super().__init__(self._text())

    def with_command(self, command):
        self.command = command
        self.args = (self._text(),)
        return self

    def _text(self):
        name = signal.Signals(self.signum).name
        text = f"interrupted ({name}) after step {self.step}; checkpoint saved: {self.checkpoint}"
        return text + (f"; continue with: {self.command}" if self.command else "")


WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT}


def write_failure(exc, last_good, folders=()):
    """WriteFailed for an OSError raised by a write, or None when `exc` is no write failure (disk
    full, file too large, read-only or quota anywhere; permission denied under one of `folders`)."""
    path = exc.filename
    under = path is not None and any(os.path.abspath(str(path)).startswith(os.path.abspath(f) + os.sep)
                                     for f in folders if f)
    if exc.errno not in WRITE_ERRNOS and not (exc.errno in (errno.EACCES, errno.EPERM) and under):
        return None
    reason = exc.strerror or os.strerror(exc.errno)
    return WriteFailed(f"cannot write {path or 'a file'}: {reason} (last good checkpoint: {last_good or 'none'})")


# ---------------------------------------------------------------------------------- interrupts

class StopSignals:
    """`with StopSignals() as stop:` Ctrl-C and SIGTERM set `stop.signum` instead of killing the
    process, so the training loop can finish its step, save and stop (`stop.signum` is checked
    between steps). A second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread
    (where handlers cannot be installed) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def exit_on_sigterm(hint=""):
    """SIGTERM raises SystemExit(143) (after one line on stderr, `hint` appended), so `with` blocks
    (the run lock, atomic writes) clean up; the training loop replaces it with `StopSignals` while it
    runs."""
    def handler(signum, frame):
        print("terminated (SIGTERM)" + (f"; {hint}" if hint else ""), file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def resume_command(argv, prog="python main.py"):
    """The command that continues an interrupted run: its flags without --ckpt_path (the latest
    checkpoint in --save_dir is taken) and --overwrite (it would clear the run), plus --resume."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in ("--overwrite", "--resume"):
            continue
        if name == "--ckpt_path":
            skip = "=" not in a
            continue
        out.append(a)
    return " ".join([prog, shlex.join(out + ["--resume"])])
