"""--semantic_nerf / --semantic_finetune: the Semantic-NeRF baseline, main.py's entry
`train_semantic(opts, scene, renderer, rng)` (docs/SEMANTIC_NERF.md).

It trains on exactly the seeds label propagation reads (datasets.seed_maps.seed_labels with the
same SeedOptions and random generator: --label_propagation --partial_perc, --sparse_views
--sparse_ratio, --visualise_save / --load_saved / --seed_dir), then labels the test views in 2D
and 3D (training/semantic_eval.py).

One step s (models/semantic.py for the head, the rendered logits and the loss):
    L = wgt_img (MSE_coarse + MSE_fine) + wgt_sem (CE(S_coarse) + CE(S_fine))      joint
    L = wgt_sem (CE(S_coarse) + CE(S_fine))                                           finetune
CE is the mean over the batch's labelled rays (unlabelled and void rays are ignored); Adam and
lr <- lrate * 0.1^(s / lrate_decay) for every parameter group, as the plain trainer.
- joint (Semantic-NeRF's protocol): NeRF and heads trained together, from scratch (or from the
  weights of --ckpt_path); rays from all training pixels as plain training (--no_batching etc.
  apply), so unlabelled pixels supervise colour only.
- finetune: the NeRF of --ckpt_path is frozen (requires_grad False, left out of Adam, its trunk run
  without autograd); only the heads train. With colour frozen the colour loss is a constant, so an
  unlabelled ray contributes nothing: every step draws its rays from the labelled pixels alone
  (all of them when there are at most --N_rays, else consecutive slices of a permutation), rendered
  in training mode (jittered samples and density noise, as the joint protocol).
The loop is the plain trainer's (training/trainer.py: checkpoints, divergence checks, Ctrl-C,
--keep_ckpts, the final test render with PSNR); checkpoints add the heads under
`semantic_state_dict`. --resume continues a semantic run (heads, Adam state, ray stream); without
it --ckpt_path supplies the NeRF weights only and the heads start fresh.

metrics.json of the run: mode 'semantic_nerf', protocol, wgt_sem, label_space, seeds, the
training summary (steps, seconds, test_psnr, ...) and, per readout, the summary of
semantic_2d/metrics.json and semantic_3d/metrics.json (those two are what `propagation.compare`
reads).
"""
import os
from dataclasses import replace

import numpy as np
import torch

from datasets.seed_maps import seed_labels
from models.checkpoints import checkpoint_data, load_semantic_heads, named_tensors
from models.semantic import SemanticHead, predict_labels, render_semantic_rays, semantic_loss, semantic_state
from training.batching import Batch
from training.semantic_eval import evaluate_semantic
from training.trainer import Trainer, img2mse, mse2psnr
from utils.atomic import write_json_atomic
from utils.metrics import METRIC_KEYS, to_jsonable


