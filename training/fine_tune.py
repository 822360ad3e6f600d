"""How a run that starts from a checkpoint without --resume begins: its learning-rate schedule and
its Adam state (--shaping_lr, --shaping_optimizer; docs/SHAPING.md, "Shaping that keeps the
picture").

The original starts such a run (the paper's shaping fine-tune) at step 0 with a fresh Adam at the
full --lrate: `restart` and `fresh`, the defaults. The alternatives:

- `continue`: the run goes on from the learning rate the checkpoint's run had reached (the rate
  in its optimizer state: after its last step P, lrate * 0.1^(P / lrate_decay)) and decays it with
  this run's --lrate_decay: step s runs at reached * 0.1^(s / lrate_decay). With the same --lrate
  and --lrate_decay as the plain run this is lrate * 0.1^((P + s) / lrate_decay), the rate of step
  P + 1 + s of the plain run continued; a plain run on another schedule (e.g. a short run with a
  faster decay) is continued from where it actually stopped. A checkpoint without optimizer state
  gives the formula with this run's flags. The trainer holds the schedule as a base rate and a step
  offset (`Trainer.lr_base`, `lr_offset`: lr after step s = base * 0.1^((s + offset) / lrate_decay);
  the original's is --lrate and 0), saved in the checkpoints of such a run (`jnerf_state.lr_schedule`)
  so that --resume keeps it.
- `restore`: Adam's per-parameter state (the moments exp_avg, exp_avg_sq and the step counters)
  is loaded from the checkpoint's optimizer_state_dict; the learning rate and the other
  hyperparameters stay this run's. The checkpoint's parameters are the coarse then the fine
  network's (the original's order, training.objectives.nerf_parameters) with or without the
  alpha_linear tensors (--fix_density); they are matched to this run's by name, so the two runs may
  differ in --fix_density (a tensor the checkpoint does not train starts fresh).
"""
from training.objectives import nerf_parameters
from utils.errors import InputError

LR_SCHEDULE_KEY = "lr_schedule"        # in jnerf_state: {base, offset}; absent = the original's (the checkpoints stay its)


def reached_rate(data, lrate, lrate_decay):
    """(learning rate, where from) that checkpoint `data`'s run had reached after its last step: the
    rate in its optimizer state ('checkpoint'), else lrate * 0.1^(step / lrate_decay) ('formula')."""
    groups = (data.get("optimizer_state_dict") or {}).get("param_groups") or []
    if groups and isinstance(groups[0].get("lr"), (int, float)):
        return float(groups[0]["lr"]), "checkpoint"
    return lrate * (0.1 ** (int(data["global_step"]) / lrate_decay)), "formula"


def parameter_names(renderer, fix_density):
    """The checkpoint names ('network_coarse_state_dict.<name>', ...) of nerf_parameters(renderer,
    fix_density), in that order (no parameter is changed)."""
    names = []
    for key, net in (("network_coarse_state_dict", renderer.coarse), ("network_fine_state_dict", renderer.fine)):
        names += [f"{key}.{n}" for n, _ in net.named_parameters()
                  if not (fix_density and n.startswith("alpha_linear"))]
    return names


def restore_adam_state(path, data, optimizer, renderer):
    """Load the per-parameter Adam state of checkpoint `data` (read from `path`) into `optimizer`,
    matching parameters by name; returns the number of tensors whose state was restored. The
    optimizer's parameter groups (learning rate, betas, ...) are kept. InputError naming the file
    when the checkpoint holds no optimizer state or one of another network."""
    saved = data.get("optimizer_state_dict") or {}
    groups = saved.get("param_groups") or []
    if not saved.get("state") and not groups:
        raise InputError(f"--shaping_optimizer restore: {path} holds no optimizer state")
    saved_ids = [i for g in groups for i in g["params"]]
    layouts = {len(parameter_names(renderer, fd)): fd for fd in (False, True)}
    if len(saved_ids) not in layouts:
        raise InputError(f"--shaping_optimizer restore: the optimizer state in {path} covers {len(saved_ids)} tensors; "
                         f"this network has {max(layouts)} ({min(layouts)} without alpha_linear, --fix_density)")
    saved_by_name = dict(zip(parameter_names(renderer, layouts[len(saved_ids)]), saved_ids))
    names = {id(p): n for n, p in zip(parameter_names(renderer, False), nerf_parameters(renderer))}
    current = optimizer.state_dict()
    state, restored = {}, 0
    cur_ids = [i for g in current["param_groups"] for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in zip(cur_ids, params):
        name = names.get(id(p))
        st = saved["state"].get(saved_by_name.get(name)) if name in saved_by_name else None
        if not st:
            continue                          # not trained by the checkpoint's run: Adam starts it fresh
        for key in ("exp_avg", "exp_avg_sq"):
            if key not in st or tuple(st[key].shape) != tuple(p.shape):
                raise InputError(f"--shaping_optimizer restore: the optimizer state in {path} does not match "
                                 f"{name} (expected {key} of shape {tuple(p.shape)})")
        state[i] = {k: v.clone() for k, v in st.items()}
        restored += 1
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    return restored
