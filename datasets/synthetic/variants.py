"""The variants of the built-in synthetic scene (`python -m datasets.synthetic --variant N`).

A variant is a fixed room (`build(seed)` -> room.Room, with its class names and look-alike
class families) and a closed camera path (`poses(frames)` -> [frames, 4, 4] camera-to-world,
OpenCV axes).

    0  living room (room.py): 6 x 4 x 3 m; the path is an ellipse around the table,
       counter-clockwise, looking across the room; frame 0 looks along -x.
    1  bedroom with a work corner (bedroom.py): 5 x 4.4 x 2.7 m; the path is a smaller
       clockwise ellipse at 1.4-1.7 m, looking across the room with a yaw swing; frame 0 stands
       near the desk corner and looks at the bed.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from datasets.synthetic.bedroom import build_bedroom
from datasets.synthetic.render import look_at
from datasets.synthetic.room import build_room


def living_room_poses(frames):
    """Variant 0: one closed loop around the room's centre."""
    poses = []
    for i in range(frames):
        th = 2 * np.pi * i / frames
        eye = np.array([0.2 + 2.1 * np.cos(th), 1.15 * np.sin(th), 1.5 + 0.2 * np.sin(2 * th)])
        look = th + 0.45 * np.sin(2 * th)           # yaw swing around "across the room"
        target = np.array([0.2 - 1.3 * np.cos(look), -0.8 * np.sin(look),
                           0.55 + 0.25 * np.sin(3 * th)])
        poses.append(look_at(eye, target))
    return np.stack(poses)


def bedroom_poses(frames):
    """Variant 1: a clockwise ellipse around (-0.2, -0.2), eye at angle phi = phi0 - th; the
    target lies across the room at angle psi = phi + 0.5 sin(2 th) (yaw swing)."""
    phi0 = np.pi + 0.36
    poses = []
    for i in range(frames):
        th = 2 * np.pi * i / frames
        phi = phi0 - th
        eye = np.array([-0.2 + 1.3 * np.cos(phi), -0.2 + 0.85 * np.sin(phi), 1.55 + 0.15 * np.sin(3 * th)])
        psi = phi + 0.5 * np.sin(2 * th)
        target = np.array([-0.2 - 1.9 * np.cos(psi), -0.2 - 1.5 * np.sin(psi), 0.7 + 0.2 * np.sin(2 * th)])
        poses.append(look_at(eye, target))
    return np.stack(poses)


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable          # seed -> Room
    poses: Callable          # frames -> [frames, 4, 4]


VARIANTS = {0: Variant("living room", build_room, living_room_poses),
            1: Variant("bedroom", build_bedroom, bedroom_poses)}