class LabelledRayBatcher:
    """Rays of the labelled pixels only (the finetune protocol): `labels` [N, H, W] evaluation-space
    seed maps of the training frames (-1 = unlabelled). Each `next()` gives min(n_rays, P) of the P
    labelled pixels: all of them when P <= n_rays, else consecutive slices of a permutation
    (reshuffled per epoch from (base seed, epoch), so the state is three integers)."""

    def __init__(self, cameras, rgb, labels, n_rays, device, base_seed=None):
        self.device = torch.device(device)
        self.frame, self.v, self.u = (torch.as_tensor(labels) >= 0).nonzero(as_tuple=True)
        self.count = int(self.frame.numel())
        if self.count == 0:
            raise ValueError("no labelled pixel to sample rays from")
        self.n = min(int(n_rays), self.count)
        self.cameras = replace(cameras, poses=cameras.poses.to(self.device))
        self.rgb = rgb
        self.base_seed = int(base_seed if base_seed is not None else torch.randint(0, 2**31 - 1, ()).item())
        self.epoch, self.pos, self.perm = 0, 0, None

    def _permutation(self):
        gen = torch.Generator().manual_seed(self.base_seed * 1000003 + self.epoch)
        return torch.randperm(self.count, generator=gen)

    def next(self):
        if self.n == self.count:
            idx = torch.arange(self.count)
        else:
            if self.perm is None:
                self.perm = self._permutation()
            if self.pos + self.n > self.count:
                self.epoch, self.pos = self.epoch + 1, 0
                self.perm = self._permutation()
            idx = self.perm[self.pos:self.pos + self.n]
            self.pos += self.n
        frame, v, u = self.frame[idx], self.v[idx], self.u[idx]
        dev = self.device
        rays = self.cameras.pixel_rays(frame.to(dev), v.to(dev), u.to(dev))
        rgb = self.rgb[frame, v, u].to(dev, non_blocking=True)
        return Batch(rays, rgb, frame, v, u)

    def state_dict(self):
        return {"base_seed": self.base_seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.base_seed, self.epoch, self.pos = int(state["base_seed"]), int(state["epoch"]), int(state["pos"])
        self.perm = self._permutation()


class SemanticTrainer(Trainer):
    """The plain trainer's loop with the Semantic-NeRF step (module doc).

    opts: RunOptions of mode semantic_nerf; labels: [N, H, W] evaluation-space seed maps of every
    training frame (-1 = unlabelled); num_classes: C of the label space; frames: training frames
    rays are drawn from in the 'unmasked' sampling mode (joint protocol)."""

    def __init__(self, opts, scene, renderer, labels, num_classes, frames=None, log=True):
        super().__init__(opts.train, scene, renderer, opts.save_dir, frames=frames, seed=opts.seed,
                         test_viz_factor=opts.test_viz_factor, log=log)
        self.protocol, self.wgt_sem = opts.semantic.protocol, opts.semantic.wgt_sem
        self.scaler = None    # render_semantic_rays runs float32 passes (no float16 training, no loss scale)
        dev = self.device
        self.heads = (SemanticHead(renderer.coarse.W, num_classes).to(dev),
                      SemanticHead(renderer.fine.W, num_classes).to(dev))
        self.labels = torch.as_tensor(labels).to(dev)
        head_params = [p for h in self.heads for p in h.parameters()]
        if self.protocol == "finetune":
            for p in renderer.parameters():
                p.requires_grad_(False)
            fused = all(p.is_cuda for p in head_params)
            self.optimizer = torch.optim.Adam(head_params, lr=opts.train.lrate, betas=(0.9, 0.999),
                                              fused=fused or None)
            self.batcher = LabelledRayBatcher(scene.cameras(scene.train), scene.train.rgb, labels, opts.train.n_rays,
                                              dev, base_seed=self.batcher.base_seed)
        else:
            self.optimizer.add_param_group({"params": head_params})

    # -- checkpoints: the heads under their own key ------------------------------------------
    def semantic_state(self):
        state = semantic_state(*self.heads)
        state["protocol"] = self.protocol
        return state

    def restore(self, ckpt_path, resume):
        """The NeRF (and with `resume` the optimizer, step, ray stream, random states and the heads,
        which must be there); without `resume` the heads start fresh."""
        data = super().restore(ckpt_path, resume)
        if resume:
            load_semantic_heads(ckpt_path, data, *self.heads, required=True)
        return data

    def checkpoint_data(self, step):
        """Trainer.checkpoint_data with the heads (Trainer.save writes it: finite check, atomic
        write, --keep_ckpts)."""
        return checkpoint_data(step, self.renderer, self.optimizer, self.extra_state(),
                               semantic=self.semantic_state())

    def state_tensors(self):
        yield from super().state_tensors()
        yield from named_tensors({"coarse": self.heads[0].state_dict(), "fine": self.heads[1].state_dict()},
                                 "semantic_state_dict")

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, step):
        batch = self.batcher.next()
        dev = self.device
        labels = self.labels[batch.frame.to(dev), batch.v.to(dev), batch.u.to(dev)]
        for h in self.heads:
            h.train()
        out = render_semantic_rays(self.renderer, self.heads, batch.rays, train=True)
        loss_c = img2mse(out["rgb_coarse"], batch.rgb)
        loss_f = img2mse(out["rgb"], batch.rgb)
        img_loss = loss_c + loss_f
        sem_loss = semantic_loss(out["logits_coarse"], out["logits"], labels)
        loss = self.wgt_sem * sem_loss
        if self.protocol == "joint":
            loss = loss + self.opts.wgt_img * img_loss
        self.apply_update(loss, step)
        with torch.no_grad():
            labelled = labels >= 0
            hits = (predict_labels(out["logits"].detach()) == labels) & labelled
            logs = {"Train/Loss/img_loss_coarse": loss_c.detach(), "Train/Loss/img_loss_fine": loss_f.detach(),
                    "Train/Loss/total_img_loss": img_loss.detach(), "Train/Loss/semantic_loss": sem_loss.detach(),
                    "Train/Loss/total_loss": loss.detach(),
                    "Train/Metric/psnr_coarse": mse2psnr(loss_c.detach()),
                    "Train/Metric/psnr_fine": mse2psnr(loss_f.detach()),
                    "Train/Metric/labelled_rays": labelled.sum(),
                    "Train/Metric/semantic_accuracy": hits.sum() / labelled.sum().clamp(min=1)}
        return logs, out


