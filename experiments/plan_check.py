"""A plan checked as a whole before anything runs: its `config_overrides` against the option table
(sections, keys, values; a key that a flag's default would overwrite in every stage is refused),
each scene's config keys, and every stage's main.py command parsed and turned into options exactly
as main.py does (flag names and values, combinations, the modes), on the scene's config with its
overrides. No data is read and nothing is written. Errors name the plan file and the key or stage.
"""
import main as jnerf_main
from experiments.layout import regime_dir
from experiments.stages import scene_config, scene_stages, synthetic_params
from utils.config import ORIGINAL_FLAGS, SECTIONS_OVERRIDDEN, given_flags, merge_flags, numify
from utils.declarations import Values, check_config_keys
from utils.errors import InputError


def check_overrides(plan, options):
    source = f"{plan.path}: config_overrides"
    check_config_keys(plan.config_overrides, options, source)
    for section, values in plan.config_overrides.items():
        for key in values:
            if values[key] is None and options[key].required:
                raise InputError(f"{source}: {section}.{key} is null, but every run needs it (see "
                                 "configs/replica_room0_config.yaml)")
            if section in SECTIONS_OVERRIDDEN and key in ORIGINAL_FLAGS:
                raise InputError(f"{source}: {section}.{key} would be overwritten by --{key}'s default in every stage "
                                 f"(the original's merge rule); set it in flags: [--{key}, ...] instead")
    try:
        Values(numify(plan.config_overrides), options, given=set()).check_all()
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None


def check_plan(plan):
    """InputError naming the plan and the key or stage when a stage could not start."""
    options = jnerf_main.options()
    check_overrides(plan, options)
    parser = jnerf_main.parser()
    for i, scene in enumerate(plan.scenes):
        data = synthetic_params(plan, scene)[1] if scene.synthetic is not None else scene.dataset_dir
        config = numify(scene_config(plan, scene, data))
        check_config_keys(config, options, f"{plan.path}: scenes[{i}].config {scene.config}")
        for stage in scene_stages(plan, scene, scene.config):
            try:
                args = parser.parse_args(stage.argv)
                jnerf_main.options_from_config(merge_flags(config, args), given_flags(parser, stage.argv))
            except InputError as exc:
                keys = ", ".join(flag_keys(plan, i, stage))
                raise InputError(f"{plan.path}: stage '{stage.title}' (flags from {keys}): {exc}") from None


def flag_keys(plan, i, stage):
    """The plan keys whose flags make up the command of `stage` of scene i."""
    keys = ["flags", f"scenes[{i}].flags"]
    kind = "propagate" if stage.kind == "propagate" else stage.kind
    if kind in plan.stages:
        keys.append(f"stages.{kind}.flags")
    scene = plan.scenes[i]
    for j, regime in enumerate(plan.regimes):
        if any(stage.save_dir.startswith(regime_dir(plan.out_dir, scene.name, space, regime.name) + "/")
               for space in scene.label_spaces):
            keys.append(f"regimes[{j}].flags")
            if kind == "propagate":
                keys.append(f"regimes[{j}].propagation")
    return keys
