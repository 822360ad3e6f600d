"""The fused Triton MLP (models.fused_mlp) against the layered float16 engine, the network alone:
the paper's 8 x 256 NeRF (random weights) on a fine pass's worth of points per call.

    python bench/fused_mlp.py                     # CUDA only

Rows: the layered half engine (cuBLASLt GEMMs with bias+ReLU epilogues, models.nerf._trunk_padded
+ _composed_head) and the kernel for each launch configuration (points per program, warps,
pipeline stages), colour + density (+ the rgb_linear input with features) and density only; each
the median of CUDA-event timings after a warm-up; max |diff| against the slow twin
(models._reference.fused_mlp_field); TFLOP/s of the network's multiply-adds (what a view needs).
Each launch configuration runs in a child process with CUDA_LAUNCH_BLOCKING=1 (`--one`): a
configuration that faults (an illegal address ends the CUDA context) is reported as a row and the
others still run.
"""
import argparse
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models import fused_mlp  # noqa: E402
from models._reference import fused_mlp_field  # noqa: E402
from models.encoding import build_encoders  # noqa: E402
from models.engine import Engine  # noqa: E402
from models.nerf import NeRF  # noqa: E402
from utils.precision import PRECISIONS  # noqa: E402


def median_ms(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=1 << 20, help="points per call (the config's netchunk)")
    p.add_argument("--samples", type=int, default=192, help="points per ray (64 + 128)")
    p.add_argument("--configs", default="16:4:1,64:4:1,128:4:1,128:8:1",
                   help="block_m:num_warps:num_stages, comma-separated")
    p.add_argument("--with_test", action="store_true", help="first run tests/test_fused_mlp.py (CUDA: compiled)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)       # a child: one configuration's row
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/fused_mlp.py needs CUDA")
    if a.with_test:
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_fused_mlp.py"], cwd=ROOT)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    pos, dirs = build_encoders()
    net = NeRF().to(dev)
    with torch.no_grad():
        for q in net.parameters():       # weights of realistic scale, non-zero biases
            q.copy_(torch.randn_like(q) * (1.4 / q.shape[-1] ** 0.5 if q.dim() > 1 else 0.1))
    pos, dirs = pos.to(dev), dirs.to(dev)
    rays = a.points // a.samples
    pts = torch.randn(rays, a.samples, 3, device=dev) * 3
    d_enc = dirs(torch.nn.functional.normalize(torch.randn(rays, 3, device=dev), dim=-1))[:, None, :]
    enc = net.encoded_input(pos, pts, torch.float16)
    view = net.view_bias(d_enc)[:, 0].half()
    M = rays * a.samples
    W = net.W
    macs = (64 * W + 3 * W * W + (64 + W) * W + 3 * W * W + W * W // 2 + W + W // 2 * 3)
    layered = Engine(precision=PRECISIONS["fp16"], mlp_kernel=False).path(False, dev)
    if a.one:
        return one_config(a, net, enc, view, M, macs)
    print(f"\ndevice: {torch.cuda.get_device_name(dev)}; triton {fused_mlp.triton.__version__}; {M} points "
          f"({rays} rays x {a.samples}); 8 x {W} network, {2 * macs / 1e6:.2f} MFLOP a point\n")
    print("| path | colour + features | colour | density only | TFLOP/s (colour) | max abs diff vs twin |")
    print("|---|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        t = [median_ms(lambda: net.field(enc, d_enc, layered, features=f, colour=c)) for f, c in
             ((True, True), (False, True), (False, False))]
        print(f"| layered half engine (cuBLASLt) | {t[0]:.2f} ms | {t[1]:.2f} ms | {t[2]:.2f} ms | "
              f"{2 * macs * M / t[1] / 1e9:.0f} | - |")
    for cfg in a.configs.split(","):
        env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", cfg, "--points", str(a.points),
                            "--samples", str(a.samples)], cwd=ROOT, env=env, capture_output=True, text=True)
        rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| kernel")]
        if r.returncode == 0 and rows:
            print(rows[-1], flush=True)
        else:
            err = [ln for ln in (r.stderr or "").splitlines() if "Error" in ln or "error" in ln] or ["no row"]
            print(f"| kernel {cfg} (BM:warps:stages) | failed (rc {r.returncode}): {err[-1][:150]} | | | | |",
                  flush=True)


def one_config(a, net, enc, view, M, macs):
    """The row of one launch configuration (a child process): the twin's check first, then the times."""
    bm, nw, ns = (int(v) for v in a.one.split(":"))
    n = 65536
    with torch.no_grad():
        ref = fused_mlp_field(net, enc.buf[:n], view, a.samples)
        got = fused_mlp.field(net, enc.buf[:n], view, a.samples, True, True, bm, nw, ns)
        diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(got, ref))
        for tail in (1000, 35):          # a last program with masked rows
            ref = fused_mlp_field(net, enc.buf[:tail], view, a.samples)
            got = fused_mlp.field(net, enc.buf[:tail], view, a.samples, True, True, bm, nw, ns)
            diff = max(diff, *(float((x.float() - y.float()).abs().max()) for x, y in zip(got, ref)))
        run = [lambda f=f, c=c: fused_mlp.field(net, enc.buf, view, a.samples, c, f, bm, nw, ns)
               for f, c in ((True, True), (False, True), (False, False))]
        t = [median_ms(fn) for fn in run]
    print(f"| kernel BM={bm} warps={nw} stages={ns} | {t[0]:.2f} ms | {t[1]:.2f} ms | {t[2]:.2f} ms | "
          f"{2 * macs * M / t[1] / 1e9:.0f} | {diff:.2e} |", flush=True)


if __name__ == "__main__":
    main()
