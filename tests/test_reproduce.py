"""The reproduction runner (experiments/reproduce.py with plan.py, stages.py, launch.py): the YAML,
the shares of torchrun ranks and SLURM array tasks, the tables and the plot; at tiny size end to
end: every cell of the table filled, a second call does no work, an interrupted stage is redone
alone, and two torchrun ranks on the CPU write the same results.json as one process."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from experiments import reproduce
from experiments.launch import my_scenes, shard
from experiments.plan import load_plan
from experiments.results import cell_views, plot_miou, results_markdown, write_results
from experiments.stages import MARKER, identity, scene_stages, stage_done
from utils.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(
    name="tiny", seed=0,
    scenes=[dict(name="living room", synthetic=dict(variant=0, frames=10, width=24, height=18),
                 config="configs/synthetic_room.yaml"),
            dict(name="bedroom", synthetic=dict(variant=1, frames=10, width=24, height=18),
                 config="configs/synthetic_bedroom.yaml")],
    config_overrides=dict(model=dict(netwidth=16, netwidth_fine=16),
                          logging=dict(step_save_ckpt=100000, step_log_tfb=50, step_val=100000,
                                       step_vis_train=100000)),
    flags=["--N_samples", "8", "--N_importance", "8"],
    stages=dict(plain=dict(N_iters=30, flags=["--N_rays", "256", "--lrate", "5e-3"]),
                jnerf=dict(N_iters=5, flags=["--load_dino", "--contrastive_2d", "--contrastive_starting_step", "0",
                                             "--contrastive_step", "1", "--rgb_layer", "--gt_feature_sim",
                                             "--contrastive_abs", "--gradient_norm_loss", "--N_rays", "32",
                                             "--training_mode"]),
                # --training_mode as the Replica plan: its cells must still be scored on the test split
                semantic_joint=dict(N_iters=30, flags=["--N_rays", "256", "--lrate", "5e-3", "--training_mode"]),
                semantic_finetune=dict(N_iters=10, flags=["--N_rays", "256", "--lrate", "5e-3"])),
    regimes=[dict(name="1 click", flags=["--sparse_views", "--sparse_ratio", "0.995", "--label_propagation",
                                         "--partial_perc", "0"]),
             dict(name="dense", flags=["--sparse_views", "--sparse_ratio", "0.995"],
                  propagation=["--adaptive_selection", "--num_comb", "2", "--num_iters", "1", "--train_agg",
                               "--agg_steps", "20"])],
    label_spaces=["semantic", "instance"], dims=["2d", "3d"],
    methods=["plain", "jnerf", "semantic_joint", "semantic_finetune"], metrics=["miou", "total_accuracy"])


def write_yaml(path, plan=TINY, **changes):
    with open(path, "w") as f:
        yaml.safe_dump(dict(plan, **changes), f, sort_keys=False)
    return str(path)


# ---------------------------------------------------------------------------------- fast

def test_yaml_errors_name_the_key(tmp_path):
    bad = [(dict(scenes=[]), "scenes is empty"), (dict(regimes=[]), "regimes is empty"),
           (dict(methods=["plain", "oracle"]), "methods"),
           (dict(stages=dict(plain=dict(N_iters=3))), "stages.jnerf.N_iters"),
           (dict(scenes=[dict(name="a", config="configs/synthetic_room.yaml")]), "exactly one of dataset_dir"),
           (dict(scenes=[dict(name="a", dataset_dir="x", config="nope.yaml")]), "nope.yaml does not exist"),
           (dict(regimes=[dict(name="a"), dict(name="A")]), "same name")]
    for change, message in bad:
        with pytest.raises(InputError, match=message):
            load_plan(write_yaml(tmp_path / "x.yaml", **change))
    with pytest.raises(InputError, match="does not exist"):
        load_plan(str(tmp_path / "missing.yaml"))
    plan = load_plan(os.path.join(ROOT, "experiments", "demo.yaml"))
    assert [s.name for s in plan.scenes] == ["living room", "bedroom"] and plan.out_dir == "runs/reproduce_demo"
    assert plan.methods == ["plain", "jnerf", "semantic_joint", "semantic_finetune"]


def test_stage_commands_share_one_seed_folder_and_the_plain_checkpoint(tmp_path):
    plan = load_plan(write_yaml(tmp_path / "t.yaml"), out_dir=str(tmp_path / "out"))
    stages = scene_stages(plan, plan.scenes[0], "cfg.yaml")
    # plain + jnerf, then per space x regime: 2 methods x 2 dims propagation + 2 semantic runs
    assert len(stages) == 2 + 2 * 2 * (4 + 2)
    plain_ckpt = os.path.join(str(tmp_path / "out"), "living_room", "plain", "checkpoints", "000030.ckpt")
    seeds = {s.argv[s.argv.index("--seed_dir") + 1] for s in stages if s.seeds}
    assert seeds == {os.path.join(str(tmp_path / "out"), "living_room", "seeds")}
    ft = [s for s in stages if s.kind == "semantic_finetune"]
    assert len(ft) == 4 and all(s.argv[s.argv.index("--ckpt_path") + 1] == plain_ckpt for s in ft)
    assert sum("--test_instance" in s.argv for s in stages) == 12


def test_a_changed_stage_reruns_what_reads_its_checkpoint_and_nothing_else(tmp_path):
    plan = load_plan(write_yaml(tmp_path / "t.yaml"), out_dir=str(tmp_path / "out"))
    config = tmp_path / "cfg.yaml"
    config.write_text("a: 1\n")
    stages = scene_stages(plan, plan.scenes[0], str(config))
    plain = stages[0]
    prop = next(s for s in stages if s.kind == "propagate" and s.save_dir.endswith("propagate_2d_plain"))
    ft = next(s for s in stages if s.kind == "semantic_finetune")
    joint = next(s for s in stages if s.kind == "semantic_joint")
    for st in (plain, prop, ft, joint):                # as if each had finished
        for path in st.outputs:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
        with open(os.path.join(st.save_dir, MARKER), "w") as f:
            json.dump(identity(st), f)
    assert all(stage_done(st) for st in (plain, prop, ft, joint))
    # the plain NeRF ran again with other steps: what reads its checkpoint is no longer done
    marker = os.path.join(plain.save_dir, MARKER)
    with open(marker) as f:
        m = json.load(f)
    m["argv"] = m["argv"] + ["--N_rays", "64"]
    with open(marker, "w") as f:
        json.dump(m, f)
    assert not stage_done(ft) and not stage_done(prop)
    assert stage_done(joint)              # trained from scratch: untouched
    # a changed scene config reruns everything
    config.write_text("a: 2\n")
    assert not stage_done(joint)


@pytest.mark.parametrize("env, expected", [
    ({}, [["a", "b", "c", "d", "e"]]),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, [["b", "d"]]),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, [["c"]]),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "1", "WORLD_SIZE": "2"}, [["d"]]),
])
def test_each_process_takes_whole_scenes(monkeypatch, env, expected):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN",
              "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    index, count, _, _ = shard()
    assert [my_scenes(list("abcde"), index, count)] == expected
    # every scene goes to exactly one process
    taken = sorted(x for i in range(count) for x in my_scenes(list("abcde"), i, count))
    assert taken == list("abcde")


def _fake_results():
    methods = ["plain NeRF", "JacobiNeRF"]
    regimes = ["1 click", "dense"]
    vals = {m: {r: {"miou": v, "total_accuracy": v + 10} for r, v in zip(regimes, (10.0 + i, 40.0 + i))}
            for i, m in enumerate(methods)}
    return dict(name="fake", scenes=["a"], label_spaces=["semantic"], dims=["2d", "3d"], regimes=regimes,
                methods=methods, method_keys=["plain", "jnerf"], metrics=["miou", "total_accuracy"],
                values={"semantic": {d: {"a": vals, "mean": vals} for d in ("2d", "3d")}},
                labelled_fraction={"semantic": {"1 click": {"a": 1e-4, "mean": 1e-4}, "dense": {"a": 0.02, "mean": 0.02}}},
                views={"semantic": {d: {"a": {m: {r: dict(split="test", count=10, digest="d10") for r in regimes}
                                              for m in methods}} for d in ("2d", "3d")}},
                missing=[])


def test_a_table_of_cells_scored_on_different_views_is_refused(tmp_path):
    """One cell scored on frame 0 (a training view) beside cells scored on the test split: no table
    is written, and the error names the table and each cell's views; an older file without a digest
    counts by its split and view count."""
    from types import SimpleNamespace
    res = _fake_results()
    res["views"]["semantic"]["2d"]["a"]["JacobiNeRF"]["dense"] = dict(split="frame 0 (--training_mode)", count=1,
                                                                      digest=None)
    plan = SimpleNamespace(out_dir=str(tmp_path / "out"))
    with pytest.raises(InputError) as err:
        write_results(plan, res)
    text = str(err.value)
    assert "a / semantic / 2D" in text and "JacobiNeRF / dense: frame 0 (--training_mode), 1 view(s)" in text
    assert "plain NeRF / 1 click: test, 10 view(s) [d10]" in text and "/ 3D" not in text
    assert not os.path.exists(plan.out_dir)
    res["views"]["semantic"]["2d"]["a"]["JacobiNeRF"]["dense"] = dict(split="test", count=10, digest="d10")
    write_results(plan, res)            # the same views everywhere: the table is written
    assert os.path.exists(os.path.join(plan.out_dir, "results.md"))
    assert cell_views({"test_views": 1, "test_split": "frame 0 (--training_mode)"}) == dict(
        split="frame 0 (--training_mode)", count=1, digest=None)


def test_markdown_layout_and_plot():
    res = _fake_results()
    text = results_markdown(res)
    assert "| scene | method | 1 click mIoU | 1 click acc | dense mIoU | dense acc |" in text
    assert "| **mean** | JacobiNeRF | 11.00 | 21.00 | 41.00 | 51.00 |" in text
    img = plot_miou(res)
    assert img.dtype == np.uint8 and img.shape[2] == 3 and img.shape[1] == 2 * 560
    red = np.all(img == (214, 39, 40), axis=-1)     # JacobiNeRF's line and markers
    assert red.sum() > 100


# ---------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The tiny YAML run by one process (in-process, one thread)."""
    import torch
    root = tmp_path_factory.mktemp("repro")
    path = write_yaml(root / "tiny.yaml")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = reproduce.reproduce(path, out_dir=str(root / "one"), data_root=str(root / "data"))
        second = reproduce.reproduce(path, out_dir=str(root / "one"), data_root=str(root / "data"))
    finally:
        torch.set_num_threads(n)
    return dict(root=root, yaml=path, first=first, second=second)


