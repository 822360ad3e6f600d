"""The Semantic-NeRF baseline as a mode of main.py: the semantic render against the plain renderer,
the 3D readout by hand, the checkpoint key, the flags, and both protocols end to end on a tiny
synthetic room (they beat chance on the clicked classes and write propagation's files)."""
import json
import os

import pytest
import torch

import main as jnerf_main
from models.checkpoints import checkpoint_data, load_checkpoint, load_semantic_heads, write_checkpoint
from models._reference import point_logits_at
from models.rendering import render_logits
from models.semantic import SEMANTIC_KEY, WGT_SEM, SemanticHead, point_vote_labels, semantic_state
from tests.cli_helpers import write_config
from tests.tiny_models import tiny_renderer
from utils.errors import InputError
from utils.option_table import default


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rays(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.1
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
    return torch.cat((o, d, torch.full((n, 1), 0.5, dtype=torch.float64), torch.full((n, 1), 4.0, dtype=torch.float64),
                      d), -1)


def test_semantic_render_is_the_plain_render_plus_rendered_logits():
    r = tiny_renderer()
    heads = (SemanticHead(16, 5).double(), SemanticHead(16, 5).double())
    rays = _rays()
    with torch.no_grad():
        ref = r.render_rays(rays, train=False, keep_fine=True)
        out = r.render_rays(rays, heads=heads, train=False, keep_points=True)
    for key in ("rgb", "rgb_coarse", "depth", "acc"):
        assert torch.allclose(out[key], ref[key], atol=1e-10), key
    assert torch.allclose(out["weights"], ref["fine"].weights, atol=1e-10)
    s = point_logits_at(r, r.fine, heads[1], rays, ref["fine"].z)
    assert torch.allclose(out["point_logits"], s, atol=1e-10)
    assert torch.allclose(out["logits"], render_logits(ref["fine"].weights, s), atol=1e-10)
    # training mode: the same random draws give the same colour as the plain renderer
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with torch.no_grad():
        a = r.render_rays(rays, train=True, generator=g1)
        b = r.render_rays(rays, heads=heads, train=True, generator=g2)
    assert torch.allclose(a["rgb"], b["rgb"], atol=1e-10) and torch.allclose(a["rgb_coarse"], b["rgb_coarse"],
                                                                               atol=1e-10)


def test_point_vote_labels_hand_worked():
    # ray 0: points labelled 1, 0, 1 with weights 0.3, 0.5, 0.3 -> votes (0.5, 0.6, 0) -> 1
    # ray 1: points labelled 2, 2, 0 with weights 0.1, 0.1, 0.7 -> votes (0.7, 0, 0.2) -> 0
    w = torch.tensor([[0.3, 0.5, 0.3], [0.1, 0.1, 0.7]])
    s = torch.tensor([[[0., 1., 0.], [2., 1., 0.], [0., 3., 1.]],
                      [[0., 0., 5.], [1., 0., 2.], [4., 0., 1.]]])
    assert point_vote_labels(w, s, 3).tolist() == [1, 0]
    # unlike the 2D readout, the rendered logits of ray 0 are (0.6, 1.9, 0.3) -> also 1, ray 1: (2.8, 0, 1.4) -> 0
    assert render_logits(w, s).argmax(-1).tolist() == [1, 0]


def test_frozen_nerf_gets_no_gradient_and_joint_reaches_the_trunk():
    r = tiny_renderer()
    heads = (SemanticHead(16, 3).double(), SemanticHead(16, 3).double())
    rays = _rays(8)
    labels = torch.tensor([0, 1, 2, -1, 0, 1, 2, -1])
    from models.semantic import semantic_loss
    out = r.render_rays(rays, heads=heads, train=True)
    semantic_loss(out["logits_coarse"], out["logits"], labels).backward()
    assert r.fine.pts_linears[0].weight.grad is not None and heads[1].semantic_linear[1].weight.grad is not None
    r.zero_grad(set_to_none=True)
    for p in r.parameters():
        p.requires_grad_(False)
    out = r.render_rays(rays, heads=heads, train=True)
    assert not out["sigma_raw_fine"].requires_grad
    semantic_loss(out["logits_coarse"], out["logits"], labels).backward()
    assert all(p.grad is None for p in r.parameters())
    assert heads[0].semantic_linear[1].weight.grad is not None


def test_checkpoint_keeps_the_heads_under_their_own_key(tmp_path):
    r = tiny_renderer().float()
    heads = (SemanticHead(16, 4), SemanticHead(16, 4))
    path = write_checkpoint(str(tmp_path / "000001.ckpt"),
                            checkpoint_data(1, r, entries={SEMANTIC_KEY: semantic_state(*heads)}))
    data = load_checkpoint(path)
    assert set(data[SEMANTIC_KEY]) >= {"coarse", "fine", "num_classes"}
    fresh = (SemanticHead(16, 4), SemanticHead(16, 4))
    assert load_semantic_heads(path, data, *fresh)
    x = torch.randn(2, 16)
    assert torch.equal(fresh[1](x), heads[1](x))
    with pytest.raises(InputError, match="do not match"):
        load_semantic_heads(path, data, SemanticHead(16, 5), SemanticHead(16, 5))
    plain = load_checkpoint(write_checkpoint(str(tmp_path / "000002.ckpt"), checkpoint_data(2, r)))
    with pytest.raises(InputError, match="no Semantic-NeRF heads"):
        load_semantic_heads("p.ckpt", plain, *fresh)
    assert not load_semantic_heads("p.ckpt", plain, *fresh, required=False)


def _opts(tmp_path, *flags):
    config = write_config(tmp_path, tmp_path / "data")
    return jnerf_main.parse_options(["--config_file", config, "--save_dir", str(tmp_path / "o"), *flags])


def test_flags_mode_and_protocols(tmp_path):
    _, opts = _opts(tmp_path, "--semantic_nerf")
    assert opts.mode == "semantic_nerf" and opts.semantic.protocol == "joint"
    assert opts.semantic.wgt_sem == default("wgt_sem") == WGT_SEM
    assert opts.seeds is not None and opts.seeds.seed_dir == os.path.join(str(tmp_path / "o"), "seeds")
    _, opts = _opts(tmp_path, "--semantic_finetune", "--ckpt_path", "x.ckpt", "--wgt_sem", "0.5", "--test_instance")
    assert opts.semantic.protocol == "finetune" and opts.semantic.wgt_sem == 0.5 and opts.seeds.instance
    for flags, message in ((["--semantic_finetune"], "--ckpt_path"),
                           (["--semantic_nerf", "--propagate_2d", "--ckpt_path", "x"], "choose one"),
                           (["--semantic_nerf", "--contrastive_2d"], "Jacobi shaping"),
                           (["--semantic_nerf", "--wgt_sem", "0"], "--wgt_sem 0.0")):
        with pytest.raises(InputError, match=message):
            _opts(tmp_path, *flags)
    # not given, the new flags leave the merged config (and exp_config.yaml) as before
    _, plain = _opts(tmp_path)
    assert not {"semantic_nerf", "semantic_finetune", "wgt_sem"} & set(plain.config["experiment"])


# ------------------------------------------------------------------------------ end to end
SIZE = dict(frames=25, width=40, height=30)
COMMON = ["--seed", "0", "--N_samples", "16", "--N_importance", "16", "--lrate", "5e-3"]
CLICKS = ["--sparse_views", "--sparse_ratio", "0.995", "--label_propagation", "--partial_perc", "0"]


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    from datasets.synthetic import generate_scene
    root = tmp_path_factory.mktemp("semroom")
    generate_scene(str(root / "data"), seed=0, dino=False, workers=1, stats=False, **SIZE)
    config = write_config(root, root / "data", width=SIZE["width"], height=SIZE["height"], netwidth=32,
                          logging=dict(step_save_ckpt=10**6, step_log_tfb=50, step_val=10**9, step_vis_train=10**9))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    rc = jnerf_main.main(["--config_file", config, "--save_dir", str(root / "plain"), *COMMON,
                          "--N_rays", "512", "--N_iters", "300"])
    torch.set_num_threads(n)
    assert rc == 0
    return dict(root=root, config=config, ckpt=str(root / "plain" / "checkpoints" / "000300.ckpt"))


def _chance_check(m):
    """Chance = a uniform guess among the L given classes: expected total and class-average accuracy
    1/L on the pixels of those classes. Measured (--seed 0, one thread) on the 5 test views from one
    densely labelled training view, a 300-step 32-wide plain NeRF at 40x30: finetune 2D 42.0 / 12.0 %,
    3D 38.0 / 11.2 %; joint (400 steps from scratch) 2D 42.5 / 10.4 %, 3D 40.4 / 9.5 % (total /
    class-average); chance 1/13 = 7.7 %."""
    chance = 1.0 / len(m["given_classes"])
    assert m["class_average_accuracy"] > chance, (m["class_average_accuracy"], chance)
    assert m["total_accuracy"] > 2 * chance, (m["total_accuracy"], chance)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["finetune", "joint"])
