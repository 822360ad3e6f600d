"""datasets/seeds.py: the label sparsification chain (sparse views, clicks, regions, saved seeds)
on hand-made label maps."""
import json
import os

import cv2
import numpy as np
import pytest

from datasets.seeds import (check_seeds, make_seeds, sample_label_maps, sample_specific_labels,
                               seed_classes, simulate_user_click_partial, simulate_user_clicks)
from utils.errors import InputError
from utils.options import SeedOptions


def hand_map():
    """12x16 frame: void border column, class 1 a rectangle, class 2 two separate blobs, class 3
    a single pixel, class 5 a big block (ids need not be contiguous)."""
    m = np.zeros((12, 16), np.int64)
    m[:, 1:6] = 1
    m[0:4, 7:10] = 2
    m[8:12, 13:16] = 2
    m[4:12, 6:13] = 5
    m[5, 8] = 3
    return m


def frames(n=3):
    base = hand_map()
    return np.stack([np.roll(base, i, axis=1) for i in range(n)])


def opts(seed_dir, **kw):
    """SeedOptions writing to / reading from `seed_dir`, the other fields at their defaults."""
    return SeedOptions(seed_dir=str(seed_dir), **kw)


# ----------------------------------------------------------------------------- frame sampling

@pytest.mark.parametrize("ratio,kept", [(0.2, [1, 2, 3, 4, 5, 6]),      # K=1: drop q*0 = 0
                                        (0.5, [1, 2, 4, 6]),             # K=3, (q,r)=(2,1): drop 0,3,5
                                        (0.8, [0, 4]),                   # K=5, N=2, (3,1): keep 0,4
                                        (0.995, [0])])                   # K=6, N=1: keep 0
def test_even_sampling_seven_frames(ratio, kept):
    assert np.flatnonzero(sample_label_maps(7, ratio, False, None)).tolist() == kept


def test_even_sampling_180_frames():
    m = sample_label_maps(180, 0.2, False, None)          # K=36, q=5: every 5th frame dropped
    assert m.sum() == 144 and np.flatnonzero(~m).tolist() == list(range(0, 180, 5))
    m = sample_label_maps(180, 0.5, False, None)          # K=90, q=2: even frames dropped
    assert np.flatnonzero(m).tolist() == list(range(1, 180, 2))
    m = sample_label_maps(180, 0.8, False, None)          # K=144, N=36, q=5: keep every 5th
    assert np.flatnonzero(m).tolist() == list(range(0, 180, 5))
    m = sample_label_maps(180, 0.995, False, None)        # the README value: frame 0 only
    assert np.flatnonzero(m).tolist() == [0]
    assert sample_label_maps(180, 0.0, False, None).all()


def test_random_sampling_counts_and_reproducibility():
    a = sample_label_maps(180, 0.8, True, np.random.default_rng(5))
    b = sample_label_maps(180, 0.8, True, np.random.default_rng(5))
    c = sample_label_maps(180, 0.8, True, np.random.default_rng(6))
    assert a.sum() == 36 and np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_ratios_and_frame_ids():
    with pytest.raises(InputError, match="--sparse_ratio"):
        sample_label_maps(10, 1.0, False, None)
    with pytest.raises(InputError, match="--sparse_ratio"):
        sample_label_maps(10, 1.5, False, None)
    assert np.flatnonzero(sample_specific_labels([10, 0], [0, 5, 10, 15])).tolist() == [0, 2]
    with pytest.raises(InputError, match="--label_map_ids: frame 7"):
        sample_specific_labels([7], [0, 5, 10])


# ----------------------------------------------------------------------------- clicks

def test_single_click_is_one_pixel_per_class_inside_it():
    labels = frames(3)
    mask = np.array([True, False, True])
    out = simulate_user_click_partial(labels, 0, np.random.default_rng(0), mask)
    assert out.dtype == labels.dtype and not out[1].any()
    for i in (0, 2):
        for c in (1, 2, 3, 5):
            hits = np.argwhere(out[i] == c)
            assert len(hits) == 1 and labels[i][tuple(hits[0])] == c
        assert (out[i] > 0).sum() == 4


def test_user_clicks_count_per_class():
    labels = frames(2)
    out = simulate_user_clicks(labels, 3, np.random.default_rng(1))
    for i in range(2):
        for c, n in ((1, 3), (2, 3), (3, 1), (5, 3)):          # class 3 has a single pixel
            assert (out[i] == c).sum() == n and np.all(labels[i][out[i] == c] == c)


