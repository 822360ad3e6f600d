"""Time one training checkpoint of the paper's network (8 x 256 coarse + fine, Adam state): the
finite check of every tensor, the loop's share of a save (on CUDA the write itself runs in the
background, training/ckpt_writer.py) and the save until the file is written.
`python bench/save_time.py`"""
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
        trainer = Trainer(opts.train, random_scene(), build_renderer(opts.model, device, opts.precision), tmp, seed=0, log=False)
        for i in range(3):
            trainer.train_step(i)
        rows = []
        for i in range(5):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.check_finite(i)
            t1 = time.perf_counter()
            path = trainer.save(i)            # on CUDA: returns once the host copy is queued for writing
            t2 = time.perf_counter()
            trainer.writer.wait()
            t3 = time.perf_counter()
            rows.append((t1 - t0, t2 - t1, t3 - t1, os.path.getsize(path)))
        check, loop, whole, size = (sorted(r[k] for r in rows)[2] for k in range(4))
        print("| device | finite check | save, the loop's share (check + host copy) | save until written | file |\n"
              "|---|---:|---:|---:|---:|\n"
              f"| {device} | {1e3 * check:.1f} ms | {1e3 * loop:.1f} ms | {1e3 * whole:.1f} ms | "
              f"{size / 2**20:.1f} MiB |")

if __name__ == "__main__":
    main()
