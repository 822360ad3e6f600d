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
import difflib
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Tuple

from utils.errors import InputError

SECTIONS = ("experiment", "model", "render", "train", "logging")
MERGED_SECTIONS = ("experiment", "train", "render")    # every flag is merged into these (the original's rule)


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
    check: Optional[Callable] = None   # value -> None, or what is expected (a rule range/choices cannot say)
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
    """Typed, checked reads of the merged config by declaration; an error names the flag or key.
    given: the flags given on the command line, when known; a value of this project's flag that
    was not given came from the YAML, and its error names the YAML key."""

    def __init__(self, config: Mapping, options: Mapping[str, Option], given=None):
        self.config, self.options, self.given = config, options, given

    def label(self, opt):
        if opt.flag and opt.keeps_yaml and self.given is not None and opt.name not in self.given:
            return f"{opt.section}.{opt.name}"
        return opt.label

    def check_all(self):
        """Check every value the config holds against its declaration (type, range, choices), also
        those the chosen mode does not read, so no bad value passes unnoticed; a missing required
        value is left to the reader that needs it."""
        for name, opt in self.options.items():
            if (self.config.get(opt.section) or {}).get(name) is not None:
                self.get(name, required=False)

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
        label = self.label(opt)
        if opt.type is bool:
            if not isinstance(value, (bool, int)) or isinstance(value, int) and value not in (0, 1):
                raise InputError(f"{label} {value!r}: expected true or false")
            value = bool(value)
        elif opt.type is str:
            if isinstance(value, (dict, list, tuple)):
                raise InputError(f"{label} {value!r}: expected a string")
            value = str(value)
        elif opt.type is list:
            value = _list(opt, label, value)
        else:
            value = _number(opt, label, value)
        if opt.choices is not None and value not in opt.choices:
            raise InputError(f"{label} {value!r}: expected one of {', '.join(opt.choices)}")
        if opt.check is not None and (expected := opt.check(value)) is not None:
            raise InputError(f"{label} {value!r}: expected {expected}")
        return value


def _list(opt, label, value):
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{label} {value!r}: expected a list")
    if opt.item in (int, float):
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value):
            raise InputError(f"{label} {list(value)!r}: expected a list of numbers")
        if opt.item is int and any(not float(x).is_integer() for x in value):
            raise InputError(f"{label} {list(value)!r}: expected a list of integers")
        value = [opt.item(x) for x in value]
    return tuple(value)


def _number(opt, label, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{label} {value!r}: expected a number")
    if opt.type is int:
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise InputError(f"{label} {value!r}: expected an integer")
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"{label} {value}: expected a finite number")
        if opt.positive and value <= 0:
            raise InputError(f"{label} {value}: expected a number > 0")
    if opt.low is not None and value < opt.low or opt.high is not None and value > opt.high:
        expected = f"at least {opt.low}" if opt.high is None else f"a value in [{opt.low}, {opt.high}]"
        raise InputError(f"{label} {value}: expected {expected}")
    return value


# ------------------------------------------------------------------------------- the YAML's keys

def did_you_mean(word, candidates):
    """' (did you mean X?)' for the closest of `candidates`, or ''."""
    by_lower = {str(c).lower(): c for c in candidates}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]}?)" if close else ""


def section_keys(options, section):
    """The keys a YAML section may hold: its declared keys, and in the merged sections every flag
    (the original's rule copies every flag there, so exp_config.yaml holds them all)."""
    return [n for n, o in options.items() if o.section == section or (section in MERGED_SECTIONS and o.flag)]


def check_config_keys(config, options, source):
    """InputError (naming `source`, the YAML file) for a section or key the run would ignore: an
    unknown one (with the closest known name), or a key of another section (this project's flags and
    the keys without a flag are read from their own section only; a copy there with the same value,
    as exp_config.yaml writes, is fine)."""
    for section, values in config.items():
        if section not in SECTIONS:
            raise InputError(f"{source}: unknown section '{section}:'{did_you_mean(section, SECTIONS)}; the "
                             f"sections are {', '.join(SECTIONS)}")
        if not isinstance(values, Mapping):
            raise InputError(f"{source}: section '{section}:' is not a mapping of keys")
        for key, value in values.items():
            opt = options.get(key)
            if opt is None:
                raise InputError(f"{source}: unknown key {section}.{key}"
                                 f"{did_you_mean(key, section_keys(options, section))} (python main.py --help "
                                 "lists the keys)")
            if opt.section == section or (section in MERGED_SECTIONS and opt.flag and not opt.keeps_yaml):
                continue
            if (config.get(opt.section) or {}).get(key) == value:
                continue
            raise InputError(f"{source}: {section}.{key} is not read from '{section}:'; {key} belongs in "
                             f"'{opt.section}:'")


# ------------------------------------------------------------------------------- the parser

def int_like(text):
    """argparse type accepting '250000' as well as '250e3' (the original's default is 250e3)."""
    value = float(text)
    if not math.isfinite(value) or value != int(value):
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
