"""Camera rays in the original's convention.

Pixel (u = column, v = row) has integer coordinates at its centre. OpenCV camera direction
d_c = ((u - cx)/fx, (v - cy)/fy, 1), not normalised, so rendered depth is z-depth; the OpenGL
convention flips y and z. World ray: o = T_wc[:3, 3], d = T_wc[:3, :3] d_c. Rays are packed
as [..., 11] = [o(3), d(3), near, far, viewdir(3)] with viewdir = d / |d|.
"""
import torch


def camera_directions(v, u, intr, convention="opencv"):
    """Camera-frame directions [..., 3] of pixels (v, u) (float tensors)."""
    x = (u - intr.cx) / intr.fx
    y = (v - intr.cy) / intr.fy
    z = torch.ones_like(x)
    if convention == "opengl":
        y, z = -y, -z
    elif convention != "opencv":
        raise ValueError(f"unknown camera convention {convention!r}")
    return torch.stack((x, y, z), dim=-1)


def pack_rays(origins, dirs, near, far):
    """[..., 11] = [o, d, near, far, d / |d|] for origins and directions [..., 3], scalar near/far."""
    viewdirs = dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True)
    shape = origins.shape[:-1] + (1,)
    return torch.cat((origins, dirs, origins.new_full(shape, near), origins.new_full(shape, far),
                      viewdirs), dim=-1)


def rays_from_pixels(poses, v, u, intr, near, far, convention="opencv"):
    """Rays [B, 11] for pixels (v[b], u[b]) seen by cameras poses[b] ([B,4,4] or one [4,4])."""
    dc = camera_directions(v.to(poses.dtype), u.to(poses.dtype), intr, convention)
    if poses.dim() == 2:
        rot, origins = poses[:3, :3], poses[:3, 3].expand(dc.shape)
        dirs = dc @ rot.T
    else:
        rot, origins = poses[:, :3, :3], poses[:, :3, 3]
        dirs = torch.einsum("bij,bj->bi", rot, dc)
    return pack_rays(origins, dirs, near, far)


def image_rays(pose, height, width, intr, near, far, convention="opencv"):
    """All rays of one image, row-major: [H*W, 11]."""
    v, u = torch.meshgrid(torch.arange(height, device=pose.device, dtype=pose.dtype),
                          torch.arange(width, device=pose.device, dtype=pose.dtype), indexing="ij")
    return rays_from_pixels(pose, v.reshape(-1), u.reshape(-1), intr, near, far, convention)


def unpack_rays(rays):
    """(origins, dirs, near [B,1], far [B,1], viewdirs)."""
    return rays[:, 0:3], rays[:, 3:6], rays[:, 6:7], rays[:, 7:8], rays[:, 8:11]


def ray_points(rays, z):
    """Points o + z d [B, S, 3] of rays [B, 11] at depths z [B, S]."""
    return rays[:, None, 0:3] + rays[:, None, 3:6] * z[..., None]
