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

from datasets.clicks import read_clicks, with_user_labels
from datasets.registry import LOADERS, load_scene
from models.checkpoints import check_checkpoint_path, check_networks, latest_checkpoint, load_checkpoint
from models.factory import build_renderer, select_device
from models.jacobians import PARAMETER_SUBSETS, subset_flags
from propagation.directions import DIRECTION_RULES
from propagation.editing import perturb_gradient
from propagation.run import propagate
from training.preflight import check_resume, ray_budget_note
from training.run import render_only, train
from training.semantic import label_space_size, train_semantic
from utils.build_options import build_options
from utils.config import (build_parser, given_flags, load_yaml_config, merge_flags, save_resolved_config,
                          shadowed_keys, shadowed_note)
from utils.declarations import Option, check_config_keys, option_table
from utils.errors import InputError, run_cli
from utils.modes import Mode
from utils.option_table import OPTIONS
from utils.rundir import (Interrupted, RunLock, RunStopped, check_output_dir, check_run_dir, exit_on_sigterm,
                          inputs_inside, resume_command, start_run_dir, write_failure)
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


def options_from_config(config, given=None):
    """RunOptions of a merged config (every value validated); given: the flags given explicitly."""
    return build_options(config, options(), MODES, subset_flags(), tuple(DIRECTION_RULES),
                         {name: loader.options for name, loader in LOADERS.items()}, given)


def parse_options(argv=None, notes=None):
    """(parsed args, RunOptions or None for --demo): the whole flag path of main.py. The YAML's keys
    are checked (an unknown or misplaced key stops with its name). The lines printed at start are
    RunOptions.notes: the warning of YAML keys that flag defaults override (the original's merge
    rule, kept) and the options' own notes; `notes` (a list) receives them too."""
    p = parser()
    args = p.parse_args(argv)
    if args.demo:
        return args, None
    check_loader_flags(args)
    given = given_flags(p, sys.argv[1:] if argv is None else argv)
    yaml_config = load_yaml_config(args.config_file)
    check_config_keys(yaml_config, options(), f"--config_file {args.config_file}")
    config = merge_flags(yaml_config, args)
    opts = options_from_config(config, given)
    shadowed = shadowed_note(shadowed_keys(yaml_config, args, given))
    if shadowed:
        opts = dataclasses.replace(opts, notes=(shadowed,) + opts.notes)
    if notes is not None:
        notes.extend(opts.notes)
    return args, opts


def check_loader_flags(args):
    """A loader's own flag given with another --dataset_type would go unused: refuse it (a YAML may
    hold several layouts' keys; only the chosen layout's are read)."""
    for name, loader in LOADERS.items():
        for o in (loader.options.options if loader.options and name != args.dataset_type else ()):
            if getattr(args, o.name) not in (None, False):
                raise InputError(f"--{o.name} is an option of --dataset_type {name}; this run reads "
                                 f"--dataset_type {args.dataset_type}")


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
    """Output folders are usable (and --ckpt_path is a file) before any data is read; --overwrite
    never deletes an input of the run."""
    if opts.ckpt_path:
        check_checkpoint_path(opts.ckpt_path)
    check_output_dir(opts.save_dir, "--save_dir")
    if opts.seeds is not None:
        if os.path.isfile(opts.seeds.seed_dir):
            raise InputError(f"--seed_dir {opts.seeds.seed_dir} is a file, not a folder")
        if opts.seeds.visualise_save:
            check_output_dir(opts.seeds.seed_dir, "--seed_dir")
        if opts.seeds.user.clicks:
            read_clicks(opts.seeds.user.clicks)     # the file's own content; the scene's checks follow its load
    export = opts.propagation.export if opts.propagation is not None else None
    if export is not None:
        check_output_dir(export.out_dir, "--label_all_frames")
    if opts.overwrite:
        inputs = [("--ckpt_path", opts.ckpt_path), ("--config_file", opts.config["experiment"].get("config_file")),
                  ("experiment.dataset_dir", opts.data.dataset_dir)]
        if opts.seeds is not None and opts.seeds.load_saved:
            inputs.append(("--seed_dir", opts.seeds.seed_dir))
        if opts.seeds is not None:
            inputs += [("--clicks", opts.seeds.user.clicks), ("--scribbles", opts.seeds.user.scribbles)]
        inside = inputs_inside(opts.save_dir, inputs)
        if inside:
            name, path = inside[0]
            raise InputError(f"--overwrite would clear --save_dir {opts.save_dir}, which holds an input of this run: "
                             f"{name} {path}; move it out first, or choose another --save_dir")


