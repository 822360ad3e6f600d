"""Run folders: lock, refusal of another run's results, --overwrite, stale metrics, orphan files."""
import os
import subprocess
import sys

import pytest

from utils.atomic import clean_orphans, write_json_atomic
from utils.errors import InputError
from utils.rundir import RunLock, check_output_dir, prepare_run_dir, previous_results


def test_output_dir_that_is_a_file_or_under_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(InputError, match=r"--save_dir .*f is a file, not a folder"):
        check_output_dir(str(f))
    with pytest.raises(InputError, match=r"--seed_dir .*f/sub is not writable"):
        check_output_dir(str(f / "sub"), "--seed_dir")
    check_output_dir(str(tmp_path / "new" / "deep"))
    assert (tmp_path / "new" / "deep").is_dir() and os.listdir(tmp_path / "new" / "deep") == []


def test_lock_names_the_live_pid_and_takes_over_a_stale_one(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock = tmp_path / ".lock"
        import socket
        lock.write_text(f"{socket.gethostname()} {child.pid}\n")
        with pytest.raises(InputError, match=f"in use by a running job \\(PID {child.pid}\\)"):
            RunLock(str(tmp_path)).acquire()
    finally:
        child.kill()
        child.wait()
    with RunLock(str(tmp_path)) as held:          # the process is gone: stale, taken over
        assert held.held and lock.read_text().split()[1] == str(os.getpid())
    assert not lock.exists()


def test_previous_results_are_refused_unless_resume_or_overwrite(tmp_path):
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "000100.ckpt").write_bytes(b"x")
    (d / "seeds").mkdir()
    (d / "seeds" / "mask_ids.npy").write_bytes(b"x")
    write_json_atomic(str(d / "metrics.json"), {"a": 1})
    assert previous_results(str(d)) == ["metrics.json", "checkpoints/000100.ckpt"]
    with pytest.raises(InputError, match="already holds a run .*metrics.json.*--resume.*--overwrite"):
        prepare_run_dir(str(d))
    assert (d / "metrics.json").exists()                    # refused: nothing touched
    prepare_run_dir(str(d), resume=True)                     # continue: stale metrics removed, checkpoints kept
    assert not (d / "metrics.json").exists() and (d / "checkpoints" / "000100.ckpt").exists()
    prepare_run_dir(str(d), overwrite=True)                  # clear: everything but the seeds
    assert sorted(os.listdir(d)) == ["seeds"] and (d / "seeds" / "mask_ids.npy").exists()


def test_orphan_temporary_files_of_dead_processes_are_removed(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / "sub" / f"000100.ckpt.tmp{child.pid}"
    dead.parent.mkdir()
    dead.write_bytes(b"half")
    mine = tmp_path / f"metrics.json.tmp{os.getpid()}"
    mine.write_text("{")
    assert clean_orphans(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and mine.exists()


def test_strict_json(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(str(tmp_path / "m.json"), {"x": float("nan")})
    assert not os.listdir(tmp_path)          # no half-written or temporary file left
