"""models/vit.py against an independent, literal ViT written here (float64, per-head loop),
an independent bicubic resize of the positional table, and the official DINO key names."""
import argparse
import math
import os

import numpy as np
import pytest
import torch

from models import vit
from utils.errors import InputError

DIM, HEADS, HD, HIDDEN, DEPTH = 384, 6, 64, 1536, 12


def official_shapes(depth=DEPTH):
    """Names and shapes of dino_deitsmall8_pretrain.pth, written out by hand."""
    shapes = {"cls_token": (1, 1, DIM), "pos_embed": (1, 785, DIM),
              "patch_embed.proj.weight": (DIM, 3, 8, 8), "patch_embed.proj.bias": (DIM,),
              "norm.weight": (DIM,), "norm.bias": (DIM,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (DIM,), b + "norm1.bias": (DIM,),
                       b + "attn.qkv.weight": (3 * DIM, DIM), b + "attn.qkv.bias": (3 * DIM,),
                       b + "attn.proj.weight": (DIM, DIM), b + "attn.proj.bias": (DIM,),
                       b + "norm2.weight": (DIM,), b + "norm2.bias": (DIM,),
                       b + "mlp.fc1.weight": (HIDDEN, DIM), b + "mlp.fc1.bias": (HIDDEN,),
                       b + "mlp.fc2.weight": (DIM, HIDDEN), b + "mlp.fc2.bias": (DIM,)})
    return shapes


def random_state(seed=0, depth=DEPTH):
    """Random weights large enough that every path (attention, MLP, norms) matters."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_shapes(depth).items():
        if "norm" in name and name.endswith("weight"):
            t = 1 + 0.2 * torch.randn(shape, generator=gen)
        elif name.endswith("weight"):
            t = 0.05 * torch.randn(shape, generator=gen)
        else:
            t = 0.1 * torch.randn(shape, generator=gen)
        state[name] = t
    state["pos_embed"] = torch.randn((1, 785, DIM), generator=gen)
    return state


@pytest.fixture(scope="module")
def state():
    return random_state(0)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, state):
    path = tmp_path_factory.mktemp("weights") / vit.WEIGHTS_NAME
    torch.save(state, path)
    return str(path)


# -- independent references ---------------------------------------------------------------------
def cubic_matrix(n_in, n_out, scale, a=-0.75):
    """[n_out, n_in] bicubic resampling (Keys, a = -0.75), half-pixel centres, source position
    (j + 0.5) / scale - 0.5, border taps clamped: what a scale-factor bicubic resize does."""
    def w(x):
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return a * (x ** 3 - 5 * x ** 2 + 8 * x - 4)
        return 0.0
    m = np.zeros((n_out, n_in))
    for j in range(n_out):
        src = (j + 0.5) / scale - 0.5
        i0 = math.floor(src)
        for i in range(i0 - 1, i0 + 3):
            m[j, min(max(i, 0), n_in - 1)] += w(src - i)
    return m


def reference_pos(pos_embed, rows, cols):
    """The extractor's resized table: scale factors (rows + 0.1) / 28 and (cols + 0.1) / 28."""
    table = pos_embed[0, 1:].double().numpy().reshape(28, 28, -1)
    mr = cubic_matrix(28, rows, (rows + 0.1) / 28)
    mc = cubic_matrix(28, cols, (cols + 0.1) / 28)
    out = np.einsum("ri,ijd,cj->rcd", mr, table, mc, optimize=True).reshape(rows * cols, -1)
    return torch.cat([pos_embed[0, :1].double(), torch.from_numpy(out)], 0)


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * w + b