def test_protocol_end_to_end_beats_chance_on_the_clicked_classes(room, tmp_path, protocol):
    """Training frame 0 densely labelled (one labelled view), run with --training_mode (ignored by the
    baseline, with a note) and the labelled-pixels sampler (every step sees the labels; the
    default, Semantic-NeRF's one-frame sampler, sees them on one step in 20 here); the labels are
    scored on the test split all the same (`views`), as every method's: the baseline must spread
    them to the other views better than chance."""
    out = tmp_path / protocol
    seeds = tmp_path / "seeds"
    flags = (["--semantic_finetune", "--ckpt_path", room["ckpt"], "--N_iters", "200"] if protocol == "finetune"
             else ["--semantic_nerf", "--N_iters", "400"])
    rc = jnerf_main.main(["--config_file", room["config"], "--save_dir", str(out), *COMMON, "--N_rays", "512",
                          "--sparse_views", "--sparse_ratio", "0.995", "--seed_dir", str(seeds), "--visualise_save",
                          "--training_mode", "--semantic_sampler", "labelled", *flags])
    assert rc == 0
    top = json.loads((out / "metrics.json").read_text())
    assert top["mode"] == "semantic_nerf" and top["protocol"] == protocol and top["labelled_frames"] == [0]
    ck = load_checkpoint(str(out / "checkpoints" / f"{top['final_step']:06d}.ckpt"))
    assert SEMANTIC_KEY in ck
    if protocol == "finetune":   # the NeRF is the plain checkpoint's, untouched
        plain = load_checkpoint(room["ckpt"])
        assert all(torch.equal(v, plain["network_fine_state_dict"][k]) for k, v in ck["network_fine_state_dict"].items())
    for kind in ("2d", "3d"):
        m = json.loads((out / f"semantic_{kind}" / "metrics.json").read_text())
        assert m["mode"] == f"semantic_nerf_{kind}" and m["protocol"] == protocol
        assert m["given_classes"] == top["given_classes"] and len(m["given_classes"]) >= 8
        assert m["views"]["split"] == "test" and m["views"]["count"] == m["test_views"] == top["test_views"] == 5
        print(protocol, kind, "mIoU", m["miou"], "acc", m["total_accuracy"], "class-avg", m["class_average_accuracy"])
        _chance_check(m)
        folder = out / "semantic_2d" if kind == "2d" else out / "semantic_3d" / "test_render"
        assert (folder / "0_label.png").is_file() and (kind == "2d" or (folder / "0_gt_label.png").is_file())
    # the propagation comparison reads the baseline's metrics as a column
    from propagation.compare import compare_runs
    table = compare_runs({"2D": str(out / "semantic_2d" / "metrics.json"), "3D": str(out / "semantic_3d" / "metrics.json")})
    assert "| mIoU |" in table


