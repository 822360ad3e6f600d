"""Training objectives: what a method trains and its loss. The trainer owns the one step.

An objective says, for one method:
- which parameters Adam trains (`param_groups`) and which modules switch to training mode;
- where its rays come from (`sampler`: a training.batching.RayBatcher mode);
- its loss and logs for one batch (`loss`), the same function in the eager step and inside the
  CUDA-graph step (training/graphs.py); `StepContext` tells it which of the two runs it;
- which steps differ in kind (`kind`: each kind is captured as its own graph), what keeps it from
  being captured (`capture_reason`), and which precisions it trains in (`precisions`);
- its checkpoint state: extra state under `jnerf_state`, top-level keys, tensors checked for
  finiteness, and its metrics summary.

The objectives: `PlainObjective` here (the photometric loss), `ShapingObjective`
(training/shaping.py: plus the Jacobi shaping terms on shaping steps), `SemanticObjective`
(training/semantic.py: the Semantic-NeRF baseline, joint or fine-tune).

The photometric loss and its log tags exist once, here: L_img = wgt_img (MSE_coarse + MSE_fine),
MSE the mean over rays and channels of (C - C_gt)^2.
"""
from typing import NamedTuple

import torch

from training.batching import RayBatcher
from training.loss_scale import LOSS_SCALE_TAG
from utils.errors import NotSupportedError
from utils.precision import PRECISIONS

TOTAL_LOSS = "Train/Loss/total_loss"


class StepContext(NamedTuple):
    """How the step that calls `Objective.loss` runs."""
    captured: bool       # the CUDA-graph step function: supervision gathered on the device, no host sync


EAGER = StepContext(captured=False)
CAPTURED = StepContext(captured=True)


def img2mse(x, y):
    """Mean of (x - y)^2 over every element."""
    return torch.mean((x - y) ** 2)


def mse2psnr(mse):
    """PSNR in dB of an MSE of colours in [0, 1]: -10 log10(mse)."""
    return -10.0 * torch.log10(mse)


def photometric(out, rgb):
    """(MSE_coarse + MSE_fine, logs) of a render `out` against colours `rgb` [B, 3]: the image losses
    and the PSNRs under their TensorBoard tags (logs detached)."""
    loss_c = img2mse(out["rgb_coarse"], rgb)
    loss_f = img2mse(out["rgb"], rgb)
    img_loss = loss_c + loss_f
    with torch.no_grad():
        logs = {"Train/Loss/img_loss_coarse": loss_c.detach(), "Train/Loss/img_loss_fine": loss_f.detach(),
                "Train/Loss/total_img_loss": img_loss.detach(),
                "Train/Metric/psnr_coarse": mse2psnr(loss_c.detach()),
                "Train/Metric/psnr_fine": mse2psnr(loss_f.detach())}
    return img_loss, logs


def check_precision(objective, precision):
    """NotSupportedError (one line) when `objective` does not train in the --precision `precision`
    (a name; CPU runs are float32 whatever the choice, but the combination is refused alike)."""
    if precision not in objective.precisions:
        raise NotSupportedError(f"--precision {precision} is not supported for {objective.description}: it trains in "
                                f"{', '.join(objective.precisions)} (docs/PERFORMANCE.md)")


def finish_logs(logs, loss, scaler):
    """The step's logs completed by the trainer (eager and captured alike): the total loss and,
    with a loss scale, the scale after the step."""
    logs[TOTAL_LOSS] = loss.detach()
    if scaler is not None:
        logs[LOSS_SCALE_TAG] = scaler.scale.clone()
    return logs


def nerf_parameters(renderer, fix_density=False):
    """The coarse then the fine parameters (the original's Adam order). With --fix_density,
    alpha_linear of both networks is frozen and left out (in a stable order, unlike the
    original's set-based list)."""
    params = []
    for net in (renderer.coarse, renderer.fine):
        for name, p in net.named_parameters():
            if fix_density and name.startswith("alpha_linear"):
                p.requires_grad_(False)
                continue
            params.append(p)
    return params


class PlainObjective:
    """Plain NeRF fitting, and the interface every objective follows (module doc)."""

    name = "train"                         # metrics.json mode
    label = "training"                     # progress-bar title
    description = "plain NeRF training"
    precisions = tuple(PRECISIONS)         # --precision modes it trains in
    # a run from a checkpoint without --resume (training/fine_tune.py): the original's restart
    lr_schedule = "restart"                # restart | continue (the checkpoint's learning-rate schedule)
    optimizer_state = "fresh"              # fresh | restore (the checkpoint's Adam state)

    def __init__(self, train):
        self.train_opts = train            # utils.options.TrainOptions

    # -- what is trained and from which rays ---------------------------------------------
    def param_groups(self, renderer):
        """Adam's parameter groups (lists of tensors); one learning rate for all."""
        return [nerf_parameters(renderer, self.train_opts.fix_density)]

    def modules(self):
        """Modules besides the renderer that train with it (set to training mode each step)."""
        return ()

    def sampler(self, cameras, rgb, device, frames=None, seed=None):
        """The RayBatcher of the training rays."""
        t = self.train_opts
        return RayBatcher(cameras, rgb, t.n_rays, device, mode=t.batching, frames=frames, base_seed=seed,
                          keep_on_cpu=t.load_on_cpu)

    # -- one step -----------------------------------------------------------------------------
    def kind(self, step):
        """Steps of equal kind run the same function (one captured graph per kind)."""
        return "plain"

    def loss(self, renderer, batch, step, ctx):
        """(loss tensor, logs {tag: 0-d tensor or float}, render output) of `batch` at `step`."""
        out = renderer.render_rays(batch.rays, train=True, capture_safe=ctx.captured)
        img_loss, logs = photometric(out, batch.rgb)
        return self.train_opts.wgt_img * img_loss, logs, out

    def after_step(self, step, logs):
        """Host bookkeeping once a step ran (eager or replayed); logs hold device scalars."""

    # -- the captured step ---------------------------------------------------------------------
    def capture_reason(self):
        """None when `loss` can run inside a CUDA graph, else why not (one line)."""
        return None

    def device_bytes(self):
        """Bytes of supervision `to_device` copies to the device (images excluded)."""
        return 0

    def to_device(self, device):
        """Device copies of what `loss` reads in the captured step."""

    # -- checkpoints and results ---------------------------------------------------------------
    def extra_state(self):
        """Entries of the checkpoint's `jnerf_state`."""
        return {}

    def load_extra_state(self, extra, resume):
        """Restore `extra_state`'s entries (`extra`: the checkpoint's jnerf_state, on the host)."""

    def checkpoint_entries(self):
        """Top-level checkpoint keys besides the original's (e.g. the Semantic-NeRF heads)."""
        return {}

    def restore(self, path, data, resume):
        """Load the objective's own part of checkpoint `data` read from `path`."""

    def state_tensors(self):
        """(name, tensor) of the objective's own weights, checked for finiteness before a save."""
        return ()

    def summary(self):
        """The objective's entry in metrics.json, or None."""
        return None

