"""The dataset loaders, by `--dataset_type` name. A loader takes a utils.options.DataOptions and
returns a datasets.scene.Scene; adding a layout = one entry here (docs/ARCHITECTURE.md)."""
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
    """Load the scene that `data` (DataOptions) names; the loader's own options are `data.loader`."""
    return LOADERS[data.dataset_type].load(data)
