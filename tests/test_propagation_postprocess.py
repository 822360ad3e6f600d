"""2D post-processing, label decisions, scoring and the small pieces of propagation, against
hand-worked values and independent references (OpenCV, utils/_reference.py)."""
import cv2
import numpy as np
import pytest
import torch
from scipy.special import softmax

from propagation.aggregator import ResponseAggregator, train_aggregator
from propagation.compare import compare_runs
from propagation.directions import DIRECTION_RULES, RuleInputs, choose_directions, closest_members, cosine_kmeans
from propagation.pixels import labelled_pixels, pixel_jacobians
from propagation.postprocess import gaussian_blur3, labels_2d, labels_3d, postprocess_2d, spatial_weights
from propagation.selection import batched_miou
from tests.tiny_models import tiny_camera, tiny_renderer
from utils._reference import segmentation_metrics
from utils.label_outputs import seed_class_confusion
from utils.options import PropagationOptions

pytestmark = pytest.mark.usefixtures("one_thread")


def hand_made_stack():
    """40 x 60 responses of three labels (module doc of the test below)."""
    r = torch.zeros(3, 40, 60, dtype=torch.float64)
    r[0, :, :30] = 0.5          # label 0: the left half ...
    r[0, 20, 50] = 9.0          # ... plus one outlier on the right, which the clip at 0.8 tames
    r[1, :, 30:] = 0.2          # label 1: the right half, weaker
    r[2, 10, 30] = 0.3          # label 2: a single-pixel blip, "not in this view"
    return r


def test_hand_made_stack_gives_hand_computed_labels():
    r = hand_made_stack()
    p = postprocess_2d(r)
    # label 0: clip -> the outlier is 0.8; blur: interior 0.5, outlier centre 0.8/4 = 0.2; max 0.5
    assert p[0, 5, 5] == pytest.approx(1.0)
    assert p[0, 20, 50] == pytest.approx(0.2 / 0.5, rel=1e-6)
    # boundary columns: 29 -> (0.25*0.5 + 0.5*0.5)/0.5 = 0.75 ; 30 -> 0.25
    assert p[0, 5, 29] == pytest.approx(0.75, rel=1e-6) and p[0, 5, 30] == pytest.approx(0.25, rel=1e-6)
    # label 1: right interior 1, column 29 -> 0.25, column 30 -> 0.75
    assert p[1, 5, 40] == pytest.approx(1.0, rel=1e-6) and p[1, 5, 29] == pytest.approx(0.25, rel=1e-6)
    # label 2: normalised blip = 1 at the centre, 1/2 and 1/4 around: mean 4/2400 < 0.01 and
    # std = sqrt(2.25/2400 - (4/2400)^2) = 0.0306 < 0.05, so the map is zeroed
    assert torch.count_nonzero(p[2]) == 0
    expect = torch.zeros(40, 60, dtype=torch.long)
    expect[:, 30:] = 1
    assert torch.equal(labels_2d(r), expect)
    # each rule matters: without the clip the outlier pixel would go to label 0; without the
    # "not in view" rule the blip (1.0 > 0.75 at column 30) would take pixel (10, 30)
    assert int(postprocess_2d(r, clip=float("inf"))[:2, 20, 50].argmax()) == 0
    assert float(p[1, 10, 30]) < 1.0 and float(p[1, 10, 30]) == pytest.approx(0.75, rel=1e-6)


def test_blur_equals_opencv_gaussian_blur():
    gen = np.random.default_rng(0)
    for shape in ((7, 9), (1, 5), (5, 1), (2, 3), (24, 32)):
        x = gen.random(shape)
        ours = gaussian_blur3(torch.from_numpy(x)).numpy()
        assert np.abs(ours - cv2.GaussianBlur(x, (3, 3), 0)).max() < 1e-12
        x32 = x.astype(np.float32)
        assert np.abs(gaussian_blur3(torch.from_numpy(x32)).numpy() - cv2.GaussianBlur(x32, (3, 3), 0)).max() < 1e-6


def test_postprocess_equals_the_original_numpy_opencv_loop():
    gen = np.random.default_rng(1)
    resp = gen.random((4, 12, 16)) ** 4 * 1.5           # some values above the clip
    resp[3] = 0.0
    resp[3, 2, 2] = 1e-3                                 # invisible label
    ref = []
    for d in resp.copy():                                # the original's per-label loop
        d[d > 0.8] = 0.8
        d = cv2.GaussianBlur(d, (3, 3), 0)
        d = d / (np.max(d) + 1e-7)
        if np.std(d) < 0.05 and np.mean(d) < 0.01:
            d = np.zeros_like(d)
        ref.append(d)
    ref = np.stack(ref, -1)
    ours = postprocess_2d(torch.from_numpy(resp)).permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).max() < 1e-12
    assert np.array_equal(labels_2d(torch.from_numpy(resp)).numpy(), np.argmax(softmax(softmax(ref, -1), -1), -1))


