"""Jacobi shaping (spec 4): the per-step shaping terms added by the trainer.

`build_shaper` turns the flags into a `Shaper`; the trainer calls `shaper.active(step)` and,
on shaping steps, adds `shaper.loss(renderer, out, batch, step)` to wgt_img * L_img.

One shaping step:
1. Jacobians J [N, P] of every ray's scalar output (models/jacobians.py): the rendered pixel
   colour (--contrastive_2d) or the colour of the back-projected 3D point (--contrastive_3d),
   w.r.t. the shaped block (--rgb_layer, --density_layer, --pts_layer, --rgb_pts_layer,
   --all_para); differentiable, so the loss reaches every fine parameter.
2. On the host, from data only (descriptors or labels of the sampled pixels, gathered on the
   CPU): the similarity matrix, the sequential adaptive-threshold scan, and the Pos/Neg masks,
   sent to the device in one non-blocking copy.
3. On the device: wgt_contrastive * L_NCE + wgt_gradient * L_norm (training/contrastive.py).
The threshold tau is a Python float that persists across steps and is saved in checkpoints.
"""
import os

import numpy as np
import torch

from models.jacobians import jacobian_size, ray_jacobians, sample_points, subset_from_flags
from models.rendering import FineSamples
from training.contrastive import (adaptive_threshold_scan, info_nce, label_masks, norm_loss, pair_similarity,
                                  supervision_features, threshold_masks)
from utils.errors import InputError, NotSupportedError


