"""One declaration per option, and what is generated from it: the argparse flags and `--help`,
the typed reads of the merged config, the dataclass defaults (utils/options.py).

An `Option` names a flag of main.py or a YAML key without a flag. Its `default` is the value
when nothing sets it: argparse's default for the original's flags (written over the YAML, as the
original does), the reader's default for a key that is absent, and the dataclass default of the
fields it fills. A flag of this project (`keeps_yaml`) is None on the command line when not
given, so the YAML key (and then `default`) holds. The checks a value gets (type, range,
choices) are declared here too and applied wherever it is read (`Values`).
"""
import argparse
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Tuple

from utils.errors import InputError

SECTIONS = ("experiment", "model", "render", "train", "logging")


@dataclass(frozen=True)
class Option:
    name: str                    # flag name (--name) and YAML key
    type: type                   # bool (store_true flag), int, float, str, or list (of `item`)
    default: Any                 # the value when nothing sets it (None: none; see `required`)
    help: str                    # one line
    group: str                   # --help group (a key of the table's GROUPS, or a title of its own)
    section: str = "experiment"  # the YAML section it is read from (flags are merged into experiment/train/render)
    flag: bool = True            # False: a YAML key without a flag
    keeps_yaml: bool = False     # this project's flag: unset (None) it leaves the YAML key alone
    required: bool = False       # a missing value is an error (where it is read)
    low: Any = None              # smallest value allowed
    high: Any = None             # largest value allowed
    positive: bool = False       # a number > 0
    choices: Optional[Tuple[str, ...]] = None
    item: type = int             # element type of a list flag (nargs="*")
    parse: Optional[Callable] = None   # argparse type when it differs from `type` (e.g. '250e3' for an int)
    const: Any = None            # a flag whose value may be left out (nargs='?'): then it holds this

    @property
    def value(self):
        """The default as the reader and the dataclasses hold it (float(1) for a float, a tuple for a list)."""
        if self.default is None:
            return None
        if self.type is list:
            return tuple(self.default)
        return self.type(self.default)

    @property
    def label(self):
        """How messages name it: '--name' for a flag, 'section.name' for a YAML key."""
        return f"--{self.name}" if self.flag else f"{self.section}.{self.name}"


@dataclass(frozen=True)
class OptionGroup:
    """A registry entry's own options (e.g. a dataset loader's): a --help group of that title, its
    declarations, and the frozen dataclass they fill field for field (built when the entry is chosen)."""
    title: str
    values: type
    options: Tuple[Option, ...]

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(replace(o, group=self.title) for o in self.options))


def option_table(*options):
    """{name: Option} in order; a name declared twice is a bug."""
    table = {}
    for o in options:
        if o.name in table:
            raise ValueError(f"option {o.name!r} is declared twice")
        if o.section not in SECTIONS:
            raise ValueError(f"option {o.name!r}: unknown section {o.section!r}")
        table[o.name] = o
    return table


# ------------------------------------------------------------------------------- reading values

class Values:
    """Typed, checked reads of the merged config by declaration; an error names the flag or key."""

    def __init__(self, config: Mapping, options: Mapping[str, Option]):
        self.config, self.options = config, options

    def raw(self, name):
        """The value in its section, or the declared default when absent (or null); unchecked."""
        opt = self.options[name]
        value = (self.config.get(opt.section) or {}).get(name)
        return opt.value if value is None else value

    def is_set(self, name):
        return bool(self.raw(name))

    def missing(self, opt, why=""):
        if not opt.flag:
            return InputError(f"config key {opt.section}.{opt.name} is missing{why} (see "
                              "configs/replica_room0_config.yaml)")
        if opt.keeps_yaml:
            return InputError(f"--{opt.name} is required{why} (or set {opt.section}.{opt.name} in the YAML config)")
        return InputError(f"--{opt.name} is required{why} ({opt.help})")

    def get(self, name, required=None, why=""):
        """The checked value of option `name` (its declared default when unset). required: override
        the declaration's (e.g. N_iters only to train); why: appended to the missing-value message."""
        opt = self.options[name]
        value = self.raw(name)
        need = opt.required if required is None else required
        if need and (value is None or value == ""):
            raise self.missing(opt, why)
        if value is None:
            return None
        if opt.type is bool:
            return bool(value)
        if opt.type is str:
            value = str(value)
        elif opt.type is list:
            return tuple(value)
        else:
            value = _number(opt, value)
        if opt.choices is not None and value not in opt.choices:
            raise InputError(f"{opt.label} {value!r}: expected one of {', '.join(opt.choices)}")
        return value


