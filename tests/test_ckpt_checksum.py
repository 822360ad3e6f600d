"""Checkpoints carry a checksum of their contents (models/ckpt_checksum.py), checked at load: a
damaged file is refused by name, as are empty, truncated and foreign files; checkpoints without
one (older ones, the original's) still load."""
import hashlib

import pytest
import torch

from models.checkpoints import checkpoint_data, load_checkpoint, restore_checkpoint, write_checkpoint
from models.ckpt_checksum import CHECKSUM_KEY, checksum
from models.factory import build_renderer
from tests.test_checkpoints import full_options, original_style_checkpoint
from training.objectives import nerf_parameters
from training.trainer import build_optimizer
from utils.errors import InputError


@pytest.fixture
def saved(tmp_path):
    """(path, renderer) of a checkpoint of the paper's network with one Adam step."""
    r = build_renderer(full_options(str(tmp_path)).model, torch.device("cpu"))
    opt = build_optimizer([nerf_parameters(r)], 5e-4)
    sum(p.sum() for p in r.parameters()).backward()
    opt.step()
    path = write_checkpoint(str(tmp_path / "a.ckpt"), checkpoint_data(3, r, opt, {"rng": {"numpy": [1, 2, 3]}}))
    return path, r


def test_the_digest_is_sha256_over_paths_and_contents_in_sorted_order():
    data = {"global_step": 3, "b": {"w": torch.tensor([1.0, 2.0])}, "a": [0.5, None]}
    h = hashlib.sha256()
    # the literal definition: leaves in sorted key order, a tensor as the digest of dtype|shape|bytes
    h.update(b"/str:a|[0.5, None]|")
    h.update(b"/str:b/str:w")
    h.update(hashlib.sha256(b"torch.float32|(2,)|" + torch.tensor([1.0, 2.0]).numpy().tobytes()).digest())
    h.update(b"/str:global_step|3|")
    assert checksum(data) == "sha256:" + h.hexdigest()
    assert checksum(dict(reversed(list(data.items())))) == checksum(data)          # insertion order
    assert checksum(dict(data, b={"w": torch.tensor([1.0, 2.5])})) != checksum(data)


def test_a_saved_checkpoint_carries_its_checksum_and_loads(saved):
    path, r = saved
    data = load_checkpoint(path)
    assert data[CHECKSUM_KEY] == checksum(data)
    assert torch.equal(data["network_fine_state_dict"]["rgb_linear.weight"], r.fine.rgb_linear.weight.detach())


def test_a_flipped_byte_is_refused_naming_the_file(saved, tmp_path):
    path, r = saved
    raw = bytearray(open(path, "rb").read())
    at = bytes(raw).find(r.fine.rgb_linear.weight.detach().numpy().tobytes()[:64])
    assert at > 0
    raw[at + 10] ^= 0x10                          # one bit of one weight, as a bad disk or copy does
    bad = tmp_path / "flipped.ckpt"
    bad.write_bytes(bytes(raw))
    assert not torch.equal(torch.load(bad, weights_only=True)["network_fine_state_dict"]["rgb_linear.weight"],
                           r.fine.rgb_linear.weight.detach())           # torch itself loads it silently
    with pytest.raises(InputError, match=f"{bad} is damaged: its contents do not match the checksum"):
        load_checkpoint(str(bad))


@pytest.mark.parametrize("content,needle", [
    (b"", "is empty (0 bytes)"),
    (None, "is truncated or damaged"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a PyTorch file (it starts with b'\\x89PNG"),
    (b"just some text\n", "not a PyTorch file"),
], ids=["zero-byte", "truncated", "png", "text"])
def test_empty_truncated_and_foreign_files_are_refused_by_name(saved, tmp_path, content, needle):
    path, _ = saved
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(open(path, "rb").read()[:5000] if content is None else content)
    with pytest.raises(InputError) as info:
        load_checkpoint(str(bad))
    message = str(info.value)
    assert message.startswith(f"--ckpt_path: {bad} ") and needle in message and "\n" not in message


def test_a_checkpoint_without_a_checksum_still_loads(tmp_path):
    data = original_style_checkpoint(torch.Generator().manual_seed(0))
    path = str(tmp_path / "orig.ckpt")
    torch.save(data, path)                           # the original's writer: no checksum entry
    r = build_renderer(full_options(str(tmp_path)).model, torch.device("cpu"))
    assert restore_checkpoint(path, r)["global_step"] == 7
    assert CHECKSUM_KEY not in torch.load(path, weights_only=True)


def test_a_bad_checksum_entry_is_refused(saved, tmp_path):
    path, _ = saved
    data = torch.load(path, weights_only=True)
    data[CHECKSUM_KEY] = 12
    torch.save(data, tmp_path / "entry.ckpt")
    with pytest.raises(InputError, match="is not a sha256 digest"):
        load_checkpoint(str(tmp_path / "entry.ckpt"))