def literal_partial(frame, perc, rng):
    """The region rule (perc > 0) on the full frame, literally (same random draws as the module)."""
    out = np.zeros_like(frame)
    for c in np.unique(frame):
        if c == 0:
            continue
        cls = frame == c
        ys, xs = np.nonzero(cls)
        j = rng.integers(len(ys))
        grown = np.zeros(frame.shape, np.uint8)
        grown[ys[j], xs[j]] = 1
        region = grown.astype(bool)
        target = int(perc / 100.0 * cls.sum())
        while region.sum() < target:
            before = region.sum()
            grown = cv2.dilate(grown, np.ones((5, 5), np.uint8))
            region = grown.astype(bool) & cls
            if region.sum() == before:
                uy, ux = np.nonzero(cls & ~region)
                k = rng.integers(len(uy))
                grown[uy[k], ux[k]] = 1
        out[region] = c
    return out


def test_partial_regions_cover_the_target_inside_the_class():
    big = np.zeros((60, 80), np.int64)
    big[5:55, 10:70] = 4                                   # a 50x60 rectangle: 3000 pixels
    big[20:30, 72:78] = 6                                  # 60 pixels
    for perc in (1, 5, 20):
        out = simulate_user_click_partial(big[None], perc, np.random.default_rng(perc))[0]
        for c, size in ((4, 3000), (6, 60)):
            region = out == c
            assert region.sum() >= max(1, int(perc / 100 * size))
            assert np.all(big[region] == c)
            ys, xs = np.nonzero(region)
            # grown from one seed in a convex class: one filled rectangle, not far over target
            assert region.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
            assert cv2.connectedComponents(region.astype(np.uint8))[0] == 2
    # sub-target classes still get their seed pixel
    out = simulate_user_click_partial(hand_map()[None], 5, np.random.default_rng(0))[0]
    assert sorted(np.unique(out).tolist()) == [0, 1, 2, 3, 5]


def test_partial_bounding_box_crop_matches_the_literal_full_frame_version():
    # class 2 is two blobs, and tiny blobs of class 7 everywhere force new seeds (stalls)
    labels = frames(2)
    labels[:, ::3, 14] = 7
    for perc in (5, 30, 60):
        out = simulate_user_click_partial(labels, perc, np.random.default_rng(11))
        rng = np.random.default_rng(11)
        ref = np.stack([literal_partial(f, perc, rng) for f in labels])
        assert np.array_equal(out, ref), perc


def test_rng_makes_clicks_reproducible():
    labels = frames(3)
    a = simulate_user_click_partial(labels, 5, np.random.default_rng(3))
    b = simulate_user_click_partial(labels, 5, np.random.default_rng(3))
    assert np.array_equal(a, b)
    a = simulate_user_clicks(labels, 2, np.random.default_rng(3))
    assert np.array_equal(a, simulate_user_clicks(labels, 2, np.random.default_rng(3)))
    assert not np.array_equal(a, simulate_user_clicks(labels, 2, np.random.default_rng(4)))


# ----------------------------------------------------------------------------- make_seeds

def test_branch_order_and_folder_names(tmp_path):
    labels = frames(7)
    d = str(tmp_path)
    s = make_seeds(labels, opts(d, sparse_views=True, sparse_ratio=0.995, label_propagation=True,
                                partial_perc=0, user_click=True), np.random.default_rng(0))
    assert s.folder_name == "partial_perc_0.0" and s.mask_ids.tolist() == [True] + [False] * 6
    assert (s.labels[0] > 0).sum() == 4 and not s.labels[1:].any()
    assert seed_classes(s).tolist() == [1, 2, 3, 5] and seed_classes(s, eval_space=True).tolist() == [0, 1, 2, 4]
    s = make_seeds(labels, opts(d, label_propagation=True, partial_perc=5), np.random.default_rng(0))
    assert s.folder_name == "partial_perc_0.05" and s.mask_ids.all()
    s = make_seeds(labels, opts(d, user_click=True, num_click=3, instance=True), np.random.default_rng(0))
    assert s.folder_name == "instance_user_click_3" and all((s.labels[i] == 1).sum() == 3 for i in range(7))
    s = make_seeds(labels, opts(d, sparse_views=True, sparse_ratio=0.5), None)
    assert s.folder_name == "sparse_views_sr0.5" and np.flatnonzero(s.mask_ids).tolist() == [1, 2, 4, 6]
    assert np.array_equal(s.labels[2], labels[2]) and not s.labels[0].any()
    s = make_seeds(labels, opts(d, sparse_views=True, label_map_ids=(10,)), None, train_ids=list(range(0, 35, 5)))
    assert np.flatnonzero(s.mask_ids).tolist() == [2] and np.array_equal(s.labels[2], labels[2])
    s = make_seeds(labels, opts(d), None)
    assert s.folder_name == "dense" and np.array_equal(s.labels, labels)
    assert os.listdir(d) == []                             # nothing written without --visualise_save


