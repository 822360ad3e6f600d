"""How the renderer evaluates its networks: one frozen `Engine` value, chosen once.

An `Engine` holds the precision in force (utils.precision.Precision, already resolved for the
device) and the fast-path knobs that benchmarks and tests compare (fused inference layers, the
zero-padded position input, the composed head, how the skip buffer is written, the training
layers' GEMM epilogue). The renderer turns it into a `Path` for each network call: whether the
pass carries autograd (training, Jacobians) or not (image renders, propagation), and what that
implies. models.nerf.NeRF.field takes the `Path` and nothing else decides: no global flags, no
attributes written on the networks.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from utils.precision import FP32, Precision


class Path(NamedTuple):
    """One network evaluation (models.nerf.NeRF.field)."""
    grad: bool                              # autograd pass: the layered network; else the inference fast paths
    dtype: Optional[torch.dtype] = None     # 16-bit activations (grad: NeRF.forward_mixed; else the half engine)
    epilogue: bool = False                  # grad: bias+ReLU in the GEMM epilogue, GEMV bias gradients (_Linear)
    fused: bool = False                     # no grad: GEMM+bias+ReLU in one call
    pad_k: bool = False                     # no grad: the 63-d position input zero-padded to 64
    compose_head: bool = False              # no grad: alpha + feature + views.0 as one GEMM
    skip_direct: bool = False               # no grad: the layer before a skip writes into the buffer in place
    prefill: bool = False                   # the renderer encodes positions straight into the pass's input buffer:
                                            # no grad, padded trunk: models.nerf.EncodedInput; grad with a 16-bit
                                            # dtype: the zero-padded input of NeRF.forward_mixed


REFERENCE = Path(grad=True)                 # the layered network in the parameters' dtype (the slow twin)


@dataclass(frozen=True)
class Engine:
    precision: Precision = FP32             # resolved for the device (Precision.on)
    fused: bool = True                      # inference: fused GEMM+bias+ReLU layers
    pad_k: bool = True                      # inference: tensor-core aligned position input
    compose_head: bool = True               # inference: the composed 256 -> 129 head
    skip_write: Optional[str] = None        # inference: 'direct' | 'copy' | None = by device (copy on CUDA:
                                            # cuBLASLt's epilogue needs a contiguous output)
    train_epilogue: Optional[bool] = None   # training: the _Linear layers; None = on CUDA only (CPU results stay
                                            # those of the eager ops)
    fused_encoding: Optional[bool] = None   # inference, padded trunk: encode into the input buffer (same values);
                                            # None = on CUDA only (on the CPU the strided sin/cos writes were slower)

    def path(self, grad: bool, device) -> Path:
        """The evaluation of a pass with (grad) or without autograd on `device`."""
        cuda = torch.device(device).type == "cuda"
        fused_encoding = cuda if self.fused_encoding is None else self.fused_encoding
        if grad:
            epilogue = cuda if self.train_epilogue is None else self.train_epilogue
            dtype = self.precision.train_dtype
            return Path(True, dtype, epilogue=epilogue, prefill=fused_encoding and dtype is not None)
        direct = (self.skip_write or ("copy" if cuda else "direct")) == "direct"
        return Path(False, self.precision.inference_dtype, fused=self.fused, pad_k=self.pad_k,
                    compose_head=self.compose_head, skip_direct=direct,
                    prefill=fused_encoding and self.fused and self.pad_k)
