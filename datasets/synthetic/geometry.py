"""Analytic ray casting for the built-in synthetic rooms (see `datasets/synthetic/__init__.py`).

SYNTHETIC scene. World frame: metres, z up. A room is the box room.lo..room.hi seen from inside
(ROOM_LO..ROOM_HI for variant 0); furniture is made of parts (boxes, vertical cylinders,
ellipsoids) in an object frame (position + yaw about z). Rays are cast with numpy, vectorised
over rays: `cast` returns the first hit of every ray (t, object, part); `surface` gives the hit
point, normal and albedo of the winners; `shade` applies view-independent diffuse lighting. With
ray directions d = R_wc dc and dc = ((u-cx)/fx, (v-cy)/fy, 1), the ray parameter t of a hit is its
z-depth.
"""
from dataclasses import dataclass, field
from typing import Any, List, Tuple

import numpy as np

ROOM_LO = np.array([-3.0, -2.0, 0.0])
ROOM_HI = np.array([3.0, 2.0, 3.0])
EPS = 1e-6


# ------------------------------------------------------------------------------------------------
# parts and objects
# ------------------------------------------------------------------------------------------------
@dataclass
class Part:
    kind: str                  # box | cyl | ellipsoid
    a: np.ndarray              # box: lo; cyl: (cx, cy, z0); ellipsoid: centre
    b: np.ndarray              # box: hi; cyl: (r, z1, -); ellipsoid: radii
    mat: Any                   # a Material of room.py (has .albedo(p, noise))

    def bounds(self):
        if self.kind == "box":
            return self.a, self.b
        if self.kind == "cyl":
            (cx, cy, z0), (r, z1, _) = self.a, self.b
            return np.array([cx - r, cy - r, z0]), np.array([cx + r, cy + r, z1])
        return self.a - self.b, self.a + self.b


def box(lo, hi, mat):
    return Part("box", np.asarray(lo, float), np.asarray(hi, float), mat)


def cyl(cx, cy, r, z0, z1, mat):
    return Part("cyl", np.array([cx, cy, z0], float), np.array([r, z1, 0.0]), mat)


def ellipsoid(centre, radii, mat):
    return Part("ellipsoid", np.asarray(centre, float), np.asarray(radii, float), mat)


@dataclass
class Obj:
    name: str
    class_id: int
    instance_id: int
    parts: List[Part]
    pos: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw_deg: float = 0.0
    rot: np.ndarray = field(init=False)       # object -> world rotation

    def __post_init__(self):
        c, s = np.cos(np.radians(self.yaw_deg)), np.sin(np.radians(self.yaw_deg))
        self.rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        self.pos = np.asarray(self.pos, float)
        corners = []
        for part in self.parts:
            lo, hi = part.bounds()
            for k in range(8):
                corners.append([(hi if k >> j & 1 else lo)[j] for j in range(3)])
        if corners:
            world = np.asarray(corners) @ self.rot.T + self.pos
            self.lo, self.hi = world.min(0) - 1e-3, world.max(0) + 1e-3


@dataclass
class Decal:
    """A rectangle painted on a room face: face index, (u, v) = the face's two in-plane world
    axes (in increasing axis order) and their ranges."""
    obj: Obj
    face: int
    u_range: Tuple[float, float]
    v_range: Tuple[float, float]
    mat: Any = None


# Room faces: index = 2 * axis + (1 if the max side). Objects of the room surfaces:
FACE_NAMES = ["wall_xneg", "wall_xpos", "wall_yneg", "wall_ypos", "floor", "ceiling"]


# ------------------------------------------------------------------------------------------------
# ray casting
# ------------------------------------------------------------------------------------------------
def _safe(d):
    return np.where(np.abs(d) < 1e-12, 1e-12, d)


# Ray sets are held axis-major: d [3, M] (and inv = 1/d), which keeps every step a contiguous
# 1-D numpy operation.
def _t_box(o, d, inv, lo, hi):
    tn = tf = None
    for ax in range(3):
        t1 = (lo[ax] - o[ax]) * inv[ax]
        t2 = (hi[ax] - o[ax]) * inv[ax]
        a, b = np.minimum(t1, t2), np.maximum(t1, t2)
        tn = a if tn is None else np.maximum(tn, a)
        tf = b if tf is None else np.minimum(tf, b)
    return np.where((tn <= tf) & (tn > EPS), tn, np.inf)


def _t_cyl(o, d, inv, part):
    (cx, cy, z0), (r, z1, _) = part.a, part.b
    ox, oy = o[0] - cx, o[1] - cy
    a = d[0] ** 2 + d[1] ** 2
    b = 2 * (ox * d[0] + oy * d[1])
    c = ox * ox + oy * oy - r * r
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = (-b - np.sqrt(disc)) / (2 * a)
    z = o[2] + ts * d[2]
    t = np.where((disc >= 0) & (ts > EPS) & (z >= z0) & (z <= z1), ts, np.inf)
    for zc in (z0, z1):
        tc = (zc - o[2]) * inv[2]
        x, y = ox + tc * d[0], oy + tc * d[1]
        t = np.where((tc > EPS) & (x * x + y * y <= r * r) & (tc < t), tc, t)
    return t


def _t_ellipsoid(o, d, inv, part):
    oc = (o - part.a) / part.b
    dd = d / part.b[:, None]
    a = (dd * dd).sum(0)
    b = 2 * (oc @ dd)
    c = oc @ oc - 1
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


_T = {"box": lambda o, d, inv, p: _t_box(o, d, inv, p.a, p.b), "cyl": _t_cyl, "ellipsoid": _t_ellipsoid}


