"""The seeds of a scene as evaluation-space label maps: what label propagation starts from and
what the Semantic-NeRF baseline trains on, made by one function so both read the same labels.

The seeds are the user's when the scene carries them (`scene.seeds`, from clicks or scribbles:
datasets/clicks.py `with_user_labels`), else simulated from the ground truth (datasets/seeds.py)."""
import numpy as np
import torch

from datasets.seeds import check_seeds, make_seeds, save_seeds
from utils.errors import InputError


def seed_labels(seed_opts, scene, rng):
    """(Seeds, labelled-frame indices, evaluation labels of the labelled frames [V, H, W],
    -1 = unlabelled) of the training labels (instance maps with --test_instance).

    seed_opts: utils.options.SeedOptions; rng: numpy Generator (the clicks' draws). Seeds of a
    class absent from the scene, or that label nothing, raise InputError (check_seeds)."""
    instance = seed_opts.instance
    if scene.seeds is not None:
        seeds = user_seeds(seed_opts, scene)
    else:
        scene.eval_labels(scene.train, instance)      # InputError without instance maps / labels
        labels_train = scene.train.instance if instance else scene.train.semantic
        labels_test = scene.test.instance if instance else scene.test.semantic
        colours = None if instance else scene.colour_map
        seeds = make_seeds(labels_train, seed_opts, rng, train_ids=scene.train.ids, colour_map=colours)
        present = torch.unique(torch.cat([labels_train.reshape(-1), labels_test.reshape(-1)])).numpy()
        check_seeds(seeds, present)
    frames = np.flatnonzero(seeds.mask_ids)
    return seeds, frames, torch.from_numpy(seeds.labels[frames].astype(np.int64) - 1)


def user_seeds(seed_opts, scene):
    """The user's seeds (scene.seeds), checked against the scene's classes; written to
    seed_opts.seed_dir with --visualise_save, as the simulated ones."""
    if seed_opts.instance:
        raise InputError("--test_instance: clicks and scribbles label semantic classes, not instances")
    seeds = scene.seeds
    check_seeds(seeds, np.arange(scene.num_classes))
    if seed_opts.visualise_save and seed_opts.seed_dir:
        save_seeds(seeds, seed_opts.seed_dir, scene.colour_map)
    return seeds
