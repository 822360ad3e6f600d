"""The training step as one CUDA graph, for every objective (`FastStep`).

`Trainer.train_step` hands its steps to a `FastStep` on CUDA when the run allows it
(`fast_step_reason`: the objective's `capture_reason`, float32 master weights, the data fitting on
the device). One step is then:

- host: the ray sampler draws the step's pixel indices exactly as in the eager step (a slice of
  the CPU permutation in the default mode), they go into a pinned ring buffer and one
  asynchronous copy moves them to a static device buffer; the learning rate in force is written
  into a device scalar (an asynchronous fill); then one `CUDAGraph.replay()`;
- device, inside the graph: rays built from the indices and the training poses, the colours
  gathered from a device copy of the images, then the objective's own `loss` with the captured
  context (the same function the eager step calls: the training-mode render with jitter,
  importance samples and density noise from the default CUDA generator, whose state the graph
  advances like the eager calls; shaping's device-side supervision; Semantic-NeRF's labels
  gathered on the device), backward, and Adam as the fused kernel (`torch._fused_adam_`, the kernel
  of `Adam(fused=True)`) on the optimizer's own state tensors with the device learning rate; with
  a loss scale (--precision mixed) the scaled backward, the unscale and check, the kernel's own
  skip of a non-finite step and the scale update (training/loss_scale.py).

Nothing in the step waits for the device: logs are returned as device scalars (a copy of the
graph's static log vector) and read by the logger in batches. The first `warmup` steps of each
kind (objective.kind: plain, shaping) run the same step function eagerly, then the function is
captured once and replayed for every later step. Warm-up and capture run on one side stream: the
gradient accumulators autograd creates at the first backward remember their stream, and a capture
on another stream made PyTorch warn at every capture that the streams do not match.

`FastStep.step_fn` is the function that is captured. On the CPU (tests) it runs uncaptured:
tests/test_graphs.py checks that it updates the weights as the eager step does, and on CUDA that
a replay equals the uncaptured function.
"""
import torch

from training.batching import Batch
from training.objectives import CAPTURED, finish_logs
from training.tb_logger import LogVector

RING = 8                       # pinned index buffers in flight
DEVICE_FRACTION = 0.25         # device copies of images / descriptors up to this share of free memory


def fast_step_reason(trainer):
    """None when `trainer`'s steps can be graph-captured, else the reason they stay eager."""
    if trainer.device.type != "cuda":
        return "not on CUDA"
    if not getattr(trainer.opts, "cuda_graph", True):
        return "--no_cuda_graph"
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    if any(p.dtype != torch.float32 for p in params):
        return "the parameters are not float32"
    reason = trainer.objective.capture_reason()
    if reason is not None:
        return reason
    need = trainer.objective.device_bytes()
    if trainer.batcher.rgb.device != trainer.device:
        need += trainer.batcher.rgb.numel() * trainer.batcher.rgb.element_size()
    free, _ = torch.cuda.mem_get_info(trainer.device)
    if need > DEVICE_FRACTION * free:
        return (f"the images / descriptors ({need / 2**30:.1f} GiB) would take more than a quarter of the free "
                "GPU memory")
    return None


def _log_vector(logs):
    """The step's 0-d log tensors stacked into one float64 vector (one static graph output)."""
    return torch.stack([v.detach().to(torch.float64).reshape(()) for v in logs.values()])