def test_save_load_round_trip_is_bit_identical(tmp_path):
    labels = frames(7)
    flags = dict(sparse_views=True, sparse_ratio=0.8, label_propagation=True, partial_perc=5, rng_seed=42)
    made = make_seeds(labels, opts(tmp_path, visualise_save=True, **flags), np.random.default_rng(42))
    folder = tmp_path / "partial_perc_0.05"
    assert sorted(os.listdir(tmp_path)) == ["partial_perc_0.05"]          # no temporary left
    assert sorted(os.listdir(folder)) == ["mask_ids.npy", "seeds.json", "semantic_class_0.png",
                                          "semantic_class_4.png", "vis_sem_class_0.png", "vis_sem_class_4.png"]
    info = json.loads((folder / "seeds.json").read_text())
    assert info["rng_seed"] == 42 and info["labelled_frames"] == [0, 4] and info["flags"]["partial_perc"] == 5
    # a different rng proves the labels come from disk
    loaded = make_seeds(labels, opts(tmp_path, load_saved=True, **flags), np.random.default_rng(0))
    assert loaded.labels.dtype == np.int64 and np.array_equal(loaded.labels, made.labels)
    assert np.array_equal(loaded.mask_ids, made.mask_ids) and loaded.info["saved_info"]["rng_seed"] == 42
    # saving again replaces the folder atomically
    make_seeds(labels, opts(tmp_path, visualise_save=True, **flags), np.random.default_rng(1))
    assert sorted(os.listdir(tmp_path)) == ["partial_perc_0.05"]


def test_random_frame_sample_is_read_back(tmp_path):
    flags = dict(sparse_views=True, sparse_ratio=0.5, random_sample=True, user_click=True, num_click=1)
    labels = frames(8)
    made = make_seeds(labels, opts(tmp_path, visualise_save=True, **flags), np.random.default_rng(9))
    for seed in range(5):
        loaded = make_seeds(labels, opts(tmp_path, load_saved=True, **flags), np.random.default_rng(seed))
        assert np.array_equal(loaded.mask_ids, made.mask_ids) and np.array_equal(loaded.labels, made.labels)


def test_load_saved_with_nothing_saved_names_the_file(tmp_path):
    o = opts(tmp_path, sparse_views=True, sparse_ratio=0.995, label_propagation=True, partial_perc=0,
             load_saved=True)
    with pytest.raises(InputError, match=r"partial_perc_0\.0.*--visualise_save"):
        make_seeds(frames(3), o, None)
    # a folder whose PNG is gone: the message names that file
    make_seeds(frames(3), opts(tmp_path, sparse_views=True, sparse_ratio=0.995, label_propagation=True,
                               visualise_save=True), None)
    os.remove(tmp_path / "partial_perc_0.0" / "semantic_class_0.png")
    with pytest.raises(InputError, match=r"semantic_class_0\.png is missing.*without --load_saved"):
        make_seeds(frames(3), o, None)
    # seeds saved for frame 0 only cannot serve a run that labels every frame
    with pytest.raises(InputError, match="training frames"):
        make_seeds(frames(3), opts(tmp_path, label_propagation=True, load_saved=True), None)


def test_checks_used_by_propagation():
    labels = frames(3)
    s = make_seeds(labels, opts("unused", sparse_views=True, sparse_ratio=0.995, label_propagation=True), None)
    assert check_seeds(s, scene_classes=[0, 1, 2, 3, 5]).tolist() == [1, 2, 3, 5]
    with pytest.raises(InputError, match=r"label ids \[5\] do not occur"):
        check_seeds(s, scene_classes=[0, 1, 2, 3])
    empty = np.zeros_like(labels)
    s = make_seeds(empty, opts("unused", sparse_views=True, sparse_ratio=0.995, label_propagation=True), None)
    with pytest.raises(InputError, match="no labelled pixel"):
        check_seeds(s)
