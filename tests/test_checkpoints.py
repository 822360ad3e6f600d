"""Checkpoint format compatibility with the original, atomic writes, and exact resume."""
import os

import pytest
import torch

from datasets.registry import load_scene
from main import parse_options
from models.checkpoints import apply_checkpoint, checkpoint_data, checkpoint_path, latest_checkpoint, load_checkpoint, \
    restore_checkpoint, write_checkpoint
from models.factory import build_renderer
from tests.cli_helpers import write_config
from tests.tiny_scene import write_tiny_replica
from training.objectives import nerf_parameters
from training.trainer import Trainer, build_optimizer
from utils.errors import InputError


def original_layout(input_ch=63, views_ch=27, W=256, D=8, skip=4):
    """Parameter names and shapes of the original NeRF, in its module order."""
    shapes = [("pts_linears.0", (W, input_ch))]
    for i in range(1, D):
        shapes.append((f"pts_linears.{i}", (W, W + input_ch) if i == skip + 1 else (W, W)))
    shapes += [("views_linears.0", (W // 2, views_ch + W)), ("feature_linear", (W, W)),
               ("alpha_linear", (1, W)), ("rgb_linear", (3, W // 2))]
    out = []
    for name, (o, i) in shapes:
        out += [(f"{name}.weight", (o, i)), (f"{name}.bias", (o,))]
    return out


def original_style_checkpoint(gen):
    layout = original_layout()
    coarse = {k: torch.randn(s, generator=gen) for k, s in layout}
    fine = {k: torch.randn(s, generator=gen) for k, s in layout}
    params = [coarse[k] for k, _ in layout] + [fine[k] for k, _ in layout]
    state = {i: {"step": torch.tensor(7.0), "exp_avg": torch.randn(p.shape, generator=gen),
                 "exp_avg_sq": torch.rand(p.shape, generator=gen)} for i, p in enumerate(params)}
    groups = [{"lr": 4e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
               "maximize": False, "foreach": None, "capturable": False, "params": list(range(len(params)))}]
    return {"global_step": 7, "network_coarse_state_dict": coarse, "network_fine_state_dict": fine,
            "optimizer_state_dict": {"state": state, "param_groups": groups}}


def full_options(save_dir, extra=()):
    """RunOptions of the paper's Replica config (the original's 8 x 256 networks)."""
    _, opts = parse_options(["--config_file", "configs/replica_room0_config.yaml", "--save_dir", save_dir, *extra])
    return opts


def test_layout_has_the_original_parameter_count():
    assert sum(torch.Size(s).numel() for _, s in original_layout()) == 595844


def test_original_checkpoint_loads_here_and_ours_has_its_layout(tmp_path):
    gen = torch.Generator().manual_seed(0)
    data = original_style_checkpoint(gen)
    path = str(tmp_path / "orig.ckpt")
    torch.save(data, path)
    opts = full_options(str(tmp_path))
    r = build_renderer(opts.model, torch.device("cpu"))
    opt = build_optimizer([nerf_parameters(r)], 5e-4)
    assert restore_checkpoint(path, r, opt)["global_step"] == 7
    for k, v in data["network_fine_state_dict"].items():
        assert torch.equal(r.fine.state_dict()[k], v)
    # the optimizer's i-th parameter is the original's i-th parameter (coarse then fine)
    params = list(r.coarse.parameters()) + list(r.fine.parameters())
    for i, p in enumerate(params):
        assert torch.equal(opt.state[p]["exp_avg"], data["optimizer_state_dict"]["state"][i]["exp_avg"])
    assert opt.param_groups[0]["lr"] == 4e-4
    # and ours, saved, has exactly the original's keys, names and shapes
    ours = str(tmp_path / "ours.ckpt")
    write_checkpoint(ours, checkpoint_data(7, r, opt))
    back = torch.load(ours, weights_only=True)
    assert set(back) >= {"global_step", "network_coarse_state_dict", "network_fine_state_dict", "optimizer_state_dict"}
    layout = dict(original_layout())
    for key in ("network_coarse_state_dict", "network_fine_state_dict"):
        assert {k: tuple(v.shape) for k, v in back[key].items()} == layout
    saved_state = back["optimizer_state_dict"]["state"]
    for i, (name, shape) in enumerate(original_layout() * 2):
        assert tuple(saved_state[i]["exp_avg"].shape) == shape, name


def test_wrong_architecture_and_non_checkpoints_are_refused(tmp_path):
    opts = full_options(str(tmp_path))
    r = build_renderer(opts.model, torch.device("cpu"))
    small = {k: torch.zeros(1) for k in r.fine.state_dict()}
    torch.save({"global_step": 0, "network_coarse_state_dict": small, "network_fine_state_dict": small}, tmp_path / "w.ckpt")
    with pytest.raises(InputError, match="does not match the network"):
        apply_checkpoint(str(tmp_path / "w.ckpt"), load_checkpoint(str(tmp_path / "w.ckpt")), r)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.ckpt is not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "junk.ckpt"))
    torch.save({"weights": 1}, tmp_path / "dict.ckpt")
    with pytest.raises(InputError, match="is not a JacobiNeRF checkpoint"):
        load_checkpoint(str(tmp_path / "dict.ckpt"))
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.ckpt"))


def test_restore_without_an_optimizer_loads_the_weights_only(tmp_path):
    opts = full_options(str(tmp_path))
    src, dst = (build_renderer(opts.model, torch.device("cpu")) for _ in range(2))
    with torch.no_grad():
        src.fine.rgb_linear.weight.fill_(0.25)
    path = write_checkpoint(str(tmp_path / "a.ckpt"), checkpoint_data(3, src))
    data = restore_checkpoint(path, dst)
    assert data["global_step"] == 3 and data["optimizer_state_dict"] == {}
    for a, b in ((src.coarse, dst.coarse), (src.fine, dst.fine)):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k
    with pytest.raises(InputError, match="holds no optimizer state"):
        restore_checkpoint(path, dst, build_optimizer([nerf_parameters(dst)], 5e-4))


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    opts = full_options(str(tmp_path))
    r = build_renderer(opts.model, torch.device("cpu"))
    path = str(tmp_path / "latest.ckpt")
    write_checkpoint(path, checkpoint_data(1, r))
    before = open(path, "rb").read()

    def boom(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        write_checkpoint(path, checkpoint_data(2, r))
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["latest.ckpt"]


def test_latest_checkpoint_is_the_highest_step(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None
    r = build_renderer(full_options(str(tmp_path)).model, torch.device("cpu"))
    for step in (9, 120, 30):
        write_checkpoint(checkpoint_path(str(tmp_path), step), checkpoint_data(step, r))
    (tmp_path / "checkpoints" / "notes.ckpt").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoints" / "000120.ckpt")


def tiny_training_options(tmp_path, data, save, extra=()):
    """RunOptions of the synthetic-room config on the tiny scene `data` (16 x 12, width-16 networks)."""
    config = write_config(tmp_path, data, width=16, height=12, netwidth=16)
    _, opts = parse_options(["--config_file", config, "--save_dir", save, "--N_rays", "32", "--N_samples", "8",
                             "--N_importance", "8", "--seed", "5", *extra])
    return opts


def test_resume_reproduces_the_next_step(tmp_path):
    data = str(tmp_path / "data")
    write_tiny_replica(data, n_frames=11)

    def make(save, extra=()):
        opts = tiny_training_options(tmp_path, data, save, extra)
        torch.manual_seed(0)
        r = build_renderer(opts.model, torch.device("cpu"))
        return Trainer(opts.train, load_scene(opts.data), r, save, seed=5, log=False)

    a = make(str(tmp_path / "a"))
    for step in range(4):
        a.train_step(step)
    a.save(3)
    a.train_step(4)
    ckpt = str(tmp_path / "a" / "checkpoints" / "000003.ckpt")
    b = make(str(tmp_path / "b"), ["--ckpt_path", ckpt, "--resume"])
    b.restore(ckpt, resume=True)
    assert b.start == 4
    b.train_step(4)
    for (k, pa), pb in zip(a.renderer.state_dict().items(), b.renderer.state_dict().values()):
        assert torch.equal(pa, pb), k
    assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"]
