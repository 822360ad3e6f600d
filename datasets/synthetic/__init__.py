"""The built-in synthetic scenes: furnished rooms written in the Semantic-NeRF Replica layout.

THESE DATA ARE SYNTHETIC. Nothing is downloaded and no network is involved: the images are ray
cast from simple analytic geometry, and the `dino/` descriptors are NOT produced by a DINO ViT;
they are random vectors built from the ground-truth labels and the image colours (below), made to
behave like DINO key descriptors under cosine similarity. Results on these scenes test the code;
they say nothing about how the method performs on real images.

    python -m datasets.synthetic --out DIR [--variant 0 --frames 150 --width 80 --height 60 --seed 0 --no_dino]
    python -m datasets.synthetic --format nerfstudio --out CAPTURE [--gt_out GT] [same options]

The second form writes the room as a transforms.json capture without labels, with the ground
truth (the Replica layout) in GT, default CAPTURE_ground_truth (`capture.py`).

--variant N picks the room (`variants.py`): 0 (default) the living room below,
1 a bedroom with a work corner. Bad input (`--out` naming a file, an unknown variant, too small
a size) stops with one line `error: ...` and exit code 2.

Layout (what `datasets/replica.py` reads): `rgb/rgb_<i>.png` (uint8 RGB), `depth/depth_<i>.png`
(uint16 millimetres of z-depth), `semantic_class/semantic_class_<i>.png` (uint8 raw class ids,
0 = void), `semantic_instance/semantic_instance_<i>.png` (uint16, 0 = void), `traj_w_c.txt`
(row-major camera-to-world 4x4 per line, OpenCV camera axes), `dino/dino_<i>.pth` for every frame
plus `dino/descriptor_meta.json` (`"model": "synthetic"`), `scene_info.json` (variant, class
names, objects, parameters) and, written last, the completion marker `.complete` (JSON of the
parameters; `scene_complete(path)` checks it; a run removes it first, so an interrupted run leaves
none).

Variant 0 (`room.py`, ray cast by `geometry.py`): a
6 x 4 x 3 m room (z up) with striped / noisy walls, a checker floor, a ceiling, a rug, a table,
four chairs, a sofa with two cushions, a cabinet, two vases, a bookshelf, a floor lamp, two
plants, a bin, a picture, and a window that is void (class 0). Class ids are sparse Replica ids
(wall 93, floor 40, chair 20, ...). The path is one smooth loop (an ellipse around the table at
1.3-1.7 m height, looking across the room with a swinging yaw and pitch); frame 0 looks along -x
and sees most of the furniture.

Variant 1 (`bedroom.py`): a 5 x 4.4 x 2.7 m bedroom with diamond wallpaper,
painted walls and a plank floor; a bed with a blanket and two pillows, two nightstands, a table
lamp, a wardrobe, a desk with two monitors, a keyboard and an office chair, a rug, a plant, a
bin, two pictures, curtains, a door and a void window. It shares wall, floor, ceiling, chair,
lamp, picture, rug, plant, bin and void with variant 0 (same ids); the other classes are new.
The path is a clockwise ellipse at 1.4-1.7 m looking across the room; frame 0 looks at the bed.

Both: shading is diffuse (ambient + point lights), so colours do not depend on the view
direction. Camera: pinhole, hfov 90 deg: fx = fy = W/2, cx = (W-1)/2, cy = (H-1)/2; pixel (u, v)
looks along R_wc ((u-cx)/fx, (v-cy)/fy, 1), so the ray parameter of a hit is its z-depth. Depth
and labels come from the pixel-centre ray; pixels on an object or colour edge get the mean colour
of ss x ss sub-pixel rays (anti-aliasing, ss odd, default 3), the others the centre's
(`render.py`).

Descriptors ("DINO-like", `descriptors.py`), 384 channels on a coarse grid of
about H/2.7 x W/2.7 cells (22 x 30 for 60 x 80; 89 x 119 for 240 x 320, as real DINO at load size
360 and stride 4). Per pixel:
    f(p) = A m + B c[class(p)] + C o[instance(p)] + L(colour features of p)
with m a shared "mean" direction (unrelated things still have cosine ~0.3-0.5), c a unit vector
per class (look-alike classes such as wall/ceiling or chair/sofa share part of theirs), o a unit
vector per object, and L a fixed random linear map of [2 (rgb - 0.5), cos(rgb B + phi)]. Each cell
is the area average of f over its footprint (two strides wide, as overlapping ViT patches, so
boundaries mix), plus Gaussian noise drawn per frame and cell.
"""
from datasets.synthetic.descriptors import descriptor_similarity, grid_shape
from datasets.synthetic.generate import camera_poses, generate_scene, scene_complete
from datasets.synthetic.render import edge_pixels, look_at, pixel_directions, render_frame
from datasets.synthetic.variants import VARIANTS
from datasets.synthetic.capture import write_capture  # noqa: E402  (after generate, which it uses)
from datasets.synthetic.cli import main

__all__ = ["generate_scene", "scene_complete", "camera_poses", "render_frame", "look_at", "pixel_directions",
           "edge_pixels", "grid_shape", "descriptor_similarity", "VARIANTS", "write_capture", "main"]
