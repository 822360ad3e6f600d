"""Variant 1 of the built-in synthetic scene: a bedroom with a work corner (see `datasets/synthetic/__init__.py`).

SYNTHETIC scene. World frame: metres, z up; the room is the box x in [-2.5, 2.5], y in [-2.2, 2.2],
z in [0, 2.7] (BEDROOM_LO/HI). Diamond wallpaper on the x walls, mottled paint on the y walls, a
plank floor; a bed (with a blanket and two pillows) against the y = +2.2 wall between two
nightstands, a wardrobe, a desk under the window with two monitors, a keyboard and an office
chair, a rug, a plant, a bin, two pictures, curtains, a door, and a window that is void
(class 0). Classes shared with variant 0 keep its ids (wall 93, floor 40, chair 20, ...); the new
ones are Replica-like sparse ids (bed 7, desk 34, monitor 52, wardrobe 96, ...). The layout is
fixed; the seed draws only the texture noise lattice.
"""
import numpy as np

from datasets.synthetic.geometry import FACE_NAMES, Decal, Obj, box, cyl, ellipsoid
from datasets.synthetic.room import Material, Room, ValueNoise

BEDROOM_LO = np.array([-2.5, -2.2, 0.0])
BEDROOM_HI = np.array([2.5, 2.2, 2.7])

BEDROOM_CLASS_NAMES = {0: "void", 7: "bed", 10: "bin", 11: "blanket", 20: "chair", 27: "keyboard",
                       30: "curtain", 31: "ceiling", 34: "desk", 37: "door", 40: "floor",
                       44: "indoor-plant", 47: "lamp", 52: "monitor", 54: "nightstand", 59: "picture",
                       61: "pillow", 64: "rug", 93: "wall", 96: "wardrobe"}

# Classes that look alike (share part of their synthetic descriptor), with the shared fraction.
BEDROOM_FAMILIES = {"structure": ([93, 31], 0.93), "bedding": ([7, 61, 11], 0.6),
                    "wood": ([34, 54, 96, 37], 0.55), "screens": ([52, 27], 0.5),
                    "deco": ([44, 47, 59, 10], 0.35), "flat": ([40, 64], 0.5)}


