"""The runner's inputs and signals, and tables that refuse to mix (issue 18): a plan is validated
as a whole before anything runs (one line naming the file and the key, exit 2, nothing created);
--out_dir that is a file and --collect of a missing run are refused; SIGTERM ends the runner with a
message, no lock left and exit 143, and the next call finishes the run; propagation.compare and the
runner's tables refuse other label spaces, scenes and view sets."""
import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import reproduce
from experiments.plan import load_plan
from experiments.results import check_cell
from propagation.compare import compare_runs
from tests.test_reliability import one_line
from tests.test_reproduce import TINY, write_yaml
from utils.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


def changed(**paths):
    """TINY with the values at dotted paths replaced ('stages.plain.N_iters': 2.7)."""
    plan = copy.deepcopy(TINY)
    for path, value in paths.items():
        node, keys = plan, path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value
    return plan


BAD_PLANS = [
    ({"stages.plain.N_iters": "many"}, "stages.plain.N_iters: expected an integer, got 'many'"),
    ({"stages.plain.N_iters": 2.7}, "stages.plain.N_iters: expected an integer, got 2.7"),
    ({"stages.plain.N_iters": 0}, "stages.plain.N_iters: 0: expected at least 1"),
    ({"seed": "zero"}, "seed: expected an integer, got 'zero'"),
    ({"barrier_timeout_s": "soon"}, "barrier_timeout_s: expected a number, got 'soon'"),
    ({"scenes.0.synthetic.frames": "ten"}, "scenes[0].synthetic.frames: expected an integer, got 'ten'"),
    ({"scenes.0.synthetic.width": 4}, "scenes[0].synthetic.width: 4: expected at least 8"),
    ({"scenes.0.synthetic.colour": 1}, "scenes[0].synthetic: unknown key 'colour'"),
    ({"regime": []}, "unknown key 'regime' (did you mean regimes?)"),
    ({"scenes.0.flag": []}, "scenes[0]: unknown key 'flag' (did you mean flags?)"),
    ({"stages.plain": {"N_iters": 3, "flag": []}}, "stages.plain: unknown key 'flag' (did you mean flags?)"),
    ({"stages.plane": {"N_iters": 3}}, "stages: unknown key 'plane' (did you mean plain?)"),
    ({"metrics": ["mIoU"]}, "metrics: unknown 'mIoU' (did you mean miou?)"),
    ({"methods": ["plain", "jnref"]}, "methods: unknown 'jnref' (did you mean jnerf?)"),
    ({"dims": ["2D"]}, "dims: unknown '2D'"),
    ({"flags": "--N_samples 8"}, "flags: expected a list of flags"),
    ({"config_overrides": {"model": {"netwidht": 16}}}, "config_overrides: unknown key model.netwidht (did you mean "
                                                        "netwidth?)"),
    ({"config_overrides": {"model": {"netwidth": "wide"}}},
     "config_overrides: model.netwidth 'wide': expected a number"),
    ({"config_overrides": {"render": {"N_rays": 64}}}, "config_overrides: render.N_rays would be overwritten by "
                                                       "--N_rays's default in every stage"),
    ({"regimes.0.flags": ["--sparse_views", "--sparse_ration", "0.5"]},
     "stage 'living room: semantic, 1 click: plain NeRF, 2D propagation' (flags from flags, scenes[0].flags, "
     "regimes[0].flags, regimes[0].propagation): unrecognized arguments: --sparse_ration 0.5 (did you mean "
     "--sparse_ratio?)"),
    ({"stages.plain.flags": ["--N_rays", "many"]},
     "stage 'living room: plain NeRF' (flags from flags, scenes[0].flags, stages.plain.flags): argument --N_rays"),
    ({"regimes.1.propagation": ["--train_agg", "--mean_gradient"]}, "--train_agg needs --adaptive_selection"),
]


@pytest.mark.parametrize("paths,needle", BAD_PLANS, ids=[n[:40] for _, n in BAD_PLANS])
def test_a_bad_plan_value_names_its_key(tmp_path, paths, needle):
    path = write_yaml(tmp_path / "p.yaml", changed(**paths))
    with pytest.raises(InputError) as info:
        load_plan(path)
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value), str(info.value)


def test_the_shipped_plans_load():
    for name in ("demo", "replica", "gpu_timing"):
        load_plan(os.path.join(ROOT, "experiments", f"{name}.yaml"))


