"""--semantic_nerf / --semantic_finetune: the Semantic-NeRF baseline, main.py's entry
`train_semantic(opts, scene, renderer, rng)` (docs/SEMANTIC_NERF.md).

It trains on exactly the seeds label propagation reads (datasets.seed_maps.seed_labels with the
same SeedOptions and random generator: --label_propagation --partial_perc, --sparse_views
--sparse_ratio, --visualise_save / --load_saved / --seed_dir), then labels the test views in 2D
and 3D (training/semantic_eval.py).

One step s (models/semantic.py for the head and the loss; the render is
Renderer.render_rays with the heads):
    L = wgt_img (MSE_coarse + MSE_fine) + wgt_sem (CE(S_coarse) + CE(S_fine))      joint
    L = wgt_sem (CE(S_coarse) + CE(S_fine))                                           finetune
CE is the mean over the batch's labelled rays (unlabelled and void rays are ignored); Adam and
lr <- lrate * 0.1^(s / lrate_decay) for every parameter group, as the plain trainer.
- joint (Semantic-NeRF's protocol): NeRF and heads trained together, from scratch (or from the
  weights of --ckpt_path); unlabelled pixels supervise colour only.
- finetune: the NeRF of --ckpt_path is frozen (requires_grad False, left out of Adam, its trunk run
  on its inference path); only the heads train (the colour loss is then a constant).
Rays (--semantic_sampler): `frame` (default, Semantic-NeRF's own trainer): one random training frame
per step and N_rays pixels of it drawn with replacement, so a step on a frame without seeds trains
colour only (joint) or nothing (finetune); `pooled`: the plain trainer's sampler (all pixels of all
frames; --no_batching etc. apply); `labelled`: the labelled pixels only (all of them when there are
at most N_rays, else consecutive slices of a permutation). Training renders as the plain trainer's
(jittered samples and density noise). --training_mode is ignored (utils/build_options.py, with a note
at start): the labels are scored on the scene's test split, the views of every other method's cell.
`SemanticObjective` is the trainer's objective (training/objectives.py): the one training step,
eager or captured as a CUDA graph, at every --precision (float16 passes with a loss scale under
mixed); the loop is the plain trainer's (checkpoints, divergence checks, Ctrl-C, --keep_ckpts, the
final test render with PSNR); checkpoints add the heads under `semantic_state_dict`. --resume
continues a semantic run (heads, Adam state, ray stream); without it --ckpt_path supplies the NeRF
weights only and the heads start fresh.

metrics.json of the run: mode 'semantic_nerf', protocol, wgt_sem, label_space, seeds, the
training summary (steps, seconds, test_psnr, ...) and, per readout, the summary of
semantic_2d/metrics.json and semantic_3d/metrics.json (those two are what `propagation.compare`
reads).
"""
import os

import numpy as np
import torch

from datasets.seed_maps import seed_labels
from models.checkpoints import load_semantic_heads, named_tensors
from models.semantic import SEMANTIC_KEY, SemanticHead, predict_labels, semantic_loss, semantic_state
from training.batching import RayBatcher
from training.objectives import PlainObjective, nerf_parameters, photometric
from training.run import fit_objective
from training.semantic_eval import evaluate_semantic
from utils.atomic import write_json_atomic
from utils.label_outputs import split_name
from utils.metrics import METRIC_KEYS, to_jsonable


