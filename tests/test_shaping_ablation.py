"""The shaping ablation (experiments/shaping_ablation.py, jobs.py, ablation_table.py): its stages and
their flags, its sizes, its table from the stages' metrics, and a tiny run end to end (parallel
subprocesses, every cell scored on the scene's test views, a second call does no work)."""
import json
import os

import cv2
import pytest
import yaml

from experiments import shaping_ablation as ab
from experiments.ablation_table import collect, markdown
from main import parse_options
from utils.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(frames=10, width=32, height=24, netdepth=8, netwidth=16, N_samples=4, N_importance=4, plain_iters=10,
            plain_rays=128, shape_iters=2, lrate=5e-3, lrate_decay=None, seeds=[0], jobs=2, flags=[], plain_flags=[],
            shape_flags=[], score_flags=[], variants=["plain", "keep"],
            config_overrides=dict(logging=dict(step_save_ckpt=100000, step_log_tfb=50, step_val=100000,
                                               step_vis_train=100000)))


def test_every_variant_is_the_papers_command_from_its_seeds_plain_checkpoint(tmp_path):
    sizes = ab.load_sizes()                                  # the GPU sizes: 2 seeds, 8 rows
    assert sizes["seeds"] == [0, 1] and sizes["variants"][0] == "plain" and sizes["shape_iters"] == 10000
    (tmp_path / "data").mkdir()
    config, name = ab.prepare_scene(str(tmp_path), sizes, dataset_dir=str(tmp_path / "data"),
                                    config=os.path.join(ROOT, "configs", "synthetic_room.yaml"))
    assert name == "data" and config == os.path.join(str(tmp_path), "config.yaml")
    jobs = ab.ablation_jobs(str(tmp_path), config, sizes)
    rows = len(sizes["variants"])
    assert len(jobs) == 2 * (1 + (rows - 1) + rows + 2 * rows)
    by_dir = {j.stage.save_dir: j for j in jobs}
    expect = {"paper": dict(lr_schedule="restart", optimizer_state="fresh", wgt_contrastive=1e-2, wgt_gradient=1e-2),
              "restart_only": dict(lr_schedule="restart", wgt_contrastive=0.0, wgt_gradient=0.0),
              "continue_lr": dict(lr_schedule="continue", optimizer_state="fresh"),
              "restore_adam": dict(lr_schedule="restart", optimizer_state="restore"),
              "contrastive_only": dict(wgt_contrastive=1e-2, wgt_gradient=0.0),
              "gradient_only": dict(wgt_contrastive=0.0, wgt_gradient=1e-2),
              "keep": dict(lr_schedule="continue", optimizer_state="restore", wgt_contrastive=1e-2)}
    assert set(expect) == set(sizes["variants"]) - {"plain"}
    for seed in (0, 1):
        plain = os.path.join(str(tmp_path), f"seed_{seed}", "plain", "train")
        plain_ckpt = os.path.join(plain, "checkpoints", "020000.ckpt")
        writer = os.path.join(str(tmp_path), f"seed_{seed}", "plain", "propagate_2d")
        for name, fields in expect.items():
            job = by_dir[os.path.join(str(tmp_path), f"seed_{seed}", name, "train")]
            argv = job.stage.argv
            assert job.after == (plain,) and argv[argv.index("--ckpt_path") + 1] == plain_ckpt
            assert argv[argv.index("--seed") + 1] == str(seed)
            opts = parse_options(argv)[1]
            assert opts.train.n_iters == 10000 and opts.train.n_rays == 64 and opts.model.netwidth == 256
            assert opts.train.lrate_decay == 250000 and opts.train.lrate == 5e-4      # the paper's shaping
            assert {k: getattr(opts.shaping, k) for k in fields} == fields, name
        opts = parse_options(by_dir[plain].stage.argv)[1]        # the original's schedule, 10x compressed
        assert (opts.train.n_iters, opts.train.n_rays, opts.train.lrate_decay) == (20000, 1024, 25000)
        assert opts.precision.name == "mixed" and (opts.model.n_samples, opts.model.n_importance) == (64, 128)
        props = [j for j in jobs if j.stage.kind == "propagate" and f"seed_{seed}" in j.stage.save_dir]
        assert len(props) == 2 * rows
        assert {j.stage.argv[j.stage.argv.index("--seed_dir") + 1] for j in props} == \
            {os.path.join(str(tmp_path), f"seed_{seed}", "seeds")}
        assert all(writer in j.after for j in props if j.stage.save_dir != writer)   # the clicks are made once
        for j in props + [j for j in jobs if j.stage.kind == "render"]:
            assert "--training_mode" not in j.stage.argv                            # scored on every test view
    # the training stages start first
    kinds = [j.stage.kind for j in jobs]
    assert kinds[:2] == ["plain", "plain"] and set(kinds[2:2 + 2 * (rows - 1)]) == {"jnerf"}


def test_sizes_come_from_the_file_then_the_flags_and_are_checked(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(dict(plain_iters=50, seeds=[3])))
    sizes = ab.load_sizes(str(path), dict(plain_iters=70, jobs=None))
    assert (sizes["plain_iters"], sizes["seeds"], sizes["netwidth"]) == (70, [3], 256)
    for bad, message in ((dict(steps=3), "unknown key 'steps'"), (dict(variants=["paper"]), "expected 'plain'"),
                         (dict(seeds=[1, 1]), "distinct seeds"), (dict(plain_iters="many"), "plain_iters"),
                         (dict(plain_flags="--precision tf32"), "plain_flags")):
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(InputError, match=message):
            ab.load_sizes(str(path))


