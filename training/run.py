"""The training-side mode entries of main.py, once the scene and the renderer exist.

- `train(opts, scene, renderer, rng)`: plain NeRF training (mode train) or Jacobi shaping
  (mode shape, `opts.shaping` set), optionally from `opts.ckpt_path`; writes checkpoints,
  renders and <save_dir>/metrics.json.
- `render_only(opts, scene, renderer)`: render the test views of a checkpoint and their PSNR.

metrics.json of a training run: mode ('train' | 'shape'), test_views, test_split, steps,
seconds (the training loop), final_step, test_psnr (mean of the per-view PSNRs of the final
test render), test_psnr_per_view, seconds_per_step, and for shaping `shaping`
(training.shaping.Shaper.summary). Of render_only: mode, checkpoint, step, test_views,
test_psnr, test_psnr_per_view, seconds.

Departure from the original: `--resume` continues at the checkpoint's step + 1 (with its Adam
state, ray-stream position, random states and shaping threshold), where the original repeats
the saved step. Without `--resume` a checkpoint only supplies the weights and the run starts at
step 0 (the paper's fine-tune). docs/SHAPING.md lists the shaping departures.
"""
import os
import time

from models.checkpoints import apply_checkpoint, load_checkpoint
from models.render_views import render_views
from training.shaping import build_shaper
from training.trainer import Trainer
from utils.atomic import write_json_atomic
from utils.metrics import to_jsonable


def train(opts, scene, renderer, rng):
    """Train (or shape, when opts.shaping is set) `renderer` on `scene` for steps
    start .. opts.train.n_iters; returns the metrics dict, or None when a resumed checkpoint is
    already past n_iters. rng: numpy Generator for the seed labels of label supervision."""
    shaper, frames = None, None
    if opts.shaping is not None:
        shaper, frames = build_shaper(opts, scene, renderer, rng)
    trainer = Trainer(opts.train, scene, renderer, opts.save_dir, shaper=shaper, frames=frames, seed=opts.seed,
                      test_viz_factor=opts.test_viz_factor)
    if opts.ckpt_path:
        trainer.restore(opts.ckpt_path, opts.resume)
    if trainer.start > trainer.n_iters:
        print(f"[jnerf] checkpoint is at step {trainer.start - 1} >= N_iters {trainer.n_iters}: nothing to do")
        return None
    result = trainer.fit()
    result["seconds_per_step"] = result["seconds"] / max(1, result["steps"])
    metrics = dict(mode="shape" if shaper is not None else "train", test_views=len(scene.test),
                   test_split="frame 0 (--training_mode)" if opts.data.training_mode else "test",
                   **result)
    if shaper is not None:
        metrics["shaping"] = shaper.summary()
    write_json_atomic(os.path.join(opts.save_dir, "metrics.json"), to_jsonable(metrics))
    print(f"[jnerf] {result['steps']} steps in {result['seconds']:.1f} s; test PSNR {result['test_psnr']:.2f} dB")
    return metrics


def render_only(opts, scene, renderer):
    """Render the test views of the checkpoint opts.ckpt_path at 1/opts.test_viz_factor into
    <save_dir>/test_render/step_<step>/; returns the metrics dict (also written to metrics.json)."""
    path = opts.ckpt_path
    data = load_checkpoint(path, map_location=renderer.device)
    apply_checkpoint(path, data, renderer)
    renderer.eval()
    step = int(data["global_step"])
    t0 = time.time()
    out = render_views(renderer, scene.cameras(scene.test), scene.test.rgb,
                       os.path.join(opts.save_dir, "test_render", f"step_{step:06d}"), opts.test_viz_factor)
    metrics = dict(mode="render_only", checkpoint=path, step=step, test_views=len(scene.test),
                   test_psnr=out["psnr"], test_psnr_per_view=out["psnr_per_view"],
                   seconds=time.time() - t0)
    write_json_atomic(os.path.join(opts.save_dir, "metrics.json"), to_jsonable(metrics))
    print(f"[jnerf] rendered {len(scene.test)} test views; PSNR {out['psnr']:.2f} dB")
    return metrics
