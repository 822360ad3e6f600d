"""Write a clicks file for the built-in room's capture from its ground truth: one click per class,
on a few training frames, each on the pixel of its class farthest from the class's border.

    python -m experiments.room_clicks [--out experiments/room_clicks.yaml --frames 150 --width 80 --height 60]
    python -m experiments.room_clicks --by_number --out room_clicks_by_number.yaml   # for the Replica layout

The shipped experiments/room_clicks.yaml is this command's output for the default capture
(`python -m datasets.synthetic --format nerfstudio --out data/room_capture`). Frames are chosen
greedily: the training frame where the most classes not yet clicked have an interior pixel (at
least 2 pixels from another class), until every class has one. Coordinates are the capture's own
pixels (here the rendered size), as a user would click them.
"""
import argparse
import os

import cv2
import numpy as np
import yaml

from datasets.scene import replica_split_ids
from datasets.synthetic import VARIANTS, camera_poses, render_frame
from utils.colormaps import label_colormap

MIN_DEPTH = 2.0     # pixels from the class border


def class_maps(frames, width, height, variant=0, seed=0):
    """{training frame: raw class map [H, W]} of the room's training frames (the Replica rule)."""
    room = VARIANTS[variant].build(seed)
    lut = np.array([ob.class_id for ob in room.all_objects])
    poses = camera_poses(frames, variant)
    train, _ = replica_split_ids(frames)
    return room, {i: lut[render_frame(room, poses[i], height, width, ss=1)[2]] for i in train}


def interior(cls_map, c):
    """(distance to the border of class c, (y, x)) of the class's most interior pixel."""
    mask = np.pad((cls_map == c).astype(np.uint8), 1)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(dist[y, x]), (int(y), int(x))


def choose_clicks(maps):
    """[(frame, x, y, class)]: greedy frame choice, then each class's most interior pixel there."""
    best = {}                                  # (frame, class) -> (depth, (y, x))
    for f, m in maps.items():
        for c in np.unique(m):
            if c:
                best[(f, int(c))] = interior(m, c)
    todo = {c for (_, c) in best}
    clicks = []
    while todo:
        def gain(f):
            return sum(1 for c in todo if best.get((f, c), (0,))[0] >= MIN_DEPTH)
        frame = max(maps, key=lambda f: (gain(f), -f))
        got = [c for c in sorted(todo) if best.get((frame, c), (0,))[0] >= MIN_DEPTH]
        if not got:                            # classes only ever thin: take their deepest pixel anywhere
            got = sorted(todo)
            for c in got:
                f = max((f for f in maps if (f, c) in best), key=lambda f: best[(f, c)][0])
                clicks.append((f, best[(f, c)][1][1], best[(f, c)][1][0], c))
            break
        for c in got:
            y, x = best[(frame, c)][1]
            clicks.append((frame, x, y, c))
        todo -= set(got)
    return sorted(clicks)


def clicks_document(room, clicks, by_number=False):
    """The clicks file; by_number: frames as frame numbers (for the room's Replica layout, whose files
    are rgb/rgb_<n>.png) instead of the capture's file names."""
    cmap = label_colormap(256)
    used = sorted({c for *_, c in clicks})
    return dict(
        classes=[dict(name=room.class_names[c], id=c, colour=[int(v) for v in cmap[c]]) for c in used],
        clicks=[dict(frame=f if by_number else f"images/frame_{f:05d}.png", x=x, y=y, label=room.class_names[c])
                for f, x, y, c in clicks])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.room_clicks", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "room_clicks.yaml"))
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--width", type=int, default=80)
    ap.add_argument("--height", type=int, default=60)
    ap.add_argument("--by_number", action="store_true", help="frames as numbers: the same clicks for the room's "
                                                             "Replica layout (the capture's <out>_ground_truth)")
    a = ap.parse_args(argv)
    room, maps = class_maps(a.frames, a.width, a.height)
    doc = clicks_document(room, choose_clicks(maps), a.by_number)
    header = (f"# One click per class of the built-in room's capture ({a.frames} frames, {a.width}x{a.height}:\n"
              "#   python -m datasets.synthetic --format nerfstudio --out data/room_capture)\n"
              "# written by python -m experiments.room_clicks from the room's ground truth; x, y are the\n"
              "# capture's own pixels (column, row). Class ids are the room's (Replica-like) ids.\n"
              + ("# Frames by number: the same clicks for the room's Replica layout (<capture>_ground_truth).\n"
                 if a.by_number else ""))
    with open(a.out, "w") as f:
        f.write(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110))
    print(f"{len(doc['clicks'])} clicks on frames {sorted({c['frame'] for c in doc['clicks']})} -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