def literal_facets(state, image, stride, layer, pos):
    """Straight ViT forward in float64 for one image [3, H, W]; returns all four facets of
    block `layer` (CLS dropped) with the extractor's channel order built index by index."""
    s = {k: v.double() for k, v in state.items()}
    img = image.double()
    H, W = img.shape[1:]
    rows, cols = 1 + (H - 8) // stride, 1 + (W - 8) // stride
    patches = torch.stack([img[:, r * stride:r * stride + 8, c * stride:c * stride + 8].reshape(-1)
                           for r in range(rows) for c in range(cols)])
    x = patches @ s["patch_embed.proj.weight"].reshape(DIM, -1).T + s["patch_embed.proj.bias"]
    x = torch.cat([s["cls_token"][0], x], 0) + pos
    for i in range(layer + 1):
        p = lambda n: s[f"blocks.{i}.{n}"]  # noqa: E731
        h = layer_norm(x, p("norm1.weight"), p("norm1.bias"))
        qkv = h @ p("attn.qkv.weight").T + p("attn.qkv.bias")
        q, k, v = qkv[:, :DIM], qkv[:, DIM:2 * DIM], qkv[:, 2 * DIM:]
        if i == layer:
            break
        heads = []
        for hh in range(HEADS):
            sl = slice(hh * HD, (hh + 1) * HD)
            att = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(HD), dim=-1)
            heads.append(att @ v[:, sl])
        x = x + torch.cat(heads, 1) @ p("attn.proj.weight").T + p("attn.proj.bias")
        h = layer_norm(x, p("norm2.weight"), p("norm2.bias"))
        h = h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")

    def order(t):  # out[:, d * heads + head] = t[:, head * 64 + d]
        out = torch.empty_like(t)
        for hh in range(HEADS):
            for d in range(HD):
                out[:, d * HEADS + hh] = t[:, hh * HD + d]
        return out[1:]

    # the token facet is the full block output, computed with the module-free code above
    heads = []
    for hh in range(HEADS):
        sl = slice(hh * HD, (hh + 1) * HD)
        heads.append(torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(HD), dim=-1) @ v[:, sl])
    y = x + torch.cat(heads, 1) @ p("attn.proj.weight").T + p("attn.proj.bias")
    h = layer_norm(y, p("norm2.weight"), p("norm2.bias")) @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")
    y = y + (0.5 * h * (1 + torch.erf(h / math.sqrt(2)))) @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    return dict(query=order(q), key=order(k), value=order(v), token=y[1:])


def model_from(state, stride):
    m = vit.VisionTransformer(stride=stride)
    m.load_state_dict(state)
    return m.eval()


def assert_close32(got, ref):
    """Float32 precision relative to the tensor's scale."""
    got, ref = got.double(), ref.double()
    err = (got - ref).abs().max().item()
    assert err <= 2e-5 * ref.abs().max().item() + 1e-6, (err, ref.abs().max().item())


# -- tests --------------------------------------------------------------------------------------
def test_keys_stride8_224_equal_literal_vit(state):
    torch.manual_seed(1)
    image = torch.randn(1, 3, 224, 224)
    model = model_from(state, stride=8)
    with torch.no_grad():
        keys = model.facet(image, layer=11, facet="key")
    assert keys.shape == (1, 784, DIM)
    ref = literal_facets(state, image[0], 8, 11, state["pos_embed"][0].double())
    assert_close32(keys[0], ref["key"])


