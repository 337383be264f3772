"""Surgery: the only code that changes a model's widths.

- `apply_structure(model, alive)` rebuilds a model without its dead channels
  and copies the surviving slices of every per-channel weight;
- `resize(model, widths)` rebuilds a model with new widths per group (wider
  or narrower) and fresh weights, for expansion and uniform baselines;
- `zero_dead_channels(model, alive)` zeroes the dead channels' weights in
  place, the "masked seed" that a rebuilt model must match exactly.

A dead channel is not always zero: after its kernel is zeroed, a batch norm's
beta (or its mean, with `scale=False`) or a layer with f(0) != 0 still sends a
constant into the next kernel. `rebuild` measures that constant on the seed
with the dead channels' producers zeroed and folds it into the reading layer's
bias (or, for a conv without bias, the moving mean of the batch norm it feeds),
so the narrower model computes what the seed computes. The fold is exact where
every output of the reading layer sees the whole kernel (1x1 and `valid` convs,
dense layers); at the borders of a zero-padded conv the constant is partly
outside the input and the fold is approximate (`deviation` measures by how much).

All three stand on `keras.models.clone_model`: each layer is re-created from
its config, edited by its rule's `resize` hook (see `morphcli.core.rules`), and
the weights are sliced by its rule's `weights` axis spec.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from morphcli.core import keras_adapter, rules
from morphcli.core.graph import ChannelGraph, build_graph
from morphcli.core.layers import LayerNode, Space
from morphcli.core.rules import IN, OUT, Kind
from morphcli.core.terms import is_inner
from morphcli.errors import ModelError

# A dead channel carries a constant when its values over a random batch and all
# positions differ by less than this (relative to 1 + |value|).
CONSTANT_TOLERANCE = 1e-5


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
            inner = {"inner": [int(graph.width(s, widths)) for s in node.inner]} if (
                node.inner) else {}
            config = node.rule.resize(config, width_in, width_out, node, **inner)
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
    return node.space(role)


def _first_calls(graph: ChannelGraph):
    seen = set()
    for node in graph.nodes:
        if getattr(node.layer, "weights", None) and id(node.layer) not in seen:
            seen.add(id(node.layer))
            yield node


def apply_structure(model, alive: Mapping[int, np.ndarray], graph: ChannelGraph | None = None,
                    fold_constants: bool = True):
    """Rebuilds `model` without its dead channels, keeping the surviving weights
    (`rebuild` without the new model's graph; see there)."""
    return rebuild(model, alive, graph, fold_constants)[0]


def rebuild(model, alive: Mapping[int, np.ndarray], graph: ChannelGraph | None = None,
            fold_constants: bool = True):
    """Rebuilds `model` without its dead channels, keeping the surviving weights.

    Args:
        model: The seed model (left untouched).
        alive: Boolean mask per group id; groups not listed keep every channel.
        graph: `build_graph(model)`, if already computed.
        fold_constants: Fold the constants that dead channels still carry into
            the layers that read them (see the module docstring). Off, the new
            model equals the seed with the dead channels zeroed on both sides
            (`zero_dead_channels(readers=True)`).

    Returns:
        `(new_model, new_graph)`: a new functional model whose predictions equal
        those of the seed with the dead channels' producers zeroed
        (`zero_dead_channels(readers=False)`; exactly, except at the borders of
        zero-padded convs reading a constant), and its channel graph.

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
        if node.rule is not None and node.rule.rescale is not None:
            node.rule.rescale(node, new_layer, *(int(graph.width(s, widths)) for s in node.inner))
    if fold_constants:
        _fold_constants(model, graph, alive, new_model, new_graph)
    return new_model, new_graph


def _readers(graph: ChannelGraph, alive) -> list[tuple[LayerNode, int, np.ndarray]]:
    """Top-level kernels (called once) that read dead channels: (node, which input,
    the dead indices). An attention reads up to three inputs, each a reader."""
    found = []
    for node in _first_calls(graph):
        if node.kind != Kind.SOURCE or "/" in node.name or "#" in node.name:
            continue
        if len(node.inputs) != 1 and not (node.rule and node.rule.fold):
            continue
        seen = set()
        for index, space in enumerate(node.inputs):
            if space in seen:  # the same tensor twice (self-attention): once
                continue
            seen.add(space)
            width = int(graph.width(space))
            dead = np.setdiff1d(np.arange(width), graph.indices(space, alive))
            if dead.size:
                found.append((node, index, dead))
    return found


def _input_tensor(node: LayerNode, index: int):
    inputs = node.layer.input
    return inputs[index] if isinstance(inputs, list | tuple) else inputs


def _carried(model, graph: ChannelGraph, alive, readers) -> list[np.ndarray | None]:
    """What each reader's input carries on its dead channels (full-width vector, zero
    elsewhere) when the dead channels' producers are zeroed: the constant, or NaN
    where a dead channel varies (a zero-padded depthwise conv turns a constant into
    a border pattern); None when every dead channel is exactly zero."""
    import keras

    saved = [(w, w.numpy()) for node in _first_calls(graph) for w in node.layer.weights]
    try:
        zero_dead_channels(model, alive, graph, readers=False)
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        probe = keras.Model(inputs, [_input_tensor(node, i) for node, i, _ in readers])
        rng = np.random.default_rng(0)
        x = [rng.random((2, *t.shape[1:])).astype("float32") for t in model.inputs]
        values = probe(x[0] if len(x) == 1 else x, training=False)
    except (ValueError, TypeError, AttributeError):  # e.g. integer inputs: nothing folded
        return [None] * len(readers)
    finally:
        for weight, value in saved:
            weight.assign(value)
    values = values if isinstance(values, list | tuple) else [values]
    carried = []
    for (_, _, dead), value in zip(readers, values, strict=True):
        flat = np.asarray(value).reshape(-1, np.shape(value)[-1])[:, dead]
        const = flat.mean(axis=0)
        steady = np.abs(flat - const).max(axis=0) <= CONSTANT_TOLERANCE * (1 + np.abs(const))
        const = np.where(steady, const, np.nan)
        if not np.any(np.nan_to_num(const, nan=1.0)):
            carried.append(None)
            continue
        full = np.zeros(np.shape(value)[-1], dtype="float32")
        full[dead] = const
        carried.append(full)
    return carried


def _fold_constants(model, graph, alive, new_model, new_graph) -> None:
    readers = _readers(graph, alive)
    if not readers:
        return
    for (node, index, _), full in zip(readers, _carried(model, graph, alive, readers),
                                      strict=True):
        full = None if full is None else np.nan_to_num(full, nan=0.0)  # varying: not foldable
        if full is None or not np.any(full):
            continue
        if node.rule.fold is not None:  # the rule knows where its input's constant goes
            node.rule.fold(node, new_graph.node(node.name).layer, index, full,
                           [graph.indices(s, alive) for s in node.inner])
            continue
        # The reader's response to the constant alone, before its fused activation.
        shape = (1, *node.in_shapes[0])
        linear = _without_activation(node, shape)
        if linear is None:
            continue
        response = np.asarray(linear(np.broadcast_to(full, shape).astype("float32"))) - (
            np.asarray(linear(np.zeros(shape, "float32"))))
        center = tuple(d // 2 for d in response.shape[1:-1])
        shift = response[(0, *center)]
        kept = graph.indices(node.outputs[0], alive)
        _add_to_output(new_model, new_graph.node(node.name), shift[kept])


def _without_activation(node: LayerNode, shape):
    """A copy of the node's layer with the same weights and a linear activation (the
    fold adds to the pre-activation, where the bias sits), or None if it cannot be made."""
    layer, key = node.layer, node.rule.activation
    config = layer.get_config()
    if key is None or config.get(key) in (None, "linear"):
        return layer
    try:
        copy = type(layer).from_config({**config, key: "linear"})
        copy.build(shape)
        copy.set_weights(layer.get_weights())
    except (ValueError, TypeError):
        return None
    return copy


def _add_to_output(new_model, node: LayerNode, shift: np.ndarray) -> None:
    """Adds `shift` to every output of `node`'s layer: to its bias, or else to the
    input of the batch norm (a layer with moving statistics, `Rule.moving`) that
    alone reads it, as minus its moving mean."""
    specs = node.rule.weights(node) if node.rule and node.rule.weights else []
    for weight, spec in zip(node.layer.weights, specs, strict=False):
        if spec == {0: OUT} and len(weight.shape) == 1:
            weight.assign(np.asarray(weight.numpy()) + shift)
            return
    readers = [layer for layer in new_model.layers
               if _reads(layer, node.layer.output) and layer is not node.layer]
    rule = rules.get(readers[0]) if len(readers) == 1 else None
    if rule is not None and rule.moving is not None:
        mean = getattr(readers[0], rule.moving[0])
        mean.assign(np.asarray(mean.numpy()) - shift)


def _reads(layer, tensor) -> bool:
    try:
        inputs = layer.input
    except (AttributeError, ValueError):  # never called, or called several times
        return False
    return any(t is tensor for t in (inputs if isinstance(inputs, list | tuple) else [inputs]))


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
                       graph: ChannelGraph | None = None, readers: bool = True) -> None:
    """Zeroes, in place, every weight entry indexed by a dead channel.

    With `readers` (the default), both sides are zeroed: what produces a dead
    channel (conv/dense outputs, batch-norm gamma and beta...) and what reads
    it (the next kernels' input rows), so a dead channel contributes nothing
    downstream even after a layer with f(0) != 0 (a sigmoid, `x + 3.0`).
    Without, only what the regularizer drives to zero is: the kernels and biases
    that produce dead channels and the per-channel scales (batch-norm gamma);
    betas, moving statistics, activations and the readers still see and pass
    on whatever constant a dead channel then carries.
    """
    graph = graph or build_graph(model)
    for node in _first_calls(graph):
        producer = node.kind == Kind.SOURCE
        scale = getattr(node.layer, node.rule.scale, None) if node.rule and node.rule.scale else None
        for weight, spec in zip(node.layer.weights, _weight_specs(node), strict=True):
            if not readers:
                # What the layer produces: its output, and its inner spaces'.
                spec = {axis: role for axis, role in spec.items()
                        if (producer and (role == OUT or is_inner(role)))
                        or (weight is scale and role == IN)}
                if not spec:
                    continue
            value = np.array(weight.numpy())
            for axis, role in spec.items():
                keep = graph.indices(_space(node, role), alive)
                dead = np.setdiff1d(np.arange(value.shape[axis]), keep)
                index = [slice(None)] * value.ndim
                index[axis] = dead
                value[tuple(index)] = 0
            weight.assign(value)


def check(model, alive: Mapping[int, np.ndarray], rebuilt, graph: ChannelGraph | None = None,
          batch: int = 2) -> dict:
    """How exactly `rebuilt` (from `rebuild(model, alive)`) computes what `model`
    computes with its dead channels' producers zeroed, on a random batch.

    Args:
        model: The seed (weights restored after the check).
        alive: The masks `rebuilt` was made with.
        rebuilt: The narrower model.
        graph: `build_graph(model)`, if already computed.
        batch: Random examples (uniform in [0, 1]) to compare on.

    Returns:
        `{"max_abs_delta": float, "approximate": {group id: reason}}`: the largest
        output difference, and the groups whose removal changes the survivors
        (read by a normalization over the channel axis) or whose dead channels'
        constant meets the zero padding of a conv (folded exactly only inside).
    """
    import keras

    graph = graph or build_graph(model)
    approximate: dict[int, str] = {}
    for node in graph.nodes:
        if node.rule is not None and node.rule.mixes_channels and node.inputs:
            for gid in node.inputs[0].groups:
                if gid in alive and not np.all(alive[gid]):
                    approximate.setdefault(gid, f"`{node.name}` normalizes over the channel "
                                                "axis: removing channels changes the survivors")
    readers = _readers(graph, alive)
    for (node, index, _), full in zip(readers, _carried(model, graph, alive, readers),
                                      strict=True):
        if full is None:
            continue
        kernel = node.setting("kernel_size", (1,))
        padded = node.setting("padding") in ("same", "causal") and np.prod(kernel) > 1
        varying = np.flatnonzero(np.isnan(full))
        # A constant folds into a bias: none where the layer has none (or is padded).
        unfoldable = padded or (node.rule.fold is not None
                                and not node.setting("bias", True))
        constant = np.flatnonzero(np.nan_to_num(full, nan=0.0)) if unfoldable else []
        offset = 0
        for gid in node.inputs[index].groups:
            width = graph.groups[gid].width

            def hits(index, lo=offset, hi=offset + width):
                return np.any((np.asarray(index) >= lo) & (np.asarray(index) < hi))

            if hits(varying):
                approximate.setdefault(gid, f"dead channels reach `{node.name}` varying (a "
                                            "zero-padded layer on their constant), which no "
                                            "bias can fold")
            elif hits(constant):
                approximate.setdefault(gid, f"dead channels carry a constant into `{node.name}`, "
                                            + ("whose zero padding the fold cannot follow"
                                               if padded else "which has no bias to fold it into"))
            offset += width
    saved = [(w, w.numpy()) for n in _first_calls(graph) for w in n.layer.weights]
    rng = np.random.default_rng(1)
    x = [rng.random((batch, *t.shape[1:])).astype("float32") for t in model.inputs]
    x = x[0] if len(x) == 1 else x
    try:
        zero_dead_channels(model, alive, graph, readers=False)
        masked = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    finally:
        for weight, value in saved:
            weight.assign(value)
    delta = np.abs(np.asarray(keras.ops.convert_to_numpy(rebuilt(x, training=False))) - masked)
    return {"max_abs_delta": float(delta.max()), "approximate": approximate}
