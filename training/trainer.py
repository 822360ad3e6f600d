"""The fitting loop and the one training step, for every objective (training/objectives.py:
plain NeRF, Jacobi shaping, the Semantic-NeRF baseline).

One step s: the objective's sampler draws N rays, the objective's loss renders them in training
mode and returns its loss (plain: L = wgt_img * (MSE_coarse + MSE_fine); shaping adds its terms on
shaping steps; Semantic-NeRF its label cross-entropy), one backward, Adam over the objective's
parameters, then lr <- lrate * 0.1^(s / lrate_decay) (so step s runs with the rate set after step
s - 1). On CUDA the step is one CUDA-graph replay where the objective and the data allow it
(training/graphs.py); the eager step and the graph call the same objective.loss and differ only
in where the batch comes from and how the update runs. A float16 training precision (--precision
mixed) adds a loss scale (training/loss_scale.py).
Checkpoints every `logging.step_save_ckpt` steps (step 0 included) and at the last step,
renders of the train/test views every `step_vis_train` / `step_val` steps, and a final test
render with PSNR.

Faults (docs/RELIABILITY.md): a non-finite loss or weight stops the run with `Diverged` ("loss
became NaN at step N; last good checkpoint: PATH"), and no checkpoint is written with a
non-finite weight or optimizer state (checked before every save). The loss is watched by
`FiniteGuard` without a host sync per step on CUDA: each step adds two tiny device ops that
record the first non-finite step, and the recorded step is read (one sync) only at the
progress-bar refresh (every max(step_log_print, 20) steps, which syncs anyway) and before every
save; on the CPU it is read every step (no sync there). Ctrl-C / SIGTERM during the loop finish
the current step, save a checkpoint at it and raise `Interrupted` (a second Ctrl-C stops at
once). --keep_ckpts removes older checkpoints after each save.
"""
import math
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from models.checkpoints import (EXTRA_KEY, checkpoint_data, checkpoint_path, named_tensors, non_finite_tensor,
                                prune_checkpoints, restore_checkpoint)
from models.render_views import render_views
from training.ckpt_writer import CheckpointWriter, host_copy
from training.fine_tune import LR_SCHEDULE_KEY, reached_rate, restore_adam_state
from training.graphs import FastStep, fast_step_reason
from training.loss_scale import LossScaler
from training.objectives import EAGER, TOTAL_LOSS, PlainObjective, finish_logs
from training.tb_logger import TBLogger
from utils.rundir import Diverged, Interrupted, StopSignals


STEADY_SKIP = 20      # steps left out of the steady rate (at least; a tenth of a long run)


def build_optimizer(param_groups, lrate):
    """One Adam over `param_groups` (lists of tensors; the plain NeRF's is the coarse then the fine
    parameters, the original's order). On CUDA the fused kernel: one launch per step instead of a
    dozen (the shaping step at N_rays 64 is bound by launches). Same update rule; the state dict
    has the same layout."""
    groups = [{"params": list(g)} for g in param_groups]
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.Adam(groups, lr=lrate, betas=(0.9, 0.999), fused=fused or None)


