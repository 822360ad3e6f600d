"""The fitting loop: plain NeRF training and, with a shaper attached, Jacobi shaping (spec 3.7-3.9).

One step: sample rays, render coarse + fine in training mode, photometric loss
wgt_img * (MSE_coarse + MSE_fine), plus the shaping terms on shaping steps, one backward, Adam,
then lr <- lrate * 0.1^(step / lrate_decay) (so step s runs with the rate set after step s-1).
Checkpoints every `logging.step_save_ckpt` steps (step 0 included), periodic renders of the
train/test views every `step_vis_train` / `step_val` steps, and a final test render with PSNR.
"""
import json
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from training.batching import RayBatcher
from training.checkpoints import EXTRA_KEY, apply_checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
from training.render_views import render_views
from training.tb_logger import TBLogger


def build_optimizer(renderer, lrate, fix_density=False):
    """One Adam over the coarse then the fine parameters (the original's order).

    With --fix_density, alpha_linear of both networks is frozen and left out of Adam (in a
    stable order, unlike the original's set-based list).
    """
    params = []
    for net in (renderer.coarse, renderer.fine):
        for name, p in net.named_parameters():
            if fix_density and name.startswith("alpha_linear"):
                p.requires_grad_(False)
                continue
            params.append(p)
    # On CUDA the fused kernel: one launch per step instead of a dozen (the shaping step at
    # N_rays 64 is bound by launches). Same update rule; the state dict has the same layout.
    fused = all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lrate, betas=(0.9, 0.999), fused=fused or None)


def img2mse(x, y):
    return torch.mean((x - y) ** 2)


def mse2psnr(mse):
    return -10.0 * torch.log10(mse)


def rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()[1].tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy"], dtype=np.uint32), *np_state[2:]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_cpu(obj):
    """Tensors of a nested dict/list structure moved to the CPU (resume state of a CUDA run)."""
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class Trainer:
    def __init__(self, settings, scene, renderer, save_dir, shaper=None, labels=None, frames=None,
                 base_seed=None, log=True):
        self.s = settings
        self.scene = scene
        self.renderer = renderer
        self.device = renderer.device
        self.save_dir = save_dir
        self.shaper = shaper
        exp, train, logcfg = settings.exp, settings.train, settings.logging
        self.lrate = float(train.get_num("lrate"))
        self.lrate_decay = float(train.get_num("lrate_decay"))
        self.wgt_img = float(train.get_num("wgt_img", 1))
        self.n_iters = int(float(train.get_num("N_iters")))
        self.every = {k: max(1, int(logcfg.get_num(k, d))) for k, d in (
            ("step_log_tfb", 1), ("step_save_ckpt", 100), ("step_val", 5000), ("step_vis_train", 5000),
            ("step_log_print", 1))}
        self.optimizer = build_optimizer(renderer, self.lrate, bool(exp.get("fix_density")))
        unmasked = exp.get("from_unmasked_only") or getattr(shaper, "sample_unmasked", False)
        mode = ("fixed" if exp.get("sample_fixed") else "unmasked" if unmasked
                else "no_batching" if settings.render.get("no_batching") else "batching")
        self.batcher = RayBatcher(
            scene, int(settings.render.get_num("N_rays")), self.device, mode=mode, frames=frames,
            with_features=bool(shaper and shaper.needs_features),
            labels=labels if (shaper and shaper.needs_labels) else None, base_seed=base_seed,
            keep_on_cpu=bool(exp.get("load_on_cpu")), convention=exp.get("convention", "opencv"))
        self.log = log
        self.logger = None   # created by fit(), so a run that fails while loading writes no events
        self.start = 0

    # -- checkpoints -------------------------------------------------------------------------
    def restore(self, ckpt_path, resume):
        """Load weights; with `resume` also the optimizer, step and sampler/random state."""
        data = load_checkpoint(ckpt_path, map_location=self.device)
        apply_checkpoint(ckpt_path, data, self.renderer, self.optimizer if resume else None)
        # the checkpoint is mapped to the training device, but RNG states must be CPU ByteTensors
        extra = _to_cpu(data.get(EXTRA_KEY) or {})
        if self.shaper is not None and "shaper" in extra:
            self.shaper.load_state_dict(extra["shaper"], resume)
        if resume:
            self.start = int(data["global_step"]) + 1
            if "batcher" in extra:
                self.batcher.load_state_dict(extra["batcher"])
            if "rng" in extra:
                set_rng_state(extra["rng"])
        return data

    def extra_state(self):
        extra = {"batcher": self.batcher.state_dict(), "rng": rng_state()}
        if self.shaper is not None:
            extra["shaper"] = self.shaper.state_dict()
        return extra

    def save(self, step):
        return save_checkpoint(checkpoint_path(self.save_dir, step), step, self.renderer, self.optimizer,
                               self.extra_state())

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, step):
        batch = self.batcher.next()
        shaping = self.shaper is not None and self.shaper.active(step)
        out = self.renderer.render_rays(batch.rays, train=True, keep_fine=shaping)
        loss_c = img2mse(out["rgb_coarse"], batch.rgb)
        loss_f = img2mse(out["rgb"], batch.rgb)
        img_loss = loss_c + loss_f
        loss = self.wgt_img * img_loss
        logs = {"Train/Loss/img_loss_coarse": loss_c, "Train/Loss/img_loss_fine": loss_f,
                "Train/Loss/total_img_loss": img_loss}
        if shaping:
            extra_loss, shaping_logs = self.shaper.loss(self.renderer, out, batch, step)
            loss = loss + extra_loss
            logs.update(shaping_logs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        new_lr = self.lrate * (0.1 ** (step / self.lrate_decay))
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr
        with torch.no_grad():
            logs.update({"Train/Loss/total_loss": loss.detach(),
                         "Train/Metric/psnr_coarse": mse2psnr(loss_c.detach()),
                         "Train/Metric/psnr_fine": mse2psnr(loss_f.detach())})
        return logs, out

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, end=None):
        end = self.n_iters if end is None else end
        self.logger = TBLogger(os.path.join(self.save_dir, "tfb_logs"), enabled=self.log)
        steps = range(self.start, end + 1)
        bar = tqdm(steps, desc="shaping" if self.shaper else "training", dynamic_ncols=True, mininterval=1.0)
        t0 = time.time()
        for step in bar:
            self.renderer.train()
            logs, out = self.train_step(step)
            if step % self.every["step_log_tfb"] == 0:
                self.logger.scalars(step, logs)
                if step % (self.every["step_log_tfb"] * 1000) == 0:  # histograms sync: keep them rare
                    self.logger.histogram(step, "trans_coarse", out["sigma_raw_coarse"])
                    self.logger.histogram(step, "trans_fine", out["sigma_raw_fine"])
            if step % max(self.every["step_log_print"], 20) == 0:
                bar.set_postfix(psnr=f"{float(logs['Train/Metric/psnr_fine']):.2f}", refresh=False)
            if step % self.every["step_save_ckpt"] == 0 or step == end:
                self.save(step)
            if step > 0 and step % self.every["step_vis_train"] == 0:
                self.periodic_render(step, "train")
            if step > 0 and step % self.every["step_val"] == 0 and step != end:
                self.periodic_render(step, "test")
        self.logger.flush()
        elapsed = time.time() - t0
        result = self.periodic_render(end, "test")
        self.logger.close()
        return dict(steps=len(steps), seconds=elapsed, final_step=end, test_psnr=result["psnr"],
                    test_psnr_per_view=result["psnr_per_view"])

    def periodic_render(self, step, which):
        split = self.scene.train if which == "train" else self.scene.test
        factor = int(self.s.render.get_num("test_viz_factor", 1))
        self.renderer.eval()
        out_dir = os.path.join(self.save_dir, f"{which}_render", f"step_{step:06d}")
        result = render_views(self.renderer, self.scene, split, out_dir, factor,
                              convention=self.s.exp.get("convention", "opencv"))
        self.renderer.train()
        tag = "Train" if which == "train" else "Test"
        self.logger.scalars(step, {f"{tag}/Metric/batch_PSNR": -10 * np.log10(max(result["mse"], 1e-12)),
                                   f"{tag}/Metric/batch_MSE": result["mse"]})
        self.logger.images(step, f"{tag}/rgb", result["rgb"].numpy())
        return result


def write_json_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