def _room_exit(o, d, inv, lo=ROOM_LO, hi=ROOM_HI):
    """t and face index where rays from inside the box lo..hi leave it."""
    t = face = None
    for ax in range(3):
        pos = d[ax] > 0
        ta = np.where(pos, (hi[ax] - o[ax]) * inv[ax], (lo[ax] - o[ax]) * inv[ax])
        fa = 2 * ax + pos
        if t is None:
            t, face = ta, fa
        else:
            closer = ta < t
            t, face = np.where(closer, ta, t), np.where(closer, fa, face)
    return t, face


@dataclass
class Hits:
    t: np.ndarray          # [M] ray parameter of the first hit (z-depth for dc with z = 1)
    obj: np.ndarray        # [M] index into room.all_objects
    part: np.ndarray       # [M] part index (room faces/decals: -1)


def cast(room, o, d):
    """First hits of rays o + t d (o [3], d [M, 3]) against the room and its furniture."""
    d = np.ascontiguousarray(np.asarray(d, np.float64).T)
    inv = 1.0 / _safe(d)
    t, face = _room_exit(o, d, inv, room.lo, room.hi)
    obj = face.astype(np.int64)
    part = np.full(d.shape[1], -1, np.int64)
    n_faces = len(room.faces)
    for k, dec in enumerate(room.decals):
        axis = dec.face // 2
        u_ax, v_ax = [a for a in range(3) if a != axis]
        pu, pv = o[u_ax] + t * d[u_ax], o[v_ax] + t * d[v_ax]
        inside = ((face == dec.face) & (pu >= dec.u_range[0]) & (pu <= dec.u_range[1])
                  & (pv >= dec.v_range[0]) & (pv <= dec.v_range[1]))
        obj[inside] = n_faces + k
    base = n_faces + len(room.decals)
    for k, ob in enumerate(room.objects):
        cand = np.nonzero(_t_box(o, d, inv, ob.lo, ob.hi) < t)[0]
        if len(cand) == 0:
            continue
        ol = (o - ob.pos) @ ob.rot          # world -> object frame
        dl = ob.rot.T @ d[:, cand]
        il = 1.0 / _safe(dl)
        for j, pt in enumerate(ob.parts):
            tj = _T[pt.kind](ol, dl, il, pt)
            win = tj < t[cand]
            idx = cand[win]
            t[idx] = tj[win]
            obj[idx] = base + k
            part[idx] = j
    return Hits(t, obj, part)


def _normal_local(pt, q):
    """Outward normals of part `pt` at object-frame points q [M, 3]."""
    if pt.kind == "box":
        c, h = (pt.a + pt.b) / 2, (pt.b - pt.a) / 2
        rel = (q - c) / h
        ax = np.abs(rel).argmax(1)
        n = np.zeros_like(q)
        n[np.arange(len(q)), ax] = np.sign(rel[np.arange(len(q)), ax])
        return n
    if pt.kind == "cyl":
        (cx, cy, z0), (r, z1, _) = pt.a, pt.b
        n = np.zeros_like(q)
        radial = np.stack([q[:, 0] - cx, q[:, 1] - cy], 1)
        rn = np.linalg.norm(radial, axis=1)
        cap0, cap1 = np.abs(q[:, 2] - z0) < 1e-5, np.abs(q[:, 2] - z1) < 1e-5
        side = ~(cap0 | cap1) | (rn > r * (1 - 1e-6))
        n[side, :2] = radial[side] / np.maximum(rn[side], 1e-9)[:, None]
        n[cap1 & ~side, 2] = 1.0
        n[cap0 & ~side, 2] = -1.0
        return n
    g = (q - pt.a) / pt.b ** 2
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def surface(room, o, d, hits):
    """Albedo [M, 3], world normals [M, 3] and an emissive mask [M] at the hit points."""
    m = len(d)
    p = o + hits.t[:, None] * d
    col = np.zeros((m, 3), np.float32)
    nrm = np.zeros((m, 3))
    emissive = np.zeros(m, bool)
    n_faces, n_dec = len(room.faces), len(room.decals)
    for f in range(n_faces + n_dec):
        sel = np.nonzero(hits.obj == f)[0]
        if len(sel) == 0:
            continue
        face = f if f < n_faces else room.decals[f - n_faces].face
        mat = room.face_mats[f] if f < n_faces else room.decals[f - n_faces].mat
        nrm[sel, face // 2] = 1.0 if face % 2 == 0 else -1.0      # inward
        col[sel] = mat.albedo(p[sel], room.noise)
        emissive[sel] = mat.emissive
    base = n_faces + n_dec
    for k, ob in enumerate(room.objects):
        for j, pt in enumerate(ob.parts):
            sel = np.nonzero((hits.obj == base + k) & (hits.part == j))[0]
            if len(sel) == 0:
                continue
            q = (p[sel] - ob.pos) @ ob.rot
            nrm[sel] = _normal_local(pt, q) @ ob.rot.T
            col[sel] = pt.mat.albedo(q + 7.31 * k, room.noise)
            emissive[sel] = pt.mat.emissive
    return col, nrm, emissive, p


def shade(room, col, nrm, emissive, p):
    """View-independent diffuse shading: ambient + point lights with distance falloff."""
    s = np.full(len(p), room.ambient)
    for pos, power in room.lights:
        v = pos - p
        dist = np.linalg.norm(v, axis=1)
        s += power * np.clip((nrm * v).sum(1) / np.maximum(dist, 1e-6), 0, None) / (1 + (dist / 3.0) ** 2)
    out = col * s[:, None].astype(np.float32)
    out[emissive] = col[emissive]
    return np.clip(out, 0, 1)
