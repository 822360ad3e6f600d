"""Precision modes: one registry, read by the flag parser (`--precision` choices and help) and
resolved once into a `Precision` value that main.py passes to the renderer, the trainer and the
engines. Nothing downstream changes it.

A mode says three things, all on CUDA only (the CPU always runs float32, so CPU results never
depend on the choice):
- tf32: matrix products in TF32 (torch.backends flags, set once by main.py);
- inference_dtype: the half engine of passes without autograd (image renders, propagation,
  editing); None = the parameters' dtype;
- train_dtype: 16-bit training passes on float32 master weights (models.nerf.NeRF.forward_mixed)
  with a dynamic loss scale (training/loss_scale.py); None = float32 passes.

Adding a mode: an entry in PRECISIONS here, and its check in docs/PERFORMANCE.md (a mode is
offered only once it passes the precision bound: labels agree on >= 99.5 % of pixels, mIoU within
0.5 points, PSNR within 0.2 dB). Objectives that cannot train in a mode say so
(training.objectives: `Objective.precisions`).
"""
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Precision:
    name: str
    help: str
    tf32: bool = False
    inference_dtype: Optional[torch.dtype] = None
    train_dtype: Optional[torch.dtype] = None

    def on(self, device) -> "Precision":
        """The mode in force on `device`: itself on CUDA, float32 elsewhere."""
        return self if torch.device(device).type == "cuda" else FP32

    @property
    def loss_scale(self) -> bool:
        """Whether training passes need a loss scale (float16 gradients underflow without one)."""
        return self.train_dtype == torch.float16


FP32 = Precision("fp32", "float32 throughout (the default)")

PRECISIONS = {p.name: p for p in (
    FP32,
    Precision("tf32", "TF32 matrix products", tf32=True),
    Precision("fp16", "TF32 training plus a float16 engine for renders and propagation", tf32=True,
              inference_dtype=torch.float16),
    Precision("mixed", "fp16 plus float16 training passes on float32 weights with a dynamic loss scale",
              tf32=True, inference_dtype=torch.float16, train_dtype=torch.float16),
)}
DEFAULT_PRECISION = "fp32"


def precision_help():
    """The --precision help text: every mode and what it does."""
    modes = "; ".join(f"{p.name} = {p.help}" for p in PRECISIONS.values())
    return f"on CUDA: {modes} (docs/PERFORMANCE.md). CPU: always fp32, the choice is ignored"
