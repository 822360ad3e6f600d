"""--shaping_lr and --shaping_optimizer (training/fine_tune.py): shaping from a plain checkpoint
with the learning rate of every step equal to the formula, Adam's moments and step counters equal
to the checkpoint's after a restore and then updated by Adam's rule, --fix_density handled by name,
--resume keeping the continued schedule, and the defaults leaving the original's behaviour and
checkpoints untouched."""
import json
import math

import pytest
import torch

from datasets.registry import load_scene
from main import parse_options
from models.checkpoints import checkpoint_data, load_checkpoint, write_checkpoint
from models.factory import build_renderer
from tests.cli_helpers import run_main, write_config
from tests.test_checkpoints import full_options, original_style_checkpoint
from training.fine_tune import LR_SCHEDULE_KEY, parameter_names, restore_adam_state
from training.objectives import nerf_parameters
from training.shaping import ShapingObjective, build_shaper
from training.trainer import Trainer, build_optimizer
from utils.errors import InputError
from utils.seeding import seed_everything

LRATE, DECAY = 5e-4, 20          # a fast decay: every step has its own rate
PLAIN_STEPS = 6                  # steps 0 .. 5: the plain checkpoint is at step 5
SHAPING = ["--from_label", "--contrastive_2d", "--rgb_layer", "--contrastive_starting_step", "0",
           "--contrastive_step", "1", "--wgt_contrastive", "0.1", "--gradient_norm_loss"]
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def options(tmp_path, data, save, *flags):
    config = write_config(tmp_path, data, width=16, height=12, netwidth=16, n_iters=20)
    _, opts = parse_options(["--config_file", config, "--save_dir", str(save), "--N_rays", "32", "--N_samples", "8",
                             "--N_importance", "8", "--seed", "5", "--lrate", str(LRATE), "--lrate_decay", str(DECAY),
                             *flags])
    return opts


def plain_checkpoint(tmp_path, data, *flags):
    """Path of the checkpoint at step PLAIN_STEPS - 1 of a plain run (and that run's trainer)."""
    save = tmp_path / "plain"
    opts = options(tmp_path, data, save, *flags)
    torch.manual_seed(0)
    trainer = Trainer(opts.train, load_scene(opts.data), build_renderer(opts.model, torch.device("cpu")), str(save),
                      seed=5, log=False)
    for step in range(PLAIN_STEPS):
        trainer.train_step(step)
    return trainer.save(PLAIN_STEPS - 1), trainer


def shaping_trainer(tmp_path, data, ckpt, *flags, name="shape", resume=False):
    """A shaping trainer (label supervision, so the tiny scene needs no descriptors) restored from `ckpt`."""
    save = tmp_path / name
    opts = options(tmp_path, data, save, *SHAPING, "--ckpt_path", ckpt, *flags)
    rng = seed_everything(5)
    scene = load_scene(opts.data)
    renderer = build_renderer(opts.model, torch.device("cpu"))
    shaper, frames = build_shaper(opts, scene, renderer, rng)
    trainer = Trainer(opts.train, scene, renderer, str(save), ShapingObjective(opts.train, shaper), frames=frames,
                      seed=5, log=False)
    trainer.restore(ckpt, resume)
    return trainer


def rates_of_steps(trainer, steps):
    """The learning rate each of `steps` ran with (the rate in force when it started)."""
    rates = []
    for step in steps:
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step(step)
    return rates


@pytest.fixture
def scene_dir(tmp_path):
    from tests.tiny_scene import write_tiny_replica
    path = tmp_path / "scene"
    write_tiny_replica(str(path), n_frames=11)
    return str(path)


# ------------------------------------------------------------------------------- learning rate

