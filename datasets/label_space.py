"""The classes user labels speak of: a clicks file's `classes` list, or the scene's own classes.

A class has a raw id (> 0; 0 is void / unlabelled), a name and a colour. The scene's label maps
hold the index of the raw id in `semantic_classes` (datasets/scene.py), so a LabelSpace also
gives the index of every raw id.

`classes` in a clicks file (YAML or JSON), each entry a name, or {name, id, colour}:
    classes: [wall, floor, {name: chair, colour: [200, 40, 40]}]      # ids 1, 2, 3 in list order
    classes: [{name: wall, id: 93}, {name: floor, id: 40}]            # explicit ids (all or none)
Colours are [r, g, b] in 0..255 or '#rrggbb'; a class without one gets the PASCAL palette colour
of its id (utils.colormaps.label_colormap).
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from utils.colormaps import label_colormap
from utils.errors import InputError


@dataclass(frozen=True)
class LabelSpace:
    names: Dict[int, str]                          # raw id -> name (no void)
    colours: Dict[int, Tuple[int, int, int]]       # raw id -> colour
    from_scene: bool = False                       # the scene's ground-truth classes
    explicit_ids: bool = True                      # ids given (False: numbered 1, 2, ... by the list)

    @property
    def ids(self):
        """Sorted raw ids with void 0 first: the scene's `semantic_classes`."""
        return np.array([0] + sorted(self.names), dtype=np.int64)

    def index(self, raw_id):
        """Index of a raw id in `ids` (the value the scene's label maps hold)."""
        return int(np.searchsorted(self.ids, raw_id))

    def colour_map(self):
        """[C, 3] uint8 colours in the order of `ids` (row 0 = void, black)."""
        out = np.zeros((len(self.ids), 3), dtype=np.uint8)
        for k, raw in enumerate(self.ids[1:], start=1):
            out[k] = self.colours[int(raw)]
        return out

    def by_name(self):
        return {name: raw for raw, name in self.names.items()}


def palette_colour(raw_id):
    return tuple(int(c) for c in label_colormap(int(raw_id) + 1)[int(raw_id)])


def parse_colour(value, where):
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
        except ValueError:
            pass
    elif (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        return tuple(int(c) for c in value)
    raise InputError(f"{where}: colour {value!r}: expected [r, g, b] in 0..255 or '#rrggbb'")


def _positive_id(value, where):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{where}: id {value!r}: expected an integer of at least 1 (0 is unlabelled)")
    return int(value)


def parse_classes(entries, where):
    """LabelSpace of a `classes` list (module docstring); `where` names the file in messages."""
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{where}: 'classes' must be a non-empty list of names or {{name, id, colour}}")
    parsed = []
    for k, e in enumerate(entries):
        at = f"{where}: classes[{k}] {e!r}"
        if isinstance(e, str):
            e = {"name": e}
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"].strip():
            raise InputError(f"{at}: expected a name or {{name, id, colour}}")
        unknown = set(e) - {"name", "id", "colour", "color"}
        if unknown:
            raise InputError(f"{at}: unknown key(s) {sorted(unknown)} (expected name, id, colour)")
        colour = e.get("colour", e.get("color"))
        parsed.append((e["name"].strip(), None if "id" not in e else _positive_id(e["id"], at),
                       None if colour is None else parse_colour(colour, at)))
    with_ids = [p[1] is not None for p in parsed]
    if any(with_ids) and not all(with_ids):
        k = with_ids.index(False)
        raise InputError(f"{where}: classes[{k}] '{parsed[k][0]}' has no id while others have; give every class "
                         "an id or none (then ids are 1, 2, ... in list order)")
    names, colours = {}, {}
    for k, (name, raw, colour) in enumerate(parsed):
        raw = raw if raw is not None else k + 1
        if raw in names:
            raise InputError(f"{where}: classes[{k}] '{name}': id {raw} is also '{names[raw]}'")
        if name in names.values():
            raise InputError(f"{where}: classes[{k}]: the name '{name}' appears twice")
        names[raw] = name
        colours[raw] = colour if colour is not None else palette_colour(raw)
    return LabelSpace(names, colours, explicit_ids=all(with_ids))


def scene_space(scene):
    """The LabelSpace of a scene with ground-truth labels (names: scene.class_names, else the id)."""
    names = scene.class_names or {}
    cmap = scene.colour_map
    out_names, colours = {}, {}
    for k, raw in enumerate(np.asarray(scene.semantic_classes)[1:], start=1):
        raw = int(raw)
        out_names[raw] = names.get(raw, str(raw))
        colours[raw] = (tuple(int(c) for c in cmap[k]) if cmap is not None and len(cmap) > k
                        else palette_colour(raw))
    return LabelSpace(out_names, colours, from_scene=True)


def resolve_label(label, space, where, names: Optional[Dict[str, int]] = None):
    """Raw id of a click's `label` (a class name or a raw id) in `space`; InputError otherwise."""
    names = names if names is not None else space.by_name()
    if isinstance(label, str):
        if label in names:
            return names[label]
        shown = ", ".join(sorted(names)[:12]) + (", ..." if len(names) > 12 else "")
        raise InputError(f"{where}: unknown class name '{label}' (known: {shown})")
    if isinstance(label, int) and not isinstance(label, bool):
        if label in space.names:
            return int(label)
        shown = ", ".join(str(i) for i in sorted(space.names)[:12]) + (", ..." if len(space.names) > 12 else "")
        raise InputError(f"{where}: unknown class id {label} (known ids: {shown})")
    raise InputError(f"{where}: label {label!r}: expected a class name or an integer class id")