def label_space_size(scene, instance):
    """C: the valid classes of the label space (void excluded)."""
    return (len(scene.instance_classes) if instance else scene.num_classes) - 1


def train_semantic(opts, scene, renderer, rng):
    """Train the Semantic-NeRF baseline (opts.semantic.protocol) on the seeds of opts.seeds, evaluate
    it in 2D and 3D; returns the run's metrics dict (also <save_dir>/metrics.json)."""
    sem = opts.semantic
    instance = opts.seeds.instance
    seeds, frames, _ = seed_labels(opts.seeds, scene, rng)
    labels = torch.from_numpy(seeds.labels.astype(np.int64) - 1)
    given = np.unique(labels[labels >= 0].numpy()).astype(np.int64)
    num_classes = label_space_size(scene, instance)
    labelled = int((labels >= 0).sum())
    print(f"[semantic] Semantic-NeRF ({sem.protocol}) | seeds '{seeds.folder_name}' in {opts.seeds.seed_dir} | "
          f"labelled frame(s) {[int(scene.train.ids[f]) for f in frames]} | {labelled} labelled pixels of "
          f"{len(given)} classes | {num_classes} classes in the {'instance' if instance else 'semantic'} space | "
          f"wgt_sem {sem.wgt_sem}", flush=True)
    trainer = SemanticTrainer(opts, scene, renderer, labels, num_classes,
                              frames=frames if opts.train.batching == "unmasked" else None)
    if opts.ckpt_path:
        trainer.restore(opts.ckpt_path, opts.resume)
    result = {}
    if trainer.start > trainer.n_iters + 1:
        print(f"[semantic] checkpoint is at step {trainer.start - 1} > N_iters {trainer.n_iters}: evaluating it")
    else:
        result = trainer.fit()
        result["seconds_per_step"] = result["seconds"] / max(1, result["steps"])
    info = dict(protocol=sem.protocol, checkpoint=opts.ckpt_path, checkpoint_step=trainer.start - 1
                if not result else result["final_step"], seeds=seeds.folder_name, seed_dir=opts.seeds.seed_dir,
                labelled_frames=[int(scene.train.ids[f]) for f in frames], labelled_pixels=labelled)
    evals = evaluate_semantic(renderer, trainer.heads, scene, opts.save_dir, given, instance, opts.test_viz_factor,
                              info)
    metrics = dict(mode="semantic_nerf", protocol=sem.protocol, wgt_sem=sem.wgt_sem,
                   label_space="instance" if instance else "semantic", seeds=seeds.folder_name,
                   seed_dir=opts.seeds.seed_dir, labelled_frames=info["labelled_frames"], labelled_pixels=labelled,
                   given_classes=[int(c) for c in given], num_classes=num_classes, test_views=len(scene.test),
                   test_split="frame 0 (--training_mode)" if opts.data.training_mode else "test",
                   checkpoint=opts.ckpt_path, **result)
    for kind, m in evals.items():
        metrics[f"semantic_{kind}"] = dict({k: m[k] for k in METRIC_KEYS},
                                           metrics=os.path.join(opts.save_dir, f"semantic_{kind}", "metrics.json"))
    write_json_atomic(os.path.join(opts.save_dir, "metrics.json"), to_jsonable(metrics))
    if result:
        print(f"[semantic] {result['steps']} steps in {result['seconds']:.1f} s; test PSNR {result['test_psnr']:.2f} dB")
    return metrics
