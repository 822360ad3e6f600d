"""The dataset loaders, by `--dataset_type` name. A loader takes a utils.options.DataOptions and
returns a datasets.scene.Scene; adding a layout = one entry here (docs/ARCHITECTURE.md).

A loader with settings of its own declares them as a frozen dataclass in its module, listed in
LOADER_OPTIONS; `load_scene(data, options)` passes an instance to it (default settings otherwise).
"""
from datasets.nerfstudio import NerfstudioOptions, load_nerfstudio
from datasets.replica import load_replica
from datasets.scannet import load_scannet

LOADERS = {
    "replica": load_replica,     # Semantic-NeRF's Replica layout (and the built-in synthetic room)
    "scannet": load_scannet,     # an exported ScanNet scene (docs/SCANNET.md)
    "nerfstudio": load_nerfstudio,   # a transforms.json capture (docs/OWN_SCENE.md)
}

LOADER_OPTIONS = {
    "nerfstudio": NerfstudioOptions,
}


def load_scene(data, options=None):
    """Load the scene that `data` (DataOptions) names; `options`: the loader's own settings
    (an instance of LOADER_OPTIONS[data.dataset_type]), default when None."""
    loader = LOADERS[data.dataset_type]
    return loader(data) if options is None else loader(data, options)
