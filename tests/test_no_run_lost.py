"""No run lost (issue 18): nothing in a run folder is deleted or rewritten until every input is
validated and the checkpoint loaded; --overwrite never deletes an input of the run; --resume of a
finished run leaves it as it was; the demo locks its folder and draws clicks per --seed; a --resume
that cannot continue a run names the cause (mode, protocol, label space, --fix_density)."""
import hashlib
import os
import subprocess
import sys

import pytest
import yaml

from tests.cli_helpers import run_main, write_config
from tests.test_reliability import one_line
from tests.tiny_scene import write_tiny_replica

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder):
    """{relative path: (sha256, mtime_ns)} of every file under `folder`."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_tiny_replica(str(root), n_frames=11)
    return root


@pytest.fixture
def finished(tmp_path, data, capsys):
    """A finished 3-step run (checkpoints at 0..3): (config, save_dir)."""
    cfg = write_config(tmp_path, data, n_iters=3, logging=dict(step_save_ckpt=1))
    save = tmp_path / "run"
    rc, _, err = run_main(capsys, cfg, save, "--seed", "3")
    assert rc == 0, err
    return cfg, save


def test_resume_of_a_finished_run_leaves_it_exactly_as_it_was(finished, capsys):
    cfg, save = finished
    before = snapshot(save)
    rc, out, err = run_main(capsys, cfg, save, "--seed", "3", "--resume")
    assert rc == 0, err
    assert "nothing to do" in out and "left as it was" in out
    assert snapshot(save) == before


@pytest.mark.parametrize("breakage", ["network width", "a frame missing", "a damaged checkpoint"])
def test_a_resume_that_fails_deletes_and_rewrites_nothing(finished, tmp_path, data, capsys, breakage):
    cfg, save = finished
    flags = ["--seed", "3", "--resume", "--N_iters", "6"]
    needle = None
    if breakage == "network width":
        (tmp_path / "wide").mkdir()
        cfg = write_config(tmp_path / "wide", data, netwidth=32, n_iters=3)
        needle = "does not match the network of this config"
    elif breakage == "a frame missing":
        (data / "rgb" / "rgb_5.png").write_bytes(b"not a png")
        needle = "rgb_5.png"
    else:
        last = save / "checkpoints" / "000003.ckpt"
        raw = bytearray(last.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        last.write_bytes(bytes(raw))
        needle = "000003.ckpt"
    before = snapshot(save)
    rc, _, err = run_main(capsys, cfg, save, *flags)
    one_line(rc, err, 2, needle)
    assert snapshot(save) == before            # metrics.json and exp_config.yaml of the finished run kept


def test_overwrite_refuses_to_clear_an_input_of_the_run(finished, tmp_path, capsys):
    cfg, save = finished
    inside = str(save / "checkpoints" / "000003.ckpt")
    before = snapshot(save)
    rc, _, err = run_main(capsys, cfg, save, "--render_only", "--overwrite", "--ckpt_path", inside)
    one_line(rc, err, 2, f"--overwrite would clear --save_dir {save}", f"--ckpt_path {inside}")
    assert snapshot(save) == before
    config_inside = str(save / "exp_config.yaml")          # a run's saved config as the next one's config
    rc, _, err = run_main(capsys, config_inside, save, "--overwrite", "--N_iters", "2")
    one_line(rc, err, 2, f"--config_file {config_inside}")
    assert snapshot(save) == before
    # seeds under <save_dir>/seeds are kept by --overwrite, so they are no obstacle
    from utils.rundir import inputs_inside
    assert inputs_inside(str(save), [("--seed_dir", str(save / "seeds" / "x"))]) == []


def test_overwrite_with_bad_data_keeps_the_earlier_run(finished, data, capsys):
    cfg, save = finished
    (data / "rgb" / "rgb_5.png").write_bytes(b"not a png")
    before = snapshot(save)
    rc, _, err = run_main(capsys, cfg, save, "--overwrite")
    one_line(rc, err, 2, "rgb_5.png")
    assert snapshot(save) == before


def test_a_second_demo_into_a_locked_folder_stops_naming_the_first(tmp_path, capsys):
    import experiments.demo as demo
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        root = tmp_path / "demo"
        root.mkdir()
        (root / ".lock").write_text(f"{os.uname().nodename} {holder.pid}\n")
        assert demo.main(["--save_dir", str(root)]) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and str(root) in err and "Traceback" not in err
        assert sorted(os.listdir(root)) == [".lock"]                     # nothing generated or trained
    finally:
        holder.kill()
        holder.wait()


def test_demo_draws_the_clicks_of_each_seed_once(tmp_path, monkeypatch):
    import experiments.demo as demo
    calls = []
    monkeypatch.setattr(demo, "scene_complete", lambda path: True)
    monkeypatch.setattr(demo, "_stage", lambda title, argv: calls.append(argv) or 0.0)
    monkeypatch.setattr(demo, "_metrics", lambda save_dir: {"miou": 0.5})
    monkeypatch.setattr(demo, "compare_runs", lambda runs: "table")
    root = tmp_path / "d"
    (root / "seeds" / "seed_0" / "partial_perc_0.0").mkdir(parents=True)     # seed 0's clicks exist

    def seed_flags(seed):
        calls.clear()
        assert demo.main(["--save_dir", str(root), "--seed", str(seed), "--N_iters", "1"]) == 0
        first = calls[2]                                   # the first propagation stage
        return first[first.index("--seed_dir") + 1], "--visualise_save" in first, "--load_saved" in first

    assert seed_flags(0) == (str(root / "seeds" / "seed_0"), False, True)
    assert seed_flags(1) == (str(root / "seeds" / "seed_1"), True, False)
    assert not (root / ".lock").exists()


# ------------------------------------------------------------------ a --resume names what does not fit

@pytest.fixture
def semantic_run(tmp_path, data, capsys):
    cfg = write_config(tmp_path, data, n_iters=2, logging=dict(step_save_ckpt=1))
    save = tmp_path / "sem"
    rc, _, err = run_main(capsys, cfg, save, "--seed", "3", "--semantic_nerf", "--sparse_views", "--sparse_ratio",
                          "0.5")
    assert rc == 0, err
    return cfg, save


@pytest.mark.parametrize("flags,needles", [
    (["--semantic_finetune"], ["Semantic-NeRF joint protocol", "this run is finetune"]),
    (["--semantic_nerf", "--test_instance"], ["heads of the semantic label space", "with the label space"]),
    ([], ["written by a Semantic-NeRF run (joint)", "continue it with --semantic_nerf"]),
    (["--semantic_nerf", "--fix_density"], ["--fix_density must match", "(joint protocol) without --fix_density"]),
], ids=["protocol", "label space", "mode", "fix_density"])
def test_a_semantic_nerf_resume_mismatch_names_its_cause(semantic_run, capsys, flags, needles):
    cfg, save = semantic_run
    before = snapshot(save)
    rc, _, err = run_main(capsys, cfg, save, "--seed", "3", "--resume", "--N_iters", "4", "--sparse_views",
                          "--sparse_ratio", "0.5", *flags)
    line = one_line(rc, err, 2, *needles)
    if "--fix_density" not in flags:
        assert "fix_density" not in line                 # was: every mismatch blamed on --fix_density
    assert snapshot(save) == before


def test_a_plain_resume_with_other_fix_density_names_it(finished, capsys):
    cfg, save = finished
    rc, _, err = run_main(capsys, cfg, save, "--seed", "3", "--resume", "--N_iters", "5", "--fix_density")
    one_line(rc, err, 2, "--fix_density must match", "a plain NeRF or shaping run without --fix_density")
    assert yaml.safe_load((save / "exp_config.yaml").read_text())["train"]["N_iters"] == 3