def _number(opt, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{opt.label} {value!r}: expected a number")
    if opt.type is int:
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise InputError(f"{opt.label} {value!r}: expected an integer")
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"{opt.label} {value}: expected a finite number")
        if opt.positive and value <= 0:
            raise InputError(f"{opt.label} {value}: expected a number > 0")
    if opt.low is not None and value < opt.low or opt.high is not None and value > opt.high:
        expected = f"at least {opt.low}" if opt.high is None else f"a value in [{opt.low}, {opt.high}]"
        raise InputError(f"{opt.label} {value}: expected {expected}")
    return value


# ------------------------------------------------------------------------------- the parser

def int_like(text):
    """argparse type accepting '250000' as well as '250e3' (the original's default is 250e3)."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The YAML-key list (epilog) keeps its lines; each flag's help carries its range and default (`_help`)."""


def _range(opt):
    if opt.low is not None and opt.high is not None:
        return f"in [{opt.low}, {opt.high}]"
    if opt.low is not None:
        return f">= {opt.low}"
    return "> 0" if opt.positive else ""


def _help(opt):
    """The help line: the declared text, then range and default (this project's flags name the YAML
    key they leave alone)."""
    parts = [_range(opt)] if _range(opt) else []
    if opt.keeps_yaml:
        parts.append(f"default: the YAML's {opt.section}.{opt.name}"
                     + ("" if opt.default is None else f", else {opt.value}"))
    else:
        parts.append("default: %(default)s")
    return f"{opt.help.replace('%', '%%')} ({'; '.join(parts)})"


def add_flags(parser, options, titles):
    """Add every flag of `options` ({name: Option}) to `parser`, in argparse groups ordered as
    `titles` ({group key: title}); a group key not in `titles` is its own title, after them."""
    keys = list(titles) + [o.group for o in options.values() if o.group not in titles]
    groups = {}
    for key in dict.fromkeys(keys):
        members = [o for o in options.values() if o.flag and o.group == key]
        if members:
            groups[key] = parser.add_argument_group(titles.get(key, key))
    for o in options.values():
        if not o.flag:
            continue
        kw = dict(help=_help(o), default=None if o.keeps_yaml else o.default)
        if o.type is bool:
            kw["action"] = "store_true"
        elif o.type is list:
            kw.update(nargs="*", type=o.item)
        else:
            kw.update(type=o.parse or o.type, choices=o.choices)
            if o.const is not None:
                kw.update(nargs="?", const=o.const)
        groups[o.group].add_argument(f"--{o.name}", **kw)
    return parser


def yaml_keys_text(options):
    """The --help epilog: the YAML keys that have no flag, in table order."""
    keys = [o for o in options.values() if not o.flag]
    width = max(len(f"{o.section}.{o.name}") for o in keys) + 2
    lines = ["YAML keys without a flag (in --config_file):"]
    for o in keys:
        default = "required" if o.required else f"default: {o.default}"
        bounds = f"{_range(o)}; " if _range(o) else f"{' | '.join(o.choices)}; " if o.choices else ""
        lines.append(f"  {o.section + '.' + o.name:<{width}}{o.help} ({bounds}{default})")
    return "\n".join(lines)
