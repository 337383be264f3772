"""Surgery: the only code that changes a model's widths.

- `apply_structure(model, alive)` rebuilds a model without its dead channels
  and copies the surviving slices of every per-channel weight;
- `resize(model, widths)` rebuilds a model with new widths per group (wider
  or narrower) and fresh weights, for expansion and uniform baselines;
- `zero_dead_channels(model, alive)` zeroes the dead channels' weights in
  place, the "masked seed" that a rebuilt model must match exactly.

All three stand on `keras.models.clone_model`: each layer is re-created from
its config, edited by its rule's `resize` hook (see `morphcli.core.rules`), and
the weights are sliced by its rule's `weights` axis spec.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from morphcli.core import keras_adapter
from morphcli.core.graph import ChannelGraph, LayerNode, Space, build_graph
from morphcli.core.rules import IN
from morphcli.errors import ModelError


def _widths_from_alive(graph: ChannelGraph, alive: Mapping[int, np.ndarray]) -> dict[int, int]:
    widths = {}
    for gid, mask in alive.items():
        group = graph.groups[gid]
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (group.width,):
            raise ModelError(
                f"Alive mask of group {gid} has {mask.size} entries but the group has "
                f"{group.width} channels. Received: mask_shape={mask.shape}"
            )
        if not mask.all() and not group.prunable:
            raise ModelError(f"Group {gid} is frozen ({'; '.join(group.frozen)}) "
                             "and cannot lose channels.")
        if not mask.any():
            raise ModelError(f"Group {gid} would have no channels left. "
                             "Every group keeps at least one channel.")
        widths[gid] = int(mask.sum())
    return widths


def _clone(model, graph: ChannelGraph, widths: Mapping[int, int]):
    """Clones `model`, editing each layer's config for the new widths."""
    import keras

    nodes: dict[int, LayerNode] = {}
    for node in graph.nodes:
        nodes.setdefault(id(node.layer), node)

    def clone_nested(submodel):
        # A nested model's inputs take the new widths of the spaces feeding it.
        inputs = [
            keras.Input(batch_shape=(*t.shape[:-1], int(graph.width(space, widths))),
                        dtype=t.dtype, name=t.name)
            for t, space in zip(submodel.inputs, graph.submodels[id(submodel)], strict=True)
        ]
        return keras.models.clone_model(submodel, input_tensors=inputs[0] if len(inputs) == 1
                                        else inputs, clone_function=clone_layer)

    def clone_layer(layer):
        if not isinstance(layer, keras.layers.Layer):
            # A keras.ops operation: stateless; a fresh one, so the seed's graph
            # gains no node.
            return type(layer).from_config(layer.get_config())
        if id(layer) in graph.submodels:
            return clone_nested(layer)
        node = nodes.get(id(layer))
        config = layer.get_config()
        if node is not None and node.rule is not None and node.rule.resize is not None:
            width_in = int(graph.width(node.inputs[0], widths))
            width_out = int(graph.width(node.outputs[0], widths))
            config = node.rule.resize(config, width_in, width_out, node)
        return keras_adapter.from_config_trusted(layer, config)

    try:
        return keras.models.clone_model(model, clone_function=clone_layer)
    except (ValueError, TypeError) as err:
        raise ModelError(f"Could not rebuild model `{model.name}` with new widths: {err}") from err


def _weight_specs(node: LayerNode) -> list[dict[int, str]]:
    if node.rule is not None and node.rule.weights is not None:
        return node.rule.weights(node)
    return [{} for _ in node.layer.weights]


def _space(node: LayerNode, role: str) -> Space:
    return node.inputs[0] if role == IN else node.outputs[0]


def _first_calls(graph: ChannelGraph):
    seen = set()
    for node in graph.nodes:
        if getattr(node.layer, "weights", None) and id(node.layer) not in seen:
            seen.add(id(node.layer))
            yield node


def apply_structure(model, alive: Mapping[int, np.ndarray], graph: ChannelGraph | None = None):
    """Rebuilds `model` without its dead channels, keeping the surviving weights
    (`rebuild` without the new model's graph; see there)."""
    return rebuild(model, alive, graph)[0]


def rebuild(model, alive: Mapping[int, np.ndarray], graph: ChannelGraph | None = None):
    """Rebuilds `model` without its dead channels, keeping the surviving weights.

    Args:
        model: The seed model (left untouched).
        alive: Boolean mask per group id; groups not listed keep every channel.
        graph: `build_graph(model)`, if already computed.

    Returns:
        `(new_model, new_graph)`: a new functional model whose predictions equal
        those of the seed with the dead channels' outputs zeroed (see
        `zero_dead_channels`), and its channel graph.

    Raises:
        ModelError: If a mask has the wrong size, empties a group or prunes a
            frozen group.
    """
    graph = graph or build_graph(model)
    widths = _widths_from_alive(graph, alive)
    new_model = _clone(model, graph, widths)
    new_graph = build_graph(new_model)
    for node in _first_calls(graph):
        new_layer = new_graph.node(node.name).layer
        for old, new, spec in zip(node.layer.weights, new_layer.weights, _weight_specs(node),
                                  strict=True):
            value = np.asarray(old.numpy())
            for axis, role in spec.items():
                value = np.take(value, graph.indices(_space(node, role), alive), axis=axis)
            if value.shape != tuple(new.shape):
                raise AssertionError(f"{node.name}: sliced {value.shape} into {new.shape}")
            new.assign(value)
    return new_model, new_graph


def resize(model, widths: Mapping[int, int], graph: ChannelGraph | None = None):
    """Rebuilds `model` with `widths[g]` channels in each listed group, fresh weights.

    Args:
        model: The model whose structure to scale (left untouched).
        widths: New channel count per group id (larger or smaller than now).
        graph: `build_graph(model)`, if already computed.

    Returns:
        A new, freshly initialised functional model.
    """
    graph = graph or build_graph(model)
    for gid, width in widths.items():
        group = graph.groups[gid]
        if width != group.width and not group.prunable:
            raise ModelError(f"Group {gid} is frozen ({'; '.join(group.frozen)}) "
                             f"and keeps {group.width} channels. Received: width={width}")
        if width < 1:
            raise ModelError(f"Every group keeps at least one channel. Received: width={width}")
    return _clone(model, graph, {g: int(w) for g, w in widths.items()})


def zero_dead_channels(model, alive: Mapping[int, np.ndarray],
                       graph: ChannelGraph | None = None) -> None:
    """Zeroes, in place, every weight entry indexed by a dead channel.

    Both sides are zeroed: what produces a dead channel (conv/dense outputs,
    batch-norm gamma and beta...) and what reads it (the next kernels' input
    rows), so a dead channel contributes nothing downstream even after a
    layer with f(0) != 0 (a sigmoid, `x + 3.0`).
    """
    graph = graph or build_graph(model)
    for node in _first_calls(graph):
        for weight, spec in zip(node.layer.weights, _weight_specs(node), strict=True):
            value = np.array(weight.numpy())
            for axis, role in spec.items():
                keep = graph.indices(_space(node, role), alive)
                dead = np.setdiff1d(np.arange(value.shape[axis]), keep)
                index = [slice(None)] * value.ndim
                index[axis] = dead
                value[tuple(index)] = 0
            weight.assign(value)
