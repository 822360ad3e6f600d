"""Materials, the `Room` container and variant 0's furnished living room (see `datasets/synthetic/__init__.py`).

SYNTHETIC scene. World frame: metres, z up; variant 0 is the box x in [-3, 3], y in [-2, 2],
z in [0, 3] (`geometry.ROOM_LO/HI`). Materials are procedural (stripes, checker, value
noise, wood rings, book spines, floor planks, diamond wallpaper, a sky for the void window)
evaluated at object-frame hit points, so colours stick to the surfaces. The layout is fixed; the
seed draws only the noise lattice. Variant 1 (a bedroom with a desk) is `bedroom.py`.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from datasets.synthetic.geometry import FACE_NAMES, ROOM_HI, ROOM_LO, Decal, Obj, box, cyl, ellipsoid

# Replica-like sparse class ids (Replica's 101-entry list numbering, names for readability).
CLASS_NAMES = {0: "void", 10: "bin", 18: "cabinet", 20: "chair", 29: "cushion", 31: "ceiling",
               40: "floor", 44: "indoor-plant", 47: "lamp", 59: "picture", 64: "rug",
               70: "shelf", 76: "sofa", 80: "table", 91: "vase", 93: "wall"}

# Classes that look alike (share part of their synthetic descriptor), with the shared fraction.
CLASS_FAMILIES = {"structure": ([93, 31], 0.93), "seat": ([20, 76, 29], 0.75),
                  "wood": ([80, 18, 70], 0.65), "deco": ([91, 44, 47, 10], 0.35),
                  "flat": ([40, 64], 0.5)}


# ------------------------------------------------------------------------------------------------
# materials: albedo as a function of the (object-frame) hit point
# ------------------------------------------------------------------------------------------------
class ValueNoise:
    """Smooth 3D value noise in [0, 1] on a periodic random lattice (trilinear + smoothstep)."""

    def __init__(self, rng, size=32):
        self.size = size
        self.table = rng.random((size, size, size)).astype(np.float32)

    def __call__(self, p):
        i = np.floor(p).astype(np.int64)
        f = (p - i).astype(np.float32)
        f = f * f * (3.0 - 2.0 * f)
        i0 = i % self.size
        i1 = (i0 + 1) % self.size
        t = self.table
        out = 0.0
        for dx, wx in ((i0[:, 0], 1 - f[:, 0]), (i1[:, 0], f[:, 0])):
            for dy, wy in ((i0[:, 1], 1 - f[:, 1]), (i1[:, 1], f[:, 1])):
                out = out + wx * wy * ((1 - f[:, 2]) * t[dx, dy, i0[:, 2]] + f[:, 2] * t[dx, dy, i1[:, 2]])
        return out


def _soft_square(phase, sharp=6.0):
    """A square wave in [0, 1] with soft edges (learnable, little aliasing)."""
    return 0.5 + 0.5 * np.tanh(sharp * np.sin(2 * np.pi * phase))


@dataclass
class Material:
    kind: str                      # solid | checker | stripes | noise | wood | books | planks | diamond | sky
    c1: Tuple[float, float, float]
    c2: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0             # pattern period (m) or noise frequency (1/m)
    axis: Tuple[float, float, float] = (1.0, 0.0, 0.0)
    emissive: bool = False         # colour is not shaded (lamp shade, window)
    grain: float = 0.08            # amplitude of the fine noise every material gets

    def albedo(self, p, noise):
        return albedo(self, p, noise)


def albedo(mat, p, noise):
    """Albedo [M, 3] of material `mat` at object-frame points p [M, 3]."""
    c1 = np.asarray(mat.c1, np.float32)
    c2 = np.asarray(mat.c2, np.float32)
    ax = np.asarray(mat.axis, np.float64)
    if mat.kind == "solid":
        w = np.zeros(len(p), np.float32)
    elif mat.kind == "checker":
        cell = np.floor(p[:, 0] / mat.scale) + np.floor(p[:, 1] / mat.scale)
        w = (cell % 2).astype(np.float32)
    elif mat.kind == "stripes":
        w = _soft_square(p @ ax / mat.scale).astype(np.float32)
    elif mat.kind == "noise":
        w = noise(p * mat.scale)
        w = np.clip((w - 0.5) * 2.2 + 0.5, 0, 1)
    elif mat.kind == "wood":      # rings around a line parallel to the axis, warped by noise
        q = p - np.outer(p @ ax, ax)
        r = np.linalg.norm(q + 0.3, axis=1) + 0.08 * noise(p * 3.0)
        w = (0.5 + 0.5 * np.sin(2 * np.pi * r / mat.scale)).astype(np.float32)
    elif mat.kind == "books":     # shelves of coloured book spines
        col = np.floor(p @ ax / mat.scale)
        row = np.floor(p[:, 2] / 0.45)
        h = np.sin(col * 12.9898 + row * 78.233) * 43758.5453
        w = (h - np.floor(h)).astype(np.float32)
        band = (p[:, 2] % 0.45) < 0.04      # the shelf boards
        w = np.where(band, 0.0, w)
        palette = np.array([[0.7, 0.2, 0.2], [0.2, 0.4, 0.7], [0.85, 0.75, 0.3], [0.25, 0.55, 0.3],
                            [0.9, 0.9, 0.85]], np.float32)
        spine = palette[np.minimum((w * 5).astype(int), 4)]
        out = np.where(band[:, None], c1, spine)
        return _with_grain(out, p, noise, mat.grain)
    elif mat.kind == "planks":    # floor boards along `axis` (x or y), `scale` wide, staggered ends
        along = p @ ax
        across = p[:, 1] if abs(ax[0]) > 0.5 else p[:, 0]
        board = np.floor(across / mat.scale)
        seg = np.floor((along + 0.43 * 1.3 * board) / 1.3)
        h = np.sin(board * 12.9898 + seg * 78.233) * 43758.5453
        tint = h - np.floor(h)
        w = (0.65 * tint + 0.35 * noise(p * 4.0)).astype(np.float32)
        seam = ((across % mat.scale) < 0.012) | (((along + 0.43 * 1.3 * board) % 1.3) < 0.012)
        out = (1 - w)[:, None] * c1 + w[:, None] * c2
        out = np.where(seam[:, None], out * 0.55, out)
        return _with_grain(out, p, noise, mat.grain)
    elif mat.kind == "diamond":   # wallpaper: a lattice of soft diamonds on any vertical plane
        s = p[:, 0] + p[:, 1]
        w = (_soft_square((s + p[:, 2]) / mat.scale, 4.0) * _soft_square((s - p[:, 2]) / mat.scale, 4.0))
        w = w.astype(np.float32)
    elif mat.kind == "sky":       # a window: bright sky gradient with soft clouds
        w = np.clip((p[:, 2] - 0.9) / 1.3, 0, 1) * 0.6 + 0.4 * noise(p * 2.5)
    else:
        raise ValueError(f"unknown material {mat.kind!r}")
    out = (1 - w)[:, None] * c1 + w[:, None] * c2
    return _with_grain(out, p, noise, mat.grain)


def _with_grain(col, p, noise, amount):
    if amount <= 0:
        return col.astype(np.float32)
    g = noise(p * 9.0 + 17.0) - 0.5
    return np.clip(col * (1 + amount * 2 * g)[:, None], 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# the furnished room
# ------------------------------------------------------------------------------------------------
@dataclass
class Room:
    faces: List[Obj]           # 6 room surfaces, FACE_NAMES order
    face_mats: List[Material]
    decals: List[Decal]
    objects: List[Obj]         # furniture
    lights: List[Tuple[np.ndarray, float]]
    ambient: float
    noise: ValueNoise
    name: str = "living room"
    class_names: Dict[int, str] = field(default_factory=lambda: dict(CLASS_NAMES))
    families: Dict[str, Tuple[List[int], float]] = field(default_factory=lambda: dict(CLASS_FAMILIES))
    lo: np.ndarray = field(default_factory=lambda: ROOM_LO.copy())     # the room box (inside)
    hi: np.ndarray = field(default_factory=lambda: ROOM_HI.copy())

    @property
    def all_objects(self):
        """Every object once, in a fixed order: room faces, decals, furniture."""
        return self.faces + [d.obj for d in self.decals] + self.objects


def build_room(seed=0):
    """Variant 0: the fixed furnished living room; `seed` draws only the texture noise lattice."""
    rng = np.random.default_rng([seed, 11])
    noise = ValueNoise(rng)
    ids = iter(range(1, 1000))
    M = Material

    wall_mat = M("stripes", (0.78, 0.74, 0.66), (0.66, 0.60, 0.52), scale=0.5, axis=(1, 1, 0))
    wall_mat2 = M("noise", (0.55, 0.66, 0.72), (0.72, 0.80, 0.84), scale=1.6)
    floor_mat = M("checker", (0.45, 0.33, 0.22), (0.62, 0.48, 0.33), scale=0.6)
    ceil_mat = M("noise", (0.93, 0.93, 0.90), (0.82, 0.82, 0.80), scale=1.2, grain=0.04)
    face_mats = [wall_mat2, wall_mat, wall_mat, wall_mat2, floor_mat, ceil_mat]
    faces = []
    for name in FACE_NAMES:
        cls = 40 if name == "floor" else 31 if name == "ceiling" else 93
        faces.append(Obj(name, cls, next(ids), []))

    window = Obj("window", 0, 0, [])
    picture = Obj("picture", 59, next(ids), [])
    decals = [  # the window is void (class 0, instance 0): a view outside, unlabelled
        Decal(window, 0, (0.3, 1.5), (1.0, 2.2),               # wall x = -3 (u = y, v = z)
              M("sky", (0.75, 0.85, 0.97), (0.97, 0.97, 1.0), emissive=True, grain=0.0)),
        Decal(picture, 3, (-0.6, 0.6), (1.2, 2.0),             # wall y = +2 (u = x, v = z)
              M("stripes", (0.85, 0.35, 0.15), (0.15, 0.3, 0.6), scale=0.25, axis=(1, 0, 1))),
    ]

    wood = M("wood", (0.55, 0.36, 0.20), (0.42, 0.26, 0.14), scale=0.07, axis=(1, 0, 0))
    dark_wood = M("solid", (0.30, 0.20, 0.13))
    red_fabric = M("noise", (0.62, 0.16, 0.14), (0.78, 0.28, 0.22), scale=6.0)
    blue_fabric = M("noise", (0.22, 0.30, 0.52), (0.32, 0.42, 0.66), scale=6.0)
    sofa_fabric = M("noise", (0.35, 0.50, 0.38), (0.45, 0.60, 0.45), scale=4.0)
    objects = []

    def add(name, cls, parts, pos, yaw=0.0):
        objects.append(Obj(name, cls, next(ids), parts, pos, yaw))

    add("rug", 64, [box((-1.2, -0.9, 0), (1.2, 0.9, 0.012),
                        M("stripes", (0.62, 0.18, 0.22), (0.90, 0.80, 0.60), scale=0.3, axis=(1, 0, 0)))],
        (0.3, 0.0, 0.0))
    legs = [box((x - 0.03, y - 0.03, 0), (x + 0.03, y + 0.03, 0.72), dark_wood)
            for x in (-0.62, 0.62) for y in (-0.37, 0.37)]
    add("table", 80, [box((-0.7, -0.45, 0.72), (0.7, 0.45, 0.77), wood)] + legs, (0.3, 0.0, 0.0))

    def chair(fabric):
        legs = [box((x - 0.02, y - 0.02, 0), (x + 0.02, y + 0.02, 0.44), dark_wood)
                for x in (-0.19, 0.19) for y in (-0.19, 0.19)]
        return [box((-0.22, -0.22, 0.44), (0.22, 0.22, 0.49), fabric),
                box((-0.22, 0.17, 0.49), (0.22, 0.22, 0.95), wood)] + legs
    add("chair_a", 20, chair(red_fabric), (0.0, 0.75, 0.0), 0)
    add("chair_b", 20, chair(blue_fabric), (0.6, 0.75, 0.0), 0)
    add("chair_c", 20, chair(red_fabric), (0.3, -0.75, 0.0), 180)
    add("chair_d", 20, chair(blue_fabric), (1.3, 0.0, 0.0), -90)

    add("sofa", 76, [box((-1.0, -0.4, 0.0), (1.0, 0.4, 0.42), sofa_fabric),
                     box((-1.0, -0.4, 0.42), (1.0, -0.2, 0.85), sofa_fabric),
                     box((-1.0, -0.2, 0.42), (-0.85, 0.4, 0.62), sofa_fabric),
                     box((0.85, -0.2, 0.42), (1.0, 0.4, 0.62), sofa_fabric)], (-1.5, -1.55, 0.0))
    add("cushion_a", 29, [box((-0.2, -0.06, 0.42), (0.2, 0.06, 0.78),
                              M("checker", (0.92, 0.82, 0.35), (0.85, 0.55, 0.20), scale=0.1))],
        (-2.05, -1.29, 0.0))
    add("cushion_b", 29, [box((-0.2, -0.06, 0.42), (0.2, 0.06, 0.78),
                              M("checker", (0.80, 0.80, 0.82), (0.45, 0.45, 0.55), scale=0.1))],
        (-0.95, -1.29, 0.0))
    add("cabinet", 18, [box((-0.25, -0.6, 0.0), (0.25, 0.6, 1.05),
                            M("stripes", (0.80, 0.78, 0.72), (0.40, 0.38, 0.35), scale=0.35,
                              axis=(0, 0, 1)))], (2.72, -1.2, 0.0))
    add("vase_a", 91, [ellipsoid((0, 0, 1.2), (0.09, 0.09, 0.15),
                                 M("stripes", (0.20, 0.45, 0.75), (0.9, 0.9, 0.95), scale=0.06,
                                   axis=(0, 0, 1)))], (2.72, -1.4, 0.0))
    add("vase_b", 91, [ellipsoid((0, 0, 0.89), (0.08, 0.08, 0.12),
                                 M("solid", (0.85, 0.45, 0.15)))], (0.55, -0.1, 0.0))
    add("shelf", 70, [box((-0.6, -0.18, 0.0), (0.6, 0.18, 1.8),
                          M("books", (0.5, 0.34, 0.2), scale=0.06, axis=(1, 0, 0)))], (-1.3, 1.8, 0.0))
    add("lamp", 47, [cyl(0, 0, 0.17, 0.0, 0.04, M("solid", (0.15, 0.15, 0.16))),
                     cyl(0, 0, 0.025, 0.04, 1.4, M("solid", (0.6, 0.6, 0.62))),
                     cyl(0, 0, 0.22, 1.35, 1.7, M("solid", (1.0, 0.92, 0.7), emissive=True, grain=0.0))],
        (-2.55, 1.55, 0.0))
    pot = M("solid", (0.62, 0.32, 0.2))
    leaves = M("noise", (0.12, 0.38, 0.12), (0.30, 0.62, 0.22), scale=8.0)
    add("plant_a", 44, [cyl(0, 0, 0.16, 0.0, 0.3, pot), ellipsoid((0, 0, 0.62), (0.28, 0.28, 0.35), leaves)],
        (2.55, 1.5, 0.0))
    add("plant_b", 44, [cyl(0, 0, 0.14, 0.0, 0.26, pot), ellipsoid((0, 0, 0.55), (0.24, 0.24, 0.3), leaves)],
        (-2.7, -0.5, 0.0))
    add("bin", 10, [cyl(0, 0, 0.15, 0.0, 0.38, M("stripes", (0.3, 0.3, 0.32), (0.55, 0.55, 0.58),
                                                 scale=0.1, axis=(0, 0, 1)))], (1.8, 1.65, 0.0))

    lights = [(np.array([-1.0, 0.0, 2.8]), 0.45), (np.array([1.6, 0.3, 2.8]), 0.45),
              (np.array([-2.55, 1.55, 1.5]), 0.25)]
    return Room(faces, face_mats, decals, objects, lights, ambient=0.42, noise=noise, name="living room",
                class_names=CLASS_NAMES, families=CLASS_FAMILIES)