def kept_folders(opts):
    """What --overwrite keeps in save_dir: the seed folder, and the label export (resumable; a folder
    of another propagation's labels is refused by propagation/export.py, not mixed)."""
    keep = ["seeds"]
    export = opts.propagation.export if opts.propagation is not None else None
    if export is not None and os.path.dirname(os.path.abspath(export.out_dir)) == os.path.abspath(opts.save_dir):
        keep.append(os.path.basename(os.path.abspath(export.out_dir)))
    return tuple(keep)


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
    """Run the mode of a RunOptions in its locked save_dir; returns the mode's metrics dict (None when a
    --resume finds the run finished)."""
    check_outputs(opts)
    with RunLock(opts.save_dir):
        check_run_dir(opts.save_dir, resume=opts.resume, overwrite=opts.overwrite)
        try:
            return run_mode(resume_checkpoint(opts))
        except OSError as exc:          # a failed write: one line naming the file (docs/RELIABILITY.md)
            failure = write_failure(exc, latest_checkpoint(opts.save_dir),
                                    (opts.save_dir, opts.seeds.seed_dir if opts.seeds else None))
            if failure is None:
                raise
            raise failure from None


def preflight_checkpoint(opts, scene, renderer):
    """The checkpoint, read and checked against this run before the run folder changes: readable, its
    checksum, the networks' shapes, finite values, and with --resume that it can continue this run
    (training/preflight.py). Returns its global_step, or None without a checkpoint."""
    if not opts.ckpt_path:
        return None
    data = load_checkpoint(opts.ckpt_path)
    check_networks(opts.ckpt_path, data, renderer, optimizer_state=opts.resume)
    if opts.resume:
        classes = label_space_size(scene, opts.seeds.instance) if opts.mode == "semantic_nerf" else None
        check_resume(opts, opts.ckpt_path, data, renderer, classes)
    return int(data["global_step"])


def finished(opts, step):
    """A --resume whose checkpoint is at or past N_iters in a folder with the run's metrics.json: the
    run is complete, and is left exactly as it is."""
    return (opts.resume and step is not None and step >= opts.train.n_iters
            and os.path.isfile(os.path.join(opts.save_dir, "metrics.json")))


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
    if opts.seeds is not None:
        scene = with_user_labels(scene, opts.seeds.user)    # --clicks / --scribbles, every entry checked
        check_label_source(opts, scene)
    note = ray_budget_note(opts, scene) if MODES[opts.mode].trains else None
    if note:
        print(note, file=sys.stderr, flush=True)
    t1 = time.perf_counter()
    renderer = build_renderer(opts.model, device, opts.precision)
    step = preflight_checkpoint(opts, scene, renderer)
    if finished(opts, step):
        print(f"[jnerf] nothing to do: {opts.save_dir} holds a finished run (checkpoint at step {step}, N_iters "
              f"{opts.train.n_iters}, metrics.json); it is left as it was (a larger --N_iters trains on)", flush=True)
        return None
    # every input is validated and the checkpoint loaded: only now does the folder change
    start_run_dir(opts.save_dir, overwrite=opts.overwrite, keep=kept_folders(opts))
    save_resolved_config(opts.config, opts.save_dir)
    age = process_seconds()
    print(f"[jnerf] start-up: {'?' if age is None else f'{age:.1f}'} s since the process started (scene "
          f"{t1 - t0:.1f} s, renderer {time.perf_counter() - t1:.1f} s)", flush=True)
    return MODES[opts.mode].entry(opts, scene, renderer, rng)


def check_label_source(opts, scene):
    """A mode that starts from labels has them: the user's, or ground truth to simulate seeds from."""
    if opts.seeds.instance:
        scene.eval_labels(scene.train, instance=True)    # --test_instance: InputError without instance maps
    if scene.seeds is None and not scene.has_labels:
        what = "Jacobi shaping with label supervision" if opts.mode == "shape" else MODES[opts.mode].help
        raise InputError(f"{what} starts from labels, and {scene.root} has no ground-truth label maps to take "
                         "them from: give yours with --clicks FILE or --scribbles DIR (docs/OWN_SCENE.md)")


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
    for note in opts.notes:
        print(note, file=sys.stderr, flush=True)
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
