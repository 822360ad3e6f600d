"""The frame cache (datasets/frame_cache.py): a cached scene equals the uncached one exactly; a warm
load decodes nothing; a stale, truncated or foreign cache file is rebuilt, never trusted; a cache
folder that cannot be written leaves the run as it was."""
import os
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import datasets.frame_cache as frame_cache
from datasets import dino_io
from datasets.replica import ReplicaLoader
from datasets.scene import _unique_ids, label_classes
from tests.tiny_scene import write_tiny_replica


def _load(root, hw=(12, 16), dino=True):
    return ReplicaLoader(str(root), *hw, load_dino=dino, feature_dtype=torch.float16, workers=3).load()


def _assert_same_scene(a, b):
    for split in ("train", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert sa.ids == sb.ids
        for name in ("rgb", "poses", "semantic", "depth", "instance"):
            x, y = getattr(sa, name), getattr(sb, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), (split, name)
    assert np.array_equal(a.semantic_classes, b.semantic_classes)
    assert np.array_equal(a.instance_classes, b.instance_classes)
    fa, fb = a.train.features, b.train.features
    assert (fa is None) == (fb is None)
    if fa is not None:
        assert fa.grids.dtype == fb.grids.dtype and torch.equal(fa.grids, fb.grids)


def _entries(cache):
    return sorted(f for d, _, files in os.walk(cache) for f in files if f.endswith(".npy"))


@pytest.fixture
def scene(tmp_path):
    root = tmp_path / "scene"
    write_tiny_replica(str(root), n_frames=11, dino_grid=(5, 7), dino_dim=384)
    return root


@pytest.mark.parametrize("hw", [(12, 16), (6, 8)])     # the stacked path; the per-frame path (resized)
def test_cached_scene_equals_uncached(scene, tmp_path, monkeypatch, hw):
    monkeypatch.setenv(frame_cache.ENV, "off")
    plain = _load(scene, hw)
    assert not os.path.exists(tmp_path / "cache")
    monkeypatch.setenv(frame_cache.ENV, str(tmp_path / "cache"))
    cold = _load(scene, hw)
    entries = _entries(tmp_path / "cache")
    # rgb, semantic, depth, instance of two splits and the descriptors
    assert len(entries) == 9 and any(e.startswith("dino-") for e in entries)
    warm = _load(scene, hw)
    _assert_same_scene(plain, cold)
    _assert_same_scene(plain, warm)
    assert _entries(tmp_path / "cache") == entries


def test_warm_load_decodes_nothing(scene, tmp_path, monkeypatch):
    monkeypatch.setenv(frame_cache.ENV, str(tmp_path / "cache"))
    first = _load(scene)

    def refuse(*args, **kwargs):
        raise AssertionError("decoded a file on a warm load")
    monkeypatch.setattr("datasets.replica.read_png", refuse)
    monkeypatch.setattr(dino_io, "load_descriptor", refuse)
    _assert_same_scene(first, _load(scene))


def test_stale_cache_is_rebuilt(scene, tmp_path, monkeypatch):
    monkeypatch.setenv(frame_cache.ENV, str(tmp_path / "cache"))
    _load(scene)
    before = _entries(tmp_path / "cache")
    # a new frame content of the same size: only the size and mtime tell
    path = scene / "rgb" / "rgb_0.png"
    old = iio.imread(path)
    iio.imwrite(path, 255 - old)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = _load(scene)
    assert torch.equal(fresh.train.rgb[0], torch.from_numpy((255 - old).astype(np.float32) / 255.0))
    after = _entries(tmp_path / "cache")
    assert len(after) == len(before)                       # the stale entry was replaced, not kept
    assert sorted(set(before) - set(after)) == [e for e in before if e.startswith("rgb-train-")]
    monkeypatch.setenv(frame_cache.ENV, "off")
    _assert_same_scene(_load(scene), fresh)


def test_moved_dataset_and_foreign_files_are_not_trusted(scene, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(frame_cache.ENV, str(cache))
    _load(scene)
    # another dataset with the same file names, sizes and times (copy2 keeps mtimes): its own key
    other = tmp_path / "other"
    shutil.copytree(scene, other)
    iio.imwrite(other / "semantic_class" / "semantic_class_0.png", np.zeros((12, 16), np.uint8))
    os.utime(other / "semantic_class" / "semantic_class_0.png",
             ns=(0, os.stat(scene / "semantic_class" / "semantic_class_0.png").st_mtime_ns))
    monkeypatch.setenv(frame_cache.ENV, "off")
    expected = _load(other)
    monkeypatch.setenv(frame_cache.ENV, str(cache))
    _assert_same_scene(_load(other), expected)
    # a truncated file and a foreign stack under the exact name of a valid entry: rebuilt
    folder = frame_cache.dataset_cache_dir(str(other))
    names = sorted(os.listdir(folder))
    rgb = os.path.join(folder, next(n for n in names if n.startswith("rgb-train-")))
    with open(rgb, "r+b") as f:
        f.truncate(200)
    sem = os.path.join(folder, next(n for n in names if n.startswith("semantic_class-test-")))
    np.save(sem, np.zeros((3, 2), np.uint8))
    _assert_same_scene(_load(other), expected)
    assert np.load(rgb).shape[0] == len(expected.train) and np.load(sem).shape[0] == len(expected.test)


def test_unwritable_cache_folder_falls_back(scene, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(frame_cache.ENV, str(blocker / "cache"))      # makedirs fails (also as root)
    monkeypatch.setattr(frame_cache, "_warned", False)
    got = _load(scene)
    assert "frame cache" in capsys.readouterr().err
    monkeypatch.setenv(frame_cache.ENV, "off")
    _assert_same_scene(_load(scene), got)


def test_frames_of_another_size_are_not_cached_and_still_refused(tmp_path, monkeypatch):
    from utils.errors import InputError
    root = tmp_path / "scene"
    write_tiny_replica(str(root), n_frames=6, instances=False)
    iio.imwrite(root / "rgb" / "rgb_5.png", np.zeros((24, 32, 3), np.uint8))
    monkeypatch.setenv(frame_cache.ENV, str(tmp_path / "cache"))
    with pytest.raises(InputError, match="rgb_5.png"):
        ReplicaLoader(str(root), 12, 16).load()


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv(frame_cache.ENV, "off")
    assert frame_cache.dataset_cache_dir("/data/room") is None
    monkeypatch.delenv(frame_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a, b = frame_cache.dataset_cache_dir("/data/room"), frame_cache.dataset_cache_dir("/other/room")
    assert a.startswith(str(tmp_path / "jnerf")) and os.path.basename(a).startswith("room-") and a != b


def test_unique_ids_equal_numpy_unique():
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16, np.int32, np.int64):
        m = rng.integers(0, 200, (7, 9)).astype(dtype)
        u = _unique_ids(m)
        assert u.dtype == np.unique(m).dtype and np.array_equal(u, np.unique(m))
    for m in (np.array([[-3, 5], [5, 2]]), np.array([[2 ** 40, 1]]), np.zeros((0,), np.int64)):
        assert np.array_equal(_unique_ids(m), np.unique(m))
    maps = [rng.integers(0, 50, (4, 4)) for _ in range(3)]
    assert np.array_equal(label_classes(maps), np.union1d([0], np.unique(np.concatenate([m.ravel() for m in maps]))))


def test_whole_split_conversions_equal_the_per_frame_conversions(scene, tmp_path, monkeypatch):
    """The stacked path (`ReplicaLoader._stacked_split`: one conversion per split) against the
    per-frame conversions of `_load_frame` (the loader's earlier and fallback path), cache off and on."""
    for cache in ("off", str(tmp_path / "cache")):
        monkeypatch.setenv(frame_cache.ENV, cache)
        fast = _load(scene)
        with monkeypatch.context() as m:
            m.setattr(ReplicaLoader, "_stacked_split", lambda self, decoded: None)
            per_frame = _load(scene)
        _assert_same_scene(fast, per_frame)
