"""Jacobi shaping: the per-step shaping terms added by the trainer.

`build_shaper` turns the shaping options into a `Shaper`; the trainer calls
`shaper.active(step)` and, on shaping steps, adds `shaper.loss(renderer, out, batch, step)` to
wgt_img * L_img.

`ShapingObjective` is the trainer's objective of a shaping run (training/objectives.py): the plain
photometric loss plus, on shaping steps, the terms of its `Shaper`.

One shaping step:
1. Jacobians J [N, P] of every ray's scalar output (models/jacobians.py): the rendered pixel
   colour (target 2d) or the colour of the back-projected 3D point (target 3d), w.r.t. the
   shaped parameter subset (models.jacobians.PARAMETER_SUBSETS); differentiable, so the loss
   reaches every fine parameter.
2. On the host, from data only (descriptors or labels of the sampled pixels, gathered on the
   CPU): the similarity matrix, the sequential adaptive-threshold scan, and the Pos/Neg masks,
   sent to the device in one non-blocking copy.
3. On the device: wgt_contrastive * L_NCE + wgt_gradient * L_norm (training/contrastive.py).
The threshold tau is a Python float that persists across steps and is saved in checkpoints.
Departures from the original are listed in docs/SHAPING.md.
"""
from dataclasses import replace

import numpy as np
import torch

from datasets.dino_io import gather_cells
from datasets.seed_maps import seed_labels
from datasets.seeds import make_seeds
from models.jacobians import PARAMETER_SUBSETS, jacobian_size, ray_jacobians, sample_points
from models.rendering import FineSamples
from training.contrastive import (adaptive_threshold_scan, adaptive_threshold_scan_device, info_nce, label_masks,
                                  label_masks_device, norm_loss, pair_similarity, supervision_features,
                                  threshold_masks, threshold_masks_device)
from training.objectives import PlainObjective, photometric
from utils.errors import InputError, NotSupportedError

SHAPING_TAGS = ("Train/Loss/contrastive_loss", "Train/Loss/weighted_total_contrastive_loss", "Train/Loss/gradient_loss",
                "Train/Loss/weighted_total_gradient_loss", "Train/Gradient/gradient_norm",
                "Train/Shaping/pos_threshold", "Train/Shaping/pos_ratio", "Train/Shaping/anchors")


