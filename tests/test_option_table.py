"""The option table is the one declaration: every check here is generated over it (main.options():
the core table plus the registries' flags), not over a hand list."""
import contextlib
import dataclasses
import io
import re

import pytest
import yaml

import main as jnerf_main
from datasets.registry import LOADERS
from models.rendering import RenderOptions
from utils import options as typed
from utils.config import FLAG_ORDER, load_yaml_config, merge_flags
from utils.modes import select_mode

TABLE = jnerf_main.options()
GROUP_TYPES = [typed.RunOptions, typed.DataOptions, typed.ModelOptions, typed.LoggingOptions, typed.TrainOptions,
               typed.ShapingOptions, typed.SeedOptions, typed.PropagationOptions, typed.EditOptions,
               typed.SemanticOptions, typed.UserLabelOptions, typed.ExportOptions]


def linked_fields():
    """(dataclass, field, option) for every dataclass field filled from one option."""
    for cls in GROUP_TYPES:
        for f in dataclasses.fields(cls):
            if "option" in f.metadata:
                yield cls, f, TABLE[f.metadata["option"]]
    for loader in LOADERS.values():            # a loader's own dataclass: field for field
        if loader.options:
            names = {o.name: o for o in loader.options.options}
            for f in dataclasses.fields(loader.options.values):
                yield loader.options.values, f, names[f.name]


def test_cli_default_is_the_declared_default():
    actions = {a.dest: a for a in jnerf_main.parser()._actions}
    for o in TABLE.values():
        if not o.flag:
            assert o.name not in actions, o.name
            continue
        expected = None if o.keeps_yaml else o.default     # this project's flags: None = leave the YAML
        got = actions[o.name].default
        assert got == expected and type(got) is type(expected), (o.name, got, expected)


@pytest.mark.parametrize("cls,f,opt", list(linked_fields()), ids=lambda x: getattr(x, "name", ""))
def test_dataclass_default_is_the_declared_default(cls, f, opt):
    if opt.required:
        assert f.default is dataclasses.MISSING, (cls.__name__, f.name)
        return
    convert = f.metadata.get("convert") or (lambda v: v)
    assert f.default == convert(opt.value), (cls.__name__, f.name, f.default, opt.value)


def test_render_defaults_follow_the_model_options():
    """models.rendering.RenderOptions (the renderer's own defaults, for tests) agrees with the table."""
    model = {f.name: f.default for f in dataclasses.fields(typed.ModelOptions)}
    for f in dataclasses.fields(RenderOptions):
        assert f.default == model[f.name], f.name


def minimal_config(tmp_path):
    """A YAML with only the required keys (values of the right type), everything else unset."""
    config = {s: {} for s in ("experiment", "model", "render", "train", "logging")}
    for o in TABLE.values():
        if o.required and not (o.flag and not o.keeps_yaml):
            config[o.section][o.name] = str(tmp_path) if o.type is str else 8
    path = tmp_path / "minimal.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# One flag line per typed group (the fewest flags that build it).
GROUP_LINES = {
    "train": [],
    "shaping": ["--contrastive_2d", "--rgb_layer", "--from_label"],
    "propagation": ["--propagate_2d", "--ckpt_path", "c.ckpt", "--rgb_layer", "--mean_gradient"],
    "edit": ["--perturb_gradient", "--ckpt_path", "c.ckpt", "--rgb_layer"],
    "semantic": ["--semantic_nerf"],
}


@pytest.mark.parametrize("line", list(GROUP_LINES), ids=list(GROUP_LINES))
def test_reader_default_is_the_dataclass_default(tmp_path, line):
    """Unset on the command line and absent from the YAML, every option reads as its dataclass default."""
    flags = GROUP_LINES[line]
    args = jnerf_main.parser().parse_args(["--config_file", minimal_config(tmp_path), "--save_dir", "s", *flags])
    opts = jnerf_main.options_from_config(merge_flags(load_yaml_config(args.config_file), args))
    given = {f[2:] for f in flags if f.startswith("--")}
    built = [opts] + [getattr(opts, f.name) for f in dataclasses.fields(opts)] + [opts.train.logging]
    checked = 0
    for group in built:
        if not dataclasses.is_dataclass(group):
            continue
        for f in dataclasses.fields(group):
            name = f.metadata.get("option")
            if name and name not in given and not TABLE[name].required:
                assert getattr(group, f.name) == f.default, (type(group).__name__, f.name)
                checked += 1
    assert checked > 30


def test_help_lists_every_declared_option():
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        jnerf_main.parser().parse_args(["--help"])
    text = text.getvalue()
    for o in TABLE.values():
        name = f"--{o.name}" if o.flag else f"{o.section}.{o.name}"
        assert re.search(re.escape(name) + r"(?!\w)", text), name


def test_flag_order_names_declared_flags():
    flags = {o.name for o in TABLE.values() if o.flag}
    assert set(FLAG_ORDER) <= flags, set(FLAG_ORDER) - flags


def test_every_mode_is_chosen_by_its_flags():
    modes = jnerf_main.MODES
    for name, mode in modes.items():
        for flag in mode.flags:
            assert TABLE[flag].flag and TABLE[flag].type is bool, flag
            assert select_mode(lambda f: f == flag, modes) == name
    assert select_mode(lambda f: False, modes) == "train"
