"""utils/image_io.py and utils/colormaps.py."""
import os

import numpy as np
import pytest
from PIL import Image

import utils.image_io as image_io
from utils.colormaps import colourise_labels, depth_to_rgb, error_map, label_colormap
from utils.errors import InputError
from utils.image_io import read_label_png, to8b, write_png, write_video

# PASCAL VOC palette, written out by hand from the bit rule (bit k of the id -> channel k % 3,
# bit position 7 - k // 3): 8 = 0b001000 -> r bit 6 = 64; 20 = 0b010100 -> g 64, b 128.
VOC = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
       5: (128, 0, 128), 6: (0, 128, 128), 7: (128, 128, 128), 8: (64, 0, 0), 9: (192, 0, 0),
       10: (64, 128, 0), 12: (64, 0, 128), 15: (192, 128, 128), 20: (0, 64, 128),
       63: (192, 192, 192), 64: (32, 0, 0), 255: (224, 224, 192)}


def test_label_colormap_is_the_voc_palette():
    cmap = label_colormap(256)
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    for i, rgb in VOC.items():
        assert tuple(cmap[i]) == rgb, i
    assert len({tuple(c) for c in cmap}) == 256
    assert np.array_equal(label_colormap(101), cmap[:101])


def test_colourise_error_and_depth():
    cmap = label_colormap(5)[1:]                       # eval label k -> colour of raw id k+1
    labels = np.array([[0, 1], [-1, 3]])
    img = colourise_labels(labels, cmap, void_colour=(9, 9, 9))
    assert img.tolist() == [[[128, 0, 0], [0, 128, 0]], [[9, 9, 9], [0, 0, 128]]]
    gt = np.array([[0, 1], [-1, 2]])
    pred = np.array([[0, 2], [1, 2]])
    assert error_map(pred, gt).tolist() == [[0, 255], [0, 0]]
    assert error_map(pred, gt, void_value=128).tolist() == [[0, 255], [128, 0]]
    d = depth_to_rgb(np.array([[0.1, 10.0], [5.05, np.nan]]), 0.1, 10.0)
    assert d.dtype == np.uint8 and d.shape == (2, 2, 3)
    assert d[0, 0].tolist() == [68, 1, 84] and d[0, 1].tolist() == [253, 231, 37]
    assert d[1, 0].tolist() == [33, 145, 140] and d[1, 1].tolist() == [0, 0, 0]


def test_png_round_trips(tmp_path):
    lab = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_png(str(tmp_path / "a.png"), lab)
    assert np.array_equal(read_label_png(str(tmp_path / "a.png")), lab)
    deep = np.array([[0, 1000], [65535, 7]], dtype=np.uint16)
    write_png(str(tmp_path / "b.png"), deep)
    back = read_label_png(str(tmp_path / "b.png"))
    assert back.dtype == np.uint16 and np.array_equal(back, deep)
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200                                  # pure red must stay red (no BGR swap)
    write_png(str(tmp_path / "c.png"), rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), rgb)
    write_png(str(tmp_path / "d.png"), np.array([[0.0, 0.5, 1.0, 2.0]]))
    assert np.asarray(Image.open(tmp_path / "d.png")).tolist() == [[0, 127, 255, 255]]
    assert to8b(np.array([-1.0, 0.999, 1.0])).tolist() == [0, 254, 255]
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png", "c.png", "d.png"]   # no temporaries


def test_read_label_png_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(InputError, match="nope.png"):
        read_label_png(missing)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png"):
        read_label_png(str(bad))
    write_png(str(tmp_path / "rgb.png"), np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="rgb.png"):
        read_label_png(str(tmp_path / "rgb.png"))


def test_video_written_or_skipped_with_one_warning(tmp_path, monkeypatch, capsys):
    frames = [np.full((16, 16, 3), 10 * i, np.uint8) for i in range(4)]
    assert write_video(str(tmp_path / "v.mp4"), frames, fps=5)
    assert (tmp_path / "v.mp4").stat().st_size > 0

    import imageio.v2 as imageio

    def no_backend(*args, **kwargs):
        raise RuntimeError("No ffmpeg backend")
    monkeypatch.setattr(imageio, "mimwrite", no_backend)
    monkeypatch.setattr(image_io, "_video_warned", False)
    assert write_video(str(tmp_path / "w.mp4"), frames) is False
    assert write_video(str(tmp_path / "x.mp4"), frames) is False
    err = capsys.readouterr().err
    assert err.count("warning: videos are skipped") == 1
    assert not [p for p in os.listdir(tmp_path) if p != "v.mp4"]


def test_to8b_maps_nan_to_zero_and_clips():
    x = np.array([np.nan, -0.5, 0.0, 0.5, 1.0, 2.0, np.inf])
    assert to8b(x).tolist() == [0, 0, 0, 127, 255, 255, 255]


@pytest.mark.parametrize("height,width", [(30, 40), (31, 41)])
def test_video_keeps_the_frame_size_without_imageio_warnings(tmp_path, capfd, caplog, height, width):
    """No rescale to a multiple of 16 (imageio's default, a warning per file): the video has the
    frames' size, an odd side padded by one repeated row / column."""
    import imageio.v2 as imageio
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (3, 3))
    frames = [np.broadcast_to(c.astype(np.uint8), (height, width, 3)).copy() for c in colours]
    frames[0][:, width // 2:] = 255                          # its right half white: the pad repeats white
    path = str(tmp_path / "v.mp4")
    assert write_video(path, frames, fps=5)
    out = capfd.readouterr()
    assert "WARNING" not in out.err + out.out and "macro_block" not in caplog.text
    reader = imageio.get_reader(path)
    back = [reader.get_data(i) for i in range(3)]
    reader.close()
    even = (height + height % 2, width + width % 2)
    assert all(f.shape == (*even, 3) for f in back)
    for f, c in zip(back[1:], colours[1:]):                  # flat frames come back flat (lossy codec)
        assert np.abs(f.astype(int) - c).max() <= 4
    assert np.abs(back[0][:, -2:].astype(int) - 255).max() <= 4
    assert np.abs(back[0][:, :width // 2 - 2].astype(int) - colours[0]).max() <= 4
    assert image_io.video_frame(frames[0]).shape == (*even, 3)
    assert np.array_equal(image_io.video_frame(frames[0])[:height, :width], frames[0])
    assert np.array_equal(image_io.video_frame(frames[0])[:, -1], image_io.video_frame(frames[0])[:, even[1] - 1])