class Shaper:
    """The shaping terms of `opts` (utils.options.ShapingOptions) for `renderer`'s fine network.

    store: the training descriptors (datasets.dino_io.DescriptorStore) for descriptor
    supervision; labels: [N, H, W] int64 CPU training labels (0 = void) for label supervision;
    rgb: [N, H, W, 3] training colours (concat_color); nocs_box: (centre [3], extent [3]) of the
    scene box (render_nocs).
    """

    def __init__(self, opts, renderer, store=None, labels=None, rgb=None, nocs_box=None):
        self.opts = opts
        self.store, self.labels, self.rgb, self.nocs_box = store, labels, rgb, nocs_box
        self._dev_store = self._dev_labels = None
        # One threshold state for both paths: a float64 scalar the host scan reads and writes and the
        # device scan updates in place (on the training device once `to_device` ran). Likewise the
        # sum of the positive ratios (summary()).
        self._tau = torch.tensor(float(opts.pos_threshold), dtype=torch.float64)
        self._pos_ratio_sum = torch.zeros((), dtype=torch.float64)
        self.initial_tau = float(opts.pos_threshold)
        self.nocs_tau = opts.nocs_pos_threshold
        self.P = jacobian_size(renderer.fine, opts.subset)
        self.steps = 0
        self._last = {}

    @property
    def tau(self):
        """The threshold in force (a Python float; one sync when it lives on a GPU: checkpoints,
        summaries and the host scan read it)."""
        return float(self._tau)

    @tau.setter
    def tau(self, value):
        self._tau.fill_(float(value))

    @property
    def mode(self):
        """The supervision: 'features' | 'labels' | 'alternate'."""
        return self.opts.supervision

    # -- the trainer's interface ----------------------------------------------------------
    def active(self, step):
        """Whether `step` is a shaping step: step >= start and step % every == 0."""
        return step >= self.opts.start and step % self.opts.every == 0

    def supervision(self, step):
        """'features' or 'labels' on this step (--sample_alter: labels on multiples of
        --finetune_label_step, descriptors otherwise, as the original)."""
        if self.mode == "alternate":
            return "features" if step % self.opts.label_step else "labels"
        return self.mode

    def loss(self, renderer, out, batch, step):
        """(wgt_contrastive * L_NCE + wgt_gradient * L_norm as a float64 0-d tensor in graph, logs)
        for the rays of `batch` rendered as `out` (render_rays with keep_fine=True); the pair masks
        are built on the host (`pair_masks`), which every supervision supports."""
        n, dev = batch.rays.shape[0], batch.rays.device
        channel = None
        if self.opts.random_channel:   # the global CPU generator (seeded by --seed), one channel per ray
            channel = torch.randint(0, 3, (n,)).to(dev, non_blocking=True)
        jac = self.jacobians(renderer, out, batch.rays, channel)    # queued on the device
        pos, neg = self.pair_masks(renderer, out, batch, step)     # host work meanwhile
        masks = torch.from_numpy(np.stack((pos, neg)))
        if dev.type == "cuda":
            masks = masks.pin_memory()
        masks = masks.to(dev, non_blocking=True)
        pos_ratio = float(pos.sum()) / (n * n)
        self._pos_ratio_sum += pos_ratio
        return self._terms(jac, masks[0], masks[1], pos_ratio, float(np.count_nonzero(pos.any(1) & neg.any(1))),
                           self.tau)

    def _terms(self, jac, pos, neg, pos_ratio, anchors, tau):
        """The loss and the logs of both paths from the Jacobians and the pair masks."""
        o = self.opts
        sim, norms = pair_similarity(jac, o.dot_product, o.absolute)
        nce, _ = info_nce(sim, pos, neg)
        grad_loss = norm_loss(norms) if o.norm_loss else torch.zeros((), dtype=nce.dtype, device=nce.device)
        total = o.wgt_contrastive * nce + o.wgt_gradient * grad_loss
        logs = {"Train/Loss/contrastive_loss": nce.detach(),
                "Train/Loss/weighted_total_contrastive_loss": o.wgt_contrastive * nce.detach(),
                "Train/Loss/gradient_loss": grad_loss.detach(),
                "Train/Loss/weighted_total_gradient_loss": o.wgt_gradient * grad_loss.detach(),
                "Train/Gradient/gradient_norm": norms.detach().mean(),
                "Train/Shaping/pos_threshold": tau,
                "Train/Shaping/pos_ratio": pos_ratio,
                "Train/Shaping/anchors": anchors}
        return total, logs

    def note_step(self, logs):
        """Host bookkeeping of one shaping step (either path; `logs` may hold device scalars)."""
        self.steps += 1
        self._last = {k: v for k, v in logs.items() if k in SHAPING_TAGS}

    def state_dict(self):
        """The checkpoint's `jnerf_state.shaper`: the thresholds and the shaping-step count."""
        return {"pos_threshold": self.tau, "nocs_pos_threshold": self.nocs_tau, "steps": self.steps}

    def load_state_dict(self, state, resume):
        """--resume continues with the saved threshold; a fresh fine-tune starts from
        --pos_threshold (the original never saved it, so its runs always restart from it)."""
        if resume and state and "pos_threshold" in state:
            self.tau = self.initial_tau = float(state["pos_threshold"])

    def summary(self):
        """metrics.json's `shaping` entry."""
        last = {k.split("/")[-1]: float(v) for k, v in self._last.items()}
        ratio_sum = float(self._pos_ratio_sum)
        return dict(supervision=self.mode, jacobian=self.opts.target, parameters=self.opts.subset,
                    jacobian_size=self.P, shaping_steps=self.steps, pos_threshold_initial=self.initial_tau,
                    pos_threshold_final=self.tau,
                    mean_pos_ratio=ratio_sum / max(1, self.steps), last=last)

    # -- the device path (the CUDA-graph-captured step of training/graphs.py) -----------------
    def device_reason(self):
        """None when `device_loss` covers these options, else why not (the step then stays eager)."""
        o = self.opts
        if self.mode == "alternate":
            return "--sample_alter switches the supervision between steps"
        if o.random_channel:
            return "--random_channel draws its channels from the CPU generator"
        if self.nocs_box is not None or o.spatial is not None or o.concat_color:
            return "--render_nocs / --spatial / --concat_color build the features on the host"
        if o.pos_order:
            return "--pos_order"
        if self.mode == "features" and self.store is None:
            return "no descriptors"
        return None

    def supervision_bytes(self):
        """Bytes of the supervision that `to_device` copies to the device."""
        data = self.store.grids if self.mode == "features" else self.labels
        return data.numel() * data.element_size()

    def to_device(self, device):
        """Device copies of the supervision, and the threshold state moved to the device, for
        `device_loss`."""
        if self.mode == "features":
            self._dev_store = DeviceDescriptors(self.store, device)
        else:
            self._dev_labels = self.labels.to(device)
        self._tau = self._tau.to(device)
        self._pos_ratio_sum = self._pos_ratio_sum.to(device)

    def device_loss(self, renderer, out, batch, step):
        """`loss` with everything on the device and no host sync: the supervision gathered from
        device copies (`to_device`), the threshold scan as device operations
        (training.contrastive.adaptive_threshold_scan_device), the masks on the device. batch
        carries device index tensors. Same values as `loss` (tests/test_graphs.py)."""
        o = self.opts
        n = batch.rays.shape[0]
        jac = self.jacobians(renderer, out, batch.rays, None)
        if self.supervision(step) == "labels":
            pos, neg = label_masks_device(self._dev_labels[batch.frame, batch.v, batch.u])
        else:
            f = supervision_features(self._dev_store.gather(batch.frame, batch.v, batch.u))
            sim = float32_matmul(f, f.T)
            taus = adaptive_threshold_scan_device(
                sim, self._tau, int(o.pos_ratio_lower * n), int(o.pos_ratio_upper * n), o.pos_threshold_lower,
                o.pos_threshold_upper, adaptive=o.adaptive_threshold and not o.pos_order)
            pos, neg = threshold_masks_device(sim, taus)
        pos_ratio = pos.sum(dtype=torch.float64) / (n * n)
        self._pos_ratio_sum.add_(pos_ratio)
        return self._terms(jac, pos, neg, pos_ratio, (pos.any(1) & neg.any(1)).sum(dtype=torch.float64), self._tau)

    # -- pieces -------------------------------------------------------------------------------
    def jacobians(self, renderer, out, rays, channel=None):
        """[N, P] Jacobians of the 2D pixel colours or of the 3D points' colours."""
        subset = self.opts.subset
        if self.opts.target == "2d":
            fine = out["fine"]
            pts, viewdirs = sample_points(rays, fine.z)
            return ray_jacobians(renderer, fine, pts, viewdirs, subset, channel, colour=out["rgb"])
        pts = self.surface_points(out, rays)[:, None, :]            # [N, 1, 3], constant
        zero_dirs = torch.zeros_like(pts[:, 0])                     # the original's zero view direction
        field = renderer.run_field(renderer.fine, pts, zero_dirs)
        colour = torch.sigmoid(field.rgb_logits[:, 0])
        fine = FineSamples(None, torch.ones_like(field.sigma_raw), field.rgb_logits, field.rgb_features,
                           field.sigma_raw)
        return ray_jacobians(renderer, fine, pts, zero_dirs, subset, channel, colour=colour)

    @staticmethod
    def surface_points(out, rays):
        """o + depth * d: the rendered z-depth along the renderer's unnormalised direction
        (camera-to-world rays; the original's back_project inverted the pose), detached."""
        depth = out["depth"].detach()
        return rays[:, 0:3] + depth[:, None] * rays[:, 3:6]

    def pair_masks(self, renderer, out, batch, step):
        """Host side: (pos, neg) bool [N, N] numpy arrays; updates tau (descriptor steps)."""
        frame, v, u = batch.frame.cpu(), batch.v.cpu(), batch.u.cpu()
        o = self.opts
        if self.supervision(step) == "labels":
            return label_masks(self.labels[frame, v, u].numpy(), o.pos_order)
        desc = self.store.gather(frame, v, u)                        # CPU float32 [N, D]
        points = colour = extra = None
        if self.nocs_box is not None:                                 # needs the render: one sync
            nocs = self.rendered_nocs(out, batch.rays).cpu().numpy()
            extra = (nocs @ nocs.T) > np.float32(self.nocs_tau)
        elif o.spatial is not None:                                   # needs the render: one sync
            pts = self.surface_points(out, batch.rays)
            points = (renderer.pos_enc(pts) if o.spatial == "embedding" else pts).cpu().float()
        if o.concat_color:
            colour = self.rgb[frame, v, u].float()
        f = supervision_features(desc, points, colour)
        sim = (f @ f.T).numpy()
        n = sim.shape[0]
        taus, self.tau = adaptive_threshold_scan(
            sim, self.tau, int(o.pos_ratio_lower * n), int(o.pos_ratio_upper * n), o.pos_threshold_lower,
            o.pos_threshold_upper, adaptive=o.adaptive_threshold and not o.pos_order, extra=extra)
        return threshold_masks(sim, taus, extra, o.pos_order)

    def rendered_nocs(self, out, rays):
        """sum_s w_s nocs(p_s), nocs(p) = (p - centre) / extent (the box of `nocs_box`)."""
        fine = out["fine"]
        pts, _ = sample_points(rays, fine.z)
        centre, extent = (torch.as_tensor(t, dtype=pts.dtype, device=pts.device) for t in self.nocs_box)
        return torch.sum(fine.weights.detach()[..., None] * (pts - centre) / extent, dim=-2).float()


