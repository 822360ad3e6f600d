"""User labels (datasets/clicks.py): clicks files and scribbles become the Seeds the simulated clicks
make. Hand-worked examples: a 16x12 capture loaded at 8x6, so original pixel (x, y) lands on scene
pixel (floor((x + 0.5) / 2), floor((y + 0.5) / 2)); every bad entry refused by name."""
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml

from datasets.clicks import read_clicks, user_space, with_user_labels
from utils.options import UserLabelOptions
from datasets.label_space import palette_colour
from datasets.nerfstudio import NerfstudioOptions, load_nerfstudio
from datasets.registry import load_scene
from datasets.seed_maps import seed_labels
from utils.errors import InputError
from utils.options import DataOptions, SeedOptions


@pytest.fixture
def capture(tmp_path):
    """Six 16x12 frames f0..f5 without labels; split_step 2: train 0, 2, 4, test 1, 3, 5."""
    root = tmp_path / "cap"
    os.makedirs(root / "images")
    frames = []
    for k in range(6):
        iio.imwrite(root / "images" / f"f{k}.png", np.full((12, 16, 3), 20 * k, np.uint8))
        pose = np.eye(4)
        pose[0, 3] = 0.2 * k
        frames.append(dict(file_path=f"images/f{k}.png", transform_matrix=pose.tolist()))
    with open(root / "transforms.json", "w") as f:
        json.dump(dict(fl_x=8.0, fl_y=8.0, cx=8.0, cy=6.0, w=16, h=12, frames=frames), f)
    return load_nerfstudio(DataOptions(dataset_type="nerfstudio", dataset_dir=str(root), width=8, height=6,
                                       loader=NerfstudioOptions(ns_split_step=2, ns_near_far=(0.1, 5.0))))


def write(path, data):
    with open(path, "w") as f:
        if str(path).endswith(".json"):
            json.dump(data, f)
        else:
            yaml.safe_dump(data, f)
    return str(path)


CLICKS = dict(classes=[dict(name="cup", colour=[255, 0, 0]), "table"], clicks=[
    dict(frame="images/f0.png", x=3, y=5, label="cup"),        # -> frame 0, (u, v) = (1, 2)
    dict(frame="f2.png", x=15, y=11, label="table"),           # -> frame 2, (7, 5)
    dict(frame=4, x=0.9, y=0, label=2),                        # -> frame 4, (0, 0), id 2 = table
    dict(frame="f0", x=2, y=4.7, label="cup")])                # -> frame 0, (1, 2) again, same label


@pytest.mark.parametrize("ext", [".yaml", ".json"])
def test_clicks_on_a_capture_without_labels(tmp_path, capture, ext):
    path = write(tmp_path / f"my clicks{ext}", CLICKS)
    scene = with_user_labels(capture, UserLabelOptions(clicks=path))
    assert list(scene.semantic_classes) == [0, 1, 2] and scene.class_names == {1: "cup", 2: "table"}
    assert scene.colour_map.tolist() == [[0, 0, 0], [255, 0, 0], list(palette_colour(2))]
    expect = np.zeros((3, 6, 8), np.int64)
    expect[0, 2, 1] = 1
    expect[1, 5, 7] = 2
    expect[2, 0, 0] = 2
    seeds = scene.seeds
    assert np.array_equal(seeds.labels, expect) and seeds.mask_ids.tolist() == [True, True, True]
    assert seeds.folder_name == "clicks_my clicks"
    # the seed store of propagation and the baseline: evaluation labels of the labelled frames
    got, frames, ev = seed_labels(SeedOptions(seed_dir=str(tmp_path / "seeds"), visualise_save=True), scene,
                                  np.random.default_rng(0))
    assert got is seeds and frames.tolist() == [0, 1, 2] and torch.equal(ev, torch.from_numpy(expect - 1))
    saved = iio.imread(tmp_path / "seeds" / seeds.folder_name / "semantic_class_1.png")
    assert saved[5, 7] == 2 and saved.sum() == 2
    with pytest.raises(InputError, match="--test_instance: clicks"):
        seed_labels(SeedOptions(seed_dir=str(tmp_path), instance=True), scene, None)


def test_only_some_frames_clicked_and_classes_from_first_use(tmp_path, capture):
    path = write(tmp_path / "c.yaml", [dict(frame=2, x=0, y=0, label="sky"), dict(frame=2, x=4, y=0, label="tree"),
                                       dict(frame=2, x=8, y=0, label="sky")])
    scene = with_user_labels(capture, UserLabelOptions(clicks=path))
    assert scene.class_names == {1: "sky", 2: "tree"}
    assert scene.seeds.mask_ids.tolist() == [False, True, False]
    assert scene.seeds.labels[1, 0].tolist() == [1, 0, 2, 0, 1, 0, 0, 0]


