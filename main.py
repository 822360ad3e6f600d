"""JacobiNeRF command line: flags + YAML config -> train | shape | render | propagate 2D/3D | perturb.

main.py builds the option table (utils/option_table.py plus the registries' flags), parses the
flags, merges them into the YAML (utils/config.py), turns the result into typed, validated
options (utils/build_options.py), then loads the scene, builds the renderer and calls the entry of
one mode (`MODES`). Nothing below reads the flags. Mode precedence is the original's:
--render_only, --propagate_3d, --perturb_gradient, --propagate_2d, else training (Jacobi shaping
when a shaping flag is set); --semantic_nerf combines with none of them.
"""
import dataclasses
import os
import subprocess
import sys
import time

import torch

from datasets.registry import LOADERS, load_scene
from models.checkpoints import check_checkpoint_path, latest_checkpoint
from models.factory import build_renderer, select_device
from models.jacobians import PARAMETER_SUBSETS, subset_flags
from propagation.directions import DIRECTION_RULES
from propagation.editing import perturb_gradient
from propagation.run import propagate
from training.run import render_only, train
from training.semantic import train_semantic
from utils.build_options import build_options
from utils.config import build_parser, load_yaml_config, merge_flags, save_resolved_config
from utils.declarations import Option, option_table
from utils.errors import InputError, run_cli
from utils.modes import Mode
from utils.option_table import OPTIONS
from utils.rundir import (Interrupted, RunLock, RunStopped, check_output_dir, exit_on_sigterm, prepare_run_dir,
                          resume_command, write_failure)
from utils.seeding import seed_everything


def _render_only(opts, scene, renderer, rng):
    return render_only(opts, scene, renderer)        # a render draws nothing at random


# The modes, in the original's precedence (utils.modes.select_mode): the first exclusive mode whose
# flag is given runs; without one, Jacobi shaping when a shaping flag is given, else plain training.
MODES = {
    "render_only": Mode(_render_only, "a render of the test views", ("render_only",)),
    "propagate_3d": Mode(propagate, "3D label propagation", ("propagate_3d",), seeds=True),
    "perturb_gradient": Mode(perturb_gradient, "scene editing", ("perturb_gradient",)),
    "propagate_2d": Mode(propagate, "2D label propagation", ("propagate_2d",), seeds=True),
    "semantic_nerf": Mode(train_semantic, "the Semantic-NeRF baseline", ("semantic_nerf", "semantic_finetune"),
                          trains=True, seeds=True),
    "shape": Mode(train, "Jacobi shaping", ("contrastive_2d", "contrastive_3d", "from_label"), trains=True,
                  exclusive=False),
    "train": Mode(train, "plain NeRF", (), trains=True, exclusive=False),
}


def options():
    """The option table in force: the core table, then the registries' flags (utils imports nothing
    above it): the Jacobian subsets, the direction rules and each loader's own options."""
    core = dict(OPTIONS, dataset_type=dataclasses.replace(OPTIONS["dataset_type"], choices=tuple(LOADERS)))
    subsets = [Option(s.flag, bool, False, s.help, "shaped") for s in PARAMETER_SUBSETS.values()]
    rules = [Option(flag, bool, False, rule.help, "rules") for flag, rule in DIRECTION_RULES.items()]
    loaders = [o for loader in LOADERS.values() if loader.options for o in loader.options.options]
    return option_table(*core.values(), *subsets, *rules, *loaders)


def parser():
    return build_parser(options())


def options_from_config(config):
    """RunOptions of a merged config (every value validated)."""
    return build_options(config, options(), MODES, subset_flags(), tuple(DIRECTION_RULES),
                         {name: loader.options for name, loader in LOADERS.items()})


def parse_options(argv=None):
    """(parsed args, RunOptions or None for --demo): the whole flag path of main.py."""
    args = parser().parse_args(argv)
    if args.demo:
        return args, None
    config = merge_flags(load_yaml_config(args.config_file), args)
    return args, options_from_config(config)