def test_bad_plans_and_folders_stop_with_one_line_and_create_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    path = write_yaml(tmp_path / "p.yaml", changed(**{"stages.plain.N_iters": 2.7}))
    assert reproduce.main([path, "--out_dir", str(out)]) == 2
    one_line(2, capsys.readouterr().err, 2, "stages.plain.N_iters")
    (tmp_path / "a_file").write_text("x")
    good = write_yaml(tmp_path / "g.yaml")
    assert reproduce.main([good, "--out_dir", str(tmp_path / "a_file")]) == 2
    one_line(2, capsys.readouterr().err, 2, f"--out_dir {tmp_path / 'a_file'} is a file")
    assert reproduce.main([good, "--out_dir", str(out), "--collect"]) == 2
    one_line(2, capsys.readouterr().err, 2, f"--collect: {out} holds no scene folder")
    assert reproduce.main([good, "--processes", "x"]) == 2
    one_line(2, capsys.readouterr().err, 2, "argument --processes: invalid int value")
    assert not out.exists()


SIGNAL_PLAN = dict(TINY, scenes=TINY["scenes"][:1], label_spaces=["semantic"], dims=["2d"], methods=["plain", "jnerf"],
                   regimes=TINY["regimes"][:1], stages=dict(plain=dict(TINY["stages"]["plain"], N_iters=20),
                                                            jnerf=dict(TINY["stages"]["jnerf"], N_iters=400)))


@pytest.mark.slow
def test_sigterm_ends_the_runner_with_a_message_no_lock_and_the_next_call_finishes(tmp_path):
    path = write_yaml(tmp_path / "s.yaml", SIGNAL_PLAN)
    out, data = tmp_path / "out", tmp_path / "data"
    cmd = [sys.executable, "-m", "experiments.reproduce", path, "--out_dir", str(out), "--data_root", str(data)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = out / "living_room" / "plain" / ".stage_complete"
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None and time.time() - t0 < 300, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)               # between the stages, or in the shaping stage after it
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "SIGTERM" in err and "run the same command again to continue" in err
    locks = [os.path.join(r, f) for r, _, files in os.walk(out) for f in files if f == ".lock"]
    assert locks == []
    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "done already: living room: plain NeRF" in again.stdout
    assert json.loads((out / "results.json").read_text())["missing"] == []


# ------------------------------------------------------------------------------ tables do not mix

def metrics(space="semantic", scene="a" * 40, views=None, miou=0.5):
    m = dict(mode="propagate_2d", miou=miou, total_accuracy=0.7, label_space=space,
             scene=dict(name="room", digest=scene), given_classes=[0], class_names=["wall"], ious=[miou])
    if views is not None:
        m["views"] = dict(split="test", ids=views, count=len(views), digest="-".join(map(str, views)))
    return m


def write(tmp_path, name, m):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(m))
    return str(p)


@pytest.mark.parametrize("other,needle", [
    (dict(space="instance"), "other labels (semantic vs instance)"),
    (dict(scene="b" * 40), "other scene (room aaaaaaaa vs room bbbbbbbb)"),
    (dict(views=[2, 9]), "other test views (test split, 2 views 2-7 vs test split, 2 views 2-9)"),
], ids=["label space", "scene", "views"])
def test_compare_refuses_to_mix(tmp_path, other, needle):
    a = write(tmp_path, "a", metrics(views=[2, 7]))
    b = write(tmp_path, "b", metrics(**dict(dict(views=[2, 7]), **other)))
    proc = subprocess.run([sys.executable, "-m", "propagation.compare", f"plain={a}", f"shaped={b}"], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=120)
    one_line(proc.returncode, proc.stderr, 2, f"cannot compare 'plain' ({a}) with 'shaped' ({b})", needle)


def test_compare_tables_old_files_with_a_warning(tmp_path, capsys):
    a = write(tmp_path, "a", metrics(views=[2, 7], miou=0.5))
    old = metrics(miou=0.75)
    del old["scene"]
    b = write(tmp_path, "b", old)
    table = compare_runs({"new": a, "old": b})
    assert "| mIoU | 50.00 | 75.00 | +25.00 |" in table
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    assert warnings == [f"warning: 'old' ({b}) records no scene and no views (written before they were recorded): "
                        f"its scene and views are not checked against 'new' ({a})"]


def test_a_runner_cell_of_another_label_space_or_scene_is_refused():
    digests = {}
    check_cell(metrics(), "r/a.json", "semantic", "room", digests)
    check_cell(metrics(), "r/b.json", "semantic", "room", digests)
    with pytest.raises(InputError, match="r/c.json holds instance labels but is the cell of the semantic table"):
        check_cell(metrics(space="instance"), "r/c.json", "semantic", "room", digests)
    with pytest.raises(InputError, match=r"r/d.json holds the results of another scene \(room\) than r/a.json"):
        check_cell(metrics(scene="c" * 40), "r/d.json", "semantic", "room", digests)
    check_cell(dict(miou=0.1), "r/old.json", "semantic", "room", digests)      # an old file: nothing to check