class Shaper:
    needs_features = False   # descriptors are gathered here, on the host (the masks are built there)
    needs_labels = False     # likewise for labels

    def __init__(self, exp, renderer, subset, target, supervision, store=None, labels=None, rgb=None,
                 nocs_box=None, sample_unmasked=False):
        num = exp.get_num if hasattr(exp, "get_num") else exp.get
        self.subset, self.target, self.mode = subset, target, supervision
        self.store, self.labels, self.rgb, self.nocs_box = store, labels, rgb, nocs_box
        self.sample_unmasked = sample_unmasked
        self.start = int(num("contrastive_starting_step"))
        self.every = int(num("contrastive_step"))
        self.label_step = int(num("finetune_label_step") or 2)
        self.wgt_contrastive = float(num("wgt_contrastive"))
        self.wgt_gradient = float(num("wgt_gradient"))
        self.tau = self.initial_tau = float(num("pos_threshold"))
        self.nocs_tau = float(num("nocs_pos_threshold"))
        self.ratio_lower, self.ratio_upper = float(num("pos_ratio_lower")), float(num("pos_ratio_upper"))
        self.tau_lower, self.tau_upper = float(num("pos_threshold_lower")), float(num("pos_threshold_upper"))
        flag = lambda k: bool(exp.get(k))   # noqa: E731
        self.adaptive, self.pos_order = flag("adaptive_threshold"), flag("pos_order")
        self.dot, self.absolute = flag("nce_dot_product"), flag("contrastive_abs")
        self.norm_term = flag("gradient_norm_loss") or self.dot
        self.random_channel, self.concat_color = flag("random_channel"), flag("concat_color")
        self.spatial = "embedding" if flag("spatial_embedding") else "xyz" if flag("spatial") else None
        self.P = jacobian_size(renderer.fine, subset)
        self.steps = 0
        self._last = {}
        self._pos_ratio_sum = 0.0

    # -- the trainer's interface ----------------------------------------------------------
    def active(self, step):
        return step >= self.start and step % self.every == 0

    def supervision(self, step):
        """'features' or 'labels' on this step (--sample_alter: labels on multiples of
        --finetune_label_step, descriptors otherwise, as the original)."""
        if self.mode == "alternate":
            return "features" if step % self.label_step else "labels"
        return self.mode

    def loss(self, renderer, out, batch, step):
        rays = batch.rays
        n, dev = rays.shape[0], rays.device
        channel = None
        if self.random_channel:   # the global CPU generator (seeded by --seed), one channel per ray
            channel = torch.randint(0, 3, (n,)).to(dev, non_blocking=True)
        jac = self.jacobians(renderer, out, rays, channel)          # queued on the device
        pos, neg = self.pair_masks(renderer, out, batch, step)     # host work meanwhile
        masks = torch.from_numpy(np.stack((pos, neg)))
        if dev.type == "cuda":
            masks = masks.pin_memory()
        masks = masks.to(dev, non_blocking=True)
        sim, norms = pair_similarity(jac, self.dot, self.absolute)
        nce, _ = info_nce(sim, masks[0], masks[1])
        grad_loss = norm_loss(norms) if self.norm_term else torch.zeros((), dtype=nce.dtype, device=dev)
        total = self.wgt_contrastive * nce + self.wgt_gradient * grad_loss
        pos_ratio = float(pos.sum()) / (n * n)
        self.steps += 1
        self._pos_ratio_sum += pos_ratio
        logs = {"Train/Loss/contrastive_loss": nce.detach(),
                "Train/Loss/weighted_total_contrastive_loss": self.wgt_contrastive * nce.detach(),
                "Train/Loss/gradient_loss": grad_loss.detach(),
                "Train/Loss/weighted_total_gradient_loss": self.wgt_gradient * grad_loss.detach(),
                "Train/Gradient/gradient_norm": norms.detach().mean(),
                "Train/Shaping/pos_threshold": self.tau,
                "Train/Shaping/pos_ratio": pos_ratio,
                "Train/Shaping/anchors": float(np.count_nonzero(pos.any(1) & neg.any(1)))}
        self._last = logs
        return total, logs

    def state_dict(self):
        return {"pos_threshold": self.tau, "nocs_pos_threshold": self.nocs_tau, "steps": self.steps}

    def load_state_dict(self, state, resume):
        """--resume continues with the saved threshold; a fresh fine-tune starts from
        --pos_threshold (the original never saved it, so its runs always restart from it)."""
        if resume and state and "pos_threshold" in state:
            self.tau = self.initial_tau = float(state["pos_threshold"])

    def summary(self):
        last = {k.split("/")[-1]: float(v) for k, v in self._last.items()}
        return dict(supervision=self.mode, jacobian=self.target, parameters=self.subset, jacobian_size=self.P,
                    shaping_steps=self.steps, pos_threshold_initial=self.initial_tau,
                    pos_threshold_final=self.tau,
                    mean_pos_ratio=self._pos_ratio_sum / max(1, self.steps), last=last)

    # -- pieces -------------------------------------------------------------------------------
    def jacobians(self, renderer, out, rays, channel=None):
        """[N, P] Jacobians of the 2D pixel colours or of the 3D points' colours."""
        if self.target == "2d":
            fine = out["fine"]
            pts, viewdirs = sample_points(rays, fine.z)
            return ray_jacobians(renderer, fine, pts, viewdirs, self.subset, channel, colour=out["rgb"])
        pts = self.surface_points(out, rays)[:, None, :]            # [N, 1, 3], constant
        zero_dirs = torch.zeros_like(pts[:, 0])                     # the original's zero view direction
        field = renderer.run_field(renderer.fine, pts, zero_dirs)
        colour = torch.sigmoid(field.rgb_logits[:, 0])
        fine = FineSamples(None, torch.ones_like(field.sigma_raw), field.rgb_logits, field.rgb_features,
                           field.sigma_raw)
        return ray_jacobians(renderer, fine, pts, zero_dirs, self.subset, channel, colour=colour)

    @staticmethod
    def surface_points(out, rays):
        """o + depth * d: the rendered z-depth along the renderer's unnormalised direction
        (camera-to-world rays; the original's back_project inverted the pose), detached."""
        depth = out["depth"].detach()
        return rays[:, 0:3] + depth[:, None] * rays[:, 3:6]

    def pair_masks(self, renderer, out, batch, step):
        """Host side: (pos, neg) bool [N, N] numpy arrays; updates tau (descriptor steps)."""
        frame, v, u = batch.frame.cpu(), batch.v.cpu(), batch.u.cpu()
        if self.supervision(step) == "labels":
            return label_masks(self.labels[frame, v, u].numpy(), self.pos_order)
        desc = self.store.gather(frame, v, u)                        # CPU float32 [N, D]
        points = colour = extra = None
        if self.nocs_box is not None:                                 # needs the render: one sync
            nocs = self.rendered_nocs(out, batch.rays).cpu().numpy()
            extra = (nocs @ nocs.T) > np.float32(self.nocs_tau)
        elif self.spatial is not None:                                # needs the render: one sync
            pts = self.surface_points(out, batch.rays)
            points = (renderer.pos_enc(pts) if self.spatial == "embedding" else pts).cpu().float()
        if self.concat_color:
            colour = self.rgb[frame, v, u].float()
        f = supervision_features(desc, points, colour)
        sim = (f @ f.T).numpy()
        n = sim.shape[0]
        taus, self.tau = adaptive_threshold_scan(
            sim, self.tau, int(self.ratio_lower * n), int(self.ratio_upper * n), self.tau_lower,
            self.tau_upper, adaptive=self.adaptive and not self.pos_order, extra=extra)
        return threshold_masks(sim, taus, extra, self.pos_order)

    def rendered_nocs(self, out, rays):
        """sum_s w_s nocs(p_s), nocs(p) = (p - centre) / extent (the box of `nocs_box`)."""
        fine = out["fine"]
        pts, _ = sample_points(rays, fine.z)
        centre, extent = (torch.as_tensor(t, dtype=pts.dtype, device=pts.device) for t in self.nocs_box)
        return torch.sum(fine.weights.detach()[..., None] * (pts - centre) / extent, dim=-2).float()


# ----------------------------------------------------------------------------------------------
# construction from the flags
# ----------------------------------------------------------------------------------------------
def supervision_mode(exp):
    """'features' | 'labels' | 'alternate' (the decisions are in docs/SHAPING.md)."""
    feats, labels = bool(exp.get("gt_feature_sim")), bool(exp.get("sample_semantic"))
    if exp.get("sample_alter"):
        return "alternate"
    if feats and labels:
        raise InputError("--gt_feature_sim and --sample_semantic both choose the positives; pass one, "
                         "or --sample_alter to alternate between them")
    if feats:
        return "features"
    if labels or exp.get("from_label"):
        return "labels"
    raise InputError("shaping needs a supervision for positives: --gt_feature_sim (descriptor similarity, "
                     "the paper's) or --sample_semantic / --from_label (ground-truth labels, the oracle)")


