"""Time one 320x240 view with the float16 engine, the skip layer's activation written into the skip
buffer in place or through one copy (`models.nerf._SKIP_WRITE`). `python bench/render_skip_write.py`
(CUDA; prints a Markdown table, median of 5 renders)."""
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models.nerf as nerf  # noqa: E402
from bench.nerf_step import options_for, random_scene  # noqa: E402
from models.factory import build_renderer  # noqa: E402


def main():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp, ["--precision", "fp16"])
        renderer = build_renderer(opts.model, device, opts.precision).eval()
        scene = random_scene()
        rays = scene.cameras(scene.test).image_rays(0, device)
        print("| engine | skip write | one view |\n|---|---|---:|")
        for mode in ("copy", "direct", "copy"):
            nerf._SKIP_WRITE = mode
            renderer.render_chunked(rays, keys=("rgb", "depth"))
            times = []
            for _ in range(5):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                renderer.render_chunked(rays, keys=("rgb", "depth"))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            print(f"| {'float16' if device.type == 'cuda' else 'float32 (CPU)'} | {mode} | "
                  f"{1e3 * sorted(times)[2]:.1f} ms |")
        nerf._SKIP_WRITE = None


if __name__ == "__main__":
    main()
