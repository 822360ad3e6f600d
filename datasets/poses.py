"""Camera poses a loader can check cheaply: finite, rigid camera-to-world transforms.

A pose is refused when an entry is not finite, when it is all zeros (a degenerate pose: every ray
would start at the origin with no direction, and training would only diverge), when its rotation
is not orthonormal (max |R^T R - I| above `TOLERANCE`, far above the round-off of poses written as
text with 6 digits), when it is a reflection (det R < 0), or when its last row is not 0 0 0 1. The
message names the file (and line) and what is wrong.
"""
import numpy as np

from utils.errors import InputError

TOLERANCE = 1e-3


def pose_problem(m):
    """What is wrong with one 4x4 camera-to-world matrix, or None."""
    m = np.asarray(m, dtype=np.float64)
    if not np.isfinite(m).all():
        return "it has non-finite entries (NaN or inf)"
    if not m[:3].any():
        return "it is all zeros (a degenerate pose)"
    rot = m[:3, :3]
    err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    if err > TOLERANCE:
        return f"its rotation is not orthonormal (max |R^T R - I| = {err:.3g} > {TOLERANCE})"
    if np.linalg.det(rot) < 0:
        return "its rotation is a reflection (det R = -1)"
    if np.abs(m[3] - (0, 0, 0, 1)).max() > TOLERANCE:
        return f"its last row is {m[3].tolist()}, expected 0 0 0 1"
    return None


def check_poses(poses, where):
    """InputError for the first pose of `poses` [N, 4, 4] that is not a rigid transform; where(i)
    names pose i (its file, its line)."""
    for i, m in enumerate(poses):
        problem = pose_problem(m)
        if problem is not None:
            raise InputError(f"{where(i)}: not a rigid camera-to-world pose: {problem}")