def test_continued_schedule_runs_each_step_at_the_rate_of_the_plain_run(tmp_path, scene_dir, one_thread):
    ckpt, plain = plain_checkpoint(tmp_path, scene_dir)
    P = PLAIN_STEPS - 1
    reached = plain.optimizer.param_groups[0]["lr"]
    assert reached == pytest.approx(LRATE * 0.1 ** (P / DECAY), rel=1e-12)     # what the plain run had reached

    cont = shaping_trainer(tmp_path, scene_dir, ckpt, "--shaping_lr", "continue", name="continue")
    got = rates_of_steps(cont, range(5))
    # step s of the shaping runs as step P + 1 + s of the plain run would: lrate * 0.1^((P + s) / decay)
    assert got == pytest.approx([LRATE * 0.1 ** ((P + s) / DECAY) for s in range(5)], rel=1e-12)
    assert got[0] == pytest.approx(reached, rel=1e-12)
    assert cont.fine_tune["initial_lr"] == got[0] and cont.fine_tune["initial_lr_from"] == "checkpoint"
    assert len(cont.optimizer.state) and all(float(s["step"]) == 5 for s in cont.optimizer.state.values())  # fresh

    restart = shaping_trainer(tmp_path, scene_dir, ckpt, name="restart")        # the original's
    got = rates_of_steps(restart, range(5))
    assert got == pytest.approx([LRATE] + [LRATE * 0.1 ** ((s - 1) / DECAY) for s in range(1, 5)], rel=1e-12)
    assert restart.fine_tune["lr_schedule"] == "restart" and (restart.lr_base, restart.lr_offset) == (LRATE, 0)


def test_continue_starts_where_a_plain_run_on_another_schedule_stopped(tmp_path, scene_dir, one_thread):
    """The plain run decays 10x in 5 steps, the shaping in DECAY: the shaping starts at the rate the
    plain run reached and decays at its own pace. A checkpoint without optimizer state: the formula."""
    ckpt, plain = plain_checkpoint(tmp_path, scene_dir, "--lrate_decay", "5")
    P = PLAIN_STEPS - 1
    reached = LRATE * 0.1 ** (P / 5)
    assert plain.optimizer.param_groups[0]["lr"] == pytest.approx(reached, rel=1e-12)
    t = shaping_trainer(tmp_path, scene_dir, ckpt, "--shaping_lr", "continue")
    assert rates_of_steps(t, range(4)) == pytest.approx([reached * 0.1 ** (s / DECAY) for s in range(4)], rel=1e-12)
    data = load_checkpoint(ckpt)
    data["optimizer_state_dict"] = {}
    weights_only = str(tmp_path / "weights.ckpt")
    write_checkpoint(weights_only, data)
    t = shaping_trainer(tmp_path, scene_dir, weights_only, "--shaping_lr", "continue", name="w")
    assert t.fine_tune["initial_lr_from"] == "formula"
    assert rates_of_steps(t, range(3)) == pytest.approx([LRATE * 0.1 ** ((P + s) / DECAY) for s in range(3)],
                                                        rel=1e-12)


def test_resume_and_a_second_fine_tune_keep_the_continued_schedule(tmp_path, scene_dir, one_thread):
    ckpt, _ = plain_checkpoint(tmp_path, scene_dir)
    P = PLAIN_STEPS - 1
    a = shaping_trainer(tmp_path, scene_dir, ckpt, "--shaping_lr", "continue", name="a")
    rates_of_steps(a, range(3))
    saved = a.save(2)
    assert load_checkpoint(saved)["jnerf_state"][LR_SCHEDULE_KEY] == dict(base=a.lr_base, offset=1)
    b = shaping_trainer(tmp_path, scene_dir, saved, "--shaping_lr", "continue", name="b", resume=True)
    assert b.start == 3 and (b.lr_base, b.lr_offset) == (a.lr_base, 1)
    assert rates_of_steps(b, [3, 4]) == pytest.approx([LRATE * 0.1 ** ((P + s) / DECAY) for s in (3, 4)], rel=1e-12)
    # a new fine-tune continuing from the shaped checkpoint goes on from its position (P + 1 + 2)
    c = shaping_trainer(tmp_path, scene_dir, saved, "--shaping_lr", "continue", name="c")
    assert rates_of_steps(c, [0]) == pytest.approx([LRATE * 0.1 ** ((P + 1 + 2) / DECAY)], rel=1e-12)


# ------------------------------------------------------------------------------- Adam state

def adam_tensors(trainer):
    return [(p.detach().clone(), {k: v.clone() for k, v in trainer.optimizer.state[p].items()})
            for g in trainer.optimizer.param_groups for p in g["params"]]