@pytest.mark.parametrize("clicks, match", [
    ([], "no clicks"),
    ([dict(frame="images/nope.png", x=1, y=1, label="cup")], r"click 0 \(frame='images/nope.png'.*unknown frame"),
    ([dict(frame=9, x=1, y=1, label="cup")], r"click 0 .*no frame 9 \(frame ids run 0..5\)"),
    ([dict(frame=1, x=1, y=1, label="cup")], r"click 0 .*frame 1 is not a training frame.*ids 0, 2, 4"),
    ([dict(frame=0, x=16, y=1, label="cup")], r"click 0 .*x=16.0.*outside the 16x12 image images/f0.png"),
    ([dict(frame=0, x=1, y=-1, label="cup")], r"outside the 16x12 image"),
    ([dict(frame=0, x=1, y=1, label="mug")], r"click 0 .*unknown class name 'mug' \(known: cup, table\)"),
    ([dict(frame=0, x=1, y=1, label=7)], r"unknown class id 7 \(known ids: 1, 2\)"),
    ([dict(frame=0, x=2, y=2, label="cup"), dict(frame=0, x=3, y=3, label="table")],
     r"click 1 \(frame=0, x=3.0, y=3.0, label='table'\): conflicts with click 0 \(frame=0, x=2.0"
     r".*scene pixel \(u=1, v=1\)"),
    ([dict(frame=0, x=2, label="cup")], r"click 0 .*missing 'y'"),
    ([dict(frame=0, x="a", y=1, label="cup")], r"x 'a': expected a pixel coordinate"),
    ([dict(frame=0, x=1, y=1, label="cup", z=3)], r"unknown key\(s\) \['z'\]"),
])
def test_bad_clicks_refused_by_entry(tmp_path, capture, clicks, match):
    path = write(tmp_path / "bad.yaml", dict(classes=["cup", "table"], clicks=clicks))
    with pytest.raises(InputError, match=match) as exc:
        with_user_labels(capture, UserLabelOptions(clicks=path))
    assert str(exc.value).startswith(path) and "\n" not in str(exc.value)


def test_bad_files_and_class_lists(tmp_path, capture):
    with pytest.raises(InputError, match="clicks file missing"):
        read_clicks(str(tmp_path / "absent.yaml"))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(InputError, match="broken.json: not readable JSON"):
        read_clicks(str(tmp_path / "broken.json"))
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(InputError, match="empty.yaml: no clicks"):
        read_clicks(str(tmp_path / "empty.yaml"))
    bad = write(tmp_path / "ids.yaml", dict(classes=[dict(name="a", id=3), "b"], clicks=[dict(frame=0, x=0, y=0,
                                                                                               label="a")]))
    with pytest.raises(InputError, match=r"classes\[1\] 'b' has no id while others have"):
        read_clicks(bad)
    mixed = write(tmp_path / "mixed.yaml", [dict(frame=0, x=0, y=0, label="a"), dict(frame=0, x=4, y=0, label=3)])
    with pytest.raises(InputError, match="mix class names and ids"):
        with_user_labels(capture, UserLabelOptions(clicks=mixed))
    colour = write(tmp_path / "colour.yaml", dict(classes=[dict(name="a", colour=[1, 2])], clicks=[]))
    with pytest.raises(InputError, match=r"colour \[1, 2\]"):
        read_clicks(colour)


def test_clicks_on_a_labelled_scene_use_its_raw_ids(tmp_path, tiny_replica):
    root, info = tiny_replica                        # classes 0, 7, 31, 93; 16x12 frames, train 0, 5, 10
    scene = load_scene(DataOptions(dataset_type="replica", dataset_dir=str(root), width=16, height=12))
    path = write(tmp_path / "c.yaml", dict(classes=[dict(name="wall", id=93), dict(name="ceiling", id=31)],
                                           clicks=[dict(frame="rgb_5.png", x=4, y=3, label="wall"),
                                                   dict(frame=10, x=0, y=0, label=7)]))
    out = with_user_labels(scene, UserLabelOptions(clicks=path))
    assert list(out.semantic_classes) == [0, 7, 31, 93] and out.train.semantic is scene.train.semantic
    assert out.seeds.labels[1, 3, 4] == 3 and out.seeds.labels[2, 0, 0] == 1
    assert out.seeds.mask_ids.tolist() == [False, True, True]
    seeds, frames, ev = seed_labels(SeedOptions(seed_dir=str(tmp_path / "s")), out, None)
    assert frames.tolist() == [1, 2] and int(ev[0, 3, 4]) == 2
    absent = write(tmp_path / "absent.yaml", dict(classes=[dict(name="bed", id=5)],
                                                  clicks=[dict(frame=0, x=0, y=0, label="bed")]))
    with pytest.raises(InputError, match=r"class 'bed' \(id 5\) does not occur in this scene"):
        with_user_labels(scene, UserLabelOptions(clicks=absent))
    unnamed = write(tmp_path / "unnamed.yaml", dict(classes=["bed"], clicks=[dict(frame=0, x=0, y=0, label="bed")]))
    with pytest.raises(InputError, match="'bed' is not a class of this scene"):
        with_user_labels(scene, UserLabelOptions(clicks=unnamed))


