"""The runner both ways: a plan with the shaping methods `jnerf` (the paper's command, the
original's restart) and `jnerf_keep` (the same with --shaping_lr continue --shaping_optimizer
restore, docs/SHAPING.md), as separate table rows."""
import json
import os

import pytest

from experiments import reproduce
from experiments.layout import KEEP_FLAGS
from experiments.plan import load_plan
from experiments.stages import scene_stages
from main import parse_options
from tests.test_reproduce import TINY, write_yaml

BOTH = dict(TINY, scenes=TINY["scenes"][:1], regimes=TINY["regimes"][:1], label_spaces=["semantic"],
            methods=["plain", "jnerf", "jnerf_keep"])


def test_jnerf_keep_is_the_jnerf_stage_with_the_keep_options_unless_the_plan_gives_its_own(tmp_path):
    plan = load_plan(write_yaml(tmp_path / "t.yaml", BOTH), out_dir=str(tmp_path / "out"))
    assert plan.stages["jnerf_keep"] == dict(N_iters=5, flags=TINY["stages"]["jnerf"]["flags"] + list(KEEP_FLAGS))
    stages = scene_stages(plan, plan.scenes[0], "configs/synthetic_room.yaml")
    by_dir = {os.path.basename(s.save_dir): s for s in stages}
    plain_ckpt = os.path.join(str(tmp_path / "out"), "living_room", "plain", "checkpoints", "000030.ckpt")
    for method in ("jnerf", "jnerf_keep"):
        st = by_dir[method]
        assert st.kind == method and st.argv[st.argv.index("--ckpt_path") + 1] == plain_ckpt
        opts = parse_options(st.argv)[1].shaping
        expected = ("continue", "restore") if method == "jnerf_keep" else ("restart", "fresh")
        assert (opts.lr_schedule, opts.optimizer_state) == expected
        for dim in ("2d", "3d"):
            prop = by_dir[f"propagate_{dim}_{method}"]
            assert prop.argv[prop.argv.index("--ckpt_path") + 1] == os.path.join(st.save_dir, "checkpoints",
                                                                                 "000005.ckpt")
    # a plan's own jnerf_keep stage is taken as written; the default methods stay the paper's four
    own = dict(BOTH, stages=dict(BOTH["stages"], jnerf_keep=dict(N_iters=7, flags=["--shaping_lr", "continue"])))
    plan = load_plan(write_yaml(tmp_path / "u.yaml", own))
    assert plan.stages["jnerf_keep"] == dict(N_iters=7, flags=["--shaping_lr", "continue"])
    plain = {k: v for k, v in TINY.items() if k != "methods"}
    assert load_plan(write_yaml(tmp_path / "v.yaml", plain)).methods == ["plain", "jnerf", "semantic_joint",
                                                                        "semantic_finetune"]


@pytest.mark.slow
def test_a_plan_runs_both_shaping_methods_as_rows(tmp_path, one_thread):
    path = write_yaml(tmp_path / "both.yaml", BOTH)
    out = reproduce.reproduce(path, out_dir=str(tmp_path / "out"), data_root=str(tmp_path / "data"))
    assert not out["failed"]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["missing"] == [] and res["methods"] == ["plain NeRF", "JacobiNeRF",
                                                      "JacobiNeRF (lr continued, Adam restored)"]
    for dim in ("2d", "3d"):
        rows = res["values"]["semantic"][dim]["living room"]
        assert all(rows[m]["1 click"]["miou"] is not None for m in res["methods"])
    root = tmp_path / "out" / "living_room"
    keep = json.loads((root / "jnerf_keep" / "metrics.json").read_text())["fine_tune"]
    paper = json.loads((root / "jnerf" / "metrics.json").read_text())["fine_tune"]
    assert (keep["lr_schedule"], keep["optimizer_state"], keep["checkpoint_step"]) == ("continue", "restore", 30)
    assert (paper["lr_schedule"], paper["optimizer_state"]) == ("restart", "fresh")
    # the plain stage ran at --lrate 5e-3: the kept shaping starts where it stopped, the paper's at 5e-4
    assert keep["initial_lr"] == pytest.approx(5e-3 * 0.1 ** (30 / 250e3), rel=1e-12) and paper["initial_lr"] == 5e-4
