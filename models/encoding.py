"""Positional encoding gamma(x) = [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)].

Order and scaling as the original: the input comes first, then for each frequency
sin of all coordinates, then cos of all coordinates; xyz is divided by `input_scale` (10 for
positions) before encoding, and the unencoded term is that scaled input.
"""
import torch
from torch import nn


class PositionalEncoding(nn.Module):
    def __init__(self, num_freqs, input_dims=3, input_scale=1.0, identity=False):
        super().__init__()
        self.identity = identity
        self.input_scale = float(input_scale)
        self.input_dims = input_dims
        freqs = 2.0 ** torch.linspace(0.0, num_freqs - 1, num_freqs) if num_freqs > 0 else torch.zeros(0)
        self.register_buffer("freqs", freqs, persistent=False)
        self.out_dim = input_dims if identity else input_dims * (1 + 2 * num_freqs)

    def forward(self, x):
        if self.identity:
            return x
        x = x / self.input_scale
        xb = x[..., None, :] * self.freqs[:, None]                  # [..., L, 3]
        enc = torch.stack((torch.sin(xb), torch.cos(xb)), dim=-2)   # [..., L, 2, 3]
        return torch.cat((x, enc.flatten(-3)), dim=-1)

    def encode_into(self, x, out):
        """Write gamma(x) of points x [M, input_dims] into out [M, out_dim] (a column block of a wider
        buffer, any float dtype): each term computed in x's dtype and cast once as it is stored.
        The same values as `self(x).to(out.dtype)` without the stack, the concatenation and the
        cast as passes of their own (a render's positional encoding moved about 2 KB per point
        through memory; this about 0.5 KB)."""
        x = x / self.input_scale if not self.identity else x
        d = self.input_dims
        out[:, :d] = x
        if self.identity:
            return out
        n = self.freqs.shape[0]
        terms = out[:, d:d + 2 * n * d].unflatten(-1, (n, 2, d))         # [M, L, (sin, cos), 3]
        xb = x[:, None, :] * self.freqs[:, None]
        torch.sin(xb, out=terms[:, :, 0, :])
        torch.cos(xb, out=terms[:, :, 1, :])
        return out


def build_encoders(multires=10, multires_views=4, i_embed=0):
    """(position encoder, direction encoder); i_embed -1 disables the encoding."""
    identity = int(i_embed) == -1
    pos = PositionalEncoding(int(multires), input_scale=10.0, identity=identity)
    views = PositionalEncoding(int(multires_views), identity=identity)
    return pos, views
