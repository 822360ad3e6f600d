"""The Replica loader on small folders written by the tests."""
import os

import numpy as np
import pytest
import torch

from datasets import dino_io
from datasets.replica import ReplicaLoader
from datasets.scene import replica_split_ids
from tests.tiny_scene import write_tiny_replica


def test_split_generalises_the_original():
    train, test = replica_split_ids(900)
    assert train[:3] == [0, 5, 10] and len(train) == 180 and test[:3] == [2, 7, 12] and test[-1] == 897
    train, test = replica_split_ids(23)
    assert train == [0, 5, 10, 15, 20] and test == [2, 7, 12, 17, 22]
    train, test = replica_split_ids(21)
    assert train == [0, 5, 10, 15, 20] and test == [2, 7, 12, 17]
    assert replica_split_ids(900, training_mode=True)[1] == [0]


def test_loads_frames_in_numeric_order_with_sparse_class_ids(tmp_path):
    info = write_tiny_replica(str(tmp_path), n_frames=23, classes=(0, 7, 31, 93), instances=False)
    scene = ReplicaLoader(str(tmp_path), 12, 16).load()
    assert scene.train.ids == [0, 5, 10, 15, 20] and scene.test.ids == [2, 7, 12, 17, 22]
    # frame 10 is the third training frame even though "rgb_10" sorts before "rgb_2" as a string
    assert np.allclose(scene.train.rgb[2].numpy(), info["rgb"][10] / 255.0, atol=1e-7)
    assert np.allclose(scene.train.poses[2].numpy(), info["poses"][10], atol=1e-6)
    assert list(scene.semantic_classes) == [0, 7, 31, 93]
    raw = info["sem"][10]
    lut = {0: 0, 7: 1, 31: 2, 93: 3}
    assert np.array_equal(scene.train.semantic[2].numpy(), np.vectorize(lut.get)(raw))
    assert torch.equal(scene.eval_labels(scene.train), scene.train.semantic - 1)
    assert scene.train.instance is None and scene.test.instance is None
    assert scene.intrinsics.fx == 8.0 and scene.intrinsics.cx == 7.5 and scene.intrinsics.cy == 5.5


def test_void_id_is_kept_first_even_if_absent(tmp_path):
    write_tiny_replica(str(tmp_path), n_frames=6, classes=(4, 9))
    scene = ReplicaLoader(str(tmp_path), 12, 16).load()
    assert list(scene.semantic_classes) == [0, 4, 9]
    assert int(scene.train.semantic.min()) == 1   # no pixel is void


def test_resizing_follows_opencv_rules(tmp_path):
    info = write_tiny_replica(str(tmp_path), n_frames=3, height=24, width=32)
    scene = ReplicaLoader(str(tmp_path), 12, 16, training_mode=True).load()
    rgb = info["rgb"][0].astype(np.float64) / 255.0
    box = 0.25 * (rgb[0::2, 0::2] + rgb[1::2, 0::2] + rgb[0::2, 1::2] + rgb[1::2, 1::2])
    assert np.allclose(scene.train.rgb[0].numpy(), box, atol=1e-6)     # INTER_LINEAR at 1/2 = 2x2 mean
    sem = info["sem"][0][0::2, 0::2]                                  # INTER_NEAREST takes even pixels
    assert np.array_equal(scene.semantic_classes[scene.train.semantic[0].numpy()], sem)
    assert scene.test.ids == [0]
    assert scene.intrinsics.fx == 8.0                                 # from the configured size


def test_instances_are_remapped_when_present(tmp_path):
    write_tiny_replica(str(tmp_path), n_frames=6, classes=(0, 5, 6), instances=True)
    scene = ReplicaLoader(str(tmp_path), 12, 16).load()
    assert list(scene.instance_classes) == [0, 15, 18]
    assert torch.equal(scene.train.instance, scene.train.semantic)


@pytest.mark.parametrize("sidecar", [True, False])
def test_descriptors_of_another_grid_shape(tmp_path, sidecar):
    write_tiny_replica(str(tmp_path), n_frames=11, dino_grid=(5, 7), dino_dim=384, sidecar=sidecar)
    scene = ReplicaLoader(str(tmp_path), 12, 16, load_dino=True, feature_dtype=torch.float32).load()
    store = scene.train.features
    assert len(store) == 3 and store.dim == 384
    raw = torch.load(os.path.join(tmp_path, "dino", "dino_5.pth"))[0, 0].reshape(5, 7, 384)
    full = store.full(1)
    assert full.shape == (12, 16, 384)
    # independent INTER_AREA enlargement: per axis, nearest with a one-pixel blend at block edges
    def area_axis(n_in, n_out):
        s = n_in / n_out
        m = np.zeros((n_out, n_in))
        for j in range(n_out):
            i0 = int(np.floor(j * s))
            f = (j + 1) - (i0 + 1) / s
            f = 0.0 if f <= 0 else f - np.floor(f)
            m[j, min(i0, n_in - 1)] += 1 - f
            m[j, min(i0 + 1, n_in - 1)] += f
        return m
    expected = np.einsum("ar,bc,rcd->abd", area_axis(5, 12), area_axis(7, 16), raw.double().numpy())
    assert np.allclose(full.numpy(), expected, atol=1e-5)
    v, u = torch.tensor([0, 7, 11]), torch.tensor([15, 3, 0])
    got = store.gather(torch.tensor([1, 1, 1]), v, u)
    assert torch.allclose(got, full[v, u], atol=1e-6)


def test_area_rule_matches_opencv_when_available():
    cv2 = pytest.importorskip("cv2")
    grid = torch.rand(9, 11, 3)
    ours = dino_io.upsample_area(grid, (24, 32)).numpy()
    ref = cv2.resize(grid.numpy(), (32, 24), interpolation=cv2.INTER_AREA)
    assert np.allclose(ours, ref, atol=1e-5)


def test_descriptors_as_float16_store_and_pca(tmp_path):
    write_tiny_replica(str(tmp_path), n_frames=6, dino_grid=(5, 7))
    scene = ReplicaLoader(str(tmp_path), 12, 16, load_dino=True, feature_dim=16).load()
    store = scene.train.features
    assert store.grids.dtype == torch.float16 and store.dim == 16
    flat = store.grids.float().reshape(-1, 16)
    # one shared basis: components are uncorrelated with decreasing variance
    cov = torch.cov(flat.T)
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 0.05 * cov.diag().max()
    assert torch.all(cov.diag()[:-1] >= cov.diag()[1:] - 1e-3)