def test_restored_adam_state_equals_the_checkpoint_then_follows_adams_rule(tmp_path, scene_dir, one_thread):
    ckpt, _ = plain_checkpoint(tmp_path, scene_dir)
    saved = load_checkpoint(ckpt)["optimizer_state_dict"]["state"]
    t = shaping_trainer(tmp_path, scene_dir, ckpt, "--shaping_optimizer", "restore")
    params = [p for g in t.optimizer.param_groups for p in g["params"]]
    assert t.fine_tune["restored_tensors"] == len(params) == len(saved)
    assert t.optimizer.param_groups[0]["lr"] == LRATE                     # the restart's rate: only the state came
    for i, p in enumerate(params):                                        # coarse then fine, the checkpoint's order
        st = t.optimizer.state[p]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[key], saved[i][key]), (i, key)
        assert float(st["step"]) == PLAIN_STEPS
    before = adam_tensors(t)
    lr = t.optimizer.param_groups[0]["lr"]
    t.train_step(0)
    for p, (theta0, st0) in zip(params, before):
        g = p.grad.detach()
        st = t.optimizer.state[p]
        step = float(st0["step"]) + 1
        m = BETA1 * st0["exp_avg"] + (1 - BETA1) * g
        v = BETA2 * st0["exp_avg_sq"] + (1 - BETA2) * g * g
        # Adam with the bias correction of the restored counter (a fresh Adam would use step 1)
        expected = theta0 - lr / (1 - BETA1 ** step) * m / ((v / (1 - BETA2 ** step)).sqrt() + EPS)
        assert float(st["step"]) == step
        # m's two terms can cancel: float32 rounding is bounded by the terms' size, not by |m|
        # (seen: 7.3e-12 off a near-zero m at one of 344 entries); 1e-6 is about 8 float32 ulps of it
        terms = BETA1 * st0["exp_avg"].abs() + (1 - BETA1) * g.abs()
        assert ((st["exp_avg"] - m).abs() <= 1e-5 * m.abs() + 1e-6 * terms + 1e-15).all()
        torch.testing.assert_close(st["exp_avg_sq"], v, rtol=1e-5, atol=1e-15)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-9)
    fresh = shaping_trainer(tmp_path, scene_dir, ckpt, name="fresh")      # the original's: no state before step 0
    assert len(fresh.optimizer.state) == 0 and fresh.fine_tune["restored_tensors"] == 0
    fresh.train_step(0)
    assert all(float(s["step"]) == 1 for s in fresh.optimizer.state.values())


def test_fix_density_on_either_side_is_matched_by_name(tmp_path, scene_dir, one_thread):
    ckpt, plain = plain_checkpoint(tmp_path, scene_dir)
    saved = load_checkpoint(ckpt)["optimizer_state_dict"]["state"]
    by_name = dict(zip(parameter_names(plain.renderer, False), range(len(saved))))
    t = shaping_trainer(tmp_path, scene_dir, ckpt, "--shaping_optimizer", "restore", "--fix_density")
    names = parameter_names(t.renderer, True)
    params = [p for g in t.optimizer.param_groups for p in g["params"]]
    assert len(params) == len(names) == len(saved) - 4 and t.fine_tune["restored_tensors"] == len(params)
    for name, p in zip(names, params):
        assert "alpha_linear" not in name
        assert torch.equal(t.optimizer.state[p]["exp_avg"], saved[by_name[name]]["exp_avg"]), name
    # a plain run with --fix_density restored into a shaping run without it: alpha_linear starts fresh
    (tmp_path / "plain").rename(tmp_path / "plain_full")
    ckpt_fd, _ = plain_checkpoint(tmp_path, scene_dir, "--fix_density")
    t = shaping_trainer(tmp_path, scene_dir, ckpt_fd, "--shaping_optimizer", "restore", name="shape_fd")
    names = parameter_names(t.renderer, False)
    params = [p for g in t.optimizer.param_groups for p in g["params"]]
    fresh = [n for n, p in zip(names, params) if p not in t.optimizer.state]
    assert sorted(fresh) == sorted(n for n in names if ".alpha_linear." in n) and len(fresh) == 4
    t.train_step(0)                          # Adam initialises the fresh ones at their first step
    assert float(t.optimizer.state[params[names.index(fresh[0])]]["step"]) == 1


def test_foreign_and_empty_optimizer_states_are_refused_and_the_originals_loads(tmp_path):
    opts = full_options(str(tmp_path))                     # the original's 8 x 256 networks
    r = build_renderer(opts.model, torch.device("cpu"))
    data = original_style_checkpoint(torch.Generator().manual_seed(0))
    opt = build_optimizer([nerf_parameters(r)], 5e-4)
    assert restore_adam_state("orig.ckpt", data, opt, r) == len(opt.param_groups[0]["params"])
    assert opt.param_groups[0]["lr"] == 5e-4                # the original's group said 4e-4: ours is kept
    for i, p in enumerate(opt.param_groups[0]["params"]):
        assert torch.equal(opt.state[p]["exp_avg_sq"], data["optimizer_state_dict"]["state"][i]["exp_avg_sq"])
    with pytest.raises(InputError, match="holds no optimizer state"):
        restore_adam_state("w.ckpt", checkpoint_data(3, r), build_optimizer([nerf_parameters(r)], 5e-4), r)
    data["optimizer_state_dict"]["param_groups"][0]["params"] = list(range(7))
    with pytest.raises(InputError, match="covers 7 tensors"):
        restore_adam_state("x.ckpt", data, build_optimizer([nerf_parameters(r)], 5e-4), r)


