"""SYNTHETIC "DINO-like" descriptors of the built-in rooms (see `datasets/synthetic/__init__.py`).

These are NOT produced by a DINO network. Per pixel,
    f(p) = A m + B c[class(p)] + C o[object(p)] + L(colour features of p)
with m a shared "mean" direction (unrelated things still have cosine ~0.3-0.5), c a unit vector
per class (look-alike classes, the room's `families`, share part of theirs), o a unit
vector per object and L a fixed random linear map of [2 (rgb - 0.5), cos(rgb B + phi)]. A grid
cell is the area average of f over its footprint (two strides wide, like overlapping ViT patches,
so boundaries mix) plus Gaussian noise drawn per frame and cell. 384 channels, float32.
"""
import numpy as np

DIM = 384
# Descriptor mixture (weights of unit vectors; squares are energy fractions).
DESC_MEAN, DESC_CLASS, DESC_INST, DESC_COLOUR, DESC_NOISE = 0.62, 0.66, 0.25, 0.35, 0.35
COLOUR_FEATURES = 8


def grid_shape(height, width):
    """Descriptor grid (rows, cols): about H/2.7 x W/2.7 (89 x 119 at 240 x 320)."""
    return max(1, int(np.floor(height / 2.7 + 0.5))), max(1, int(np.floor(width / 2.7 + 0.5)))


def footprint_weights(n_pix, n_cells):
    """[n_cells, n_pix] area weights: cell r covers [r s, r s + 2 s) with s = n_pix/(n_cells+1)
    (overlapping patches two strides wide that tile the image exactly); rows sum to 1."""
    s = n_pix / (n_cells + 1)
    lo = np.arange(n_cells)[:, None] * s
    px = np.arange(n_pix)[None, :]
    overlap = np.clip(np.minimum(px + 1, lo + 2 * s) - np.maximum(px, lo), 0, None)
    return overlap / overlap.sum(1, keepdims=True)


def _unit(rng, n):
    v = rng.standard_normal((n, DIM))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class DescriptorModel:
    """The fixed random vectors of the synthetic descriptor field (see the module docstring)."""

    def __init__(self, room, seed=0):
        rng = np.random.default_rng([seed, 1])
        objs = room.all_objects
        class_ids = sorted({ob.class_id for ob in objs})
        own = dict(zip(class_ids, _unit(rng, len(class_ids))))
        families = room.families
        fam = dict(zip(sorted(families), _unit(rng, len(families))))
        cvec = dict(own)
        for name, (members, share) in families.items():
            for c in members:
                v = np.sqrt(share) * fam[name] + np.sqrt(1 - share) * own[c]
                cvec[c] = v / np.linalg.norm(v)
        mean = _unit(rng, 1)[0]
        inst = _unit(rng, len(objs))
        self.obj_vectors = np.stack([DESC_MEAN * mean + DESC_CLASS * cvec[ob.class_id] + DESC_INST * inst[k]
                                     for k, ob in enumerate(objs)]).astype(np.float32)
        self.rgb_proj = rng.standard_normal((3, COLOUR_FEATURES)) * 2.0
        self.rgb_phase = rng.uniform(0, 2 * np.pi, COLOUR_FEATURES)
        # colour map: unit-norm output for a unit-norm feature vector on average
        k = 3 + COLOUR_FEATURES
        self.colour_map = (rng.standard_normal((k, DIM)) / np.sqrt(DIM * k / 2.0) * DESC_COLOUR).astype(np.float32)
        self.seed = seed

    def colour_features(self, rgb):
        flat = rgb.reshape(-1, 3).astype(np.float64)
        feats = np.concatenate([(flat - 0.5) * 2.0, np.cos(flat @ self.rgb_proj + self.rgb_phase)], 1)
        return feats.reshape(*rgb.shape[:-1], -1).astype(np.float32)

    def grid(self, obj, rgb, frame):
        """The [rows, cols, 384] descriptor grid of one frame (object map [H, W], rgb [H, W, 3])."""
        h, w = obj.shape
        rows, cols = grid_shape(h, w)
        wr, wc = footprint_weights(h, rows).astype(np.float32), footprint_weights(w, cols).astype(np.float32)
        n_obj = len(self.obj_vectors)
        per_pixel = np.concatenate([np.eye(n_obj, dtype=np.float32)[obj], self.colour_features(rgb)], -1)
        k = per_pixel.shape[-1]
        rows_avg = (wr @ per_pixel.reshape(h, w * k)).reshape(rows, w, k)        # [R, W, K]
        cells = (rows_avg.transpose(0, 2, 1) @ wc.T).transpose(0, 2, 1)          # [R, C, K]
        basis = np.concatenate([self.obj_vectors, self.colour_map], 0)
        desc = cells @ basis
        rng = np.random.default_rng([self.seed, 2, frame])
        desc += rng.standard_normal(desc.shape, dtype=np.float32) * (DESC_NOISE / np.sqrt(DIM))
        return desc.astype(np.float32)


def adaptive_threshold_run(feats, labels, steps=200, n_rays=64, tau=0.8, seed=0):
    """Run the original's per-anchor adaptive threshold on random batches of pixels.

    Returns the final tau, the mean fraction of positives per anchor and the fraction of
    positive pairs (self excluded) whose labels agree."""
    rng = np.random.default_rng([seed, 4])
    f = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-7)
    lo, hi = int(0.05 * n_rays), int(0.15 * n_rays)
    npos, agree, pairs = 0, 0, 0
    for _ in range(steps):
        idx = rng.choice(len(f), n_rays, replace=False)
        sim = f[idx] @ f[idx].T
        same = labels[idx][:, None] == labels[idx][None, :]
        for a in range(n_rays):
            pos = sim[a] > tau
            k = int(pos.sum())
            npos += k
            agree += int((pos & same[a]).sum()) - int(pos[a])
            pairs += k - int(pos[a])
            if k < lo and tau > 0.5:
                tau -= 0.001
            elif k > hi and tau < 0.9:
                tau += 0.001
    return dict(final_tau=round(tau, 3), positive_fraction=round(npos / (steps * n_rays * n_rays), 4),
                positive_label_precision=round(agree / max(pairs, 1), 4))


def descriptor_similarity(feats, classes, instances, seed=0):
    """Cosine statistics of all pixel pairs of a sample: same instance, same class (other
    instance), different class. feats [P, D]; classes and instances [P] raw ids (void = class 0)."""
    f = np.asarray(feats, np.float32)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-7)
    a, b = np.triu_indices(len(f), 1)
    cos = (f @ f.T)[a, b]
    classes, instances = np.asarray(classes), np.asarray(instances)
    same_c = classes[a] == classes[b]
    same_i = same_c & (instances[a] == instances[b])
    pct = [5, 10, 25, 50, 75, 90, 95]
    out = {}
    for name, sel in (("same_instance", same_i), ("same_class_other_instance", same_c & ~same_i),
                      ("same_class", same_c), ("different_class", ~same_c)):
        if sel.any():
            out[name] = dict(n=int(sel.sum()), frac_above_0_8=round(float((cos[sel] > 0.8).mean()), 3),
                             percentiles={p: round(float(v), 3) for p, v in zip(pct, np.percentile(cos[sel], pct))})
    out["margin_mean_same_minus_different"] = round(float(cos[same_c].mean() - cos[~same_c].mean()), 3)
    out["adaptive_threshold"] = adaptive_threshold_run(feats, classes, seed=seed)
    return out