@pytest.mark.slow
def test_finetune_resume_and_instances(room, tmp_path):
    out = tmp_path / "inst"
    base = ["--config_file", room["config"], "--save_dir", str(out), *COMMON, "--N_rays", "256", *CLICKS,
            "--test_instance", "--semantic_finetune"]
    assert jnerf_main.main(base + ["--ckpt_path", room["ckpt"], "--N_iters", "20"]) == 0
    first = json.loads((out / "semantic_2d" / "metrics.json").read_text())
    assert first["label_space"] == "instance"
    # --resume continues the semantic run (heads and Adam state from its own checkpoint)
    assert jnerf_main.main(base + ["--resume", "--N_iters", "40"]) == 0
    top = json.loads((out / "metrics.json").read_text())
    assert top["steps"] == 20 and top["final_step"] == 40 and top["label_space"] == "instance"


def test_semantic_nerf_sampler_is_one_frame_per_step_with_replacement():
    """--semantic_sampler frame (the default): Semantic-NeRF's own trainer's draw, one random
    training frame per step and N_rays pixels of it with replacement (so repeats happen), over all
    frames; the stream resumes from its state."""
    from training.batching import RayBatcher
    from tests.tiny_models import tiny_camera
    from dataclasses import replace as dc_replace
    cams = tiny_camera(height=6, width=8)
    cams = dc_replace(cams, poses=cams.poses.repeat(5, 1, 1))
    rgb = torch.rand(5, 6, 8, 3)
    b = RayBatcher(cams, rgb, 40, "cpu", mode="semantic_nerf", base_seed=3)
    frames, repeats = set(), 0
    for _ in range(30):
        frame, pix = b.indices()
        assert frame.unique().numel() == 1 and pix.numel() == 40 and 0 <= int(pix.min()) and int(pix.max()) < 48
        frames.add(int(frame[0]))
        repeats += 40 - pix.unique().numel()
    assert frames == set(range(5)) and repeats > 0          # every frame drawn; 40 of 48 pixels repeat some
    state = b.state_dict()
    nxt = b.indices()
    c = RayBatcher(cams, rgb, 40, "cpu", mode="semantic_nerf", base_seed=99)
    c.load_state_dict(state)
    again = c.indices()
    assert torch.equal(nxt[0], again[0]) and torch.equal(nxt[1], again[1])
    batch = b.next()
    assert torch.equal(batch.rgb, rgb[batch.frame, batch.v, batch.u])


def test_sampler_flags(tmp_path):
    _, opts = _opts(tmp_path, "--semantic_nerf")
    assert opts.semantic.sampler == "frame"
    _, opts = _opts(tmp_path, "--semantic_nerf", "--semantic_sampler", "pooled", "--no_batching")
    assert opts.semantic.sampler == "pooled" and opts.train.batching == "no_batching"
    with pytest.raises(InputError, match="--no_batching chooses the plain trainer's rays"):
        _opts(tmp_path, "--semantic_nerf", "--no_batching")
    # --training_mode would score the baseline on frame 0, a training view: it is ignored, with a note
    _, opts = _opts(tmp_path, "--semantic_nerf", "--training_mode")
    assert not opts.data.training_mode and any("--training_mode is ignored by --semantic_nerf" in n for n in opts.notes)
    _, opts = _opts(tmp_path, "--training_mode")
    assert opts.data.training_mode and not any("--training_mode" in n for n in opts.notes)