def _write_metrics(base, psnr, m2, m3, views=4, res=(24, 32), lr=None):
    for sub, data in (("psnr", dict(test_psnr=psnr, test_views=views, test_psnr_per_view=[psnr] * views)),
                      ("propagate_2d", dict(miou=m2, test_views=views, resolution=list(res), seed_dir="s",
                                            seeds="partial_perc_0.0")),
                      ("propagate_3d", dict(miou=m3, test_views=views, resolution=list(res), seed_dir="s",
                                            seeds="partial_perc_0.0")),
                      ("train", dict(fine_tune=dict(initial_lr=lr)) if lr else {})):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
        with open(os.path.join(base, sub, "metrics.json"), "w") as f:
            json.dump(data, f)


def test_table_means_differences_and_the_same_views_check(tmp_path):
    sizes = dict(ab.load_sizes(), variants=["plain", "paper", "keep"])
    out = str(tmp_path)
    values = {("plain", 0): (38.0, 0.5, 0.2), ("plain", 1): (37.0, 0.4, 0.1), ("paper", 0): (33.0, 0.9, 0.95),
              ("paper", 1): (34.0, 0.8, 0.85), ("keep", 0): (37.5, 0.88, 0.9)}
    for (name, seed), (p, m2, m3) in values.items():
        _write_metrics(ab.row_dir(out, seed, name), p, m2, m3, lr=None if name == "plain" else 4e-4)
    table = collect(out, "room", sizes, ab.VARIANTS, ab.row_dir)
    rows = {r["key"]: r for r in table["rows"]}
    assert rows["paper"]["mean"]["psnr"] == pytest.approx(33.5)
    assert rows["paper"]["mean"]["delta_psnr"] == pytest.approx(-4.0)         # (33 - 38 + 34 - 37) / 2
    assert rows["paper"]["mean"]["miou_2d"] == pytest.approx(85.0)
    assert rows["keep"]["seeds"]["0"]["delta_psnr"] == pytest.approx(-0.5)
    assert rows["keep"]["mean"]["psnr"] is None                                # seed 1 not finished
    assert table["missing"] == ["seed 1 / keep / psnr", "seed 1 / keep / miou_2d", "seed 1 / keep / miou_3d"]
    assert table["same_test_views"] and table["test_views"] == 4 and table["same_clicks"]
    md = markdown(table)
    assert "| the paper's command | none | 33.50 (33.00, 34.00) | -4.00 (-5.00, -3.00) | 85.00 (90.00, 80.00) |" in md
    assert "Warning" not in md
    _write_metrics(ab.row_dir(out, 1, "keep"), 37.0, 0.8, 0.8, views=3)       # scored on other views
    table = collect(out, "room", sizes, ab.VARIANTS, ab.row_dir)
    assert not table["same_test_views"] and table["test_views"] is None and "Warning" in markdown(table)


@pytest.mark.slow
def test_tiny_ablation_end_to_end_in_parallel_processes(tmp_path, capsys):
    sizes = tmp_path / "tiny.yaml"
    sizes.write_text(yaml.safe_dump(dict(TINY, shape_iters=5)))
    out = tmp_path / "out"
    argv = ["--sizes", str(sizes), "--out_dir", str(out), "--shape_iters", "2", "--gpus"]   # the flag wins; CPU
    assert ab.main(argv) == 0
    table = json.loads((out / "ablation.json").read_text())
    # the scene's test views, counted independently of the stages: every test frame of the config's split
    _, opts = parse_options(["--config_file", str(out / "config.yaml"), "--save_dir", str(tmp_path / "x")])
    from datasets.registry import load_scene
    views = len(load_scene(opts.data).test)
    assert views == 2 and table["test_views"] == views and table["same_test_views"] and table["same_clicks"]
    assert [r["key"] for r in table["rows"]] == ["plain", "keep"] and table["missing"] == []
    for row in table["rows"]:
        cell = row["seeds"]["0"]
        assert set(cell["views"].values()) == {views} and cell["resolution"] == {"2d": [24, 32], "3d": [24, 32]}
        assert all(cell[k] is not None for k in ("psnr", "delta_psnr", "miou_2d", "miou_3d"))
    keep = table["rows"][1]["seeds"]["0"]
    assert (keep["lr_schedule"], keep["optimizer_state"]) == ("continue", "restore")
    assert keep["initial_lr"] == pytest.approx(5e-3 * 0.1 ** (10 / 250000), rel=1e-12)
    shaped = json.loads((out / "seed_0" / "keep" / "train" / "metrics.json").read_text())
    assert shaped["final_step"] == 2                                       # --shape_iters over the file's 5
    md = (out / "ablation.md").read_text()
    assert "| row | flags added to the paper's command | test PSNR (dB) |" in md
    assert "| lr continued + Adam restored (recommended) | `--shaping_lr continue --shaping_optimizer restore` |" in md
    img = cv2.imread(str(out / "ablation.png"))
    assert img is not None and img.shape[1] >= 3 * 400
    assert (out / "commands.sh").read_text().count("python main.py") == 8
    assert sorted(os.listdir(out / "logs"))[0] == "seed_0__keep__propagate_2d.log"
    capsys.readouterr()
    again = ab.run_ablation(str(out), str(sizes), dict(shape_iters=2), gpus=[])
    assert again["ran"] == {} and len(again["skipped"]) == 8 and json.loads(json.dumps(again["table"]["rows"])) == table["rows"]