# ------------------------------------------------------------------------------- options and the CLI

def test_options_choices_and_shaping_from_scratch(tmp_path, scene_dir):
    opts = options(tmp_path, scene_dir, tmp_path / "s", *SHAPING)
    assert (opts.shaping.lr_schedule, opts.shaping.optimizer_state) == ("restart", "fresh")     # the original's
    opts = options(tmp_path, scene_dir, tmp_path / "s", *SHAPING, "--ckpt_path", "x.ckpt", "--shaping_lr",
                   "continue", "--shaping_optimizer", "restore")
    assert (opts.shaping.lr_schedule, opts.shaping.optimizer_state) == ("continue", "restore")
    for flag, value in (("--shaping_lr", "continue"), ("--shaping_optimizer", "restore")):
        with pytest.raises(InputError, match=f"{flag} {value} takes the schedule"):
            options(tmp_path, scene_dir, tmp_path / "s", *SHAPING, flag, value)
    # the YAML can choose it too (experiment.shaping_lr), and the flag wins over it
    config = write_config(tmp_path, scene_dir, width=16, height=12, netwidth=16,
                          experiment=dict(shaping_lr="continue", shaping_optimizer="restore"))
    base = ["--config_file", config, "--save_dir", str(tmp_path / "s"), "--ckpt_path", "x.ckpt", *SHAPING]
    assert parse_options(base)[1].shaping.lr_schedule == "continue"
    assert parse_options(base + ["--shaping_lr", "restart"])[1].shaping.lr_schedule == "restart"
    assert parse_options(base)[1].shaping.optimizer_state == "restore"
    with pytest.raises(InputError, match="--shaping_lr: invalid choice: 'warm'"):
        parse_options(base + ["--shaping_lr", "warm"])


@pytest.mark.slow
def test_cli_defaults_write_the_originals_checkpoints_and_the_options_report_their_start(tmp_path, scene_dir, capsys):
    """The defaults, given or not, write the same bytes (no new checkpoint key); the options print
    and record how the run began."""
    config = write_config(tmp_path, scene_dir, width=16, height=12, netwidth=16, n_iters=3)
    rc, _, err = run_main(capsys, config, tmp_path / "plain", "--seed", "0")
    assert rc == 0, err
    ckpt = str(tmp_path / "plain" / "checkpoints" / "000003.ckpt")
    runs = {"default": [], "explicit": ["--shaping_lr", "restart", "--shaping_optimizer", "fresh"],
            "keep": ["--shaping_lr", "continue", "--shaping_optimizer", "restore"]}
    out = {}
    for name, flags in runs.items():
        rc, out[name], err = run_main(capsys, config, tmp_path / name, "--ckpt_path", ckpt, "--seed", "0", *SHAPING,
                                      *flags)
        assert rc == 0, err
    blobs = {n: (tmp_path / n / "checkpoints" / "000003.ckpt").read_bytes() for n in runs}
    assert blobs["default"] == blobs["explicit"] != blobs["keep"]
    assert LR_SCHEDULE_KEY not in load_checkpoint(str(tmp_path / "default" / "checkpoints" / "000003.ckpt"))["jnerf_state"]
    assert "learning rate 0.0005 (--lrate, a new schedule), a fresh Adam" in out["default"]
    assert "(the rate the checkpoint's run had reached), the checkpoint's Adam state" in out["keep"]
    keep = json.load(open(tmp_path / "keep" / "metrics.json"))["fine_tune"]
    assert keep["checkpoint_step"] == 3 and keep["initial_lr_from"] == "checkpoint"
    assert math.isclose(keep["initial_lr"], 5e-4 * 0.1 ** (3 / 250e3), rel_tol=1e-12)
    default = json.load(open(tmp_path / "default" / "metrics.json"))["fine_tune"]
    assert (default["lr_schedule"], default["optimizer_state"], default["initial_lr"]) == ("restart", "fresh", 5e-4)
