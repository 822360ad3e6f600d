"""The run modes: what a registry entry says, and how the flags choose one.

The registry itself (mode name -> entry) is `main.MODES`, since the entries live in training/ and
propagation/; main.py passes it to `utils.build_options`, which picks the mode before it reads the
mode's options.
"""
from dataclasses import dataclass
from typing import Callable, Mapping, Tuple

from utils.errors import InputError


@dataclass(frozen=True)
class Mode:
    entry: Callable               # entry(opts, scene, renderer, rng) -> the metrics dict
    help: str                     # what it runs, as error messages name it
    flags: Tuple[str, ...] = ()   # any of them selects it; () = the fallback when no mode flag is given
    trains: bool = False          # trains a network: N_iters required, --resume allowed; else --ckpt_path required
    exclusive: bool = True        # its flags refuse another exclusive mode's flags in the same run
    seeds: bool = False           # uses the given labels (RunOptions.seeds)


def select_mode(is_set: Callable[[str], bool], modes: Mapping[str, Mode]) -> str:
    """The mode the flags choose. Exclusive modes come first, in the registry's order (the original's
    precedence); two of them in one run are refused. Otherwise the first other mode whose flag is
    set (Jacobi shaping), else the fallback (plain training)."""
    chosen = [(name, next(f for f in m.flags if is_set(f))) for name, m in modes.items()
              if m.exclusive and any(is_set(f) for f in m.flags)]
    if len(chosen) > 1:
        raise InputError(f"choose one of --{', --'.join(flag for _, flag in chosen)} per run")
    others = [(name, m) for name, m in modes.items() if not m.exclusive]
    if chosen:
        name, flag = chosen[0]
        if modes[name].trains:       # a training mode of its own: another mode's training flags cannot apply
            for _, other in others:
                given = [f for f in other.flags if is_set(f)]
                if given:
                    raise InputError(f"--{flag} trains {modes[name].help}; it cannot be combined with "
                                     f"{other.help} (--{given[0]}): run them separately")
        return name
    for name, m in others:
        if any(is_set(f) for f in m.flags):
            return name
    return next(name for name, m in others if not m.flags)