class FastStep:
    """Steps of `trainer` (training.trainer.Trainer) through `step_fn`, captured as CUDA graphs
    when `capture` (default: on CUDA)."""

    def __init__(self, trainer, capture=None, warmup=3):
        t = self.trainer = trainer
        dev = self.device = trainer.device
        self.capture = dev.type == "cuda" if capture is None else capture
        self.warmup = warmup
        groups = t.optimizer.param_groups
        self.params = [p for g in groups for p in g["params"]]
        group = groups[0]
        self.beta1, self.beta2 = group["betas"]
        self.eps, self.weight_decay = group["eps"], group["weight_decay"]
        keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
        if group.get("amsgrad") or group.get("maximize") or any(
                any(g.get(k) != group.get(k) for k in keys) for g in groups):
            raise ValueError("FastStep needs plain Adam groups with one set of hyperparameters")
        self._init_adam_state()
        n = t.batcher.n
        self.lr = torch.zeros((), dtype=torch.float32, device=dev)
        self.idx = torch.zeros(3, n, dtype=torch.long, device=dev)
        pin = dev.type == "cuda"
        self.ring = [torch.zeros(3, n, dtype=torch.long).pin_memory() if pin else torch.zeros(3, n, dtype=torch.long)
                     for _ in range(RING if pin else 1)]
        self.events = [torch.cuda.Event() if pin else None for _ in self.ring]
        self.stream = torch.cuda.Stream(dev) if self.capture else None    # warm-up and capture
        self.k = 0
        self.rgb = t.batcher.rgb.to(dev)
        t.objective.to_device(dev)
        self.grads = None
        self.runs = {}            # kind -> eager runs so far
        self.graphs = {}          # kind -> (CUDAGraph, logs vector, log keys, out dict)

    def _init_adam_state(self):
        """The optimizer's state as Adam(fused=True) creates it, where it does not exist yet."""
        opt = self.trainer.optimizer
        for p in self.params:
            st = opt.state[p]
            if len(st) == 0:
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif st["step"].device != p.device:
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
        self.state_token = [id(opt.state[p]["exp_avg"]) for p in self.params]
        self.state_dict_ref = opt.state
        self.exp_avgs = [opt.state[p]["exp_avg"] for p in self.params]
        self.exp_avg_sqs = [opt.state[p]["exp_avg_sq"] for p in self.params]
        self.steps = [opt.state[p]["step"] for p in self.params]

    # -- the captured function ----------------------------------------------------------------
    def batch(self):
        """The step's Batch from the static index buffer (all on the device)."""
        frame, v, u = self.idx[0], self.idx[1], self.idx[2]
        rays = self.trainer.batcher.ray_batch(frame, v, u)
        return Batch(rays, self.rgb[frame, v, u], frame, v, u)

    def step_fn(self, step):
        """One training step from the static buffers (indices, lr): the function that is captured.
        Returns (logs vector [K] float64, log keys, render output dict). `step` reaches the
        objective's loss, whose captured form does not depend on it within one kind."""
        t = self.trainer
        loss, logs, out = t.objective.loss(t.renderer, self.batch(), step, CAPTURED)
        if self.grads is None:
            for p in self.params:
                p.grad = None
        else:
            torch._foreach_zero_(self.grads)
        scaler = t.scaler
        (loss if scaler is None else scaler.scaled(loss)).backward()
        if self.grads is None:
            if any(p.grad is None for p in self.params):
                raise RuntimeError("a parameter received no gradient")
            self.grads = [p.grad for p in self.params]
        found_inf = None
        if scaler is not None:
            scaler.unscale_(self.grads)
            found_inf = scaler.found_inf
        torch._foreach_add_(self.steps, 1)
        # with found_inf = 1 the kernel leaves parameters and moments as they are (a skipped step)
        torch._fused_adam_(self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps, lr=self.lr,
                           beta1=self.beta1, beta2=self.beta2, weight_decay=self.weight_decay, eps=self.eps,
                           amsgrad=False, maximize=False, found_inf=found_inf)
        if scaler is not None:
            torch._foreach_sub_(self.steps, [found_inf] * len(self.steps))
            scaler.update()
        with torch.no_grad():
            logs = finish_logs(logs, loss, scaler)
            vec = _log_vector(logs)
        return vec, tuple(logs), out

    # -- host side of a step ------------------------------------------------------------------
    def _load_indices(self, frame, v, u):
        slot = self.k % len(self.ring)
        self.k += 1
        buf = self.ring[slot]
        if self.events[slot] is not None:
            self.events[slot].synchronize()      # the copy from this slot RING steps ago is done
        buf[0].copy_(frame)
        buf[1].copy_(v)
        buf[2].copy_(u)
        self.idx.copy_(buf, non_blocking=True)
        if self.events[slot] is not None:
            self.events[slot].record()

    def _check_state(self):
        """Rebuild the state references if the optimizer state was replaced (e.g. a restore: the
        optimizer's load_state_dict installs a new state dict, so the tensors are compared only then)."""
        opt = self.trainer.optimizer
        if opt.state is not self.state_dict_ref:
            if [id(opt.state[p].get("exp_avg")) for p in self.params] != self.state_token:
                self.graphs.clear()
                self._init_adam_state()
            self.state_dict_ref = opt.state
        if self.grads is not None:
            for p, g in zip(self.params, self.grads):
                if p.grad is not g:          # an eager step in between set the grads to None
                    p.grad = g

    def __call__(self, step):
        """Run training step `step`; returns (logs {tag: 0-d device tensor}, render output dict)."""
        t = self.trainer
        kind = t.objective.kind(step)
        frame, pix = t.batcher.indices()
        self._load_indices(frame, pix // t.batcher.W, pix % t.batcher.W)
        self._check_state()
        group = t.optimizer.param_groups[0]
        self.lr.fill_(float(group["lr"]))
        if kind in self.graphs:
            graph, vec, keys, out = self.graphs[kind]
            graph.replay()
        elif not self.capture or self.runs.get(kind, 0) < self.warmup:
            vec, keys, out = self._eager(step)
            self.runs[kind] = self.runs.get(kind, 0) + 1
        else:
            graph, vec, keys, out = self._capture(step, kind)
            graph.replay()
        new_lr = t.learning_rate(step)
        for g in t.optimizer.param_groups:
            g["lr"] = new_lr
        logs = LogVector(keys, vec.clone())         # the logger records the vector, not each scalar
        t.objective.after_step(step, logs)
        return logs, out

    def _eager(self, step):
        if not self.capture:
            return self.step_fn(step)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            res = self.step_fn(step)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return res

    def _capture(self, step, kind):
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                vec, keys, out = self.step_fn(step)
        except RuntimeError as exc:
            raise RuntimeError(f"capturing the training step as a CUDA graph failed ({exc}); "
                               "run with --no_cuda_graph") from exc
        self.graphs[kind] = (graph, vec, keys, out)
        return self.graphs[kind]
