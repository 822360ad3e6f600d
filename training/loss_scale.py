"""A dynamic loss scale that lives on the device (float16 training, `--precision mixed`).

float16 keeps 10 significant bits, as TF32 does, but its smallest normal number is 6e-5, and the
gradients that reach the activations of a NeRF step are about 1e-6 to 1e-8 (a mean over 3072
colour values, times compositing weights and sigmoid slopes): unscaled they would be flushed to
zero. So the loss is multiplied by `scale` (a power of two, 2^16 at first) before the backward pass,
the float32 parameter gradients are divided by it again (exact: powers of two) and checked; a
step whose gradients hold an inf or NaN is skipped (no Adam update, its step counter unchanged)
and halves the scale, and `interval` clean steps in a row double it: PyTorch's GradScaler rule,
written with its device kernels so that the whole step, skip included, stays inside one CUDA
graph (no host sync; GradScaler reads `found_inf` on the host for optimizers that are not fused).

The eager step (`Trainer.apply_update`) reads `found_inf` on the host and skips `optimizer.step()`;
the graph step passes it to the fused Adam kernel, which skips the update on the device. Both
leave the parameters, moments and step counters as they were (tests/test_loss_scale.py).
"""
import torch

LOSS_SCALE_TAG = "Train/Misc/loss_scale"    # the scale after each step, in the logs
INIT_SCALE = 2.0 ** 16
GROWTH, BACKOFF, INTERVAL = 2.0, 0.5, 2000


class LossScaler:
    def __init__(self, device, init=INIT_SCALE, growth=GROWTH, backoff=BACKOFF, interval=INTERVAL):
        self.growth, self.backoff, self.interval = growth, backoff, interval
        self.scale = torch.full((), init, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)   # clean steps in a row
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)      # 1.0: this step is skipped
        self._inv = torch.zeros((), dtype=torch.float32, device=device)

    def scaled(self, loss):
        """The loss times the current scale (what the backward pass runs on)."""
        return loss * self.scale

    def unscale_(self, grads):
        """Divide `grads` (float32 tensors) by the scale in place and set `found_inf` when any
        element is inf or NaN."""
        self.found_inf.zero_()
        torch.reciprocal(self.scale, out=self._inv)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self._inv)

    def update(self):
        """After the step: halve the scale if it was skipped, double it after `interval` clean steps."""
        torch._amp_update_scale_(self.scale, self.growth_tracker, self.found_inf, self.growth, self.backoff,
                                 self.interval)

    def skipped(self):
        """Whether the last unscaled step found a non-finite gradient (one host sync)."""
        return bool(self.found_inf.item())

    def state_dict(self):
        return {"scale": float(self.scale), "growth_tracker": int(self.growth_tracker)}

    def load_state_dict(self, state):
        self.scale.fill_(float(state["scale"]))
        self.growth_tracker.fill_(int(state["growth_tracker"]))
