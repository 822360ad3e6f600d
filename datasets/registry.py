"""The dataset loaders, by `--dataset_type` name. A loader takes a utils.options.DataOptions and
returns a datasets.scene.Scene; adding a layout = one entry here (docs/ARCHITECTURE.md).
`load_scene` says when the config's width x height upsamples the frames (a config size larger
than the images: blur, no detail, and more rays to fit)."""
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from datasets.nerfstudio import NERFSTUDIO_OPTIONS, load_nerfstudio
from datasets.replica import load_replica
from datasets.scannet import SCANNET_OPTIONS, load_scannet
from utils.declarations import OptionGroup


@dataclass(frozen=True)
class Loader:
    load: Callable                          # DataOptions -> Scene
    options: Optional[OptionGroup] = None   # the layout's own flags, in DataOptions.loader when it is chosen


LOADERS = {
    "replica": Loader(load_replica),               # Semantic-NeRF's Replica layout (and the built-in synthetic room)
    "scannet": Loader(load_scannet, SCANNET_OPTIONS),   # an exported ScanNet scene (docs/SCANNET.md)
    "nerfstudio": Loader(load_nerfstudio, NERFSTUDIO_OPTIONS),   # a transforms.json capture (docs/OWN_SCENE.md)
}


def load_scene(data):
    """Load the scene that `data` (DataOptions) names (the loader's own options are `data.loader`); a
    warning line when the config size upsamples the frames."""
    scene = LOADERS[data.dataset_type].load(data)
    note = upsampling_note(scene)
    if note:
        print(note, file=sys.stderr, flush=True)
    return scene


def source_size(scene):
    """(height, width) of the scene's original frames (after undistortion), or None if unknown."""
    if scene.frames:
        h, w = scene.frames[0].target[4:6]
        return int(h), int(w)
    size = (scene.extra or {}).get("colour_size")          # ScanNet: the colour frames
    return (int(size[0]), int(size[1])) if size else None


def upsampling_note(scene):
    """The warning line when width x height is larger than the frames, with the factor, or None."""
    size = source_size(scene)
    if size is None:
        return None
    h, w = size
    factor = max(scene.height / h, scene.width / w)
    if factor <= 1.0 + 1e-6:
        return None
    return (f"warning: experiment.width x height = {scene.width}x{scene.height} upsamples the {w}x{h} frames of "
            f"{scene.root} {factor:.3g}x (interpolated pixels add no detail; the frames' own size is {w}x{h})")
