"""The structure file: a learned (or chosen) width for every channel group.

`structure.json` is what `morph shrink` learns and what `morph report
--structure` and `morph expand` read. It is versioned, and groups are matched
to a model by the layers they contain, not by their ids, so it stays valid for
the same architecture loaded from another file.

Format (version 1)::

    {"format": "morphcli.structure", "version": 1,
     "model": "resnet20", "resource": "flops",
     "groups": [{"id": 3, "layers": ["conv1", "bn1", ...], "width": 16,
                 "alive": 9, "alive_indices": [0, 2, ...], "prunable": true}],
     "layers": [{"name": "conv1", "type": "Conv2D", "channels_in": 3,
                 "channels_out": 9, "seed_channels_out": 16}],
     "cost": {"before": {"flops": ...}, "after": {"flops": ...}}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from morphcli.core.graph import ChannelGraph
from morphcli.errors import MorphError

FORMAT, VERSION = "morphcli.structure", 1


@dataclass
class Structure:
    """Alive channels per group, keyed by the group's first layer name."""

    alive: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def masks_for(self, graph: ChannelGraph) -> dict[int, np.ndarray]:
        """Alive masks keyed by the group ids of `graph`.

        Raises:
            MorphError: If the structure does not fit the model.
        """
        masks = {}
        by_key = {_key(g): g for g in graph.groups.values()}
        missing = sorted(set(by_key) - set(self.alive))
        if missing:
            raise MorphError(
                f"The structure does not fit this model: it lists no group `{missing[0]}`"
                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; a "
                "structure file names every group of its model.",
                hint="use the model the structure was learned from, and an untouched file.")
        for key, mask in self.alive.items():
            group = by_key.get(key)
            if group is None or group.width != mask.size:
                found = "no such group" if group is None else f"width {group.width}"
                raise MorphError(
                    f"The structure does not fit this model: group `{key}` has "
                    f"{mask.size} channels in the structure file but {found} in the model.",
                    hint="use the model the structure was learned from.",
                )
            if not mask.all() and not group.prunable:
                raise MorphError(
                    f"The structure removes channels of group `{key}`, which is frozen "
                    f"({'; '.join(group.frozen)}). Received: alive={int(mask.sum())} of "
                    f"{group.width}", hint="a frozen group keeps all its channels.")
            if not mask.all():
                masks[group.id] = mask
        return masks

    def widths_for(self, graph: ChannelGraph) -> dict[int, int]:
        return {gid: int(m.sum()) for gid, m in self.masks_for(graph).items()}


def _key(group) -> str:
    return group.key


def to_dict(graph: ChannelGraph, alive: Mapping[int, np.ndarray], **meta: Any) -> dict:
    """The JSON-ready structure of `graph` under `alive` masks (plus `meta`)."""
    groups = []
    for group in graph.groups.values():
        mask = np.asarray(alive.get(group.id, np.ones(group.width, bool)), dtype=bool)
        groups.append({
            "id": group.id, "key": _key(group), "layers": group.members,
            "width": group.width, "alive": int(mask.sum()),
            "alive_indices": np.flatnonzero(mask).tolist(),
            "prunable": group.prunable, "frozen": group.frozen,
        })
    layers = []
    for node in graph.nodes:
        if not (node.inputs and node.outputs) or node.rule is None or not node.rule.resize:
            continue
        layers.append({
            "name": node.name, "type": node.type,
            "channels_in": len(graph.indices(node.inputs[0], alive)),
            "channels_out": len(graph.indices(node.outputs[0], alive)),
            "seed_channels_out": int(graph.width(node.outputs[0])),
        })
    return {"format": FORMAT, "version": VERSION, **meta, "groups": groups, "layers": layers}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mask(group: Mapping) -> np.ndarray:
    """A group's alive mask, every field checked (a hand-edited file is input too)."""
    width, indices = group["width"], group["alive_indices"]
    key = group["key"]
    if not _is_int(width) or width < 1:
        raise ValueError(f"group `{key}` has width {width!r}")
    if not isinstance(indices, list) or not all(_is_int(i) for i in indices):
        raise ValueError(f"group `{key}` has alive_indices that are not a list of integers")
    if not indices:
        raise ValueError(f"group `{key}` keeps no channel")
    if len(set(indices)) != len(indices):
        raise ValueError(f"group `{key}` lists a channel twice in alive_indices")
    if min(indices) < 0 or max(indices) >= width:
        raise ValueError(f"group `{key}` has an alive index outside 0..{width - 1}")
    if "alive" in group and group["alive"] != len(indices):
        raise ValueError(f"group `{key}` says alive={group['alive']!r} but lists "
                         f"{len(indices)} alive_indices")
    mask = np.zeros(width, dtype=bool)
    mask[indices] = True
    return mask


def load(path: str | Path) -> Structure:
    """Reads a structure file.

    Raises:
        MorphError: Missing file, invalid JSON, or not a morphcli structure.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MorphError(f"Structure file not found. Received: path={str(path)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MorphError(f"Structure file {path} is not valid JSON ({err}).") from None
    return from_dict(data, path)


def from_dict(data: Any, path: str | Path | None = None) -> Structure:
    """A structure from the dict a structure file holds (`Shrinker.structure()`).

    Raises:
        MorphError: Not a morphcli structure, or a damaged one (the messages
            name `path`, the file it was read from, if any).
    """
    where = f"Structure file {path}" if path is not None else "The structure"
    path = path if path is not None else "The structure"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MorphError(f"{path} is not a morphcli structure file (no \"format\": \"{FORMAT}\").")
    if data.get("version") != VERSION:
        raise MorphError(f"{path} has structure version {data.get('version')}; this morphcli "
                         f"reads version {VERSION}.")
    alive = {}
    try:
        for group in data["groups"]:
            key = str(group["key"])
            if key in alive:
                raise ValueError(f"group `{key}` is listed twice")
            alive[key] = _mask(group)
    except (KeyError, TypeError, ValueError) as err:
        detail = f"missing {err}" if isinstance(err, KeyError) else str(err)
        raise MorphError(
            f"{where} is damaged: {detail}. Expected each group with a `key`, a "
            "`width` and `alive_indices`: distinct integers from 0 to width - 1, at least "
            "one, as many as `alive`.") from None
    meta = {k: v for k, v in data.items() if k not in ("groups", "layers")}
    return Structure(alive, meta)