def test_stride4_grid_and_positional_table(state):
    model = model_from(state, stride=4)
    H, W = 48, 64
    assert model.grid(H, W) == (1 + (H - 8) // 4, 1 + (W - 8) // 4) == (11, 15)
    with torch.no_grad():
        pos = model.positional_embedding(H, W)[0]
    assert pos.shape == (1 + 11 * 15, DIM)
    assert_close32(pos, reference_pos(state["pos_embed"], 11, 15))
    # Replica at load size 360: 480x360 -> 89 x 119
    assert model.grid(360, 480) == (89, 119)
    with torch.no_grad():
        big = model.positional_embedding(360, 480)[0]
    assert_close32(big, reference_pos(state["pos_embed"], 89, 119))
    # square input with 28x28 tokens keeps the stored table, as DINO does
    assert model.positional_embedding(116, 116) is model.pos_embed


def test_all_facets_stride4_equal_literal_vit(state):
    torch.manual_seed(2)
    image = torch.randn(1, 3, 40, 56)
    model = model_from(state, stride=4)
    rows, cols = model.grid(40, 56)
    ref = literal_facets(state, image[0], 4, 7, reference_pos(state["pos_embed"], rows, cols))
    with torch.no_grad():
        for facet in vit.FACETS:
            got = model.facet(image, layer=7, facet=facet)
            assert got.shape == (1, rows * cols, DIM)
            assert_close32(got[0], ref[facet])


def test_later_blocks_are_not_run():
    model = vit.VisionTransformer(stride=8, depth=3).eval()
    with torch.no_grad():
        for p in model.blocks[2].parameters():
            p.fill_(float("nan"))
        model.blocks[1].mlp.fc1.weight.fill_(float("nan"))  # after block 1's qkv: unused for keys
        out = model.facet(torch.randn(2, 3, 24, 32), layer=1, facet="key")
    assert out.shape == (2, 12, DIM) and torch.isfinite(out).all()


def test_log_bin_matches_literal_loops():
    gen = torch.Generator().manual_seed(3)
    rows, cols, C = 5, 7, 3
    desc = torch.randn(2, rows * cols, C, generator=gen)
    got = vit.log_bin(desc, (rows, cols))
    assert got.shape == (2, rows * cols, 17 * C)
    grid = desc.reshape(2, rows, cols, C)

    def window_mean(y, x, half):  # mean over the in-grid cells of a (2*half+1)^2 window
        return grid[:, max(0, y - half):y + half + 1, max(0, x - half):x + half + 1].mean((1, 2))

    for y in range(rows):
        for x in range(cols):
            parts = []
            for k in range(2):
                size = 3 ** k
                for i in (y - size, y, y + size):
                    for j in (x - size, x, x + size):
                        if k and i == y and j == x:
                            continue
                        ci, cj = min(max(i, 0), rows - 1), min(max(j, 0), cols - 1)
                        parts.append(window_mean(ci, cj, size // 2))
            torch.testing.assert_close(got[:, y * cols + x], torch.cat(parts, 1), rtol=1e-5, atol=1e-6)


def test_load_official_names(weights_file, state):
    model = vit.dino_vits8(weights_file, stride=4)
    assert model.stride == 4 and not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("wrap", ["teacher", "state_dict", "model", "timm"])
def test_load_wrapped_and_timm_names(tmp_path, state, wrap):
    if wrap == "teacher":  # DINO full checkpoint: teacher/student with prefixes, head, args
        obj = {"teacher": {**{"backbone." + k: v for k, v in state.items()},
                           "head.mlp.0.weight": torch.zeros(2048, DIM)},
               "student": {"module.backbone." + k: torch.zeros_like(v) for k, v in state.items()},
               "args": argparse.Namespace(arch="vit_small", patch_size=8), "epoch": 800}
    elif wrap == "timm":  # timm ViT state dict: same names plus a classifier head
        obj = {**state, "head.weight": torch.zeros(1000, DIM), "head.bias": torch.zeros(1000)}
    else:
        obj = {wrap: {"module." + k: v for k, v in state.items()}}
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    model = vit.dino_vits8(str(path))
    assert torch.equal(model.blocks[11].attn.qkv.weight, state["blocks.11.attn.qkv.weight"])


def test_bad_weight_files(tmp_path, weights_file, state):
    def error(path):
        with pytest.raises(InputError) as exc:
            vit.dino_vits8(str(path))
        assert str(path) in str(exc.value)
        return str(exc.value)

    bad = dict(state, pos_embed=torch.zeros(1, 197, DIM))  # a ViT-S/16 table
    torch.save(bad, tmp_path / "shape.pth")
    assert "pos_embed" in error(tmp_path / "shape.pth") and "(1, 785, 384)" in error(tmp_path / "shape.pth")
    missing = {k: v for k, v in state.items() if not k.startswith("blocks.11.")}
    torch.save(missing, tmp_path / "missing.pth")
    assert "missing" in error(tmp_path / "missing.pth")
    with open(weights_file, "rb") as f:
        head = f.read(os.path.getsize(weights_file) // 2)
    (tmp_path / "truncated.pth").write_bytes(head)
    assert "not a readable torch" in error(tmp_path / "truncated.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    assert "not a readable torch" in error(tmp_path / "text.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    error(tmp_path / "tensor.pth")


def test_missing_weights_say_where_to_get_them(tmp_path):
    for path in (None, str(tmp_path / "nowhere.pth")):
        with pytest.raises(InputError) as exc:
            vit.dino_vits8(path)
        msg = str(exc.value)
        assert vit.WEIGHTS_NAME in msg and "facebookresearch/dino" in msg and "--weights" in msg


def test_bad_stride_and_facet():
    with pytest.raises(InputError, match="--stride 3"):
        vit.VisionTransformer(stride=3, depth=1)
    model = vit.VisionTransformer(stride=8, depth=1)
    with pytest.raises(InputError, match="--facet"):
        model.facet(torch.zeros(1, 3, 16, 16), 0, "attn")
    with pytest.raises(InputError, match="--layer"):
        model.facet(torch.zeros(1, 3, 16, 16), 1, "key")
