"""Perturbation directions per label, and the registry of direction rules.

A direction is a [3, F] matrix Delta (F = inputs of the fine `rgb_linear`) built from the
Jacobians J_p = dC_p / dW_rgb of labelled pixels p (propagation/pixels.py). With P_l the
labelled pixels of label l, the rules (`DIRECTION_RULES`, one of them is required) are:
- mean_gradient: one direction per label, (1/|P_l|) sum_{p in P_l} J_p;
- mean_response: every J_p, p in P_l, is a direction of l; their responses are averaged later;
- gradient_kmeans: cosine k-means (--n_clusters k) over {J_p : p in P_l} when |P_l| > k, keeping
  the member closest (cosine) to each centre; else every J_p;
- adaptive_selection: greedy choice of one J_p per label per round (propagation/selection.py).
--random_channel takes the Jacobian of one random colour channel (drawn per label) instead of
the channel mean.
"""
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch

from models.cameras import Cameras
from models.rendering import Renderer
from propagation.pixels import LabelledPixels, all_rays, label_channels, pixel_jacobians
from propagation.responses import Directions
from propagation.selection import adaptive_selection
from utils.options import PropagationOptions


def cosine_kmeans(x, k, rng, iters=100, tol=1e-4):
    """Cosine k-means of the rows of x [n, d] (torch); returns the centres [k, d].

    Initial centres by k-means++ on the cosine distance 1 - cos(x_i, x_j) (the first uniformly,
    each next one with probability proportional to the squared distance to the nearest chosen
    centre). Then, at most `iters` times: assign every row to the centre of highest cosine,
    move each centre to the mean of its members (an empty cluster keeps its centre), stop when
    the centres moved by at most `tol` (sum of squares). docs/PROPAGATION.md, decision 20,
    compares this with the original's fast_pytorch_kmeans."""
    n = x.shape[0]
    xn = x / x.norm(dim=1, keepdim=True).clamp(min=1e-8)
    picks = [int(rng.integers(n))]
    dist = (1.0 - xn @ xn[picks[0]]).clamp(min=0)
    for _ in range(1, k):
        p = (dist ** 2).double().cpu().numpy()
        total = p.sum()
        nxt = int(rng.choice(n, p=p / total)) if total > 0 else int(rng.integers(n))
        picks.append(nxt)
        dist = torch.minimum(dist, (1.0 - xn @ xn[nxt]).clamp(min=0))
    centres = x[torch.as_tensor(picks, device=x.device)].clone()
    for _ in range(iters):
        cn = centres / centres.norm(dim=1, keepdim=True).clamp(min=1e-8)
        assign = (xn @ cn.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        moved = float(((new - centres) ** 2).sum())
        centres = new
        if moved <= tol:
            break
    return centres


def closest_members(x, centres):
    """Index of the row of x with the highest cosine to each centre (the original's rule, +1e-8)."""
    sim = (x @ centres.T) / (x.norm(dim=1, keepdim=True) * centres.norm(dim=1)[None, :] + 1e-8)
    return sim.argmax(dim=0)


@dataclass(frozen=True)
class RuleInputs:
    """What a direction rule may use."""
    renderer: Renderer                # checkpoint loaded, evaluation mode
    pixels: LabelledPixels            # the labelled pixels (rays, labels)
    cameras: Cameras                  # the V labelled frames
    labels: torch.Tensor              # [V, H, W] evaluation labels of the labelled frames, -1 = unlabelled
    num_classes: int                  # C' (evaluation classes)
    opts: PropagationOptions
    rng: np.random.Generator
    chunk: int                        # rays per render call


class ChosenDirections(NamedTuple):
    """A rule's result."""
    dirs: Directions
    kept_pixels: Optional[dict] = None    # k-means: {label index: indices into `pixels` of the kept directions}
    selection: Optional[dict] = None      # adaptive selection: round mIoU and the responses for the aggregator


def _per_label(inp, pick):
    """Directions label by label: pick(J [P_l, 3, F], pixel indices [P_l]) -> (deltas [D_l, 3, F],
    kept pixel indices or None), the Jacobians of every label from one render pass of its pixels."""
    pixels, num_labels = inp.pixels, len(inp.pixels.label_ids)
    channels = label_channels(num_labels, inp.opts.random_channel, inp.rng)
    deltas, owners, kept = [], [], {}
    for l in range(num_labels):
        idx = pixels.of_label(l)
        jac, _ = pixel_jacobians(inp.renderer, pixels.rays[idx], inp.opts.noisy, channels[l], inp.chunk)
        d, k = pick(jac, idx)
        deltas.append(d)
        if k is not None:
            kept[l] = k
        owners.append(torch.full((d.shape[0],), l, dtype=torch.long))
    dirs = Directions(torch.cat(deltas, 0), torch.cat(owners, 0), num_labels)
    return ChosenDirections(dirs, kept_pixels=kept or None)


def mean_gradient(inp):
    """One direction per label: the mean Jacobian of its labelled pixels."""
    return _per_label(inp, lambda jac, idx: (jac.mean(0, keepdim=True), None))


def mean_response(inp):
    """Every labelled pixel's Jacobian is a direction of its label."""
    return _per_label(inp, lambda jac, idx: (jac, None))


def gradient_kmeans(inp):
    """Per label, the Jacobians closest to the centres of a cosine k-means (k = n_clusters) of
    the label's Jacobians; all of them when the label has at most k pixels."""
    k = inp.opts.n_clusters

    def pick(jac, idx):
        if k >= idx.numel():
            return jac, idx
        flat = jac.reshape(jac.shape[0], -1).to(torch.float32)
        keep = closest_members(flat, cosine_kmeans(flat, k, inp.rng))
        return jac[keep], idx[keep.cpu()]

    return _per_label(inp, pick)


def adaptive(inp):
    """propagation/selection.py's rounds on the labelled frames."""
    rays = all_rays(inp.cameras, inp.renderer.device)
    dirs, info = adaptive_selection(inp.renderer, inp.pixels, rays, inp.labels, inp.num_classes, inp.opts,
                                    inp.rng, inp.chunk)
    return ChosenDirections(dirs, selection=info)


@dataclass(frozen=True)
class DirectionRule:
    """A direction rule: its --help line and the function choosing the directions."""
    help: str
    choose: Callable[[RuleInputs], ChosenDirections]

    def __str__(self):
        return self.help          # main.py formats the rule's --help line from it


# The registry of direction rules: flag -> rule, in the original's precedence order (the first
# flag given wins). Adding a rule: its function above and an entry here.
DIRECTION_RULES = {
    "adaptive_selection": DirectionRule(
        "dense: greedy selection of one direction per label per round (--num_comb, --num_iters)", adaptive),
    "mean_gradient": DirectionRule(
        "one direction per label: the mean Jacobian of its labelled pixels (sparse clicks)", mean_gradient),
    "gradient_kmeans": DirectionRule(
        "cosine k-means over a label's Jacobians (--n_clusters); responses averaged", gradient_kmeans),
    "mean_response": DirectionRule(
        "every labelled pixel's Jacobian is a direction; responses averaged per label", mean_response),
}


def choose_directions(inp):
    """ChosenDirections of the rule `inp.opts.rule`."""
    return DIRECTION_RULES[inp.opts.rule].choose(inp)


def gradient_pixel_images(pixels, kept, num_views, height, width):
    """--visualize_gradients: {label id: uint8 image [V*H, W]} with the kept pixels at 255
    (the labelled frames stacked vertically)."""
    images = {}
    for l, idx in kept.items():
        img = np.zeros((num_views, height, width), dtype=np.uint8)
        img[pixels.view[idx].numpy(), pixels.v[idx].numpy(), pixels.u[idx].numpy()] = 255
        images[int(pixels.label_ids[l])] = img.reshape(num_views * height, width)
    return images