def nocs_box_from_depth(scene, stride=4, convention="opencv"):
    """(centre, extent) of the axis-aligned box of the training depth point cloud (Replica has no
    mesh bounding box; see docs/SHAPING.md)."""
    from models.rays import rays_from_pixels
    split = scene.train
    if split.depth is None:
        raise NotSupportedError("--render_nocs needs depth maps (depth/ folder) to bound the scene")
    lo, hi = None, None
    vv, uu = torch.meshgrid(torch.arange(0, scene.height, stride), torch.arange(0, scene.width, stride),
                            indexing="ij")
    vv, uu = vv.reshape(-1), uu.reshape(-1)
    for i in range(len(split)):
        rays = rays_from_pixels(split.poses[i].double(), vv.double(), uu.double(), scene.intrinsics,
                                scene.near, scene.far, convention)
        d = split.depth[i][vv, uu].double()
        ok = d > 0
        if ok.any():
            p = rays[ok, 0:3] + d[ok, None] * rays[ok, 3:6]
            lo = p.min(0).values if lo is None else torch.minimum(lo, p.min(0).values)
            hi = p.max(0).values if hi is None else torch.maximum(hi, p.max(0).values)
    if lo is None:
        raise InputError("--render_nocs: the training depth maps hold no valid depth")
    return ((lo + hi) / 2).float(), (hi - lo).clamp(min=1e-6).float()


def build_shaper(settings, scene, renderer, rng):
    """(shaper, labels, frames) for the trainer. labels: [N, H, W] int64 CPU oracle labels or
    None; frames: training frames the batcher may draw from (--from_unmasked*) or None."""
    exp = settings.exp
    if int(exp.get_num("contrastive_step")) < 1:
        raise InputError(f"--contrastive_step {exp.get('contrastive_step')}: must be at least 1")
    subset = subset_from_flags(exp)
    if subset is None:
        raise InputError("shaping needs the shaped parameters: --rgb_layer (the paper's), --density_layer, "
                         "--pts_layer, --rgb_pts_layer or --all_para")
    target = "2d" if exp.get("contrastive_2d") or not exp.get("contrastive_3d") else "3d"
    mode = supervision_mode(exp)
    uses_features, uses_labels = mode in ("features", "alternate"), mode in ("labels", "alternate")
    extras = [f for f in ("spatial", "spatial_embedding", "concat_color", "render_nocs") if exp.get(f)]
    if extras and not uses_features:
        raise InputError(f"--{extras[0]} modifies descriptor similarities; with label supervision it has "
                         "no effect (add --gt_feature_sim or --sample_alter)")
    if exp.get("render_nocs") and (exp.get("spatial") or exp.get("spatial_embedding")):
        raise InputError("--render_nocs replaces --spatial/--spatial_embedding (the original ignores them); "
                         "pass one of them")
    if uses_features and scene.train.features is None:
        what = "--sample_alter alternates descriptor and label supervision" if mode == "alternate" \
            else "--gt_feature_sim"
        raise InputError(f"{what}: it needs descriptors; add --load_dino (or --load_lseg)")

    labels, mask_ids = None, None
    unmasked = bool(exp.get("from_unmasked_only")) or (bool(exp.get("from_unmasked")) and uses_labels)
    if uses_labels or unmasked:
        from propagation.seeds import make_seeds
        seed_dir = exp.get("seed_dir") or os.path.join(exp["save_dir"], "seeds")
        seeds = make_seeds(scene.train.semantic, exp, rng, seed_dir, train_ids=scene.train.ids,
                           colour_map=scene.colour_map)
        mask_ids = np.asarray(seeds.mask_ids, dtype=bool)
        labels = torch.from_numpy(np.asarray(seeds.labels, dtype=np.int64)) if uses_labels else None
    frames = None
    if unmasked:
        frames = np.flatnonzero(mask_ids).tolist()
        if not frames:
            raise InputError("--from_unmasked: no training frame keeps labels (see --sparse_ratio/--label_map_ids)")
    nocs_box = None
    if exp.get("render_nocs"):
        nocs_box = nocs_box_from_depth(scene, convention=exp.get("convention", "opencv"))
    try:
        shaper = Shaper(exp, renderer, subset, target, mode, store=scene.train.features, labels=labels,
                        rgb=scene.train.rgb if exp.get("concat_color") else None, nocs_box=nocs_box,
                        sample_unmasked=unmasked)
    except ValueError as exc:      # e.g. --pts_layer on a network with fewer than 7 trunk layers
        raise InputError(f"--{subset}_layer: {exc}" if subset != "all_para" else str(exc)) from None
    print(f"[jnerf] shaping: {target} Jacobians of {subset} ({shaper.P} numbers), supervision {mode}, "
          f"tau {shaper.tau}{' adaptive' if shaper.adaptive else ''}", flush=True)
    return shaper, labels, frames
