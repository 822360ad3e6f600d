"""Write-then-rename: a reader never sees a half-written file under its final name.

Temporary names are `<name>.tmp<pid><suffix>` beside the target (same filesystem, so the rename
is atomic); a failed write removes its temporary file, and its OSError names the final path
(`exc.filename`; `utils.rundir.write_failure` turns it into "cannot write PATH: <reason>").
`clean_orphans` removes the temporary files left by a process that was killed mid-write.
"""
import contextlib
import glob
import json
import os
import re

_TMP = re.compile(r"\.tmp(\d+)")


def temp_path(path, suffix=""):
    return f"{path}.tmp{os.getpid()}{suffix}"


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path to write to; on success it is renamed to `path`, on error removed.
    `suffix` keeps an extension that a writer dispatches on (e.g. '.mp4')."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = temp_path(path, suffix)
    try:
        os.makedirs(folder, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None or exc.filename == tmp:
            exc.filename = path            # messages name the file the user knows, not the temporary
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path, data):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json_atomic(path, data):
    """Strict JSON (NaN/inf refused: convert them to None first, see utils.metrics.to_jsonable)."""
    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def clean_orphans(folder, recursive=True):
    """Remove temporary files of dead processes under `folder`; returns the removed paths."""
    removed = []
    pattern = os.path.join(folder, "**", "*.tmp*") if recursive else os.path.join(folder, "*.tmp*")
    for path in glob.glob(pattern, recursive=recursive):
        m = _TMP.search(os.path.basename(path))
        if not m or not os.path.isfile(path) or pid_alive(int(m.group(1))):
            continue
        os.remove(path)
        removed.append(path)
    return removed


def pid_alive(pid):
    """Whether a process with this PID exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