def rng_state():
    """torch (CPU and CUDA), Python and NumPy global random states, for an exact resume."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()[1].tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore `rng_state()`'s states (the CUDA ones only on a machine with as many devices)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy"], dtype=np.uint32), *np_state[2:]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class FiniteGuard:
    """The first step whose loss was not finite. On CUDA nothing is checked per step (no host sync,
    no kernel): the steps' loss tensors are kept until `first_non_finite()` checks them all at once
    (every check_every steps and before a save: one stack, one host read); elsewhere each `record`
    checks at once (`deferred` forces either way)."""

    def __init__(self, device, deferred=None):
        self.on_device = device.type == "cuda" if deferred is None else deferred
        self.first = None                          # (step, value) once found
        self._pending = []                         # (step, 0-d loss tensor) not checked yet

    def record(self, step, loss):
        """Note `loss` (a 0-d tensor) of `step`; returns True when a non-finite loss is known."""
        if self.first is not None:
            return True
        loss = loss.detach()
        if not self.on_device:
            value = float(loss)
            if not math.isfinite(value):
                self.first = (step, value)
            return self.first is not None
        self._pending.append((step, loss))
        return False

    def first_non_finite(self):
        """(step, loss value) of the first non-finite loss, or None (one sync on CUDA)."""
        if self.first is None and self._pending:
            pending, self._pending = self._pending, []
            values = torch.stack([loss.reshape(()).to(torch.float64) for _, loss in pending])
            bad = (~torch.isfinite(values)).nonzero()
            if bad.numel():
                i = int(bad[0, 0])
                self.first = (pending[i][0], float(values[i]))
        return self.first


class Trainer:
    """Fits `renderer` to the training views of `scene` under `train` (utils.options.TrainOptions)
    with `objective` (training.objectives.PlainObjective or another objective).

    frames: the training frames rays are drawn from in the "unmasked" sampling mode (None: all);
    seed: base seed of the ray stream (None: drawn from torch's generator); test_viz_factor:
    down-scaling of the periodic and final renders; log: write TensorBoard events.
    """

    def __init__(self, train, scene, renderer, save_dir, objective=None, frames=None, seed=None, test_viz_factor=1,
                 log=True):
        self.opts = train
        self.scene = scene
        self.renderer = renderer
        self.device = renderer.device
        self.save_dir = save_dir
        self.objective = objective if objective is not None else PlainObjective(train)
        self.test_viz_factor = test_viz_factor
        self.n_iters = train.n_iters
        self.optimizer = build_optimizer(self.objective.param_groups(renderer), train.lrate)
        self.batcher = self.objective.sampler(scene.cameras(scene.train), scene.train.rgb, self.device, frames, seed)
        self.log = log
        self.logger = None   # created by fit(), so a run that fails while loading writes no events
        self.start = 0
        # the schedule: lr after step s = lr_base * 0.1^((s + lr_offset) / lrate_decay) (training/fine_tune.py)
        self.lr_base, self.lr_offset = train.lrate, 0
        self.fine_tune = None   # how a run from a checkpoint without --resume began (metrics.json)
        self.guard = FiniteGuard(self.device)
        self.last_good = None   # the last checkpoint known to be finite: the loaded one, then each save
        self._modes_set = False  # train_mode() has put every module in training mode since the last change
        self.final_step = self.n_iters
        # float16 training passes (--precision mixed) need a loss scale (training/loss_scale.py)
        self.scaler = LossScaler(self.device) if renderer.engine.precision.loss_scale else None
        # on CUDA checkpoints are written by a background thread (training/ckpt_writer.py)
        self.writer = CheckpointWriter(background=self.device.type == "cuda")

    # -- checkpoints -------------------------------------------------------------------------
    def restore(self, ckpt_path, resume):
        """Load weights (and the objective's part); with `resume` also the optimizer, step, learning-rate
        schedule and sampler/random state; without it the run starts at step 0 (`begin_from`)."""
        data = restore_checkpoint(ckpt_path, self.renderer, self.optimizer if resume else None)
        self.objective.restore(ckpt_path, data, resume)
        self.last_good = ckpt_path
        # the checkpoint is mapped to the training device, but RNG states must be CPU ByteTensors
        extra = host_copy(data.get(EXTRA_KEY) or {})
        self.objective.load_extra_state(extra, resume)
        if resume and self.scaler is not None and "loss_scale" in extra:
            self.scaler.load_state_dict(extra["loss_scale"])
        if resume:
            self.start = int(data["global_step"]) + 1
            if LR_SCHEDULE_KEY in extra:
                self.lr_base = float(extra[LR_SCHEDULE_KEY]["base"])
                self.lr_offset = int(extra[LR_SCHEDULE_KEY]["offset"])
            if "batcher" in extra:
                self.batcher.load_state_dict(extra["batcher"])
            if "rng" in extra:
                set_rng_state(extra["rng"])
        else:
            self.fine_tune = self.begin_from(ckpt_path, data, extra)
        return data

    def begin_from(self, path, data, extra):
        """Step 0 of a run from checkpoint `data` without --resume (training/fine_tune.py): the
        objective's `lr_schedule` ('restart': --lrate, the original's; 'continue': from the rate the
        checkpoint's run had reached, decayed by this run's --lrate_decay) and `optimizer_state` ('fresh',
        the original's; 'restore': the checkpoint's Adam moments and step counters). Prints and
        returns what it did."""
        schedule, adam = self.objective.lr_schedule, self.objective.optimizer_state
        source = None
        if schedule == "continue":               # from the rate reached, decayed by this run's lrate_decay
            self.lr_base, source = reached_rate(data, self.opts.lrate, self.opts.lrate_decay)
            self.lr_offset = 1
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_base
        restored = restore_adam_state(path, data, self.optimizer, self.renderer) if adam == "restore" else 0
        lr = self.optimizer.param_groups[0]["lr"]
        info = dict(checkpoint=path, checkpoint_step=int(data["global_step"]), lr_schedule=schedule,
                    optimizer_state=adam, initial_lr=lr, initial_lr_from=source or "--lrate",
                    restored_tensors=restored)
        print(f"[jnerf] from {path} (step {info['checkpoint_step']}): step 0 at learning rate {lr:.4g} "
              + ("(the rate the checkpoint's run had reached" + (")" if source == "checkpoint" else
                                                                  ": its step by this run's schedule)")
                 if schedule == "continue" else "(--lrate, a new schedule)")
              + (f", the checkpoint's Adam state ({restored} tensors)" if adam == "restore" else ", a fresh Adam"),
              flush=True)
        return info

    def extra_state(self):
        """The checkpoint's `jnerf_state`: ray-stream position, random states, the objective's state,
        the loss scale."""
        extra = {"batcher": self.batcher.state_dict(), "rng": rng_state()}
        extra.update(self.objective.extra_state())
        if self.lr_offset or self.lr_base != self.opts.lrate:
            extra[LR_SCHEDULE_KEY] = {"base": self.lr_base, "offset": self.lr_offset}
        if self.scaler is not None:
            extra["loss_scale"] = self.scaler.state_dict()
        return extra

    def save(self, step):
        """Checkpoint at `step`, once the loss so far and every weight and optimizer-state tensor
        are finite (`Diverged` otherwise); once written, --keep_ckpts prunes the older ones. On CUDA
        the write finishes in the background (`self.writer`; `fit` waits for it)."""
        self.check_finite(step)
        path = checkpoint_path(self.save_dir, step)

        def written(path):
            self.last_good = path
            if self.opts.keep_ckpts:
                prune_checkpoints(self.save_dir, self.opts.keep_ckpts, step, self.final_step)

        self.writer.write(path, self.checkpoint_data(step), written)
        return path

    def checkpoint_data(self, step):
        """The checkpoint dict at `step` (models.checkpoints.checkpoint_data) with the objective's
        own entries."""
        return checkpoint_data(step, self.renderer, self.optimizer, self.extra_state(),
                               self.objective.checkpoint_entries())

    def state_tensors(self):
        """(name, tensor) of every weight and optimizer-state tensor a checkpoint holds."""
        for net_name, net in (("network_coarse_state_dict", self.renderer.coarse),
                              ("network_fine_state_dict", self.renderer.fine)):
            for name, p in net.named_parameters():
                yield f"{net_name}.{name}", p.detach()
        yield from named_tensors({i: st for i, st in enumerate(self.optimizer.state.values())},
                                 "optimizer_state_dict.state")
        yield from self.objective.state_tensors()

    def check_finite(self, step, weights=True):
        """Diverged when a loss up to `step` or (with `weights`) a weight / optimizer-state tensor is
        not finite."""
        last = self.last_good or "none"
        bad = self.guard.first_non_finite()
        if bad is not None:
            at, value = bad
            what = "NaN" if math.isnan(value) else "inf"
            raise Diverged(f"loss became {what} at step {at}; last good checkpoint: {last} "
                           "(a lower --lrate may help)")
        bad = non_finite_tensor(self.state_tensors()) if weights else None
        if bad is not None:
            name, count = bad
            raise Diverged(f"a weight became non-finite by step {step} ({name}: {count} NaN/inf values); "
                           f"last good checkpoint: {last} (a lower --lrate may help)")

    # -- one step ----------------------------------------------------------------------------
    def learning_rate(self, step):
        """lr after step `step`: lr_base * 0.1^((step + lr_offset) / lrate_decay); the original's schedule
        (lr_base = lrate, lr_offset 0) unless --shaping_lr continue (training/fine_tune.py)."""
        return self.lr_base * (0.1 ** ((step + self.lr_offset) / self.opts.lrate_decay))

    def apply_update(self, loss, step):
        """Backward, one Adam step, then the learning rate of the next step. With a loss scale the
        backward runs on the scaled loss, the gradients are unscaled, and a step with a non-finite
        gradient is skipped (training/loss_scale.py)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scaled(loss).backward()
            self.scaler.unscale_([p.grad for g in self.optimizer.param_groups for p in g["params"]
                                  if p.grad is not None])
            if not self.scaler.skipped():
                self.optimizer.step()
            self.scaler.update()
        new_lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr

    def fast_step(self):
        """The graph-captured step (training.graphs.FastStep) when this run allows one, else None
        (`fast_reason` says why, printed once on CUDA). Built at the first step, after any restore."""
        fast = getattr(self, "_fast", None)
        if fast is None:
            self.fast_reason = fast_step_reason(self)
            fast = self._fast = FastStep(self) if self.fast_reason is None else False
            if fast:
                print("[jnerf] training step: one CUDA graph per step", flush=True)
            elif self.device.type == "cuda":
                print(f"[jnerf] training step: eager ({self.fast_reason})", flush=True)
        return fast or None

    def train_step(self, step):
        """One optimisation step at `step` (the learning-rate update uses it); returns (logs
        {TensorBoard tag: 0-d tensor or float}, the render's output dict). On CUDA a CUDA-graph
        replay where the configuration allows it (`fast_step`), else eager: the same
        objective.loss, the batch from the sampler, the update through the optimizer."""
        fast = self.fast_step()
        if fast is not None:
            return fast(step)
        batch = self.batcher.next()
        loss, logs, out = self.objective.loss(self.renderer, batch, step, EAGER)
        self.apply_update(loss, step)
        logs = finish_logs(logs, loss, self.scaler)
        self.objective.after_step(step, logs)
        return logs, out

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, end=None):
        """Steps self.start .. end (default n_iters) inclusive, then the final test render.
        Returns dict(steps, seconds (the loop, without the final render), final_step, test_psnr,
        test_psnr_per_view, steady_seconds_per_step (the seconds per step after the first tenth
        of the steps, at least STEADY_SKIP of them, are left out; None without steps),
        render_seconds (the final test render, its files written)). Raises
        Diverged on a non-finite loss or weight, Interrupted (with a checkpoint at the current
        step) on Ctrl-C / SIGTERM."""
        end = self.n_iters if end is None else end
        self.final_step = end
        every = self.opts.logging
        check_every = max(every.step_log_print, 20)
        self.logger = TBLogger(os.path.join(self.save_dir, "tfb_logs"), enabled=self.log)
        steps = range(self.start, end + 1)
        bar = tqdm(steps, desc=self.objective.label, dynamic_ncols=True, mininterval=1.0)
        # the steady rate leaves out the first steps (warm-up, graph capture): projections to longer
        # runs multiply it, so one-time costs must not be in it (checkpoints, logging stay in)
        warm_at = self.start + min(len(steps) - 1, max(STEADY_SKIP, len(steps) // 10))
        t_warm = None
        self._modes_set = False
        t0 = time.time()
        try:
            with StopSignals() as stop:
                for step in bar:
                    if step == warm_at:
                        t_warm = self._clock()
                    self.train_mode()
                    logs, out = self.train_step(step)
                    if self.guard.record(step, logs[TOTAL_LOSS]):
                        self.check_finite(step, weights=False)
                    if step % every.step_log_tfb == 0:
                        self.logger.scalars(step, logs)
                        if step % (every.step_log_tfb * 1000) == 0:  # histograms sync: keep them rare
                            self.logger.histogram(step, "trans_coarse", out["sigma_raw_coarse"])
                            self.logger.histogram(step, "trans_fine", out["sigma_raw_fine"])
                    if step % check_every == 0:
                        self.check_finite(step, weights=False)
                        bar.set_postfix(psnr=f"{float(logs['Train/Metric/psnr_fine']):.2f}", refresh=False)
                    saved = None
                    if step % every.step_save_ckpt == 0 or step == end:
                        saved = self.save(step)
                    if step > 0 and step % every.step_vis_train == 0:
                        self.periodic_render(step, "train")
                    if step > 0 and step % every.step_val == 0 and step != end:
                        self.periodic_render(step, "test")
                    if stop.signum is not None:
                        path = saved or self.save(step)
                        self.writer.wait()          # the printed --resume command needs the file
                        raise Interrupted(stop.signum, step, path)
            self.writer.wait()
        except BaseException:
            bar.close()
            try:
                self.writer.wait()          # a checkpoint in flight lands (or fails) before the error is reported
            except Exception:
                pass                        # the first error is the one to report
            try:
                self.logger.close()
            except OSError:
                pass                     # the disk that stopped the run may be full: keep the first error
            raise
        bar.close()
        self.logger.flush()
        t_end = self._clock()
        elapsed = t_end - t0
        steady = (t_end - t_warm) / (end + 1 - warm_at) if t_warm is not None else None
        result = self.periodic_render(end, "test")
        render_seconds = self._clock() - t_end
        self.logger.close()
        return dict(steps=len(steps), seconds=elapsed, final_step=end, test_psnr=result["psnr"],
                    test_psnr_per_view=result["psnr_per_view"], steady_seconds_per_step=steady,
                    render_seconds=render_seconds)

    def train_mode(self):
        """The renderer and the objective's modules in training mode. Setting the mode walks every
        submodule (about 0.3 ms for the paper's two networks on a loaded CPU core, as much as a
        twentieth of a step), so within `fit` it is done again only after something else set a mode
        (`periodic_render`)."""
        if self._modes_set:
            return
        self.renderer.train()
        for m in self.objective.modules():
            m.train()
        self._modes_set = True

    def _clock(self):
        """Host time once the device has finished its queued work (CUDA steps are asynchronous)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.time()

    def periodic_render(self, step, which):
        """Render the 'train' or 'test' views at 1/test_viz_factor into <save_dir>/<which>_render/
        step_<step>/ and log batch PSNR / MSE and the images; returns render_views' result."""
        split = self.scene.train if which == "train" else self.scene.test
        self._modes_set = False
        self.renderer.eval()
        out_dir = os.path.join(self.save_dir, f"{which}_render", f"step_{step:06d}")
        result = render_views(self.renderer, self.scene.cameras(split), split.rgb, out_dir, self.test_viz_factor)
        self.train_mode()
        tag = "Train" if which == "train" else "Test"
        self.logger.scalars(step, {f"{tag}/Metric/batch_PSNR": -10 * np.log10(max(result["mse"], 1e-12)),
                                   f"{tag}/Metric/batch_MSE": result["mse"]})
        self.logger.images(step, f"{tag}/rgb", result["rgb"].numpy())
        return result
