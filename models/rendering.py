"""Volume rendering and the coarse-to-fine ray renderer.

For samples i = 1..S along a ray with depths z_i and raw density sigma_i:
delta_i = (z_{i+1} - z_i) |d| (delta_S = 1e10 |d|), alpha_i = 1 - exp(-relu(sigma_i) delta_i),
w_i = alpha_i prod_{j<i} (1 - alpha_j + 1e-10); colour sum_i w_i sigmoid(logits_i), depth
sum_i w_i z_i, opacity sum_i w_i.

`Renderer` owns the two networks and the encoders; `render_rays` runs the coarse pass on
stratified samples, places importance samples, runs the fine network on all sorted samples
and composites both. Training mode means stratified jitter, random importance samples and
Gaussian noise on the raw density (the original's `raw_noise_std`); evaluation mode is
deterministic.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.engine import Engine
from models.nerf import FieldOutput
from models.rays import ray_points, unpack_rays
from models.samplers import fine_z, stratified_z


@dataclass
class RenderOptions:
    n_samples: int = 64
    n_importance: int = 128
    perturb: float = 1.0
    raw_noise_std: float = 1.0
    white_bkgd: bool = False
    chunk: int = 1024 * 1024      # rays per call when rendering images
    netchunk: int = 1024 * 1024   # points per network call


# Points per network call of a pass without autograd on the CPU: the activation block of a call
# (points x width x 4 bytes) kept near a core's cache. The configs' netchunk (2^18 points) suits a
# GPU; on a 2-core CPU it made every layer stream through memory and a render 2x slower
# (docs/PERFORMANCE.md). Chunking changes no value beyond GEMM rounding; training keeps netchunk
# (its results stay bit-for-bit those of one call per netchunk).
CPU_CALL_BYTES = 2 << 20


class Composite(NamedTuple):
    rgb: torch.Tensor       # [B, 3]
    depth: torch.Tensor     # [B]
    acc: torch.Tensor       # [B]
    weights: torch.Tensor   # [B, S]


class _CumprodNoZeros(torch.autograd.Function):
    """torch.cumprod over the last dim of an input without zeros (the transmittance factors
    1 - alpha + 1e-10 >= 1e-10), with the backward PyTorch computes for that case (the reversed
    cumulative sum of grad * output, divided by the input) minus its host-side check for zeros,
    which a CUDA graph cannot capture (render_rays' capture_safe)."""

    @staticmethod
    def forward(ctx, x):
        out = torch.cumprod(x, dim=-1)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        return (out * grad).flip(-1).cumsum(-1).flip(-1).div(x)


def composite_weights(sigma_raw, z, dir_norm, noise_std=0.0, generator=None, capture_safe=False):
    """Rendering weights w_i = alpha_i * prod_{j<i}(1 - alpha_j + 1e-10) (the original's +1e-10).

    sigma_raw, z: [B, S]; dir_norm: [B, 1] (rays are not unit length, so distances are scaled).
    """
    dists = z[..., 1:] - z[..., :-1]
    dists = torch.cat((dists, torch.full_like(dists[..., :1], 1e10)), dim=-1) * dir_norm
    if noise_std > 0:
        sigma_raw = sigma_raw + noise_std * torch.randn(sigma_raw.shape, device=sigma_raw.device,
                                                        dtype=sigma_raw.dtype, generator=generator)
    alpha = 1.0 - torch.exp(-F.relu(sigma_raw) * dists)
    factors = torch.cat((torch.ones_like(alpha[..., :1]), 1.0 - alpha + 1e-10), dim=-1)
    trans = (_CumprodNoZeros.apply(factors) if capture_safe else torch.cumprod(factors, dim=-1))[..., :-1]
    return alpha * trans


def composite(rgb_logits, sigma_raw, z, dir_norm, noise_std=0.0, white_bkgd=False, generator=None,
              capture_safe=False):
    """Composite per-sample colour logits [B, S, 3] with the weights of `composite_weights`:
    rgb [B, 3] (plus 1 - acc on a white background), depth [B], acc [B], weights [B, S]."""
    w = composite_weights(sigma_raw, z, dir_norm, noise_std, generator, capture_safe)
    rgb = torch.sum(w[..., None] * torch.sigmoid(rgb_logits), dim=-2)
    acc = w.sum(-1)
    if white_bkgd:
        rgb = rgb + (1.0 - acc[..., None])
    return Composite(rgb, torch.sum(w * z, dim=-1), acc, w)


def render_logits(weights, logits):
    """S(r) = sum_i w_i s_i: weights [R, S], per-sample logits [R, S, C] -> [R, C] (no softmax)."""
    return torch.sum(weights[..., None] * logits, dim=-2)


def disparity(depth, acc):
    """1 / max(depth / acc, 1e-10), the original's disparity."""
    return 1.0 / torch.clamp(depth / acc, min=1e-10)


class RaySetup(NamedTuple):
    """What a coarse-to-fine render of rays starts from (`ray_setup`)."""
    viewdirs: torch.Tensor    # [B, 3]
    dir_norm: torch.Tensor    # [B, 1] |d| (rays are not unit length: distances are scaled by it)
    z: torch.Tensor           # [B, n_samples] stratified coarse depths
    jitter: bool              # training mode with perturb: jittered strata, random importance samples
    noise: float              # std of the density noise (training mode), else 0


def ray_setup(rays, opts, train, generator=None):
    """The start shared by `Renderer.render_rays` and the Semantic-NeRF render: view directions,
    |d|, the coarse depths, and this pass's jitter and density noise (RenderOptions `opts`)."""
    _, dirs, near, far, viewdirs = unpack_rays(rays)
    dir_norm = torch.linalg.norm(dirs, dim=-1, keepdim=True)
    jitter = train and opts.perturb > 0
    z = stratified_z(near, far, opts.n_samples, jitter, generator)
    return RaySetup(viewdirs, dir_norm, z, jitter, opts.raw_noise_std if train else 0.0)


class FineSamples(NamedTuple):
    """Per-sample quantities of the fine pass that Jacobians and propagation need."""
    z: torch.Tensor           # [B, S] sorted depths
    weights: torch.Tensor     # [B, S]
    rgb_logits: torch.Tensor  # [B, S, 3]
    features: torch.Tensor    # [B, S, W/2] input of rgb_linear
    sigma_raw: torch.Tensor   # [B, S] (before noise)


class Renderer(nn.Module):
    """The coarse + fine networks, their encoders and the render options. `engine`
    (models.engine.Engine, fixed at construction) says how the networks are evaluated: the
    precision in force and the fast paths; `with_engine` gives a renderer on the same networks
    with another one (benchmarks and tests compare engines that way)."""

    def __init__(self, coarse, fine, pos_enc, dir_enc, options: RenderOptions, engine: Engine = Engine()):
        super().__init__()
        self.coarse, self.fine = coarse, fine
        self.pos_enc, self.dir_enc = pos_enc, dir_enc
        self.opts = options
        self.engine = engine

    def with_engine(self, engine: Engine) -> "Renderer":
        """A renderer sharing these networks (and their weights) that evaluates them with `engine`."""
        return Renderer(self.coarse, self.fine, self.pos_enc, self.dir_enc, self.opts, engine).train(self.training)

    # -- network evaluation in point chunks --------------------------------------------------
    def rays_per_call(self, net, samples):
        """Rays per network call for `samples` samples per ray: netchunk points, capped on the CPU
        without autograd (CPU_CALL_BYTES)."""
        points = self.opts.netchunk
        if not torch.is_grad_enabled() and self.device.type == "cpu":
            points = min(points, max(1024, CPU_CALL_BYTES // (4 * net.W)))
        return max(1, points // samples)

    def run_field(self, net, pts, viewdirs, features=True, colour=True, head=None):
        """FieldOutput for pts [B, S, 3] seen along viewdirs [B, 3], at most netchunk points a call.
        The pass is the engine's path for the current autograd mode (the one place that reads it).
        features=False: rgb_features may be None (image renders need only colour and density, and
        skipping the [B, S, W/2] output saves a memory pass per chunk on the half engine);
        colour=False: density only. head: a Semantic-NeRF head (models.semantic.SemanticHead); its
        logits of the trunk output are returned as the `trunk` field. A network without trainable
        parameters (the frozen NeRF of the fine-tune protocol) runs its inference path even with
        autograd on; only the head is differentiated then."""
        grad = torch.is_grad_enabled()
        head_path = self.engine.path(grad, self.device)
        net_grad = grad and (head is None or any(p.requires_grad for p in net.parameters()))
        path = head_path if net_grad == grad else self.engine.path(False, self.device)
        d_enc = self.dir_enc(viewdirs)[:, None, :]
        per_call = self.rays_per_call(net, pts.shape[1])
        half = None if path.grad else path.dtype      # the half engine: cast in, outputs cast back

        def call(p, d):
            if path.prefill and path.grad:              # 16-bit training pass: encoded straight into its padded input
                x = net.padded_input(self.pos_enc, p, path.dtype)
            elif path.prefill:                          # encoded straight into the trunk's input buffer
                x = net.encoded_input(self.pos_enc, p, half or p.dtype)
            else:
                x = self.pos_enc(p)
                x = x if half is None else x.to(half)
            with torch.set_grad_enabled(net_grad):
                out = net.field(x, d, path, features, colour, trunk=head is not None)
            if half is not None:                        # d stays float32: the per-ray view term
                out = FieldOutput(*(None if t is None or (k == 2 and not features) else t if k == 3 else t.to(p.dtype)
                                    for k, t in enumerate(out)))
            if head is not None:
                out = out._replace(trunk=head.logits(out.trunk, head_path))
            return out

        if pts.shape[0] <= per_call:
            return call(pts, d_enc)
        outs = [call(pts[i:i + per_call], d_enc[i:i + per_call]) for i in range(0, pts.shape[0], per_call)]
        return FieldOutput(*(torch.cat(parts, 0) if parts[0] is not None else None for parts in zip(*outs)))

    # -- one batch of rays ------------------------------------------------------------------
    def run_density(self, net, pts):
        """Raw density of pts [B, S, 3] without autograd, at most netchunk points a call
        (`rays_per_call`)."""
        per_call = self.rays_per_call(net, pts.shape[1])
        path = self.engine.path(torch.is_grad_enabled(), self.device)
        dt = (None if path.grad else path.dtype) or pts.dtype

        def encoded(p):
            return net.encoded_input(self.pos_enc, p, dt) if path.prefill and not path.grad else self.pos_enc(p).to(dt)
        return torch.cat([net.density(encoded(pts[i:i + per_call]), path).to(pts.dtype)
                          for i in range(0, pts.shape[0], per_call)], 0)

    def render_rays(self, rays, train, keep_fine=False, generator=None, coarse_rgb=True, heads=None, colour=True,
                    keep_points=False, capture_safe=False):
        """Render rays [B, 11]. Returns a dict with rgb (fine), rgb_coarse, depth, acc, disp,
        depth_coarse, sigma_raw_coarse / sigma_raw_fine and, if keep_fine, 'fine': FineSamples with
        graph attached.
        coarse_rgb=False skips the coarse network's colour head (rgb_coarse is then None): the
        importance samples need only the coarse density; colour=False skips both colour heads.
        heads: (coarse, fine) Semantic-NeRF heads: adds the rendered logits S(r) = sum_i w_i s(x_i)
        `logits` / `logits_coarse` [B, C] and, with keep_points, the fine samples' raw logits
        `point_logits` [B, S, C] and `weights` [B, S].
        capture_safe: compositing whose backward never syncs with the host (the CUDA-graph step)."""
        o = self.opts
        head_c, head_f = heads if heads is not None else (None, None)
        viewdirs, dir_norm, z, jitter, noise = ray_setup(rays, o, train, generator)
        pts = ray_points(rays, z)
        if coarse_rgb and colour:
            out_c = self.run_field(self.coarse, pts, viewdirs, features=False, head=head_c)
            comp_c = composite(out_c.rgb_logits, out_c.sigma_raw, z, dir_norm, noise, o.white_bkgd, generator,
                               capture_safe)
        else:
            out_c = (self.run_field(self.coarse, pts, viewdirs, colour=False, head=head_c) if head_c is not None
                     else FieldOutput(None, self.run_density(self.coarse, pts), None))
            w_c = composite_weights(out_c.sigma_raw, z, dir_norm, noise, generator, capture_safe)
            comp_c = Composite(None, torch.sum(w_c * z, dim=-1), w_c.sum(-1), w_c)

        z_fine = fine_z(z, comp_c.weights, o.n_importance, not jitter, generator)
        pts = ray_points(rays, z_fine)
        out_f = self.run_field(self.fine, pts, viewdirs, features=keep_fine, colour=colour, head=head_f)
        if colour:
            comp_f = composite(out_f.rgb_logits, out_f.sigma_raw, z_fine, dir_norm, noise, o.white_bkgd,
                               generator, capture_safe)
        else:
            w_f = composite_weights(out_f.sigma_raw, z_fine, dir_norm, noise, generator, capture_safe)
            comp_f = Composite(None, torch.sum(w_f * z_fine, dim=-1), w_f.sum(-1), w_f)
        result = dict(rgb=comp_f.rgb, rgb_coarse=comp_c.rgb, depth=comp_f.depth, acc=comp_f.acc,
                      depth_coarse=comp_c.depth, disp=disparity(comp_f.depth, comp_f.acc),
                      sigma_raw_coarse=out_c.sigma_raw, sigma_raw_fine=out_f.sigma_raw)
        if keep_fine:
            result["fine"] = FineSamples(z_fine, comp_f.weights, out_f.rgb_logits, out_f.rgb_features,
                                         out_f.sigma_raw)
        if head_f is not None:
            result["logits"] = render_logits(comp_f.weights, out_f.trunk)
            result["logits_coarse"] = render_logits(comp_c.weights, out_c.trunk) if head_c is not None else None
            if keep_points:
                result["point_logits"], result["weights"] = out_f.trunk, comp_f.weights
        return result

    @torch.no_grad()
    def render_chunked(self, rays, train=False, chunk=None, keys=("rgb", "depth", "acc", "disp"),
                       out_device=None, generator=None):
        """Render many rays without gradients, `chunk` rays at a time; returns {key: tensor}."""
        chunk = chunk or self.opts.chunk
        parts = {k: [] for k in keys}
        for i in range(0, rays.shape[0], chunk):
            r = rays[i:i + chunk].to(self.device, non_blocking=True)
            out = self.render_rays(r, train, generator=generator, coarse_rgb="rgb_coarse" in keys)
            for k in keys:
                parts[k].append(out[k].to(out_device) if out_device is not None else out[k])
        return {k: torch.cat(v, 0) for k, v in parts.items()}

    @property
    def device(self):
        return self.fine.rgb_linear.weight.device
