"""Output files written in the background (utils/background.py) are the files written in the caller:
image renders (models/render_views.py) and label maps (utils/label_outputs.py); the writer pool is
bounded and reports the first error of a job."""
import hashlib
import os
import threading
import time

import numpy as np
import pytest
import torch

from models.cameras import Cameras
from models.render_views import render_views, write_renders
from tests.tiny_models import tiny_camera, tiny_renderer
from utils.background import BackgroundWriter, HostCopy
from utils.label_outputs import ViewOutputWriter, write_view_outputs


def _digests(folder, suffix=".png"):
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(folder)) if f.endswith(suffix)}


def test_writer_runs_every_job_and_bounds_the_queue():
    live, peak, lock = [0], [0], threading.Lock()
    done = []

    def job(i):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.002)
        with lock:
            live[0] -= 1
        done.append(i)

    with BackgroundWriter(workers=2, max_pending=3) as pool:
        for i in range(20):
            pool.submit(job, i)
            assert len(pool._pending) <= 3
    assert sorted(done) == list(range(20)) and peak[0] <= 2


def test_writer_reports_the_first_job_error():
    pool = BackgroundWriter(workers=1)
    pool.submit(lambda: None)
    pool.submit(lambda: (_ for _ in ()).throw(OSError(28, "No space left on device", "x.png")))
    with pytest.raises(OSError, match="No space"):
        for _ in range(50):              # raised at a later submit (or at close)
            pool.submit(time.sleep, 0.001)
        pool.close()
    pool.abort()


def test_writer_keeps_the_body_error_and_cancels_the_rest():
    ran = []
    with pytest.raises(ValueError, match="body"):
        with BackgroundWriter(workers=1, max_pending=100) as pool:
            pool.submit(time.sleep, 0.05)
            for i in range(50):
                pool.submit(ran.append, i)
            pool.submit(lambda: (_ for _ in ()).throw(OSError("job")))
            raise ValueError("body")
    assert len(ran) < 50                 # the queued jobs were cancelled


def test_host_copy_on_the_cpu_returns_the_tensors():
    t = torch.arange(6)
    assert HostCopy([t]).get()[0] is t


def _cameras(n=3, height=6, width=8):
    one = tiny_camera(height, width)
    poses = one.poses.repeat(n, 1, 1)
    poses[:, 0, 3] += torch.linspace(0, 0.3, n, dtype=poses.dtype)
    return Cameras(poses, one.intrinsics, height, width, one.near, one.far)


def test_render_views_in_the_background_writes_the_same_files(tmp_path):
    renderer = tiny_renderer()
    cams = _cameras()
    gt = torch.rand(len(cams), cams.height, cams.width, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bg = render_views(renderer, cams, gt, str(tmp_path / "bg"), progress=False, writers=3)
    fg = render_views(renderer, cams, gt, str(tmp_path / "fg"), progress=False, writers=0)
    for k in ("rgb", "depth", "disp"):
        assert torch.equal(bg[k], fg[k])
    assert bg["psnr_per_view"] == fg["psnr_per_view"]
    files = _digests(tmp_path / "fg")
    assert len(files) == 4 * len(cams) and files == _digests(tmp_path / "bg")
    # write_renders (editing's) writes the same files again, alone or on a pool
    write_renders(str(tmp_path / "wr"), fg["rgb"], fg["depth"], fg["disp"], cams.near, cams.far)
    with BackgroundWriter(2) as pool:
        write_renders(str(tmp_path / "wp"), fg["rgb"], fg["depth"], fg["disp"], cams.near, cams.far, pool=pool)
    assert _digests(tmp_path / "wr") == files == _digests(tmp_path / "wp")
    for name in ("bg", "fg", "wr", "wp"):
        assert sorted(os.listdir(tmp_path / name)) == sorted(os.listdir(tmp_path / "fg"))


@pytest.mark.parametrize("with_gt,with_wo", [(True, True), (True, False), (False, False)])
def test_view_output_writer_equals_write_view_outputs(tmp_path, with_gt, with_wo):
    rng = np.random.default_rng(0)
    n, h, w, classes = 4, 5, 7, 6
    labels = rng.integers(0, classes, (n, h, w)).astype(np.int32)
    wo = rng.integers(0, classes, (n, h, w)).astype(np.int32)
    gt = rng.integers(-1, classes, (n, h, w)) if with_gt else None
    conf = rng.integers(0, 256, (n, h, w)).astype(np.uint8)
    colours = rng.integers(0, 256, (classes, 3)).astype(np.uint8)
    ref = tmp_path / "ref"
    write_view_outputs(str(ref), labels, gt, colours, "", write_gt=with_gt, confidence=conf)
    if with_wo:
        write_view_outputs(str(ref), wo, gt, colours, "_wo", write_gt=False)
    out = tmp_path / "out"
    with BackgroundWriter(3) as pool:
        sink = ViewOutputWriter(str(out), gt, colours, with_gt, pool)
        for i in range(n):
            sink.add(i, torch.from_numpy(labels[i]), torch.from_numpy(conf[i]),
                     torch.from_numpy(wo[i]) if with_wo else None)
        sink.finish()
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref))
    assert _digests(out) == _digests(ref) and len(_digests(ref)) >= 3 * n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
def test_background_writes_on_cuda(tmp_path):
    """On the GPU the views are copied to pinned host memory without a sync: the same files and
    tensors as writing in the caller."""
    t = torch.arange(12.0, device="cuda").reshape(3, 4)
    got = HostCopy([t, torch.ones(2)]).get()
    assert got[0].device.type == "cpu" and got[0].is_pinned() and torch.equal(got[0], t.cpu())
    renderer = tiny_renderer(dtype=torch.float32).cuda()
    cams = _cameras()
    cams = Cameras(cams.poses.float(), cams.intrinsics, cams.height, cams.width, cams.near, cams.far)
    gt = torch.rand(len(cams), cams.height, cams.width, 3, generator=torch.Generator().manual_seed(0))
    bg = render_views(renderer, cams, gt, str(tmp_path / "bg"), progress=False, writers=3)
    fg = render_views(renderer, cams, gt, str(tmp_path / "fg"), progress=False, writers=0)
    assert all(torch.equal(bg[k], fg[k]) for k in ("rgb", "depth", "disp"))
    assert _digests(tmp_path / "bg") == _digests(tmp_path / "fg")
