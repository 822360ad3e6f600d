"""Generated bad inputs over every flag of main.py, every key of the run config and every key of the
runner's plan (Hypothesis, derandomised so CI sees the same examples each time; issue 18).

For each example (a flag, YAML key or plan key with a random value of the right or the wrong type,
or an unknown key) the validation layer either accepts it and the value is honoured (it is in the
merged config, or a warning says a flag default overrides it, or it is in the Plan), or it stops
with an InputError whose one line names the flag or key. Any other exception fails the test (a
traceback). Refused examples of main.py run again through main.main in-process: exit 2, one
`error:` line, no traceback, and the run folder beside it unchanged. A handful go through
subprocesses, as a user runs them. Sizes: see EXAMPLES (about 1000 examples, well under a minute).
"""
import contextlib
import copy
import hashlib
import io
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import main as jnerf_main
from experiments.plan import load_plan
from tests.cli_helpers import write_config
from tests.test_reproduce import TINY
from utils.config import SECTIONS_OVERRIDDEN, numify
from utils.declarations import SECTIONS, section_keys
from utils.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
EXAMPLES = dict(flags=400, yaml=400, plan=300, unknown=100)
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much])

OPTIONS = jnerf_main.options()
FLAGS = [o for o in OPTIONS.values() if o.flag and o.name not in ("demo",)]      # --demo starts the demo
YAML_KEYS = [(s, k) for s in SECTIONS for k in section_keys(OPTIONS, s)]

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)
numbers = st.one_of(st.integers(-10 ** 12, 10 ** 12), st.floats(allow_nan=True, allow_infinity=True))
words = st.sampled_from(["", "abc", "1e3", "2.5", "-1", "0", "nan", "inf", "0x10", "1,2", "true", "None", "[1]"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A config (its dataset folder need not exist: nothing is loaded) and a run folder with files."""
    root = tmp_path_factory.mktemp("generated")
    cfg = write_config(root, root / "no_data")
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"mode": "train"}\n')
    (run / "checkpoints" / "000001.ckpt").write_bytes(b"x" * 64)
    return dict(root=root, cfg=cfg, run=run, base=["--config_file", cfg, "--save_dir", str(run)])


def snapshot(folder):
    out = {}
    for r, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(r, f)
            out[p] = (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def validate(argv):
    """('ok', RunOptions, notes) or ('error', message); any other exception propagates (a bug)."""
    notes = []
    try:
        _, opts = jnerf_main.parse_options(argv, notes)
    except InputError as exc:
        event("refused")
        return "error", str(exc), None
    event("accepted")
    return "ok", opts, notes


def refused_cleanly(world, argv, *names):
    """main.main(argv): exit 2, one error line naming one of `names`, no traceback, the run folder as it was."""
    before = snapshot(world["run"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = jnerf_main.main(argv)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    assert any(n in errors[0] for n in names), (names, errors[0])
    assert snapshot(world["run"]) == before


# ----------------------------------------------------------------------------- main.py's flags

def flag_value(opt):
    if opt.type is bool:
        return st.none()
    if opt.type is list:
        return st.lists(st.one_of(st.integers(-3, 40).map(str), st.sampled_from(["x", "1.5", "1e1"])), max_size=3)
    if opt.choices:
        return st.one_of(st.sampled_from(opt.choices), text, words)
    if opt.type is str:
        return st.one_of(text, words)
    return st.one_of(numbers.map(str), words, text)


@st.composite
def flag_examples(draw):
    opt = draw(st.sampled_from(FLAGS))
    return opt, draw(flag_value(opt))


def expected(opt, value):
    """The value a flag's declaration makes of the command-line text (None: not a value of its type)."""
    try:
        if opt.type is list:
            return [opt.item(v) for v in value]
        return (opt.parse or opt.type)(value)
    except (ValueError, TypeError, OverflowError):
        return None


@settings(max_examples=EXAMPLES["flags"], **SETTINGS)
@given(example=flag_examples())
def test_every_flag_with_random_values(world, example):
    opt, value = example
    tokens = [f"--{opt.name}"] if opt.type is bool else [f"--{opt.name}", *value] if opt.type is list \
        else [f"--{opt.name}={value}"]
    argv = world["base"] + tokens
    outcome, result, _ = validate(argv)
    if outcome == "error":
        assert "\n" not in result and f"--{opt.name}" in result, (tokens, result)
        refused_cleanly(world, argv, f"--{opt.name}")
        return
    merged = result.config[opt.section][opt.name]
    if opt.type is bool:
        assert merged is True
    elif opt.name == "gpu" and value == "":
        assert merged == "0"                      # the YAML's experiment.gpu, as the original
    else:
        want = expected(opt, value)
        assert want is not None and (merged == want or merged == list(want) if opt.type is list else merged == want), \
            (tokens, merged, want)


# ----------------------------------------------------------------------------- the run config's keys

yaml_values = st.one_of(numbers, text, words, st.booleans(), st.none(), st.lists(numbers, max_size=3),
                        st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2))


def write_yaml_with(world, section, key, value):
    data = yaml.safe_load(open(world["cfg"]))
    data.setdefault(section, {})[key] = value
    path = os.path.join(str(world["root"]), "generated.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


@settings(max_examples=EXAMPLES["yaml"], **SETTINGS)
@given(key=st.sampled_from(YAML_KEYS), value=yaml_values)
def test_every_yaml_key_with_random_values(world, key, value):
    section, name = key
    path = write_yaml_with(world, section, name, value)
    argv = ["--config_file", path, "--save_dir", str(world["run"])]
    outcome, result, notes = validate(argv)
    if outcome == "error":
        assert "\n" not in result and (f"{section}.{name}" in result or f"--{name}" in result), (key, value, result)
        refused_cleanly(world, argv, f"{section}.{name}", f"--{name}")
        return
    merged = result.config[section].get(name)
    want = numify({section: {name: value}})[section][name]
    opt = OPTIONS[name]
    if section in SECTIONS_OVERRIDDEN and name in ("config_file", "save_dir"):
        assert merged == argv[argv.index(f"--{name}") + 1]            # given on the command line: the flag wins
    elif (section in SECTIONS_OVERRIDDEN and opt.flag and not opt.keeps_yaml
          and (section, name) != ("experiment", "gpu")):
        # the original's rule: the flag's default wins; a warning says so when it differs
        assert merged == want or any(f"{section}" in n and f".{name} " in n for n in notes), (key, value, notes)
    elif value is None:
        assert merged is None                     # null: the declared default holds
    else:
        assert merged == want and opt.section in (section, "experiment", "train", "render"), (key, value, merged)


@settings(max_examples=EXAMPLES["unknown"], **SETTINGS)
@given(section=st.sampled_from(SECTIONS), name=st.text("abcdefghijklmnopqrstuvwxyz_NR", min_size=1, max_size=12),
       value=yaml_values)
def test_unknown_yaml_keys_are_refused_naming_them(world, section, name, value):
    if name in OPTIONS:
        return
    path = write_yaml_with(world, section, name, value)
    outcome, result, _ = validate(["--config_file", path, "--save_dir", str(world["run"])])
    assert outcome == "error" and f"unknown key {section}.{name}" in result and "\n" not in result, result


# ----------------------------------------------------------------------------- the runner plan's keys

SMALL_PLAN = dict(copy.deepcopy(TINY), scenes=copy.deepcopy(TINY["scenes"][:1]),
                  regimes=copy.deepcopy(TINY["regimes"][:1]), methods=["plain", "jnerf"], dims=["2d"],
                  label_spaces=["semantic"])
PLAN_KEYS = (["name", "out_dir", "data_root", "seed", "flags", "label_spaces", "dims", "methods", "metrics",
              "barrier_timeout_s", "scenes", "regimes", "stages", "config_overrides"]
             + [f"scenes.0.{k}" for k in ("name", "config", "dataset_dir", "synthetic", "flags", "label_spaces")]
             + [f"scenes.0.synthetic.{k}" for k in ("variant", "frames", "width", "height", "seed")]
             + [f"stages.{k}.{f}" for k in ("plain", "jnerf") for f in ("N_iters", "flags")] + ["stages.propagate"]
             + [f"regimes.0.{k}" for k in ("name", "flags", "propagation")]
             + [f"config_overrides.{s}.{k}" for s, k in YAML_KEYS if s in ("model", "logging")][:12])
plan_values = st.one_of(yaml_values, st.lists(st.one_of(words, st.sampled_from(["--N_rays", "--seed", "--rgb_layer"])),
                                              max_size=3))


def key_named(path):
    """How messages name a plan key: scenes.0.name -> scenes[0].name."""
    out = []
    for part in path.split("."):
        if part.isdigit():
            out[-1] += f"[{part}]"
        else:
            out.append(part)
    return ".".join(out)


@settings(max_examples=EXAMPLES["plan"], **SETTINGS)
@given(key=st.sampled_from(PLAN_KEYS), value=plan_values)
def test_every_plan_key_with_random_values(world, key, value):
    plan = copy.deepcopy(SMALL_PLAN)
    node, parts = plan, key.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    node[parts[-1]] = value
    if "dataset_dir" in key:
        plan["scenes"][0].pop("synthetic", None)
    path = os.path.join(str(world["root"]), "plan.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(plan, f)
    try:
        loaded = load_plan(path, out_dir=str(world["root"] / "plan_out"))
        event("accepted")
    except InputError as exc:
        event("refused")
        message = str(exc)
        named = key_named(key)
        top = named.split(".")[0].split("[")[0]
        assert "\n" not in message and message.startswith(f"{path}") and (
            named in message or top in message or "stage '" in message and named.rsplit(".", 1)[0] in message
            or "scenes[0]" in message and named.startswith("scenes[0]")), (key, value, message)
        assert not (world["root"] / "plan_out").exists()
        return
    if key == "seed":
        assert loaded.seed == int(numify({"x": {"seed": value}})["x"]["seed"])
    elif key.startswith("stages.") and key.endswith("N_iters"):
        assert loaded.stages[parts[1]]["N_iters"] == numify({"x": {"n": value}})["x"]["n"]
    elif key == "flags":
        assert loaded.flags == [str(v) for v in value or []]
    elif key in ("methods", "dims", "metrics", "label_spaces"):
        assert getattr(loaded, key) == value


# ----------------------------------------------------------------------------- a handful as a user runs them

def test_a_handful_through_subprocesses(world, tmp_path):
    base = ["--config_file", world["cfg"], "--save_dir", str(world["run"])]
    bad_yaml = write_yaml_with(world, "render", "N_sample", 8)
    cases = [(base + ["--N_rays=abc"], "--N_rays"), (base + ["--gpu", "abc"], "--gpu"),
             (["--config_file", bad_yaml, "--save_dir", str(world["run"])], "render.N_sample"),
             (base + ["--seed=-4"], "--seed")]
    before = snapshot(world["run"])
    for argv, name in cases:
        proc = subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=120)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and name in errors[0] and "Traceback" not in proc.stderr
    assert snapshot(world["run"]) == before
    plan = dict(copy.deepcopy(SMALL_PLAN), seed="zero")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(plan))
    proc = subprocess.run([sys.executable, "-m", "experiments.reproduce", str(path), "--out_dir", str(tmp_path / "o")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "seed: expected an integer" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
