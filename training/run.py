"""The training-side mode entries of main.py, once the scene and the renderer exist.

- `train(opts, scene, renderer, rng)`: plain NeRF training (mode train) or Jacobi shaping
  (mode shape, `opts.shaping` set), optionally from `opts.ckpt_path`; writes checkpoints,
  renders and <save_dir>/metrics.json.
- `render_only(opts, scene, renderer)`: render the test views of a checkpoint and their PSNR.

metrics.json of a training run: mode ('train' | 'shape'), test_views, test_split, steps,
seconds (the training loop), final_step, test_psnr (mean of the per-view PSNRs of the final
test render), test_psnr_per_view, seconds_per_step, for shaping `shaping`
(training.shaping.Shaper.summary), and for a run from --ckpt_path without --resume `fine_tune`
(its checkpoint step, learning-rate schedule, initial rate and Adam state; training.trainer.
Trainer.begin_from). Of render_only: mode, checkpoint, step, test_views,
test_psnr, test_psnr_per_view, seconds.

Departure from the original: `--resume` continues at the checkpoint's step + 1 (with its Adam
state, ray-stream position, random states and shaping threshold), where the original repeats
the saved step. Without `--resume` a checkpoint only supplies the weights and the run starts at
step 0 (the paper's fine-tune). A resumed checkpoint at the last step (a run interrupted after it)
only does the final render and writes metrics.json. docs/SHAPING.md lists the shaping departures.

Before the loop: label supervision whose seed labels are all void is refused, and a warning is
printed when the projected checkpoints exceed the free space of save_dir's disk
(docs/RELIABILITY.md).
"""
import dataclasses
import os
import shutil
import sys
import time

from datasets.seeds import frame_advice
from models.checkpoints import checkpoint_steps, restore_checkpoint
from models.render_views import render_views
from training.objectives import PlainObjective, check_precision
from training.shaping import ShapingObjective, build_shaper
from training.trainer import Trainer
from utils.atomic import write_json_atomic
from utils.errors import InputError
from utils.label_outputs import split_name
from utils.metrics import to_jsonable


def train(opts, scene, renderer, rng):
    """Train (or shape, when opts.shaping is set) `renderer` on `scene` for steps
    start .. opts.train.n_iters; returns the metrics dict, or None when a resumed checkpoint is
    already past n_iters. rng: numpy Generator for the seed labels of label supervision."""
    objective, frames = PlainObjective(opts.train), None
    if opts.shaping is not None:
        shaper, frames = build_shaper(opts, scene, renderer, rng)
        check_label_supervision(opts, shaper)
        objective = ShapingObjective(opts.train, shaper)
    trainer, result = fit_objective(opts, scene, renderer, objective, frames)
    if result is None:
        print(f"[jnerf] checkpoint is at step {trainer.start - 1} > N_iters {trainer.n_iters}: nothing to do")
        return None
    metrics = dict(mode=objective.name, test_views=len(scene.test), test_split=split_name(opts.data.training_mode),
                   **result)
    summary = objective.summary()
    if summary is not None:
        metrics["shaping"] = summary
    if trainer.fine_tune is not None:          # from a checkpoint without --resume: schedule and Adam state
        metrics["fine_tune"] = trainer.fine_tune
    write_json_atomic(os.path.join(opts.save_dir, "metrics.json"), to_jsonable(metrics))
    print(f"[jnerf] {result['steps']} steps in {result['seconds']:.1f} s; test PSNR {result['test_psnr']:.2f} dB")
    return metrics


def fit_objective(opts, scene, renderer, objective, frames=None):
    """(trainer, the fit's result or None) of training `objective` under opts (RunOptions): the
    precision is checked against the objective, --ckpt_path restored (with --resume: the step,
    optimizer and streams), then steps start .. n_iters; None when the checkpoint is past
    n_iters (nothing to train)."""
    check_precision(objective, opts.precision.name)
    trainer = Trainer(opts.train, scene, renderer, opts.save_dir, objective, frames=frames, seed=opts.seed,
                      test_viz_factor=opts.test_viz_factor)
    if opts.ckpt_path:
        trainer.restore(opts.ckpt_path, opts.resume)
    if trainer.start > trainer.n_iters + 1:
        return trainer, None
    if trainer.start == trainer.n_iters + 1:     # e.g. interrupted after its last step: the final render only
        print(f"[jnerf] checkpoint is at the last step {trainer.n_iters}: rendering the test views")
    warn_checkpoint_space(trainer)
    result = trainer.fit()
    result["seconds_per_step"] = result["seconds"] / max(1, result["steps"])
    return trainer, result


def check_label_supervision(opts, shaper):
    """Label supervision whose seed labels are all void would shape with no anchors: refuse it."""
    labels = shaper.labels
    if labels is None or bool((labels > 0).any()):
        return
    raise InputError("label supervision (--sample_semantic/--from_label/--sample_alter): the seed labels of the "
                     "training frames hold no labelled pixel (only void); "
                     + frame_advice(dataclasses.asdict(opts.seeds)))


def projected_checkpoints(trainer):
    """(count, bytes of one) of the checkpoints the run will write from trainer.start on (with
    --keep_ckpts: the most kept at once). One checkpoint: the size of an existing one in save_dir,
    else weights + two Adam moments."""
    every = trainer.opts.logging.step_save_ckpt
    start, end = trainer.start, trainer.n_iters
    count = max(0, end // every - (start - 1) // every) + (1 if end % every else 0)
    if trainer.opts.keep_ckpts:
        count = min(count, trainer.opts.keep_ckpts + 1)
    existing = checkpoint_steps(trainer.save_dir)
    if existing:
        size = os.path.getsize(existing[max(existing)])
    else:
        size = 3 * sum(p.numel() * p.element_size() for g in trainer.optimizer.param_groups for p in g["params"])
    return count, size


def warn_checkpoint_space(trainer):
    """Warn (stderr) when the projected checkpoints exceed the free space of save_dir's disk."""
    count, size = projected_checkpoints(trainer)
    free = shutil.disk_usage(trainer.save_dir).free
    if count * size > free:
        gb = 1024 ** 3
        print(f"warning: {count} checkpoints of {size / 1024 ** 2:.1f} MiB ({count * size / gb:.2f} GiB) will not "
              f"fit in the {free / gb:.2f} GiB free on the disk of {trainer.save_dir}; keep fewer with "
              "--keep_ckpts N or save less often (logging.step_save_ckpt in the YAML config)",
              file=sys.stderr, flush=True)
    return count * size, free


def render_only(opts, scene, renderer):
    """Render the test views of the checkpoint opts.ckpt_path at 1/opts.test_viz_factor into
    <save_dir>/test_render/step_<step>/; returns the metrics dict (also written to metrics.json)."""
    path = opts.ckpt_path
    step = int(restore_checkpoint(path, renderer.eval())["global_step"])
    t0 = time.time()
    out = render_views(renderer, scene.cameras(scene.test), scene.test.rgb,
                       os.path.join(opts.save_dir, "test_render", f"step_{step:06d}"), opts.test_viz_factor)
    metrics = dict(mode="render_only", checkpoint=path, step=step, test_views=len(scene.test),
                   test_psnr=out["psnr"], test_psnr_per_view=out["psnr_per_view"],
                   seconds=time.time() - t0)
    write_json_atomic(os.path.join(opts.save_dir, "metrics.json"), to_jsonable(metrics))
    print(f"[jnerf] rendered {len(scene.test)} test views; PSNR {out['psnr']:.2f} dB")
    return metrics
