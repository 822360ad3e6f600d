"""Time one training checkpoint of the paper's network (8 x 256 coarse + fine, Adam state):
the finite check of every tensor, and the write. `python bench/save_time.py`"""
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.nerf_step import options_for, random_scene  # noqa: E402
from models.factory import build_renderer  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def main():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        opts = options_for(tmp)
        trainer = Trainer(opts.train, random_scene(), build_renderer(opts.model, device), tmp, seed=0, log=False)
        for i in range(3):
            trainer.train_step(i)
        rows = []
        for i in range(5):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.check_finite(i)
            t1 = time.perf_counter()
            path = trainer.save(i)
            t2 = time.perf_counter()
            rows.append((t1 - t0, t2 - t1, os.path.getsize(path)))
        check, save, size = (sorted(r[k] for r in rows)[2] for k in range(3))
        print(f"| device | finite check | save (check + write) | file |\n|---|---:|---:|---:|\n"
              f"| {device} | {1e3 * check:.1f} ms | {1e3 * save:.1f} ms | {size / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
