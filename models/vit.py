"""DINO ViT-S/8 in plain torch, used only to compute per-patch descriptors.

The module and parameter names are those of the DINO release (`cls_token`, `pos_embed`,
`patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`), so
`dino_deitsmall8_pretrain.pth` loads with `load_state_dict` as is; timm's ViT uses the same
names. Behaviour follows the reference extractor (dino-vit-features `ViTExtractor`):
- the patch-embedding stride may be reduced (8 -> 4) for a denser grid; the grid is then
  1 + (H - 8) // stride by 1 + (W - 8) // stride;
- the 28x28 positional table is resized bicubically with *scale factors* (rows + 0.1) / 28,
  (cols + 0.1) / 28 (not with a target size: the scale enters the sampling positions, so a
  size-based resize would give slightly different values);
- a descriptor is one facet of one block with the CLS token dropped; q/k/v channels are
  ordered d * heads + head (the extractor permutes [B, heads, T, d] to [B, T, d, heads]).
"""
import argparse
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import InputError

WEIGHTS_NAME = "dino_deitsmall8_pretrain.pth"
WEIGHTS_HELP = (f"the DINO ViT-S/8 weights file {WEIGHTS_NAME} is needed; get it from the official "
                "DINO release (github.com/facebookresearch/dino, table row 'ViT-S/8', link "
                "'backbone only') and pass its path. This program never downloads it")
