"""What each mode of main.py does once the scene and the renderer exist."""
import os
import time

from training.checkpoints import apply_checkpoint, load_checkpoint
from training.render_views import render_views
from training.trainer import Trainer, write_json_atomic
from utils.errors import NotSupportedError


def run_training(settings, scene, renderer, save_dir, rng, shaping):
    exp = settings.exp
    shaper, labels, frames = None, None, None
    if shaping:
        from training.shaping import build_shaper
        shaper, labels, frames = build_shaper(settings, scene, renderer, rng)
    trainer = Trainer(settings, scene, renderer, save_dir, shaper=shaper, labels=labels, frames=frames,
                      base_seed=exp.get("seed"))
    if exp.get("ckpt_path"):
        trainer.restore(exp["ckpt_path"], bool(exp.get("resume")))
    if trainer.start > trainer.n_iters:
        print(f"[jnerf] checkpoint is at step {trainer.start - 1} >= N_iters {trainer.n_iters}: nothing to do")
        return None
    result = trainer.fit()
    result["seconds_per_step"] = result["seconds"] / max(1, result["steps"])
    metrics = dict(mode="shape" if shaping else "train", test_views=len(scene.test),
                   test_split="frame 0 (--training_mode)" if exp.get("training_mode") else "test",
                   **result)
    if shaper is not None:
        metrics["shaping"] = shaper.summary()
    write_json_atomic(os.path.join(save_dir, "metrics.json"), metrics)
    print(f"[jnerf] {result['steps']} steps in {result['seconds']:.1f} s; test PSNR {result['test_psnr']:.2f} dB")
    return metrics


def run_render_only(settings, scene, renderer, save_dir):
    path = settings.exp["ckpt_path"]
    data = load_checkpoint(path, map_location=renderer.device)
    apply_checkpoint(path, data, renderer)
    renderer.eval()
    step = int(data["global_step"])
    factor = int(settings.render.get_num("test_viz_factor", 1))
    t0 = time.time()
    out = render_views(renderer, scene, scene.test, os.path.join(save_dir, "test_render", f"step_{step:06d}"),
                       factor, convention=settings.exp.get("convention", "opencv"))
    metrics = dict(mode="render_only", checkpoint=path, step=step, test_views=len(scene.test),
                   test_psnr=out["psnr"], test_psnr_per_view=out["psnr_per_view"],
                   seconds=time.time() - t0)
    write_json_atomic(os.path.join(save_dir, "metrics.json"), metrics)
    print(f"[jnerf] rendered {len(scene.test)} test views; PSNR {out['psnr']:.2f} dB")
    return metrics


def run_propagation(mode, settings, scene, renderer, save_dir, rng):
    try:
        from propagation.run import run_mode
    except ImportError:
        raise NotSupportedError(f"--{mode} is not implemented yet") from None
    return run_mode(mode, settings, scene, renderer, save_dir, rng)
