"""Checks of a training run against its checkpoint and scene, made before the run folder changes.

`ray_budget_note`: a warning when --N_rays is more than the pixels a step draws from.
`check_resume`: does the checkpoint belong to a run of this kind?

main.py loads the checkpoint before the run folder is touched (docs/RELIABILITY.md) and asks
`check_resume` whether its optimizer state can continue this run. The optimizer's layout says what
wrote it: one group of the NeRF's parameters (plain training and Jacobi shaping; --fix_density
leaves alpha_linear out), the NeRF's then the Semantic-NeRF heads' (the joint protocol), or the
heads' alone (the fine-tune protocol); Semantic-NeRF checkpoints also record their protocol and
class count. A mismatch is named by its cause: the mode, the protocol, the label space or
--fix_density.
"""
from models.semantic import SEMANTIC_KEY
from utils.errors import InputError

HEAD_TENSORS = 8           # two heads (coarse, fine) of two Linear layers, weight and bias each


def nerf_tensor_count(renderer, fix_density):
    """Parameters of the NeRF's optimizer group (without side effects, unlike nerf_parameters)."""
    return sum(1 for net in (renderer.coarse, renderer.fine) for name, _ in net.named_parameters()
               if not (fix_density and name.startswith("alpha_linear")))


def expected_layout(opts, renderer):
    """Tensors per optimizer group of this run (training/objectives.py, training/semantic.py)."""
    nerf = nerf_tensor_count(renderer, opts.train.fix_density)
    if opts.mode != "semantic_nerf":
        return [nerf]
    return [HEAD_TENSORS] if opts.semantic.protocol == "finetune" else [nerf, HEAD_TENSORS]


def saved_layout(data):
    groups = (data.get("optimizer_state_dict") or {}).get("param_groups") or []
    return [len(g.get("params", [])) for g in groups if isinstance(g, dict)]


def _what_wrote(data, layout, renderer):
    """What the optimizer layout of a checkpoint says about the run that wrote it."""
    heads = data.get(SEMANTIC_KEY)
    kind = (f"a Semantic-NeRF run ({heads.get('protocol', 'joint')} protocol)" if isinstance(heads, dict)
            else "a plain NeRF or shaping run")
    density = {nerf_tensor_count(renderer, True): "with --fix_density",
               nerf_tensor_count(renderer, False): "without --fix_density"}.get(layout[0] if layout else None)
    if density is None and not (isinstance(heads, dict) and layout == [HEAD_TENSORS]):
        density = "of another network"
    return f"{kind} {density}" if density else kind


def check_resume(opts, path, data, renderer, num_classes=None):
    """InputError naming the cause when the checkpoint at `path` (its dict `data`) cannot continue the
    run of `opts`; num_classes: the classes of this run's label space (Semantic-NeRF)."""
    if not data.get("optimizer_state_dict"):
        raise InputError(f"--resume: {path} holds no optimizer state (a checkpoint written without one, e.g. the "
                         "original's render-only copy); drop --resume to start from its weights")
    heads = data.get(SEMANTIC_KEY)
    semantic = opts.mode == "semantic_nerf"
    if semantic and not isinstance(heads, dict):
        raise InputError(f"--resume: {path} holds no Semantic-NeRF heads: it was written by a plain NeRF or shaping "
                         "run; to train Semantic-NeRF from its weights give it as --ckpt_path without --resume")
    if not semantic and isinstance(heads, dict):
        raise InputError(f"--resume: {path} was written by a Semantic-NeRF run ({heads.get('protocol', 'joint')}); "
                         "continue it with --semantic_nerf (or --semantic_finetune for the fine-tune protocol)")
    if semantic:
        protocol = heads.get("protocol")
        if protocol is not None and protocol != opts.semantic.protocol:
            flag = "--semantic_finetune" if protocol == "finetune" else "--semantic_nerf without --semantic_finetune"
            raise InputError(f"--resume: {path} was written by the Semantic-NeRF {protocol} protocol, this run is "
                             f"{opts.semantic.protocol}; continue it with {flag}")
        space = "instance" if opts.seeds is not None and opts.seeds.instance else "semantic"
        saved, saved_space = heads.get("num_classes"), heads.get("label_space")
        if saved_space is not None and saved_space != space:
            raise InputError(f"--resume: {path} holds Semantic-NeRF heads of the {saved_space} label space, this run "
                             f"labels the {space} one: resume with the label space it was trained on "
                             f"({'with' if saved_space == 'instance' else 'without'} --test_instance)")
        if num_classes is not None and saved is not None and saved != num_classes:
            raise InputError(f"--resume: {path} holds Semantic-NeRF heads for {saved} classes; this run's {space} "
                             f"label space has {num_classes}: resume with the label space it was trained on "
                             "(--test_instance or not)")
    layout, expected = saved_layout(data), expected_layout(opts, renderer)
    if layout != expected:
        what = _what_wrote(data, layout, renderer)
        fix = " --fix_density must match the run that wrote it;" if not semantic or opts.semantic.protocol == "joint" \
            else ""
        raise InputError(f"--resume: the optimizer state in {path} does not fit this run (parameter groups of "
                         f"{layout} tensors, this run has {expected}): it was written by {what};{fix} resume with "
                         "that run's flags")


def ray_budget_note(opts, scene):
    """The warning line when --N_rays asks for more rays per step than the training pixels a training
    run draws from (each step then takes all of them, as the original's slicing does), or None."""
    if opts.train.batching == "fixed":
        return None
    if opts.mode == "semantic_nerf" and opts.semantic.protocol == "finetune":
        return None                     # documented: all labelled pixels when there are fewer than N_rays
    n, h, w = opts.train.n_rays, scene.height, scene.width
    frames = len(scene.train) if opts.train.batching == "batching" else 1
    pixels = frames * h * w
    if n <= pixels:
        return None
    where = f"{frames} training views" if frames > 1 else "one training view a step"
    return (f"warning: --N_rays {n} is more than the {pixels} pixels it draws from ({where} of {w}x{h}): each step "
            f"takes all {pixels}")