def test_3d_decision_and_normalisation():
    q = torch.tensor([[[1.0, 4.0]], [[2.0, 2.0]]])          # [K=2, 1, 2]
    assert labels_3d(q).tolist() == [[1, 0]]
    # per-image max: label 0 -> [0.25, 1], label 1 -> [1, 1] (ties go to the first label)
    assert labels_3d(q, normalize_2d=True).tolist() == [[1, 0]]


def test_spatial_weights_prefer_the_nearest_seed():
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    w = spatial_weights(pts, [torch.tensor([[0.1, 0, 0]]), torch.tensor([[0.9, 0, 0], [5.0, 0, 0]])])
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert w[0, 0] > 0.99 and w[1, 1] > 0.99


def test_batched_miou_equals_the_metric():
    gen = torch.Generator().manual_seed(0)
    true = torch.randint(-1, 5, (2, 9, 11), generator=gen)
    preds = torch.randint(0, 6, (4, 2, 9, 11), generator=gen)
    valid = torch.tensor([True, True, False, True, True, False])       # classes 2 and 5 not given
    ours = batched_miou(true, preds, 6, valid)
    for k in range(4):
        ref = [segmentation_metrics(true[v], preds[k, v], 6, ignore_labels=[-1, 2, 5],
                                    class_mask=valid.numpy())["miou"] for v in range(2)]
        assert float(ours[k]) == pytest.approx(float(np.mean(ref)), abs=1e-12)


def test_seed_class_confusion_equals_the_one_shot_metric():
    """The per-view accumulation of propagation (GT of non-seeded classes ignored) equals the
    pixel-by-pixel reference (utils/_reference.py) on all views at once, those classes ignored."""
    gen = torch.Generator().manual_seed(2)
    given = np.array([0, 1, 3])
    dev = seed_class_confusion(5, given, torch.device("cpu"))
    true, pred = torch.randint(-1, 5, (3, 6, 7), generator=gen), torch.randint(0, 5, (3, 6, 7), generator=gen)
    for t, p in zip(true, pred):
        dev.add(t, p)
    ref = segmentation_metrics(true.numpy(), pred.numpy(), 5, ignore_labels=[-1, 2, 4],
                               class_mask=np.isin(np.arange(5), given))
    assert np.array_equal(dev.confusion, ref["confusion_matrix"])
    m1 = dev.metrics()
    for k in ("miou", "miou_validclass", "total_accuracy", "class_average_accuracy"):
        assert m1[k] == pytest.approx(ref[k], nan_ok=True)


