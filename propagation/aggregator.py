"""The response aggregator of the dense setting (--train_agg): an MLP from per-label responses
to segmentation logits, the original's `Response_Aggregator`.

    Linear(L_in -> 128) + ReLU, Linear(128 -> 64) + ReLU, Linear(64 -> L)

L_in = L, or the number of directions with --merge_instance. Training: Adam (lr 1e-3), after
step i the lr becomes 1e-3 * 0.1^(i / 500000); loss = mean cross-entropy over the labelled
pixels; `steps` steps (--agg_steps), each on one response set drawn uniformly at random, full
batch. Only labelled pixels enter the batch (ignored pixels add nothing to the loss or its
gradient); the set choices are drawn up front; on CUDA the steps run as CUDA graphs of 100 steps
each of propagation/aggregator_step.py's `AggregatorStep` (closed-form gradients, bias+ReLU in the
GEMM epilogue, bias gradients as GEMVs, fused Adam reading its lr from a device tensor; step
counter, set choice and lr schedule on the device); the CPU runs the eager ops (autograd and
torch.optim.Adam), which tests/test_aggregator_step.py compares the step with. docs/PROPAGATION.md, decision 14, compares this
with the original's loop.
"""
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.nerf import linear_train
from propagation.aggregator_step import AggregatorStep

LRATE = 1e-3
LRATE_DECAY = 500e3