@pytest.mark.slow
def test_tiny_runner_fills_every_cell_and_a_second_call_does_no_work(one_process, capsys):
    root = one_process["root"]
    first, second = one_process["first"], one_process["second"]
    assert not first["failed"] and not second["failed"]
    res = json.loads((root / "one" / "results.json").read_text())
    assert res["missing"] == []
    cells = [v for space in res["values"].values() for dim in space.values() for scene in dim.values()
             for method in scene.values() for regime in method.values() for v in regime.values()]
    assert len(cells) == 2 * 2 * 3 * 4 * 2 * 2 and all(v is not None for v in cells)
    assert res["methods"] == ["plain NeRF", "JacobiNeRF", "Semantic-NeRF (joint)", "Semantic-NeRF (fine-tune)"]
    frac = res["labelled_fraction"]["semantic"]
    assert 0 < frac["1 click"]["mean"] < frac["dense"]["mean"] < 1
    # the first call ran every stage of both scenes, the second none
    assert all(len(stages) == 1 + 26 + 1 for stages in first["ran"].values())     # data, 26 stages, total
    assert all(set(stages) == {"scene data", "total"} for stages in second["ran"].values())
    # a synthetic room is loaded at the size it was generated at
    cfg = yaml.safe_load((root / "one" / "living_room" / "config.yaml").read_text())
    assert (cfg["experiment"]["width"], cfg["experiment"]["height"]) == (24, 18)
    assert cfg["model"]["netwidth"] == 16 and cfg["experiment"]["dataset_dir"] == str(root / "data" / "living_room")
    # every cell of a scene was scored on the same test views (the Semantic-NeRF stage trained with
    # --training_mode included), the whole test split, each with a digest
    for space in res["views"].values():
        for dim in space.values():
            for scene_name, scene in dim.items():
                sets = {json.dumps(v, sort_keys=True) for method in scene.values() for v in method.values()}
                assert len(sets) == 1, (scene_name, sets)
                v = json.loads(sets.pop())
                assert v["split"] == "test" and v["count"] == 2 and v["digest"]
    md = (root / "one" / "results.md").read_text()
    assert "## Instance labels, 3D" in md and "| **mean** | Semantic-NeRF (fine-tune) |" in md
    assert cv2.imread(str(root / "one" / "miou_vs_sparsity.png")) is not None