class SemanticObjective(PlainObjective):
    """The Semantic-NeRF step (module doc). train: utils.options.TrainOptions; sem:
    SemanticOptions; labels: [N, H, W] evaluation-space seed maps of every training frame
    (-1 = unlabelled); num_classes: C of the label space."""

    name = "semantic_nerf"
    label = "semantic-nerf"
    label_space = None          # 'semantic' | 'instance', recorded in checkpoints when set

    def __init__(self, train, sem, renderer, labels, num_classes):
        super().__init__(train)
        self.protocol, self.wgt_sem, self.sampler_name = sem.protocol, sem.wgt_sem, sem.sampler
        self.description = f"Semantic-NeRF ({self.protocol})"
        dev = renderer.device
        self.heads = (SemanticHead(renderer.coarse.W, num_classes).to(dev),
                      SemanticHead(renderer.fine.W, num_classes).to(dev))
        self.labels_host = torch.as_tensor(labels)
        self.labels = self.labels_host.to(dev)
        if self.protocol == "finetune":
            for p in renderer.parameters():
                p.requires_grad_(False)

    def param_groups(self, renderer):
        heads = [p for h in self.heads for p in h.parameters()]
        if self.protocol == "finetune":
            return [heads]
        return [nerf_parameters(renderer, self.train_opts.fix_density), heads]

    def modules(self):
        return self.heads

    def sampler(self, cameras, rgb, device, frames=None, seed=None):
        """--semantic_sampler: frame (Semantic-NeRF's), pooled (the plain trainer's), labelled."""
        if self.sampler_name == "pooled":
            return super().sampler(cameras, rgb, device, frames, seed)
        t = self.train_opts
        if self.sampler_name == "labelled":
            return RayBatcher(cameras, rgb, t.n_rays, device, mode="pixels", base_seed=seed,
                              keep_on_cpu=t.load_on_cpu, pixels=(self.labels_host >= 0).nonzero(as_tuple=True))
        return RayBatcher(cameras, rgb, t.n_rays, device, mode="semantic_nerf", base_seed=seed,
                          keep_on_cpu=t.load_on_cpu)

    def loss(self, renderer, batch, step, ctx):
        labels = self.labels[batch.frame.to(self.labels.device), batch.v.to(self.labels.device),
                             batch.u.to(self.labels.device)]
        out = renderer.render_rays(batch.rays, train=True, heads=self.heads, capture_safe=ctx.captured)
        img_loss, logs = photometric(out, batch.rgb)
        sem_loss = semantic_loss(out["logits_coarse"], out["logits"], labels)
        loss = self.wgt_sem * sem_loss
        if self.protocol == "joint":
            loss = loss + self.train_opts.wgt_img * img_loss
        with torch.no_grad():
            labelled = labels >= 0
            hits = (predict_labels(out["logits"].detach()) == labels) & labelled
            logs.update({"Train/Loss/semantic_loss": sem_loss.detach(),
                         "Train/Metric/labelled_rays": labelled.sum(),
                         "Train/Metric/semantic_accuracy": hits.sum() / labelled.sum().clamp(min=1)})
        return loss, logs, out

    # -- checkpoints: the heads under their own key ------------------------------------------
    def checkpoint_entries(self):
        state = semantic_state(*self.heads)
        state["protocol"] = self.protocol
        if self.label_space is not None:         # what a --resume checks (training/preflight.py)
            state["label_space"] = self.label_space
        return {SEMANTIC_KEY: state}

    def restore(self, path, data, resume):
        """With `resume` the heads, which must be there; without, they start fresh."""
        if resume:
            load_semantic_heads(path, data, *self.heads, required=True)

    def state_tensors(self):
        return named_tensors({"coarse": self.heads[0].state_dict(), "fine": self.heads[1].state_dict()},
                             SEMANTIC_KEY)


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
    objective = SemanticObjective(opts.train, sem, renderer, labels, num_classes)
    objective.label_space = "instance" if instance else "semantic"
    trainer, result = fit_objective(opts, scene, renderer, objective,
                                    frames=frames if opts.train.batching == "unmasked" else None)
    if result is None:
        print(f"[semantic] checkpoint is at step {trainer.start - 1} > N_iters {trainer.n_iters}: evaluating it")
        result = {}
    info = dict(protocol=sem.protocol, checkpoint=opts.ckpt_path, checkpoint_step=trainer.start - 1
                if not result else result["final_step"], seeds=seeds.folder_name, seed_dir=opts.seeds.seed_dir,
                labelled_frames=[int(scene.train.ids[f]) for f in frames], labelled_pixels=labelled)
    evals = evaluate_semantic(renderer, objective.heads, scene, opts.save_dir, given, instance,
                              opts.test_viz_factor, info, split=split_name(opts.data.training_mode))
    metrics = dict(mode="semantic_nerf", protocol=sem.protocol, wgt_sem=sem.wgt_sem,
                   label_space="instance" if instance else "semantic", seeds=seeds.folder_name,
                   seed_dir=opts.seeds.seed_dir, labelled_frames=info["labelled_frames"], labelled_pixels=labelled,
                   given_classes=[int(c) for c in given], num_classes=num_classes, test_views=len(scene.test),
                   test_split=split_name(opts.data.training_mode), sampler=sem.sampler,
                   checkpoint=opts.ckpt_path, **result)
    for kind, m in evals.items():
        metrics[f"semantic_{kind}"] = dict({k: m[k] for k in METRIC_KEYS if k in m}, views=m["views"],
                                           metrics=os.path.join(opts.save_dir, f"semantic_{kind}", "metrics.json"))
    write_json_atomic(os.path.join(opts.save_dir, "metrics.json"), to_jsonable(metrics))
    if result:
        print(f"[semantic] {result['steps']} steps in {result['seconds']:.1f} s; test PSNR {result['test_psnr']:.2f} dB")
    return metrics