def configure_threads():
    """CPU threads = the cores this process may use, unless OMP_NUM_THREADS says otherwise (torch's
    default counts the machine's cores, which oversubscribes a container or a loaded machine)."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def configure_device(opts):
    device = select_device(opts.gpu)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        tf32 = opts.precision.on(device).tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return device


def check_outputs(opts):
    """Output folders are usable (and --ckpt_path is a file) before any data is read."""
    if opts.ckpt_path:
        check_checkpoint_path(opts.ckpt_path)
    check_output_dir(opts.save_dir, "--save_dir")
    if opts.seeds is not None:
        if os.path.isfile(opts.seeds.seed_dir):
            raise InputError(f"--seed_dir {opts.seeds.seed_dir} is a file, not a folder")
        if opts.seeds.visualise_save:
            check_output_dir(opts.seeds.seed_dir, "--seed_dir")


def resume_checkpoint(opts):
    """--resume without --ckpt_path: the latest checkpoint in save_dir."""
    if not opts.resume or opts.ckpt_path:
        return opts
    path = latest_checkpoint(opts.save_dir)
    if path is None:
        raise InputError(f"--resume: no checkpoint in {os.path.join(opts.save_dir, 'checkpoints')} to continue "
                         "from (give --ckpt_path, or drop --resume to start a new run)")
    print(f"[jnerf] resuming from {path}", flush=True)
    return dataclasses.replace(opts, ckpt_path=path)


def run(opts):
    """Run the mode of a RunOptions in its locked save_dir; returns the mode's metrics dict."""
    check_outputs(opts)
    with RunLock(opts.save_dir):
        prepare_run_dir(opts.save_dir, resume=opts.resume, overwrite=opts.overwrite)
        try:
            return run_mode(resume_checkpoint(opts))
        except OSError as exc:          # a failed write: one line naming the file (docs/RELIABILITY.md)
            failure = write_failure(exc, latest_checkpoint(opts.save_dir),
                                    (opts.save_dir, opts.seeds.seed_dir if opts.seeds else None))
            if failure is None:
                raise
            raise failure from None


def process_seconds():
    """Seconds since this process started (Linux: /proc), or None."""
    try:
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return None


def run_mode(opts):
    rng = seed_everything(opts.seed)
    device = configure_device(opts)
    print(f"[jnerf] mode: {opts.mode}; device: {device}; save_dir: {opts.save_dir}", flush=True)
    t0 = time.perf_counter()
    scene = load_scene(opts.data)
    if opts.seeds is not None and opts.seeds.instance:
        scene.eval_labels(scene.train, instance=True)    # --test_instance: InputError without instance maps
    t1 = time.perf_counter()
    renderer = build_renderer(opts.model, device, opts.precision)
    save_resolved_config(opts.config, opts.save_dir)
    age = process_seconds()
    print(f"[jnerf] start-up: {'?' if age is None else f'{age:.1f}'} s since the process started (scene "
          f"{t1 - t0:.1f} s, renderer {time.perf_counter() - t1:.1f} s)", flush=True)
    return MODES[opts.mode].entry(opts, scene, renderer, rng)


def run_demo(args):
    """--demo: `python -m experiments.demo` in a child process (the demo runs main.py's stages, so
    main.py does not import it)."""
    root = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, "-m", "experiments.demo", "--save_dir", os.path.abspath(args.save_dir or "runs/demo")]
    cmd += ["--N_iters", str(args.N_iters)] if args.N_iters is not None else []
    cmd += ["--seed", str(args.seed)] if args.seed is not None else []
    child = subprocess.Popen(cmd, cwd=root)
    try:
        return child.wait()
    except KeyboardInterrupt:         # the child got the Ctrl-C too: let it save its checkpoint and stop
        return child.wait()


def main(argv=None):
    """The command line; returns the exit code (0; 2 for bad input; 1 for a run stopped by divergence or a
    failed write; 130 / 143 for Ctrl-C / SIGTERM, after saving a checkpoint during training)."""
    t0 = time.time()
    rc = run_cli(_main, argv)
    if rc == 0:
        print(f"[jnerf] done in {time.time() - t0:.1f} s", flush=True)
    return rc


def _main(argv):
    args, opts = parse_options(argv)
    if args.demo:
        return run_demo(args)
    try:
        run(opts)
    except RunStopped as exc:
        if isinstance(exc, Interrupted):
            exc.with_command(resume_command(sys.argv[1:] if argv is None else argv))
        print(f"{exc.prefix}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    exit_on_sigterm()        # outside the training loop SIGTERM stops with 143, releasing the lock
    configure_threads()
    sys.exit(main())
