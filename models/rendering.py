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
    which a CUDA graph cannot capture (Renderer.capture_safe)."""

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
    def __init__(self, coarse, fine, pos_enc, dir_enc, options: RenderOptions, near=0.1, far=10.0):
        super().__init__()
        self.coarse, self.fine = coarse, fine
        self.pos_enc, self.dir_enc = pos_enc, dir_enc
        self.opts = options
        self.near, self.far = near, far
        # None: evaluate the field in the parameters' dtype. torch.float16 / bfloat16: the half
        # inference engine (no-autograd passes only: image renders, propagation); the networks'
        # outputs are cast back, so compositing and responses stay in float32 (--precision fp16).
        self.inference_dtype = None
        # None: passes with autograd (training) run in the parameters' dtype. torch.float16
        # (--precision mixed; the trainer adds a loss scale) or torch.bfloat16 (benchmarks only:
        # withheld, it failed the precision check, docs/PERFORMANCE.md): they run
        # NeRF.forward_mixed (16-bit activations, float32 master weights, float32 outputs).
        self.train_dtype = None
        # True: compositing uses a cumprod whose backward never syncs with the host (set by the
        # graph-captured training step, training/graphs.py); same values.
        self.capture_safe = False

    def set_inference(self, options):
        """Use `options` (models.nerf.InferenceOptions: the no-autograd fast paths) in both networks."""
        self.coarse.inference = self.fine.inference = options
        return self

    def _engine_dtype(self):
        if self.inference_dtype is None or torch.is_grad_enabled():
            return None
        return self.inference_dtype

    # -- network evaluation in point chunks --------------------------------------------------
    def rays_per_call(self, net, samples):
        """Rays per network call for `samples` samples per ray: netchunk points, capped on the CPU
        without autograd (CPU_CALL_BYTES)."""
        points = self.opts.netchunk
        if not torch.is_grad_enabled() and self.device.type == "cpu":
            points = min(points, max(1024, CPU_CALL_BYTES // (4 * net.W)))
        return max(1, points // samples)

    def run_field(self, net, pts, viewdirs, features=True):
        """FieldOutput for pts [B, S, 3] seen along viewdirs [B, 3], at most netchunk points a call.
        features=False: rgb_features may be None (image renders need only colour and density, and
        skipping the [B, S, W/2] output saves a memory pass per chunk on the half engine)."""
        d_enc = self.dir_enc(viewdirs)[:, None, :]
        per_call = self.rays_per_call(net, pts.shape[1])
        dt = self._engine_dtype()
        mixed = self.train_dtype is not None and torch.is_grad_enabled()

        def call(p, d):
            if mixed:
                return net.forward_mixed(self.pos_enc(p), d, self.train_dtype, features)
            if dt is None:
                return net(self.pos_enc(p), d)
            out = net(self.pos_enc(p).to(dt), d)     # d stays float32: the per-ray view term
            return type(out)(*(t.to(p.dtype) if (features or k != 2) else None for k, t in enumerate(out)))

        if pts.shape[0] <= per_call:
            return call(pts, d_enc)
        outs = [call(pts[i:i + per_call], d_enc[i:i + per_call]) for i in range(0, pts.shape[0], per_call)]
        return type(outs[0])(*(torch.cat(parts, 0) if parts[0] is not None else None for parts in zip(*outs)))

    # -- one batch of rays ------------------------------------------------------------------
    def run_density(self, net, pts):
        """Raw density of pts [B, S, 3], at most netchunk points a call (`rays_per_call`)."""
        per_call = self.rays_per_call(net, pts.shape[1])
        dt = self._engine_dtype() or pts.dtype
        return torch.cat([net.density(self.pos_enc(pts[i:i + per_call]).to(dt)).to(pts.dtype)
                          for i in range(0, pts.shape[0], per_call)], 0)

    def render_rays(self, rays, train, keep_fine=False, generator=None, coarse_rgb=True):
        """Render rays [B, 11]. Returns a dict with rgb (fine), rgb_coarse, depth, acc, disp,
        depth_coarse and, if keep_fine, 'fine': FineSamples with graph attached.
        coarse_rgb=False skips the coarse network's colour head (rgb_coarse is then None): the
        importance samples need only the coarse density."""
        o = self.opts
        viewdirs, dir_norm, z, jitter, noise = ray_setup(rays, o, train, generator)
        pts = ray_points(rays, z)
        if coarse_rgb:
            out_c = self.run_field(self.coarse, pts, viewdirs, features=False)
            sigma_c = out_c.sigma_raw
            comp_c = composite(out_c.rgb_logits, sigma_c, z, dir_norm, noise, o.white_bkgd, generator,
                               self.capture_safe)
        else:
            sigma_c = self.run_density(self.coarse, pts)
            w_c = composite_weights(sigma_c, z, dir_norm, noise, generator, self.capture_safe)
            comp_c = Composite(None, torch.sum(w_c * z, dim=-1), w_c.sum(-1), w_c)

        z_fine = fine_z(z, comp_c.weights, o.n_importance, not jitter, generator)
        pts = ray_points(rays, z_fine)
        out_f = self.run_field(self.fine, pts, viewdirs, features=keep_fine)
        comp_f = composite(out_f.rgb_logits, out_f.sigma_raw, z_fine, dir_norm, noise, o.white_bkgd,
                           generator, self.capture_safe)
        result = dict(rgb=comp_f.rgb, rgb_coarse=comp_c.rgb, depth=comp_f.depth, acc=comp_f.acc,
                      depth_coarse=comp_c.depth, disp=disparity(comp_f.depth, comp_f.acc),
                      sigma_raw_coarse=sigma_c, sigma_raw_fine=out_f.sigma_raw)
        if keep_fine:
            result["fine"] = FineSamples(z_fine, comp_f.weights, out_f.rgb_logits, out_f.rgb_features,
                                         out_f.sigma_raw)
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