class ShapingObjective(PlainObjective):
    """Jacobi shaping: the plain photometric loss plus, on shaping steps (`Shaper.active`), the
    shaper's terms, from the host masks in the eager step and from the device masks in the
    captured one (the same values, tests/test_graphs.py)."""

    name = "shape"
    label = "shaping"
    description = "Jacobi shaping (its float16 training passes are unchecked; --precision fp16 gives the same "\
                  "float16 renders)"
    # float16 training passes were checked on plain training only (docs/PERFORMANCE.md)
    precisions = ("fp32", "tf32", "fp16")

    def __init__(self, train, shaper):
        super().__init__(train)
        self.shaper = shaper
        self.lr_schedule = shaper.opts.lr_schedule         # --shaping_lr
        self.optimizer_state = shaper.opts.optimizer_state   # --shaping_optimizer

    def kind(self, step):
        return "shaping" if self.shaper.active(step) else "plain"

    def loss(self, renderer, batch, step, ctx):
        shaping = self.shaper.active(step)
        out = renderer.render_rays(batch.rays, train=True, keep_fine=shaping, capture_safe=ctx.captured)
        img_loss, logs = photometric(out, batch.rgb)
        loss = self.train_opts.wgt_img * img_loss
        if shaping:
            terms = self.shaper.device_loss if ctx.captured else self.shaper.loss
            extra, shaping_logs = terms(renderer, out, batch, step)
            loss = loss + extra
            logs.update(shaping_logs)
        return loss, logs, out

    def after_step(self, step, logs):
        if self.shaper.active(step):
            self.shaper.note_step(logs)

    def capture_reason(self):
        reason = self.shaper.device_reason()
        return None if reason is None else f"shaping: {reason}"

    def device_bytes(self):
        return self.shaper.supervision_bytes()

    def to_device(self, device):
        self.shaper.to_device(device)

    def extra_state(self):
        return {"shaper": self.shaper.state_dict()}

    def load_extra_state(self, extra, resume):
        if "shaper" in extra:
            self.shaper.load_state_dict(extra["shaper"], resume)

    def summary(self):
        return self.shaper.summary()