def test_scribbles_majority_per_scene_pixel_and_merge_with_clicks(tmp_path, capture):
    folder = tmp_path / "scrib"
    os.makedirs(folder)
    img = np.zeros((12, 16), np.uint8)
    img[2:4, 4:6] = 1                     # four pixels -> scene pixel (2, 1)
    img[0, 8], img[0, 9], img[1, 9] = 1, 2, 2          # -> (4, 0): 2 wins 2:1
    img[0, 12], img[0, 13] = 2, 1          # -> (6, 0): a tie, the smaller id 1
    iio.imwrite(folder / "f2.png", img)
    write(folder / "classes.yaml", dict(classes=["road", "car"]))
    scene = with_user_labels(capture, UserLabelOptions(scribbles=str(folder)))
    assert scene.class_names == {1: "road", 2: "car"} and scene.seeds.folder_name == "scribbles"
    expect = np.zeros((3, 6, 8), np.int64)
    expect[1, 1, 2], expect[1, 0, 4], expect[1, 0, 6] = 1, 2, 1
    assert np.array_equal(scene.seeds.labels, expect) and scene.seeds.mask_ids.tolist() == [False, True, False]
    # with clicks: merged; a click that disagrees with a scribbled pixel is refused
    ok = write(tmp_path / "ok.yaml", [dict(frame=0, x=0, y=0, label="car")])
    both = with_user_labels(capture, UserLabelOptions(clicks=ok, scribbles=str(folder)))
    assert both.seeds.labels[0, 0, 0] == 2 and both.seeds.labels[1, 1, 2] == 1
    clash = write(tmp_path / "clash.yaml", [dict(frame=2, x=4, y=2, label="car")])
    with pytest.raises(InputError, match=r"click 0 .*disagrees with the scribble on that pixel \(road\)"):
        with_user_labels(capture, UserLabelOptions(clicks=clash, scribbles=str(folder)))


def test_bad_scribbles(tmp_path, capture):
    folder = tmp_path / "s"
    os.makedirs(folder)
    with pytest.raises(InputError, match="no .png files"):
        with_user_labels(capture, UserLabelOptions(scribbles=str(folder)))
    iio.imwrite(folder / "f1.png", np.ones((12, 16), np.uint8))
    with pytest.raises(InputError, match=r"f1.png: frame 1 is not a training frame"):
        with_user_labels(capture, UserLabelOptions(scribbles=str(folder)))
    os.remove(folder / "f1.png")
    iio.imwrite(folder / "f0.png", np.ones((6, 8), np.uint8))
    with pytest.raises(InputError, match=r"f0.png is 8x6; its frame images/f0.png is 16x12"):
        with_user_labels(capture, UserLabelOptions(scribbles=str(folder)))
    iio.imwrite(folder / "f0.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(InputError, match="no painted pixel"):
        with_user_labels(capture, UserLabelOptions(scribbles=str(folder)))
    img = np.zeros((12, 16), np.uint8)
    img[3, 5] = 9
    iio.imwrite(folder / "f0.png", img)
    write(folder / "classes.yaml", dict(classes=["a"]))
    with pytest.raises(InputError, match=r"f0.png: class id 9 at pixel \(x=5, y=3\) is not a known class"):
        with_user_labels(capture, UserLabelOptions(scribbles=str(folder)))
    iio.imwrite(folder / "f0.png", (img > 0).astype(np.uint8))
    iio.imwrite(folder / "zz.png", img)
    with pytest.raises(InputError, match="zz.png: unknown frame 'zz'"):
        with_user_labels(capture, UserLabelOptions(scribbles=str(folder)))


def test_user_space_of_integer_labels(capture):
    space, names = user_space(capture, None, [4, 9, 4], "f")
    assert list(space.ids) == [0, 4, 9] and space.names == {4: "4", 9: "9"} and space.index(9) == 2