class ResponseAggregator(nn.Module):
    """The original's `Response_Aggregator(num_class=L, W=128)` with the same parameter names."""

    def __init__(self, num_class, W=128, input_class=None):
        super().__init__()
        n_in = input_class if input_class is not None else num_class
        self.input_linear = nn.Sequential(
            nn.Sequential(nn.Linear(n_in, W), nn.ReLU()),
            nn.Sequential(nn.Linear(W, W // 2), nn.ReLU()))
        self.output_linear = nn.Linear(W // 2, num_class)

    def forward(self, x):
        # CUDA: `_Linear` (epilogue bias+ReLU, GEMV bias gradient); the CPU keeps the eager ops
        # (F.linear, F.relu: the same calls as the nn modules, so CPU results do not move)
        fused = x.is_cuda
        for block in self.input_linear:
            x = linear_train(x, block[0].weight, block[0].bias, fused, relu=True)
        return linear_train(x, self.output_linear.weight, self.output_linear.bias, fused)


def cross_entropy(logits, y):
    """Mean cross-entropy of labelled pixels (every y >= 0 here: ignored pixels were removed
    beforehand). The same value as nn.CrossEntropyLoss(ignore_index=-1) on all pixels, without
    its single-block CUDA reduction kernel (the slowest part of a step)."""
    return (torch.logsumexp(logits, 1) - logits.gather(1, y[:, None])[:, 0]).mean()


def lr_schedule(steps, device=None):
    """lr in effect after each step i: 1e-3 * 0.1^(i / 500000) (the original's update)."""
    i = torch.arange(max(1, steps), dtype=torch.float64, device=device)
    return (LRATE * 0.1 ** (i / LRATE_DECAY)).to(torch.float32)


def train_aggregator(sets, targets, num_class, steps, rng=None, device=None, progress=True, log_every=500,
                     graphed=None):
    """Fit the aggregator for `steps` steps.

    sets: [J, N, L_in] float tensor (J response sets of the same N pixels); targets: [N] long,
    label index or -1 (ignored). Returns (model in eval mode, dict(final_loss, steps, seconds,
    pixels, graphed, setup_seconds, steady_seconds_per_step)). graphed: run blocks of steps as
    CUDA graphs (default: on CUDA); the steps are the same operations, only launched without
    per-step Python overhead.

    Timing for projections to other lengths (seconds ~ setup_seconds + later steps x rate):
    setup_seconds is everything before the steady phase (graphed: warm-up steps and capture, up to
    the first replay; eager: the first few steps), synchronized; steady_seconds_per_step is the
    mean over the steady phase only (graphed: the replays; eager: the remaining steps).
    """
    device = torch.device(device) if device is not None else sets.device
    keep = targets >= 0
    x = sets[:, keep.to(sets.device)].to(device=device, dtype=torch.float32).contiguous()
    y = targets[keep].to(device)
    model = ResponseAggregator(num_class, input_class=sets.shape[-1]).to(device)
    rng = rng if rng is not None else np.random.default_rng()
    t0 = time.time()
    if y.numel() == 0 or steps <= 0:
        model.eval()
        return model, dict(final_loss=float("nan"), steps=0, seconds=0.0, pixels=int(y.numel()), graphed=False,
                           setup_seconds=0.0, steady_seconds_per_step=None)
    choice = torch.from_numpy(rng.integers(0, x.shape[0], size=steps)).to(device)
    lrs = lr_schedule(steps, device)
    if graphed is None:
        graphed = device.type == "cuda"
    bar = tqdm(total=steps, desc="aggregator", dynamic_ncols=True, leave=False, disable=not progress)
    run = _train_graphed if graphed else _train_eager
    last, t_steady, steady = run(model, x, y, choice, lrs, steps, bar, log_every)
    bar.close()
    model.eval()
    return model, dict(final_loss=float(last), steps=steps, seconds=time.time() - t0, pixels=int(y.numel()),
                       graphed=bool(graphed), setup_seconds=t_steady - t0, steady_seconds_per_step=steady)


def _sync(dev):
    """Wait for queued device work, so host clocks measure it (CUDA launches are asynchronous)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _train_eager(model, x, y, choice, lrs, steps, bar, log_every, skip=3):
    """Returns (final loss, time the steady phase began, its seconds per step)."""
    opt = torch.optim.Adam(model.parameters(), lr=LRATE, betas=(0.9, 0.999))
    loss_fn = cross_entropy
    lr_host = lrs.cpu().tolist()
    last = None
    skip = min(skip, steps - 1)
    t_steady = None
    for step in range(steps):
        if step == skip:
            _sync(x.device)
            t_steady = time.time()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[choice[step]]), y)
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = lr_host[step]
        if (step + 1) % log_every == 0 or step + 1 == steps:
            last = loss.detach()
            bar.set_postfix(loss=f"{float(last):.4f}", refresh=False)
            bar.update((step + 1) - bar.n)
    _sync(x.device)
    return float(last), t_steady, (time.time() - t_steady) / (steps - skip)


def _train_graphed(model, x, y, choice, lrs, steps, bar, log_every, block=100, warmup=3):
    """The same steps as `AggregatorStep` (closed-form gradients, fused Adam, the step counter, the
    set choice and the lr schedule on the device): a few steps run directly (on a side stream, as
    CUDA graphs require), then `block` steps per graph. Returns (final loss, time of the first
    replay, seconds per step of the replays); without a full block, the steps after the warm-up are
    the steady phase."""
    dev = x.device
    st = AggregatorStep(model, x, y, choice, lrs, LRATE)
    done = 0
    t_warm = time.time()
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(min(warmup, steps)):
            st.step(with_loss=True)
            done += 1
    torch.cuda.current_stream(dev).wait_stream(side)
    n_blocks = (steps - done) // block
    if n_blocks > 0:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            st.block(block)
    _sync(dev)
    t_steady, first = time.time(), done
    # capturing runs nothing: replay n_blocks times
    for b in range(n_blocks):
        graph.replay()
        done += block
        if done % max(block, log_every) < block or b + 1 == n_blocks:
            bar.update(done - bar.n)
    _sync(dev)
    t_end = time.time()
    if n_blocks == 0:       # no graph: the steps after the warm-up (or the warm-up itself)
        while done < steps:
            st.step(with_loss=True)
            done += 1
        _sync(dev)
        t_end = time.time()
    rate = (t_end - t_steady) / (done - first) if done > first else (t_steady - t_warm) / max(1, first)
    while done < steps:     # the remainder of the last block (not part of the steady rate)
        st.step(with_loss=done + 1 == steps)
        done += 1
    bar.update(done - bar.n)
    return float(st.loss), t_steady, rate


@torch.no_grad()
def aggregate(model, resp, block=1 << 20):
    """Logits [N, L] of responses [N, L_in] (in blocks, float32)."""
    out = []
    for i in range(0, resp.shape[0], block):
        out.append(model(resp[i:i + block].to(torch.float32)))
    return torch.cat(out, 0)