def float32_matmul(a, b):
    """a @ b in full float32 (TF32 off on CUDA for this product: similarities near the threshold
    must compare as the host's float32 product does)."""
    if not a.is_cuda:
        return a @ b
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return a @ b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


class DeviceDescriptors:
    """A device copy of a datasets.dino_io.DescriptorStore (its grids, float16 stays float16, and
    its up-sampling tables) whose `gather` takes device index tensors and computes the store's
    formula there (the same float32 operations in the same order)."""

    def __init__(self, store, device):
        self.grids = store.grids.to(device)
        self._rows = tuple(t.to(device) for t in store._rows)
        self._cols = tuple(t.to(device) for t in store._cols)

    def gather(self, frame, v, u):
        """Descriptors [B, D] float32 at pixels (frame[b], v[b], u[b]) (device long tensors)."""
        return gather_cells(self.grids, self._rows, self._cols, frame, v, u)


# ----------------------------------------------------------------------------------------------
# construction from the options
# ----------------------------------------------------------------------------------------------
def nocs_box_from_depth(cameras, depth, stride=4):
    """(centre [3], extent [3]) float32 of the axis-aligned box of the training depth point cloud:
    every `stride`-th pixel (v, u) of every view with depth > 0 back-projected to o + depth * d
    (float64), with `cameras` (models.cameras.Cameras) and `depth` [N, H, W] (Replica has no mesh
    bounding box; see docs/SHAPING.md). extent is clamped to at least 1e-6."""
    if depth is None:
        raise NotSupportedError("--render_nocs needs depth maps (depth/ folder) to bound the scene")
    cams = replace(cameras, poses=cameras.poses.double())
    lo, hi = None, None
    vv, uu = torch.meshgrid(torch.arange(0, cams.height, stride), torch.arange(0, cams.width, stride),
                            indexing="ij")
    vv, uu = vv.reshape(-1), uu.reshape(-1)
    for i in range(len(cams)):
        rays = cams.pixel_rays(torch.full_like(vv, i), vv.double(), uu.double())
        d = depth[i][vv, uu].double()
        ok = d > 0
        if ok.any():
            p = rays[ok, 0:3] + d[ok, None] * rays[ok, 3:6]
            lo = p.min(0).values if lo is None else torch.minimum(lo, p.min(0).values)
            hi = p.max(0).values if hi is None else torch.maximum(hi, p.max(0).values)
    if lo is None:
        raise InputError("--render_nocs: the training depth maps hold no valid depth")
    return ((lo + hi) / 2).float(), (hi - lo).clamp(min=1e-6).float()


