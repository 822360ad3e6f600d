"""A run folder you can trust (docs/RELIABILITY.md): one test per failure class, each asserting the
exit code, that the message names the file or flag, that no traceback is printed, and what the
folder holds afterwards (no success marker, the earlier run intact).

In-process runs call main.main; signals, file-size limits and concurrent runs use subprocesses.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml

import main as jnerf_main
from models.checkpoints import checkpoint_steps, load_checkpoint, prune_checkpoints
from tests.cli_helpers import SMALL_FLAGS, run_main, write_config
from tests.tiny_scene import write_tiny_replica
from training.trainer import FiniteGuard, Trainer
from utils.rundir import StopSignals, resume_command, write_failure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------- helpers

def one_line(rc, err, expected_rc, *needles, prefix="error:"):
    """The run stopped with `expected_rc`, one `prefix` line holding every needle, no traceback."""
    assert rc == expected_rc, err
    assert "Traceback" not in err, err
    lines = [l.strip() for l in err.replace("\r", "\n").splitlines() if l.strip().startswith(prefix)]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def no_success(save_dir):
    assert not os.path.exists(os.path.join(save_dir, "metrics.json"))
    assert not os.path.exists(os.path.join(save_dir, ".lock"))
    leftovers = [f for _, _, files in os.walk(save_dir) for f in files if ".tmp" in f]
    assert leftovers == []


def all_finite(path):
    data = torch.load(path, weights_only=True)
    return all(torch.isfinite(t).all() for k in ("network_coarse_state_dict", "network_fine_state_dict")
               for t in data[k].values())


def config(tmp_path, data, save_every=100, n_iters=3):
    """The tiny-scene config (tests/cli_helpers.py) with a checkpoint every `save_every` steps."""
    return write_config(tmp_path, data, n_iters=n_iters, logging=dict(step_save_ckpt=save_every))


def cli(cfg, save_dir, *flags):
    return ["--config_file", cfg, "--save_dir", str(save_dir), *SMALL_FLAGS, "--seed", "3", *flags]


def spawn(args, preexec=None):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_tiny_replica(str(root), n_frames=11)
    return root


@pytest.fixture
def trained(tmp_path, data, capsys):
    """A finished 3-step run: (config, save_dir, final checkpoint)."""
    cfg = config(tmp_path, data, save_every=1)
    save = tmp_path / "trained"
    rc, _, err = run_main(capsys, cfg, save, "--seed", "3")
    assert rc == 0, err
    return cfg, save, str(save / "checkpoints" / "000003.ckpt")


# ----------------------------------------------------------------------------- 1. run folders

def test_two_concurrent_runs_into_one_folder(tmp_path, data):
    cfg = config(tmp_path, data, save_every=5)
    save = tmp_path / "run"
    first = spawn(cli(cfg, save, "--N_iters", "100000"))
    wait_for(str(save / "checkpoints" / "000005.ckpt"), first)
    second = spawn(cli(cfg, save, "--N_iters", "3"))
    _, err = second.communicate(timeout=120)
    one_line(second.returncode, err, 2, f"--save_dir {save}", f"PID {first.pid}")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    line = one_line(first.returncode, err, 143, "SIGTERM", "--resume", prefix="interrupted")
    step = int(line.split("after step ")[1].split(";")[0])
    no_success(str(save))                      # the second run changed nothing; the first stopped cleanly
    assert max(checkpoint_steps(str(save))) == step
    assert yaml.safe_load((save / "exp_config.yaml").read_text())["train"]["N_iters"] == 100000


def test_a_crashed_rerun_leaves_no_stale_metrics_and_the_earlier_run_intact(trained, capsys):
    cfg, save, final = trained
    before = open(final, "rb").read()
    rc, _, err = run_main(capsys, cfg, save, "--seed", "3")                   # the same command again
    one_line(rc, err, 2, f"--save_dir {save} already holds a run", "--resume", "--overwrite")
    assert (save / "metrics.json").exists()                                   # refused: nothing touched
    rc, _, err = run_main(capsys, cfg, save, "--seed", "3", "--resume", "--N_iters", "8", "--lrate", "1e30")
    one_line(rc, err, 1, "loss became NaN at step", "last good checkpoint:")
    no_success(str(save))                     # the finished run's metrics.json is gone, not left stale
    assert open(final, "rb").read() == before and all(all_finite(p) for p in checkpoint_steps(str(save)).values())


# ----------------------------------------------------------------------------- 2. divergence

def test_nan_learning_rate_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path, data, capsys):
    cfg = config(tmp_path, data, save_every=1)
    save = tmp_path / "nan"
    rc, _, err = run_main(capsys, cfg, save, "--lrate", "1e30", "--N_iters", "20", "--seed", "3")
    line = one_line(rc, err, 1, "loss became NaN at step ", "; last good checkpoint: ")
    step = int(line.split("at step ")[1].split(";")[0])
    last = line.split("last good checkpoint: ")[1].split(" ")[0]
    no_success(str(save))
    saved = checkpoint_steps(str(save))
    assert max(saved) == step - 1 and last == saved[step - 1]              # nothing saved from step N on
    assert all(all_finite(p) for p in saved.values())
    rc, _, err = run_main(capsys, cfg, tmp_path / "nan2", "--lrate", "nan")  # a NaN flag never starts
    one_line(rc, err, 2, "--lrate nan")


def test_a_weight_that_becomes_nan_is_never_saved(tmp_path, data, capsys, monkeypatch):
    step_of = Trainer.train_step

    def poisoned(self, step):
        out = step_of(self, step)
        if step == 2:
            with torch.no_grad():
                self.renderer.fine.rgb_linear.weight[0, 0] = float("nan")
        return out

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    cfg = config(tmp_path, data, save_every=1)
    rc, _, err = run_main(capsys, cfg, tmp_path / "w", "--N_iters", "5")
    one_line(rc, err, 1, "a weight became non-finite by step 2", "network_fine_state_dict.rgb_linear.weight",
             str(tmp_path / "w" / "checkpoints" / "000001.ckpt"))
    assert sorted(checkpoint_steps(str(tmp_path / "w"))) == [0, 1]
    no_success(str(tmp_path / "w"))


def test_deferred_loss_check_finds_the_first_bad_step():
    guard = FiniteGuard(torch.device("cpu"), deferred=True)     # the CUDA path: no host read per step
    for step, value in enumerate([1.0, 2.0, float("nan"), float("inf"), 3.0]):
        assert guard.record(step, torch.tensor(value)) is False
    step, value = guard.first_non_finite()
    assert step == 2 and np.isnan(value)
    eager = FiniteGuard(torch.device("cpu"))
    assert not eager.record(0, torch.tensor(1.0)) and eager.record(1, torch.tensor(float("inf")))
    assert eager.first_non_finite() == (1, float("inf"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
def test_loss_check_adds_no_host_sync_on_cuda():
    guard = FiniteGuard(torch.device("cuda"))
    loss = torch.tensor(float("nan"), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(5):
            guard.record(step, loss * step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.first_non_finite()[0] == 0


def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor(trained, tmp_path, capsys):
    cfg, _, final = trained
    data = torch.load(final, weights_only=True)
    data["network_coarse_state_dict"]["views_linears.0.bias"][3] = float("inf")
    data.pop("jnerf_checksum")        # as the original writes it (with the checksum it is refused as damaged)
    bad = str(tmp_path / "bad.ckpt")
    torch.save(data, bad)
    rc, _, err = run_main(capsys, cfg, tmp_path / "r", "--render_only", "--ckpt_path", bad)
    one_line(rc, err, 2, bad, "network_coarse_state_dict.views_linears.0.bias", "1 non-finite")
    no_success(str(tmp_path / "r"))


def test_metrics_json_is_strict_json(trained):
    _, save, _ = trained

    def refuse(name):
        raise ValueError(f"bare {name} in metrics.json")
    metrics = json.loads((save / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["mode"] == "train" and metrics["final_step"] == 3


# ----------------------------------------------------------------------------- 3. writes and disks

def test_a_disk_full_save_stops_naming_the_file_and_keeps_the_earlier_checkpoints(trained):
    cfg, save, final = trained
    size = os.path.getsize(final)
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({size // 2}, {size // 2}))"
    args = cli(cfg, save, "--resume", "--N_iters", "6")
    proc = subprocess.run([sys.executable, "-c", f"{limit}\nimport sys, main\nsys.exit(main.main({args!r}))"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    one_line(proc.returncode, proc.stderr, 1, f"cannot write {save / 'checkpoints' / '000004.ckpt'}: File too large",
             f"(last good checkpoint: {final})")
    no_success(str(save))
    assert sorted(checkpoint_steps(str(save))) == [0, 1, 2, 3] and load_checkpoint(final)["global_step"] == 3


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system")])
def test_a_failed_write_names_the_file_and_the_reason(tmp_path, data, capsys, monkeypatch, code, reason):
    save_of = torch.save

    def failing(obj, f, *a, **k):
        if "000002.ckpt" in str(f):
            raise OSError(code, os.strerror(code))
        return save_of(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing)
    cfg = config(tmp_path, data, save_every=1)
    save = tmp_path / "w"
    rc, _, err = run_main(capsys, cfg, save)
    one_line(rc, err, 1, f"cannot write {save / 'checkpoints' / '000002.ckpt'}: {reason}",
             f"last good checkpoint: {save / 'checkpoints' / '000001.ckpt'}")
    no_success(str(save))


def test_write_failure_classifies_os_errors(tmp_path):
    full = write_failure(OSError(errno.ENOSPC, "No space left on device", "/x/m.json"), "/x/c.ckpt")
    assert str(full) == "cannot write /x/m.json: No space left on device (last good checkpoint: /x/c.ckpt)"
    denied = OSError(errno.EACCES, "Permission denied", str(tmp_path / "out" / "a.png"))
    assert write_failure(denied, None, [str(tmp_path / "out")]) is not None
    assert write_failure(denied, None, [str(tmp_path / "elsewhere")]) is None    # e.g. an input file
    assert write_failure(OSError(errno.ENOENT, "No such file", "x"), None) is None


def test_keep_ckpts_keeps_the_newest_n_and_the_final(tmp_path, data, capsys):
    cfg = config(tmp_path, data, save_every=1)
    rc, _, err = run_main(capsys, cfg, tmp_path / "k", "--N_iters", "6", "--keep_ckpts", "2")
    assert rc == 0, err
    assert sorted(checkpoint_steps(str(tmp_path / "k"))) == [5, 6]


def test_prune_rule(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for s in range(11):
        (folder / f"{s:06d}.ckpt").write_bytes(b"x")
    removed = prune_checkpoints(str(tmp_path), 2, current=4, final=10)     # later ones are another run's
    assert sorted(checkpoint_steps(str(tmp_path))) == [3, 4, 5, 6, 7, 8, 9, 10] and len(removed) == 3
    prune_checkpoints(str(tmp_path), 1, current=10, final=10)
    assert sorted(checkpoint_steps(str(tmp_path))) == [10]
    assert prune_checkpoints(str(tmp_path), None, current=10, final=10) == []


def test_a_warning_when_the_checkpoints_will_not_fit(tmp_path, data, capsys, monkeypatch):
    import shutil
    import training.run as run_module

    monkeypatch.setattr(run_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 10 ** 5))
    cfg = config(tmp_path, data, save_every=1)
    rc, _, err = run_main(capsys, cfg, tmp_path / "s", "--N_iters", "4")
    assert rc == 0
    warning = [l for l in err.splitlines() if l.startswith("warning:")]
    assert len(warning) == 1 and "5 checkpoints" in warning[0] and "--keep_ckpts" in warning[0]
    rc, _, err = run_main(capsys, cfg, tmp_path / "s2", "--N_iters", "4", "--keep_ckpts", "1")
    assert rc == 0 and "2 checkpoints" in err


# ----------------------------------------------------------------------------- 4. interrupts

@pytest.fixture
def reference(tmp_path, data):
    """An uninterrupted 150-step run in a subprocess (same threads as the interrupted ones)."""
    cfg = config(tmp_path, data, save_every=5)
    save = tmp_path / "reference"
    proc = spawn(cli(cfg, save, "--N_iters", "150"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return cfg, save


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_saves_prints_the_resume_command_and_resume_reproduces_the_run(reference, tmp_path, sig, code):
    cfg, ref = reference
    save = tmp_path / "interrupted"
    proc = spawn(cli(cfg, save, "--N_iters", "150"))
    wait_for(str(save / "checkpoints" / "000005.ckpt"), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    line = one_line(proc.returncode, err, code, signal.Signals(sig).name, "checkpoint saved:",
                    "continue with: python main.py", prefix="interrupted")
    step = int(line.split("after step ")[1].split(";")[0])
    assert step < 150 and max(checkpoint_steps(str(save))) == step and all_finite(checkpoint_steps(str(save))[step])
    no_success(str(save))
    command = line.split("continue with: ")[1]
    assert command.endswith("--resume") and f"--save_dir {save}" in command
    proc = subprocess.run([sys.executable, *command.split()[1:]], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    a = torch.load(ref / "checkpoints" / "000150.ckpt", weights_only=True)
    b = torch.load(save / "checkpoints" / "000150.ckpt", weights_only=True)
    for key in ("network_coarse_state_dict", "network_fine_state_dict"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref, save))
    assert ma["test_psnr_per_view"] == mb["test_psnr_per_view"]


def test_a_second_ctrl_c_stops_at_once_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    for first in (signal.SIGINT, signal.SIGTERM):
        with StopSignals() as stop:
            os.kill(os.getpid(), first)
            time.sleep(0.01)
            assert stop.signum == first                   # recorded: the loop finishes the step, saves, stops
            with pytest.raises(KeyboardInterrupt):         # a Ctrl-C after that stops at once
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
        assert signal.getsignal(signal.SIGINT) is before


def test_resume_of_a_run_stopped_after_its_last_step_writes_its_metrics(trained, capsys):
    cfg, save, _ = trained
    (save / "metrics.json").unlink()                   # as after an interrupt during the final render
    rc, out, err = run_main(capsys, cfg, save, "--seed", "3", "--resume")
    assert rc == 0, err
    assert "last step 3: rendering the test views" in out
    assert json.loads((save / "metrics.json").read_text())["final_step"] == 3


def test_resume_command():
    argv = ["--config_file", "c.yaml", "--save_dir", "my runs/a", "--ckpt_path", "p.ckpt", "--overwrite",
            "--ckpt_path=q.ckpt", "--resume", "--seed", "3"]
    assert resume_command(argv) == "python main.py --config_file c.yaml --save_dir 'my runs/a' --seed 3 --resume"


# ----------------------------------------------------------------------------- 5. bad data and inputs

def test_label_supervision_whose_labels_are_all_void_is_refused(tmp_path, data, capsys):
    iio.imwrite(data / "semantic_class" / "semantic_class_5.png", np.zeros((12, 16), np.uint8))
    cfg = config(tmp_path, data)
    shape = ["--contrastive_2d", "--rgb_layer", "--sample_semantic", "--contrastive_starting_step", "0",
             "--contrastive_step", "1"]
    save = tmp_path / "s"
    rc, _, err = run_main(capsys, cfg, save, *shape, "--sparse_views", "--label_map_ids", "5")
    one_line(rc, err, 2, "label supervision", "only void", "choose other frames with --label_map_ids")
    no_success(str(save))
    assert not (save / "checkpoints").exists()
    # clicks ignore --label_map_ids: the advice names what does choose their frames
    iio.imwrite(data / "semantic_class" / "semantic_class_0.png", np.zeros((12, 16), np.uint8))
    rc, _, err = run_main(capsys, cfg, tmp_path / "s2", *shape, "--sparse_views", "--sparse_ratio", "0.67",
                          "--label_propagation")
    line = one_line(rc, err, 2, "only void", "--sparse_ratio", "--label_map_ids does not apply to clicks")
    assert "choose other frames with --label_map_ids" not in line


def test_propagation_seeds_that_are_all_void_give_advice_that_works(trained, tmp_path, capsys):
    cfg, _, final = trained
    data = yaml.safe_load(open(cfg))["experiment"]["dataset_dir"]
    iio.imwrite(os.path.join(data, "semantic_class", "semantic_class_0.png"), np.zeros((12, 16), np.uint8))
    rc, _, err = run_main(capsys, cfg, tmp_path / "p", "--propagate_2d", "--rgb_layer", "--mean_gradient",
                          "--ckpt_path", final, "--sparse_views", "--sparse_ratio", "0.67", "--label_propagation")
    one_line(rc, err, 2, "contain no labelled pixel", "--sparse_ratio", "--label_map_ids does not apply to clicks")
    no_success(str(tmp_path / "p"))


def test_remaining_tracebacks_are_one_line(trained, tmp_path, capsys):
    cfg, _, final = trained
    no_inst = tmp_path / "noinst"
    write_tiny_replica(str(no_inst), n_frames=11, instances=False)
    (tmp_path / "ni").mkdir()
    cfg_ni = write_config(tmp_path / "ni", no_inst)
    (tmp_path / "a_file").write_text("x")
    propagate = ["--propagate_2d", "--rgb_layer", "--mean_gradient", "--ckpt_path", final, "--label_propagation"]
    cases = [
        ((cfg_ni, tmp_path / "o1", *propagate, "--test_instance"), ["--test_instance", "no instance maps"]),
        ((cfg, tmp_path / "o2", *propagate, "--seed_dir", str(tmp_path / "a_file")),
         ["--seed_dir", "a_file is a file, not a folder"]),
        ((cfg, tmp_path / "o3", "--render_only", "--ckpt_path", str(tmp_path)),
         ["--ckpt_path", f"{tmp_path} is a folder"]),
        ((str(tmp_path), tmp_path / "o4"), ["--config_file", f"{tmp_path} is a folder"]),
        ((cfg, tmp_path / "o5", "--load_dino"), ["dino", "docs/DINO.md"]),
    ]
    for (config_file, save, *flags), needles in cases:
        rc, _, err = run_main(capsys, config_file, save, *flags)
        one_line(rc, err, 2, *needles)
        no_success(str(save))
        assert not (save / "exp_config.yaml").exists()


def test_compare_with_a_missing_or_non_propagation_metrics_file(trained, tmp_path):
    _, save, _ = trained
    for arg, needles in ((f"a={tmp_path / 'none.json'}", ["none.json", "does not exist"]),
                         (f"a={save / 'metrics.json'}", ["metrics.json", "'train' run", "--propagate_2d"]),
                         (f"a={save}", [f"{save} is a folder", "metrics.json"])):
        proc = subprocess.run([sys.executable, "-m", "propagation.compare", arg], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=120)
        one_line(proc.returncode, proc.stderr, 2, *needles)


def test_every_flag_has_a_one_line_description():
    for action in jnerf_main.parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "\n" not in action.help, action.option_strings


# ----------------------------------------------------------------------------- 6. the demo

def test_demo_from_another_directory_refuses_zero_steps(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--demo", "--save_dir", str(tmp_path / "d"),
                           "--N_iters", "0"], cwd=str(tmp_path), env=ENV, capture_output=True, text=True, timeout=120)
    one_line(proc.returncode, proc.stderr, 2, "--N_iters 0")


def test_demo_regenerates_a_half_written_scene_and_exits_130_on_ctrl_c(tmp_path, monkeypatch, capsys):
    import experiments.demo as demo
    generated = []
    monkeypatch.setattr(demo, "generate_scene", lambda out, **kw: generated.append(out))
    monkeypatch.setattr(demo, "scene_complete", lambda path: False)        # e.g. no completion marker

    def ctrl_c(title, argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(demo, "_stage", ctrl_c)
    assert demo.main(["--save_dir", str(tmp_path / "d")]) == 130
    assert generated == [os.path.join(str(tmp_path / "d"), "data")]
    monkeypatch.setattr(demo, "scene_complete", lambda path: True)
    assert demo.main(["--save_dir", str(tmp_path / "d")]) == 130 and len(generated) == 1
    assert "interrupted" in capsys.readouterr().err
