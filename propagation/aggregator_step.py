"""The aggregator's training step as a fixed sequence of kernels: closed-form gradients, one fused
Adam update, the step counter, the set choice and the learning rate on the device
(`AggregatorStep`). On CUDA a block of these steps is captured as one CUDA graph and replayed
(propagation/aggregator.py); on the CPU the same `block` runs uncaptured, and
tests/test_aggregator_step.py checks it against the eager loop (autograd + torch.optim.Adam).

For the MLP z = W3 relu(W2 relu(W1 x + b1) + b2) + b3 and the mean cross-entropy over N pixels,

    dL/dz = (softmax(z) - onehot(y)) / N          (softmax in one kernel, the -1 by one scatter)
    dL/dW3 = dz^T h2,  dL/db3 = dz^T 1,  dL/dh2 = dz W3   (the 1/N is each GEMM's alpha)
    dL/du2 = dL/dh2 where h2 > 0, and so on down to W1;

autograd's backward of the same loss runs more kernels (the mean's and the log-sum-exp's
backward, the gather's zero fill and scatter, the sum of the two, the gradients' zeroing, the
loss itself every step). Here the loss value is computed only when asked (`with_loss`: the last
step of a block, for the run's final loss). Adam is `torch._fused_adam_` with the learning rate as
a device tensor (the kernel of Adam(fused=True)); the biases' gradients are GEMVs (models/nerf.py
`_bias_grad`'s reason). Layers: bias and ReLU in the GEMM's epilogue on CUDA, the eager pair on
the CPU.
"""
import torch
import torch.nn.functional as F


class AggregatorStep:
    """Steps of `model` (propagation.aggregator.ResponseAggregator) on response sets x [J, N, L_in]
    with targets y [N] (every y >= 0): step i on set choice[i] with Adam (learning rate lr0 at
    first), followed by lr <- lrs[i]."""

    def __init__(self, model, x, y, choice, lrs, lr0, betas=(0.9, 0.999), eps=1e-8):
        self.model, self.x, self.y, self.choice, self.lrs = model, x, y, choice, lrs
        dev, dt = x.device, x.dtype
        self.params = [p for block in model.input_linear for p in (block[0].weight, block[0].bias)]
        self.params += [model.output_linear.weight, model.output_linear.bias]
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=dev) for _ in self.params]
        self.lr = torch.full((), lr0, dtype=torch.float32, device=dev)
        self.step_t = torch.zeros(1, dtype=torch.long, device=dev)
        self.loss = torch.zeros((), dtype=dt, device=dev)
        self.beta1, self.beta2, self.eps = betas[0], betas[1], eps
        n = y.shape[0]
        self.inv_n = 1.0 / n
        self.ones = torch.ones(n, dtype=dt, device=dev)
        self.y1 = y[:, None]
        self.minus_one = torch.full((n, 1), -1.0, dtype=dt, device=dev)
        self.fused = dev.type == "cuda"

    def _layer(self, x, w, b, relu):
        if self.fused:
            return torch._addmm_activation(b, x, w.t()) if relu else torch.addmm(b, x, w.t())
        y = F.linear(x, w, b)
        return F.relu(y) if relu else y

    def gradients(self, with_loss=False):
        """Fill self.grads with the gradient of the mean cross-entropy on the step's set (and
        self.loss with its value when `with_loss`)."""
        (w1, b1, w2, b2, w3, b3), (g_w1, g_b1, g_w2, g_b2, g_w3, g_b3) = self.params, self.grads
        with torch.no_grad():
            xb = self.x.index_select(0, self.choice.index_select(0, self.step_t))[0]
            h1 = self._layer(xb, w1, b1, True)
            h2 = self._layer(h1, w2, b2, True)
            z = self._layer(h2, w3, b3, False)
            if with_loss:
                self.loss.copy_((torch.logsumexp(z, 1) - z.gather(1, self.y1)[:, 0]).mean())
            dz = torch.softmax(z, 1).scatter_add_(1, self.y1, self.minus_one)     # N dL/dz
            a = self.inv_n
            torch.addmm(g_w3, dz.t(), h2, beta=0, alpha=a, out=g_w3)
            torch.addmv(g_b3, dz.t(), self.ones, beta=0, alpha=a, out=g_b3)
            # beta=0: the input (h2, of the right shape) is ignored, the 1/N is the GEMM's alpha
            du2 = torch.ops.aten.threshold_backward(torch.addmm(h2, dz, w3, beta=0, alpha=a), h2, 0)
            torch.mm(du2.t(), h1, out=g_w2)
            torch.mv(du2.t(), self.ones, out=g_b2)
            du1 = torch.ops.aten.threshold_backward(torch.mm(du2, w2), h1, 0)
            torch.mm(du1.t(), xb, out=g_w1)
            torch.mv(du1.t(), self.ones, out=g_b1)

    def step(self, with_loss=False):
        """One step: gradients, Adam with the learning rate in force, then the rate of the next step."""
        self.gradients(with_loss)
        with torch.no_grad():
            torch._foreach_add_(self.steps, 1)
            torch._fused_adam_(self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps, lr=self.lr,
                               beta1=self.beta1, beta2=self.beta2, weight_decay=0.0, eps=self.eps, amsgrad=False,
                               maximize=False)
            torch.index_select(self.lrs, 0, self.step_t, out=self.lr.view(1))
            self.step_t.add_(1)

    def block(self, steps, with_loss=True):
        """`steps` steps (the function a CUDA graph captures); the loss of the last one in self.loss."""
        for k in range(steps):
            self.step(with_loss and k == steps - 1)
