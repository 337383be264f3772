"""The structure file: a learned (or chosen) width for every channel group.

`structure.json` is what `morph shrink` learns and what `morph report
--structure` and `morph expand` read. It is versioned, and groups are matched
to a model by the layers they contain, not by their ids, so it stays valid for
the same architecture loaded from another file.

Format (version 1)::

    {"format": "morphcli.core.structure", "version": 1,
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

FORMAT, VERSION = "morphcli.core.structure", 1


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
        for key, mask in self.alive.items():
            group = by_key.get(key)
            if group is None or group.width != mask.size:
                found = "no such group" if group is None else f"width {group.width}"
                raise MorphError(
                    f"The structure does not fit this model: group `{key}` has "
                    f"{mask.size} channels in the structure file but {found} in the model.",
                    hint="use the model the structure was learned from.",
                )
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
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MorphError(f"{path} is not a morphcli structure file (no \"format\": \"{FORMAT}\").")
    if data.get("version") != VERSION:
        raise MorphError(f"{path} has structure version {data.get('version')}; this morphcli "
                         f"reads version {VERSION}.")
    alive = {}
    try:
        for group in data["groups"]:
            mask = np.zeros(int(group["width"]), dtype=bool)
            mask[np.asarray(group["alive_indices"], dtype=int)] = True
            alive[str(group["key"])] = mask
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise MorphError(
            f"Structure file {path} is damaged: each group needs `key`, `width` and "
            f"`alive_indices` within the width. Received: {type(err).__name__}: {err}") from None
    meta = {k: v for k, v in data.items() if k not in ("groups", "layers")}
    return Structure(alive, meta)