@pytest.mark.slow
def test_an_interrupted_stage_is_redone_alone(one_process, tmp_path):
    import torch
    root = one_process["root"]
    out = tmp_path / "copy"
    shutil.copytree(root / "one", out)
    # as if killed in the middle: the marker of one propagation and one semantic run are gone
    prop = out / "bedroom" / "instance" / "dense" / "propagate_3d_jnerf"
    sem = out / "living_room" / "semantic" / "1_click" / "semantic_finetune"
    for d in (prop, sem):
        os.remove(d / MARKER)
    # a changed config reruns nothing else: the stage commands and configs are unchanged
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = reproduce.reproduce(one_process["yaml"], out_dir=str(out), data_root=str(root / "data"))
    finally:
        torch.set_num_threads(n)
    ran = {s for stages in again["ran"].values() for s in stages} - {"scene data", "total"}
    assert ran == {"bedroom: instance, dense: JacobiNeRF, 3D propagation",
                   "living room: semantic, 1 click: Semantic-NeRF (fine-tune)"}
    # the training stage continued from its own checkpoint (--resume), the propagation started over
    marker = json.loads((sem / MARKER).read_text())
    assert "--resume" in marker["command"] and "--ckpt_path" not in marker["command"]
    assert "--overwrite" in json.loads((prop / MARKER).read_text())["command"]
    a = json.loads((out / "results.json").read_text())
    b = json.loads((root / "one" / "results.json").read_text())
    assert a["values"]["instance"]["3d"]["bedroom"]["JacobiNeRF"] == b["values"]["instance"]["3d"]["bedroom"]["JacobiNeRF"]


@pytest.mark.slow
def test_two_torchrun_ranks_on_the_cpu_write_the_same_results_as_one_process(one_process):
    root = one_process["root"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "experiments.reproduce", one_process["yaml"], "--out_dir", str(root / "two"),
           "--data_root", str(root / "data")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    timings = [json.loads((root / "two" / "timings" / f"process_{i:03d}.json").read_text()) for i in range(2)]
    assert [t["scenes"] for t in timings] == [["living room"], ["bedroom"]]
    one = json.loads((root / "one" / "results.json").read_text())
    two = json.loads((root / "two" / "results.json").read_text())
    assert two == one