def build_shaper(opts, scene, renderer, rng):
    """(shaper, frames) for the trainer from `opts` (utils.options.RunOptions with `shaping` set;
    every flag combination is validated there). frames: the training frames that keep labels,
    which the batcher draws from with `shaping.unmasked`, else None. Label supervision and
    `unmasked` read the seed labels: the user's (`scene.seeds`, from --clicks / --scribbles, through
    datasets.seed_maps.seed_labels), else simulated from the ground truth (datasets.seeds.make_seeds
    with `opts.seeds`, drawing from the numpy Generator `rng`)."""
    sh = opts.shaping
    uses_labels = sh.supervision in ("labels", "alternate")
    labels, frames = None, None
    if uses_labels or sh.unmasked:
        if scene.seeds is not None:
            seeds = seed_labels(opts.seeds, scene, rng)[0]
        elif not scene.has_labels:
            flag = "--from_unmasked_only" if not uses_labels else "label supervision (--sample_semantic/--from_label/" \
                "--sample_alter)"
            raise InputError(f"{flag} needs labels: {scene.root} has no ground-truth label maps; give yours with "
                             "--clicks FILE or --scribbles DIR (docs/OWN_SCENE.md)")
        else:
            seeds = make_seeds(scene.train.semantic, opts.seeds, rng, train_ids=scene.train.ids,
                               colour_map=scene.colour_map)
        if uses_labels:
            labels = torch.from_numpy(np.asarray(seeds.labels, dtype=np.int64))
        if sh.unmasked:
            frames = np.flatnonzero(np.asarray(seeds.mask_ids, dtype=bool)).tolist()
            if not frames:
                raise InputError("--from_unmasked: no training frame keeps labels (see --sparse_ratio/--label_map_ids)")
    nocs_box = nocs_box_from_depth(scene.cameras(scene.train), scene.train.depth) if sh.render_nocs else None
    try:
        shaper = Shaper(sh, renderer, store=scene.train.features, labels=labels,
                        rgb=scene.train.rgb if sh.concat_color else None, nocs_box=nocs_box)
    except ValueError as exc:      # e.g. --pts_layer on a network with fewer than 7 trunk layers
        raise InputError(f"--{PARAMETER_SUBSETS[sh.subset].flag}: {exc}") from None
    print(f"[jnerf] shaping: {sh.target} Jacobians of {sh.subset} ({shaper.P} numbers), supervision "
          f"{sh.supervision}, tau {shaper.tau}{' adaptive' if sh.adaptive_threshold else ''}", flush=True)
    return shaper, frames