def build_bedroom(seed=0):
    """Variant 1: the fixed bedroom; `seed` draws only the texture noise lattice."""
    rng = np.random.default_rng([seed, 11])
    noise = ValueNoise(rng)
    ids = iter(range(1, 1000))
    M = Material

    paper = M("diamond", (0.60, 0.70, 0.60), (0.84, 0.86, 0.76), scale=0.4)
    paint = M("noise", (0.86, 0.72, 0.66), (0.74, 0.58, 0.54), scale=1.3)
    floor_mat = M("planks", (0.70, 0.55, 0.36), (0.52, 0.36, 0.22), scale=0.18, axis=(1, 0, 0))
    ceil_mat = M("noise", (0.95, 0.94, 0.92), (0.86, 0.86, 0.84), scale=1.0, grain=0.04)
    face_mats = [paper, paper, paint, paint, floor_mat, ceil_mat]
    faces = []
    for name in FACE_NAMES:
        cls = 40 if name == "floor" else 31 if name == "ceiling" else 93
        faces.append(Obj(name, cls, next(ids), []))

    window = Obj("window", 0, 0, [])
    curtain_fabric = M("stripes", (0.55, 0.22, 0.30), (0.70, 0.35, 0.40), scale=0.12, axis=(1, 0, 0))
    decals = [  # the window is void (class 0, instance 0); u, v = the face's in-plane axes
        Decal(window, 2, (-1.5, -0.1), (1.35, 2.25),            # wall y = -2.2 (u = x, v = z)
              M("sky", (0.70, 0.82, 0.96), (0.96, 0.96, 1.0), emissive=True, grain=0.0)),
        Decal(Obj("curtain_a", 30, next(ids), []), 2, (-1.9, -1.5), (0.4, 2.5), curtain_fabric),
        Decal(Obj("curtain_b", 30, next(ids), []), 2, (-0.1, 0.3), (0.4, 2.5), curtain_fabric),
        Decal(Obj("door", 37, next(ids), []), 1, (-1.65, -0.75), (0.0, 2.05),   # wall x = +2.5 (u = y)
              M("wood", (0.62, 0.44, 0.28), (0.50, 0.34, 0.20), scale=0.09, axis=(0, 0, 1))),
        Decal(Obj("picture_a", 59, next(ids), []), 3, (0.8, 1.6), (1.35, 1.95),  # wall y = +2.2, over the bed
              M("checker", (0.15, 0.25, 0.55), (0.92, 0.78, 0.30), scale=0.1)),
        Decal(Obj("picture_b", 59, next(ids), []), 0, (-1.3, -0.5), (1.2, 1.8),  # wall x = -2.5 (u = y)
              M("stripes", (0.20, 0.55, 0.35), (0.95, 0.90, 0.80), scale=0.2, axis=(0, 1, 1))),
    ]

    dark = M("solid", (0.22, 0.20, 0.19))
    oak = M("wood", (0.72, 0.56, 0.36), (0.60, 0.44, 0.26), scale=0.06, axis=(1, 0, 0))
    objects = []

    def add(name, cls, parts, pos, yaw=0.0):
        objects.append(Obj(name, cls, next(ids), parts, pos, yaw))

    add("rug", 64, [box((-1.0, -0.7, 0), (1.0, 0.7, 0.012),
                        M("checker", (0.20, 0.50, 0.52), (0.88, 0.84, 0.70), scale=0.25))], (0.4, -0.4, 0.0))
    add("bed", 7, [box((-0.75, -1.0, 0.0), (0.75, 1.0, 0.30), M("solid", (0.36, 0.26, 0.20))),
                   box((-0.72, -0.97, 0.30), (0.72, 0.97, 0.50), M("noise", (0.93, 0.93, 0.90),
                                                                  (0.84, 0.84, 0.82), scale=5.0)),
                   box((-0.80, 0.92, 0.0), (0.80, 1.02, 1.05), M("noise", (0.45, 0.47, 0.52),
                                                                 (0.55, 0.57, 0.62), scale=7.0))],
        (1.2, 1.15, 0.0))
    add("blanket", 11, [box((-0.76, -1.03, 0.28), (0.76, 0.30, 0.55),
                            M("stripes", (0.25, 0.35, 0.65), (0.85, 0.88, 0.95), scale=0.22, axis=(1, 1, 0)))],
        (1.2, 1.15, 0.0))
    pillow = M("noise", (0.98, 0.96, 0.88), (0.88, 0.84, 0.74), scale=6.0)
    add("pillow_a", 61, [ellipsoid((0, 0, 0.58), (0.30, 0.15, 0.09), pillow)], (0.84, 1.8, 0.0))
    add("pillow_b", 61, [ellipsoid((0, 0, 0.58), (0.30, 0.15, 0.09), pillow)], (1.56, 1.8, 0.0), 6)
    stand = M("stripes", (0.58, 0.40, 0.26), (0.30, 0.20, 0.13), scale=0.27, axis=(0, 0, 1))
    add("nightstand_a", 54, [box((-0.22, -0.2, 0.0), (0.22, 0.2, 0.55), stand)], (0.12, 1.9, 0.0))
    add("nightstand_b", 54, [box((-0.22, -0.2, 0.0), (0.22, 0.2, 0.55), stand)], (2.22, 1.9, 0.0))
    add("lamp", 47, [cyl(0, 0, 0.07, 0.55, 0.58, dark), cyl(0, 0, 0.015, 0.58, 0.80, dark),
                     cyl(0, 0, 0.14, 0.78, 1.0, M("solid", (1.0, 0.85, 0.6), emissive=True, grain=0.0))],
        (0.12, 1.9, 0.0))
    add("wardrobe", 96, [box((-0.3, -0.65, 0.0), (0.3, 0.65, 2.1),
                             M("stripes", (0.90, 0.88, 0.84), (0.62, 0.60, 0.58), scale=0.65, axis=(0, 1, 0)))],
        (-2.18, 1.45, 0.0))
    add("desk", 34, [box((-0.7, -0.33, 0.72), (0.7, 0.33, 0.76), oak),
                     box((-0.7, -0.33, 0.0), (-0.66, 0.33, 0.72), oak),
                     box((0.66, -0.33, 0.0), (0.7, 0.33, 0.72), oak)], (-0.8, -1.85, 0.0))
    screen = M("noise", (0.08, 0.14, 0.30), (0.25, 0.45, 0.72), scale=5.0, emissive=True, grain=0.0)

    def monitor():
        return [box((-0.1, -0.08, 0.76), (0.1, 0.08, 0.78), dark), box((-0.02, -0.02, 0.78), (0.02, 0.02, 0.95), dark),
                box((-0.27, -0.025, 0.92), (0.27, 0.025, 1.25), screen)]
    add("monitor_a", 52, monitor(), (-1.1, -1.98, 0.0), -8)
    add("monitor_b", 52, monitor(), (-0.5, -1.98, 0.0), 8)
    add("keyboard", 27, [box((-0.22, -0.07, 0.76), (0.22, 0.07, 0.785),
                             M("stripes", (0.16, 0.16, 0.18), (0.45, 0.45, 0.48), scale=0.03, axis=(0, 1, 0)))],
        (-0.8, -1.72, 0.0))
    seat = M("noise", (0.12, 0.12, 0.14), (0.30, 0.30, 0.34), scale=8.0)
    add("chair", 20, [cyl(0, 0, 0.28, 0.0, 0.05, dark), cyl(0, 0, 0.03, 0.05, 0.45, dark),
                      box((-0.24, -0.24, 0.45), (0.24, 0.24, 0.53), seat),
                      box((-0.22, 0.20, 0.58), (0.22, 0.26, 1.05), seat)], (-0.8, -1.15, 0.0))
    leaves = M("noise", (0.10, 0.34, 0.16), (0.36, 0.60, 0.20), scale=8.0)
    add("plant", 44, [cyl(0, 0, 0.15, 0.0, 0.32, M("solid", (0.80, 0.80, 0.76))),
                      ellipsoid((0, 0, 0.68), (0.26, 0.26, 0.38), leaves)], (2.15, -1.85, 0.0))
    add("bin", 10, [cyl(0, 0, 0.14, 0.0, 0.34, M("stripes", (0.75, 0.30, 0.20), (0.85, 0.50, 0.35),
                                                 scale=0.08, axis=(0, 0, 1)))], (0.25, -1.95, 0.0))

    lights = [(np.array([0.0, 0.0, 2.6]), 0.5), (np.array([1.2, 1.0, 2.6]), 0.3),
              (np.array([0.12, 1.9, 0.9]), 0.2)]
    return Room(faces, face_mats, decals, objects, lights, ambient=0.40, noise=noise, name="bedroom",
                class_names=BEDROOM_CLASS_NAMES, families=BEDROOM_FAMILIES,
                lo=BEDROOM_LO.copy(), hi=BEDROOM_HI.copy())