def test_cosine_kmeans_keeps_one_member_per_direction_cluster():
    gen = torch.Generator().manual_seed(3)
    axes = torch.eye(4)[:3] * torch.tensor([[1.0], [5.0], [0.2]])       # three directions, any length
    x = torch.cat([a + 0.01 * torch.randn(20, 4, generator=gen) * a.norm() for a in axes])
    x = x * torch.rand(60, 1, generator=gen).add(0.5)
    centres = cosine_kmeans(x, 3, np.random.default_rng(0))
    keep = closest_members(x, centres)
    assert sorted((keep // 20).tolist()) == [0, 1, 2]


def test_direction_rules_dispatch_from_the_registry():
    renderer, cams = tiny_renderer(), tiny_camera(6, 8, 0.5, 4.0)
    labels = torch.full((1, 6, 8), -1)
    labels[0, 1, 1:4] = 2                 # pixels 0, 1, 2 (row-major order)
    labels[0, 4, 5:7] = 0                 # pixels 3, 4
    pixels = labelled_pixels(labels, cams)
    assert pixels.label_ids.tolist() == [0, 2] and pixels.label_idx.tolist() == [1, 1, 1, 0, 0]
    # the original's precedence order; each rule carries its --help line
    assert list(DIRECTION_RULES) == ["adaptive_selection", "mean_gradient", "gradient_kmeans", "mean_response"]
    assert all(str(r) == r.help and r.help and callable(r.choose) for r in DIRECTION_RULES.values())

    def choose(rule, **kw):
        inp = RuleInputs(renderer, pixels, cams, labels, 3, PropagationOptions(rule=rule, **kw),
                         np.random.default_rng(0), 64)
        return choose_directions(inp)

    jac, _ = pixel_jacobians(renderer, pixels.rays)
    mg = choose("mean_gradient")
    assert mg.dirs.owner.tolist() == [0, 1] and mg.kept_pixels is None and mg.selection is None
    assert torch.allclose(mg.dirs.deltas, torch.stack([jac[3:].mean(0), jac[:3].mean(0)]), rtol=0, atol=1e-12)
    mr = choose("mean_response")
    assert mr.dirs.owner.tolist() == [0, 0, 1, 1, 1] and mr.kept_pixels is None
    assert torch.allclose(mr.dirs.deltas, jac[[3, 4, 0, 1, 2]], rtol=0, atol=1e-12)
    km = choose("gradient_kmeans", n_clusters=2)
    assert km.dirs.owner.tolist() == [0, 0, 1, 1]
    assert km.kept_pixels[0].tolist() == [3, 4] and set(km.kept_pixels[1].tolist()) < {0, 1, 2}
    ad = choose("adaptive_selection", num_comb=2, num_iters=2)
    assert ad.dirs.count == 4 and ad.dirs.owner.tolist() == [0, 0, 1, 1] and len(ad.selection["round_miou"]) == 2


def test_aggregator_has_the_original_layout_and_learns():
    net = ResponseAggregator(5)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == {"input_linear.0.0.weight": (128, 5), "input_linear.0.0.bias": (128,),
                      "input_linear.1.0.weight": (64, 128), "input_linear.1.0.bias": (64,),
                      "output_linear.weight": (5, 64), "output_linear.bias": (5,)}
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (200,), generator=gen)
    x = torch.nn.functional.one_hot((y + 1) % 3, 3).float() + 0.1 * torch.randn(2, 200, 3, generator=gen)
    y[:20] = -1                                         # ignored pixels
    model, info = train_aggregator(x, y, 3, steps=300, rng=np.random.default_rng(0), progress=False)
    pred = model(x[0]).argmax(-1)
    assert info["pixels"] == 180 and (pred[20:] == y[20:]).float().mean() > 0.95


def _agg_data(n=400, sets=3, labels=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, labels, (n,), generator=gen)
    x = torch.nn.functional.one_hot(y, labels).float() + 0.3 * torch.randn(sets, n, labels, generator=gen)
    y[:10] = -1
    return x, y


def test_aggregator_cpu_forward_is_the_module_composition():
    # the CPU keeps the eager ops (same calls as the nn modules): CPU results do not move
    net = ResponseAggregator(4)
    x = torch.randn(50, 4)
    assert torch.equal(net(x), net.output_linear(net.input_linear(x)))


@pytest.mark.parametrize("steps", [1, 2, 40])
def test_aggregator_timing_keys(steps):
    x, y = _agg_data()
    _, info = train_aggregator(x, y, 4, steps=steps, rng=np.random.default_rng(0), progress=False)
    assert {"final_loss", "steps", "seconds", "pixels", "graphed"} <= set(info) and info["graphed"] is False
    assert info["setup_seconds"] >= 0 and info["steady_seconds_per_step"] > 0
    # the setup and the steady steps (all but the first few) fit in the total
    timed = steps - min(3, steps - 1)
    assert info["setup_seconds"] + timed * info["steady_seconds_per_step"] <= info["seconds"] + 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("steps", [2, 250])
def test_aggregator_graphed_matches_eager_on_cuda(steps):
    # 250: 3 warm-up steps, two 100-step graphs, 47 eager tail steps; fused vs plain Adam: rounding only
    x, y = _agg_data()
    out = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        model, info = train_aggregator(x, y, 4, steps=steps, rng=np.random.default_rng(0), progress=False,
                                       device="cuda", graphed=graphed)
        out[graphed] = (model.state_dict(), info)
    for k, v in out[False][0].items():
        torch.testing.assert_close(out[True][0][k], v, rtol=1e-3, atol=1e-4)
    assert out[True][1]["final_loss"] == pytest.approx(out[False][1]["final_loss"], rel=1e-3)
    assert out[True][1]["graphed"] and out[True][1]["steady_seconds_per_step"] > 0


def test_compare_runs_table():
    a = dict(miou=0.25, miou_validclass=0.3, total_accuracy=0.5, class_average_accuracy=0.4,
             ious=[0.1, None, 0.4], given_classes=[0, 2], class_names=["wall (93)", "x", "chair (20)"],
             test_views=30)
    b = dict(a, miou=0.55, ious=[0.7, None, 0.4])
    table = compare_runs({"plain NeRF": a, "JacobiNeRF": b})
    lines = table.splitlines()
    assert lines[0] == "| metric (%) | plain NeRF | JacobiNeRF | difference |"
    assert "| mIoU | 25.00 | 55.00 | +30.00 |" in lines
    assert "| IoU wall (93) | 10.00 | 70.00 | +60.00 |" in lines
    assert "| IoU chair (20) | 40.00 | 40.00 | +0.00 |" in lines
    assert "30 test views per run." in table

