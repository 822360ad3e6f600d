"""The dense setting's aggregator step (--train_agg): the eager loop (autograd + Adam), the previous
graphed step (autograd inside CUDA graphs of 100 steps) and the device step of
propagation/aggregator_step.py (closed-form gradients, fused Adam; CUDA graphs of 100 steps on
CUDA, uncaptured on the CPU).

    python bench/aggregator_block.py                  # CUDA: 76800 pixels x 10 labels x 5 sets, fp32 and tf32
    python bench/aggregator_block.py --pixels 20000 --steps 200      # a CPU-sized run

Per variant: operators dispatched per step (each a kernel launch on CUDA), steady time per step,
the projection to 200k steps, and against the eager loop after --check_steps steps the largest
parameter difference (relative to the parameter scale) and the share of pixels whose label (argmax
over the aggregator's outputs, every set) agrees. Prints Markdown tables.
"""
import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from propagation.aggregator import (LRATE, ResponseAggregator, _train_eager, cross_entropy,  # noqa: E402
                                    lr_schedule, train_aggregator)
from propagation.aggregator_step import AggregatorStep  # noqa: E402


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class Bar:
    n = 0

    def update(self, k):
        self.n += k

    def set_postfix(self, **kw):
        pass


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autograd_step(model, x, y, choice, lrs):
    """The previous graphed step: autograd and Adam(fused, capturable) with the lr on the device."""
    dev = x.device
    lr_t = torch.tensor(LRATE, dtype=torch.float32, device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr_t if dev.type == "cuda" else LRATE, betas=(0.9, 0.999),
                           capturable=dev.type == "cuda", fused=True)
    step_t = torch.zeros(1, dtype=torch.long, device=dev)

    def one():
        xb = x.index_select(0, choice.index_select(0, step_t))[0]
        opt.zero_grad(set_to_none=False)
        loss = cross_entropy(model(xb), y)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            lr_t.copy_(lrs.index_select(0, step_t)[0])
        else:
            opt.param_groups[0]["lr"] = float(lrs[int(step_t)])
        step_t.add_(1)
    return one


def ops_per_step(fn):
    fn()
    with Count() as c:
        fn()
    return c.ops


def timed_graph(one, device, steps, block=100):
    """Steady seconds per step of `one` captured in graphs of `block` steps (eager on the CPU)."""
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    if side is not None:
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                one()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(block):
                one()
        run = graph.replay
    else:
        def run():
            for _ in range(block):
                one()
    run()
    sync(device)
    t = time.perf_counter()
    for _ in range(max(1, steps // block)):
        run()
    sync(device)
    return (time.perf_counter() - t) / (max(1, steps // block) * block)


def agreement(a, b, x):
    with torch.no_grad():
        same = [(a(x[j]).argmax(-1) == b(x[j]).argmax(-1)).float().mean() for j in range(x.shape[0])]
        pa = torch.cat([p.detach().flatten() for p in a.parameters()])
        pb = torch.cat([p.detach().flatten() for p in b.parameters()])
    return float((pa - pb).abs().max() / pb.abs().max()), float(torch.stack(same).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pixels", type=int, default=76800)
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--sets", type=int, default=5)
    p.add_argument("--steps", type=int, default=20000, help="timed steps per variant")
    p.add_argument("--check_steps", type=int, default=2000, help="steps before the comparison with the eager loop")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, a.labels, (a.pixels,), generator=gen)
    x = torch.rand(a.sets, a.pixels, a.labels, generator=gen) + 0.5 * torch.nn.functional.one_hot(y, a.labels)
    x, y = x.to(device), y.to(device)
    n = max(a.steps, a.check_steps) + 200
    choice = torch.from_numpy(np.random.default_rng(0).integers(0, a.sets, size=n)).to(device)
    lrs = lr_schedule(n, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {name}; {a.pixels} pixels x {a.labels} labels x {a.sets} sets\n")
    for tf32 in ((False, True) if device.type == "cuda" else (False,)):
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.manual_seed(0)
        base = ResponseAggregator(a.labels).to(device)
        eager = copy.deepcopy(base)
        _train_eager(eager, x, y, choice, lrs, a.check_steps, Bar(), log_every=10**9)
        rows = []
        for label in ("eager (autograd, Adam)", "previous graphed step (autograd in graphs)",
                      "device step (closed form, fused Adam)"):
            m = copy.deepcopy(base)
            if label.startswith("device"):
                st = AggregatorStep(m, x, y, choice, lrs, LRATE)
                one = st.step
            else:
                one = autograd_step(m, x, y, choice, lrs)
            ops = ops_per_step(one)
            if label.startswith("eager"):
                sec = timed_graph(one, torch.device("cpu"), min(a.steps, 2000)) if device.type == "cpu" else None
                if sec is None:       # CUDA eager: host-launched steps
                    sync(device)
                    t = time.perf_counter()
                    for _ in range(min(a.steps, 2000)):
                        one()
                    sync(device)
                    sec = (time.perf_counter() - t) / min(a.steps, 2000)
                diff, agree = 0.0, 1.0
            else:
                m2 = copy.deepcopy(base)
                if label.startswith("device"):
                    st2 = AggregatorStep(m2, x, y, choice, lrs, LRATE)
                    for _ in range(a.check_steps):
                        st2.step()
                else:
                    f2 = autograd_step(m2, x, y, choice, lrs)
                    for _ in range(a.check_steps):
                        f2()
                diff, agree = agreement(m2, eager, x)
                sec = timed_graph(one, device, a.steps)
            rows.append((label, ops, sec, diff, agree))
        print(f"{'tf32' if tf32 else 'fp32'}:\n")
        print("| step | ops / step | time / step | 200k steps | max param diff vs eager | labels = eager |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, ops, sec, diff, agree in rows:
            print(f"| {label} | {ops} | {1e6 * sec:.0f} us | {2e5 * sec:.1f} s | {diff:.1e} | {100 * agree:.3f} % |")
        print()
    if device.type == "cuda":    # the whole of train_aggregator as propagation runs it
        torch.backends.cuda.matmul.allow_tf32 = True
        _, info = train_aggregator(x, y, a.labels, a.steps, rng=np.random.default_rng(0), device=device,
                                   progress=False)
        print(f"train_aggregator, {a.steps} steps (tf32): {info['seconds']:.2f} s, setup {info['setup_seconds']:.2f} s, "
              f"steady {1e6 * info['steady_seconds_per_step']:.0f} us/step")


if __name__ == "__main__":
    main()