FACETS = ("key", "query", "value", "token")
PATCH, DIM, DEPTH, HEADS, MLP_HIDDEN, LN_EPS = 8, 384, 12, 6, 1536, 1e-6
GRID = 28  # side of the stored positional table (224 / 8)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x):
        """q, k, v, each [B, heads, T, d], laid out as DINO's reshape(B, T, 3, heads, d)."""
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, C // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x):
        q, k, v = self.split(x)
        # The fused kernel never materialises the T x T matrix: at stride 4 a 480x360 image has
        # 10,592 tokens, i.e. 2.7 GB of attention weights per image in the literal formulation.
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(x.shape))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as DINO
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.patch_size = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT-S/8 by default; `depth` is only reduced by tests about wiring."""

    def __init__(self, stride=PATCH, depth=DEPTH, dim=DIM, heads=HEADS, hidden=MLP_HIDDEN,
                 patch=PATCH, grid=GRID):
        super().__init__()
        self.patch_embed = PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.num_heads = heads
        self.set_stride(stride)

    @property
    def patch_size(self):
        return self.patch_embed.patch_size

    @property
    def stride(self):
        return self.patch_embed.proj.stride[0]

    def set_stride(self, stride):
        stride = int(stride)
        if stride < 1 or self.patch_size % stride:
            raise InputError(f"--stride {stride}: must divide the patch size {self.patch_size} "
                             "(1, 2, 4 or 8)")
        self.patch_embed.proj.stride = (stride, stride)

    def grid(self, height, width):
        """(rows, cols) of the patch grid for an input of height x width pixels."""
        if min(height, width) < self.patch_size:
            raise InputError(f"image of {height}x{width} pixels is smaller than one "
                             f"{self.patch_size}x{self.patch_size} patch")
        s = self.stride
        return 1 + (height - self.patch_size) // s, 1 + (width - self.patch_size) // s

    def positional_embedding(self, height, width):
        """[1, 1 + rows*cols, D] table for this input size, resized as the extractor does."""
        rows, cols = self.grid(height, width)
        n = self.pos_embed.shape[1] - 1
        # DINO keeps the stored table when the token count matches and the image is square,
        # whatever the stride; reproduced so that 116x116 at stride 4 gives the same numbers.
        if rows * cols == n and height == width:
            return self.pos_embed
        side = int(math.sqrt(n))
        table = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # +0.1 makes floor(side * scale) land on rows/cols despite float rounding; the scale
        # itself (not the output size) sets the sampling positions, as in the extractor.
        table = F.interpolate(table, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side),
                              mode="bicubic", align_corners=False, recompute_scale_factor=False)
        assert table.shape[-2:] == (rows, cols), (table.shape, rows, cols)
        table = table.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([self.pos_embed[:, :1], table], dim=1)

    def prepare_tokens(self, images):
        B, _, H, W = images.shape
        # The residual stream stays float32 under autocast (only the matmuls drop precision).
        x = self.patch_embed(images).float()
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        return x + self.positional_embedding(H, W)

    def forward(self, images):
        """All tokens after the final norm, [B, 1 + rows*cols, D]."""
        x = self.prepare_tokens(images)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def facet(self, images, layer=11, facet="key"):
        """Descriptors [B, rows*cols, C] of one facet of block `layer`, CLS token dropped.

        key/query/value: C = D, channel d * heads + head (the extractor's order);
        token: the block's output tokens (before the final norm), C = D.
        Blocks after `layer` are never run, and for q/k/v only LN1 + qkv of `layer` is.
        """
        if facet not in FACETS:
            raise InputError(f"--facet {facet!r}: expected one of {', '.join(FACETS)}")
        if not 0 <= layer < len(self.blocks):
            raise InputError(f"--layer {layer}: expected 0..{len(self.blocks) - 1}")
        x = self.prepare_tokens(images)
        for blk in self.blocks[:layer]:
            x = blk(x)
        blk = self.blocks[layer]
        if facet == "token":
            return blk(x)[:, 1:]
        q, k, v = blk.attn.split(blk.norm1(x))
        t = {"query": q, "key": k, "value": v}[facet][:, :, 1:]
        return t.permute(0, 2, 3, 1).flatten(2)


def log_bin(desc, grid, hierarchy=2):
    """The extractor's log-binned descriptor: [B, T, C] -> [B, T, C * (1 + 8 * hierarchy)].

    Level k averages 3^k x 3^k windows (count_include_pad=False) and samples them at the
    3x3 offsets {-3^k, 0, 3^k} around each cell (centre only at level 0), clamping positions
    that fall outside the grid to the border, i.e. replicate padding. Bins are concatenated
    level by level, offsets row-major, as the extractor's loops fill them.
    """
    B, T, C = desc.shape
    rows, cols = grid
    x = desc.transpose(1, 2).reshape(B, C, rows, cols)
    parts = []
    for k in range(hierarchy):
        size = 3 ** k
        pooled = F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)
        padded = F.pad(pooled, (size, size, size, size), mode="replicate")
        for di in (-size, 0, size):
            for dj in (-size, 0, size):
                if k and di == 0 and dj == 0:
                    continue
                parts.append(padded[:, :, size + di:size + di + rows, size + dj:size + dj + cols])
    return torch.cat(parts, dim=1).flatten(2).transpose(1, 2)


# -- weights ------------------------------------------------------------------------------------
_WRAPPERS = ("teacher", "state_dict", "model", "student")  # teacher = DINO's released backbone
_PREFIXES = ("module.", "backbone.")
_IGNORED = ("head.", "fc_norm.")  # DINO projection head / timm classifier: not the backbone


def _read(path, flag):
    if not path:
        raise InputError(f"{flag} is missing: {WEIGHTS_HELP}")
    if not os.path.isfile(path):
        raise InputError(f"{flag} {path}: file not found; {WEIGHTS_HELP}")
    # weights_only keeps an arbitrary pickle from running code; DINO's full checkpoints also
    # hold an argparse.Namespace, which is harmless and allowed explicitly.
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        if allow is not None:
            with allow([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, foreign pickle: many types
        raise InputError(f"{flag} {path}: not a readable torch weights file "
                         f"({exc.__class__.__name__}); expected {WEIGHTS_NAME}, a state dict of "
                         "tensors") from exc


def normalise_state_dict(obj, path="weights", flag="--weights"):
    """Unwrap checkpoint containers and strip DDP/backbone prefixes; drop head entries."""
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise InputError(f"{flag} {path}: holds a {type(obj).__name__}; expected a state dict "
                         f"(name -> tensor) such as {WEIGHTS_NAME}")
    out = {}
    for key, value in obj.items():
        key = str(key)
        stripped = True
        while stripped:
            stripped = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key, stripped = key[len(p):], True
        if key.startswith(_IGNORED):
            continue
        out[key] = value
    return out


def load_dino_weights(model, path, flag="--weights"):
    """Load a ViT-S/8 state dict (DINO or timm names) into `model`, checking names and shapes."""
    state = normalise_state_dict(_read(path, flag), path, flag)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise InputError(f"{flag} {path}: {len(missing)} of the {len(expected)} ViT-S/8 entries are "
                         f"missing (e.g. {', '.join(missing[:3])}); expected the DINO state dict "
                         f"of {WEIGHTS_NAME}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise InputError(f"{flag} {path}: unexpected entries {', '.join(extra[:3])}"
                         f"{' ...' if len(extra) > 3 else ''}; expected exactly a ViT-S/8 backbone "
                         f"({WEIGHTS_NAME})")
    for key, ref in expected.items():
        value = state[key]
        if not torch.is_tensor(value):
            raise InputError(f"{flag} {path}: entry {key} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            raise InputError(f"{flag} {path}: entry {key} has shape {tuple(value.shape)}, expected "
                             f"{tuple(ref.shape)} (ViT-S/8, {WEIGHTS_NAME})")
        if not value.is_floating_point():
            raise InputError(f"{flag} {path}: entry {key} has dtype {value.dtype}, expected floats")
    model.load_state_dict({k: state[k].float() for k in expected})
    return model


def dino_vits8(weights, stride=4, flag="--weights"):
    """The pretrained ViT-S/8 in eval mode (CPU, float32)."""
    model = VisionTransformer(stride=stride)
    load_dino_weights(model, weights, flag)
    return model.eval()
