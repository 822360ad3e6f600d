"""Choose and run the dataset loader from the merged config."""
import torch

from utils.errors import InputError, NotSupportedError


def load_scene(settings, features=False):
    """Load the scene named by the config. `features`: load descriptors (--load_dino/--load_lseg)."""
    exp = settings.exp
    near, far = (float(v) for v in settings.render.get("depth_range", [0.1, 10.0]))
    if exp.get("dataset_type", "replica") == "replica":
        from datasets.replica import ReplicaLoader
        loader = ReplicaLoader(
            exp.get("dataset_dir"), exp.get_num("height"), exp.get_num("width"),
            training_mode=bool(exp.get("training_mode")),
            load_dino=features and bool(exp.get("load_dino")), load_lseg=features and bool(exp.get("load_lseg")),
            high_res_dino=bool(exp.get("high_res_dino")), feature_dim=int(exp.get_num("feature_dim", 384)),
            feature_dtype=torch.float16, near=near, far=far,
            pin_features=bool(exp.get("load_on_cpu")))
        if not exp.get("dataset_dir"):
            raise InputError("experiment.dataset_dir is not set in the YAML config")
        return loader.load()
    if exp.get("dataset_type") == "scannet":
        try:
            from datasets.scannet import load_scannet
        except ImportError:
            raise NotSupportedError("--dataset_type scannet is not implemented yet") from None
        return load_scannet(settings, features=features, near=near, far=far)
    raise InputError(f"--dataset_type {exp.get('dataset_type')!r}: expected replica or scannet")
