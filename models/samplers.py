"""Sample placement along rays: stratified coarse samples and inverse-CDF fine samples."""
import torch


def stratified_z(near, far, n, jitter, generator=None):
    """n depths per ray, linear between near and far [B,1]; uniform jitter inside each bin if `jitter`."""
    t = torch.linspace(0.0, 1.0, n, device=near.device, dtype=near.dtype)
    z = near * (1.0 - t) + far * t
    if jitter:
        mids = 0.5 * (z[..., 1:] + z[..., :-1])
        upper = torch.cat((mids, z[..., -1:]), dim=-1)
        lower = torch.cat((z[..., :1], mids), dim=-1)
        r = torch.rand(z.shape, device=z.device, dtype=z.dtype, generator=generator)
        z = lower + (upper - lower) * r
    return z


def sample_pdf(bins, weights, n, deterministic, generator=None):
    """Inverse-CDF sampling of n depths from piecewise-constant `weights` over `bins`.

    bins [B, M] (bin edges), weights [B, M-1]. As the original: weights + 1e-5, cdf with a
    leading 0, u = linspace(0, 1, n) when deterministic else U(0, 1), and denominators below
    1e-5 replaced by 1. The result is detached (the fine colour never depends on the coarse net).
    """
    weights = weights.detach() + 1e-5
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat((torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)), dim=-1)
    if deterministic:
        u = torch.linspace(0.0, 1.0, n, device=cdf.device, dtype=cdf.dtype).expand(cdf.shape[0], n)
    else:
        u = torch.rand((cdf.shape[0], n), device=cdf.device, dtype=cdf.dtype, generator=generator)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp(min=0)
    above = idx.clamp(max=cdf.shape[-1] - 1)
    cdf_b, cdf_a = torch.gather(cdf, -1, below), torch.gather(cdf, -1, above)
    bin_b, bin_a = torch.gather(bins, -1, below), torch.gather(bins, -1, above)
    denom = cdf_a - cdf_b
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    t = (u - cdf_b) / denom
    return (bin_b + t * (bin_a - bin_b)).detach()


def fine_z(z, weights, n_importance, deterministic, generator=None):
    """Depths of the fine pass [B, S + n_importance], sorted: the coarse depths z [B, S] plus
    n_importance inverse-CDF samples of the coarse weights [B, S] between the mid-points of z (the
    two end weights left out, as the original). The coarse depths are detached."""
    z_mid = 0.5 * (z[..., 1:] + z[..., :-1])
    z_imp = sample_pdf(z_mid, weights[..., 1:-1], n_importance, deterministic=deterministic, generator=generator)
    return torch.sort(torch.cat((z.detach(), z_imp), dim=-1), dim=-1)[0]
