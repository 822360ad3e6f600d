"""The dataset loaders, by `--dataset_type` name. A loader takes a utils.options.DataOptions and
returns a datasets.scene.Scene; adding a layout = one entry here (docs/ARCHITECTURE.md)."""
from datasets.replica import load_replica
from datasets.scannet import load_scannet

LOADERS = {
    "replica": load_replica,     # Semantic-NeRF's Replica layout (and the built-in synthetic room)
    "scannet": load_scannet,     # an exported ScanNet scene (docs/SCANNET.md)
}


def load_scene(data):
    """Load the scene that `data` (DataOptions) names."""
    return LOADERS[data.dataset_type](data)
