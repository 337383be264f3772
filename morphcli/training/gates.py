"""Channel gates: the `gates` regularizer kind (FiGS, Shah et al. 2020, arXiv 2006.09581).

The tool inserts one `ChannelGate` per prunable channel source (conv, dense)
of the seed, trains the gated model with the usual resource-weighted term on
the gates' keep-probabilities, and folds the gates away in the exported model:

- `insert(model)`: a gated copy of the seed (the seed is left untouched);
- `remove(gated)`: the model without gate layers, each gate's inference value
  (0 or 1 per channel) multiplied into the layer before it, so it computes
  exactly what the gated model computes at inference;
- `export(gated, alive)`: `remove`, then `surgery.apply_structure`;
- `rekey(values, graph, other)`: re-keys per-group results between the gated
  model's graph and the seed's (groups matched by their first source layer).

Where a gate goes: after the last layer of the source's per-channel chain
that can absorb it (the source itself, a batch or layer norm with a scale, a
depthwise conv, a LayerScale), following the chain while each tensor has one
consumer and the layers are per-channel: `conv -> bn -> [gate] -> relu`, and
in a MobileNet block `expand -> bn -> relu6 -> depthwise -> bn -> [gate]`.
A zero gate then zeroes everything the next kernels read, so removing the
channel changes nothing, as long as the layers between the gate and those
kernels map 0 to 0 (ReLU, pooling, padding; not a sigmoid, `x + 3.0`, or a
batch norm after a Concatenate).

Example:

>>> gated = insert(seed)
>>> graph = build_graph(gated)
>>> reg = make_regularizer(graph, CostModel(graph), "gates")
>>> ...train `gated` with reg.term()...
>>> shrunk = export(gated, reg.alive_masks(), graph)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

import keras
import numpy as np
from keras import ops

from morphcli.core import keras_adapter
from morphcli.core.graph import ChannelGraph, build_graph
from morphcli.core.layers import LayerNode
from morphcli.core.rules import IN, OUT, Kind
from morphcli.core.surgery import rebuild
from morphcli.errors import ModelError

# The reference's initial keep-probability (log-odds 2.5 there; ours is exactly 0.92).
INIT_PROBABILITY = 0.92
# Logistic-sigmoid relaxation temperature. A relaxed sample sigmoid((logit + noise) / t)
# lies within 0.1 of 0 or 1 unless |logit + noise| < t * ln 9: at t = 0.1 and p = 0.92
# that is 3% of the draws, so training sees nearly the 0/1 masks inference uses; the
# task loss reaches a logit only through those draws (gradient ~ s(1 - s) / t), so a much
# lower temperature (the reference's 1e-3) would leave the logits to the penalty alone.
TEMPERATURE = 0.1
# A gate is on at inference, and its channel alive, when its keep-probability exceeds this.
THRESHOLD = 0.1
# The logit is stored divided by this. Adam moves a variable by about the learning rate
# per step, and a logit travels log-odds(0.92) - log-odds(0.1) = 4.64 before its channel
# dies, where a batch-norm gamma travels 0.99 (1 -> 0.01): at 5, the same shrink settings
# (epochs, learning rate, strength) prune with either kind.
LOGIT_SCALE = 5.0

T = TypeVar("T")


def log_odds(probability):
    """The logit of a probability (or an array of them): log(p / (1 - p))."""
    return np.log(np.asarray(probability, dtype="float64") / (1.0 - np.asarray(probability)))


@keras.saving.register_keras_serializable(package="morphcli")
class ChannelGate(keras.layers.Layer):
    """Multiplies each channel (last axis) by a learned stochastic 0/1 gate.

    Each channel has a logit (stored as `score = logit / logit_scale`); its
    keep-probability is `p = sigmoid(logit)`. In training, one relaxed-Bernoulli
    sample per channel and per call, `sigmoid((logit + log(u) - log(1 - u)) /
    temperature)` with `u` uniform, multiplies the channel everywhere in the
    batch. At inference the gate is deterministic: 1 if `p > threshold`, else 0.

    Args:
        temperature: Relaxation temperature (> 0); lower is closer to 0/1.
        threshold: Keep-probability under which the gate is 0 at inference.
        init_probability: Initial keep-probability of every channel.
        logit_scale: How much faster than other weights the logits learn
            (see `LOGIT_SCALE`).
        seed: Seed of the gate's `keras.random.SeedGenerator` (None draws one
            from Keras's global seed, see `keras.utils.set_random_seed`).
        **kwargs: Base layer arguments (`name`, `dtype`...).
    """

    def __init__(self, temperature: float = TEMPERATURE, threshold: float = THRESHOLD,
                 init_probability: float = INIT_PROBABILITY,
                 logit_scale: float = LOGIT_SCALE, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        for key, value, low, high in [("temperature", temperature, 0.0, math.inf),
                                      ("threshold", threshold, 0.0, 1.0),
                                      ("init_probability", init_probability, 0.0, 1.0),
                                      ("logit_scale", logit_scale, 0.0, math.inf)]:
            if not low < value < high:
                raise ValueError(f"ChannelGate needs {low} < {key} < {high}. "
                                 f"Received: {key}={value}")
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.init_probability = float(init_probability)
        self.logit_scale = float(logit_scale)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        start = float(log_odds(self.init_probability)) / self.logit_scale
        self.score = self.add_weight(name="score", shape=(input_shape[-1],),
                                     initializer=keras.initializers.Constant(start))

    def probability_of(self, score):
        """Keep-probabilities for values of `score` (the regularizer reads them so)."""
        return ops.sigmoid(self.logit_scale * score)

    def probability(self):
        """Keep-probability of every channel."""
        return self.probability_of(self.score)

    def set_probability(self, probability) -> None:
        """Sets the keep-probability of every channel (one value or one per channel)."""
        values = np.broadcast_to(log_odds(probability) / self.logit_scale, self.score.shape)
        self.score.assign(values.astype(self.score.dtype))

    def hard(self):
        """The inference gate: 1.0 where the keep-probability exceeds the threshold."""
        return ops.cast(self.probability() > self.threshold, self.score.dtype)

    def sample(self):
        """One relaxed-Bernoulli draw per channel (advances the seed generator)."""
        u = keras.random.uniform(self.score.shape, minval=1e-7, maxval=1.0 - 1e-7,
                                 dtype=self.score.dtype, seed=self.seed_generator)
        noise = ops.log(u) - ops.log1p(-u)  # standard logistic
        return ops.sigmoid((self.logit_scale * self.score + noise) / self.temperature)

    def call(self, inputs, training=None):
        gate = self.sample() if training else self.hard()
        return inputs * ops.cast(gate, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    # The sampler's position is saved with the logits, so a run resumed from a
    # checkpoint draws the masks the uninterrupted run would have drawn.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["sampler"] = self.seed_generator.state

    def load_own_variables(self, store):
        self.score.assign(store["0"])
        if "sampler" in store.keys():
            self.seed_generator.state.assign(store["sampler"])

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature,
                "threshold": self.threshold, "init_probability": self.init_probability,
                "logit_scale": self.logit_scale, "seed": self.seed}


# ---------------------------------------------------------------------------
# Where gates go.

def _absorbs(node: LayerNode) -> bool:
    """Whether multiplying the node's per-channel trainable weights by a 0/1 gate
    gives exactly 0 for a closed gate, whatever its input: a conv/dense source, or a
    layer whose rule names a per-channel `scale` weight (that it has: a batch norm
    with scale=False has no gamma), with no fused activation that moves 0."""
    rule = node.rule
    scaled = (rule is not None and rule.scale is not None
              and getattr(node.layer, rule.scale, None) is not None)
    return (node.kind == Kind.SOURCE or scaled) and _zero_at_zero(node.setting("activation"))


def _zero_at_zero(activation) -> bool:
    """Whether a fused activation maps 0 to 0 (relu, linear: yes; sigmoid: no)."""
    if activation in (None, "linear"):
        return True
    value = keras.activations.get(activation)(ops.zeros((1,)))
    return float(ops.convert_to_numpy(value)[0]) == 0.0


def _anchors(fn, graph: ChannelGraph) -> list:
    """The layer each gate follows, one per top-level prunable source."""
    calls, consumers = {}, {}
    for knode in keras_adapter.nodes_in_order(fn):
        calls.setdefault(id(knode.operation), []).append(knode)
        for tensor in knode.input_tensors:
            consumers.setdefault(id(tensor), []).append(knode)
    for tensor in fn.outputs:
        consumers.setdefault(id(tensor), []).append(None)
    anchors = {}
    for node in graph.nodes:
        prunable = node.outputs and any(graph.groups[g].prunable
                                        for g in node.outputs[0].groups)
        if (node.kind != Kind.SOURCE or "/" in node.name
                or not prunable or id(node.layer) in anchors):
            continue
        anchor = _walk(node, graph, calls, consumers)
        if anchor is not None:
            anchors[id(node.layer)] = anchor
    return list(anchors.values())


def _walk(source: LayerNode, graph: ChannelGraph, calls, consumers):
    """Follows the source's single-consumer per-channel chain; returns the last layer
    that absorbs a gate (None if none does)."""
    node = source
    anchor = node.layer if _absorbs(node) else None
    while len(calls[id(node.layer)]) == 1:
        after = consumers.get(id(calls[id(node.layer)][0].output_tensors[0]), [])
        if len(after) != 1 or after[0] is None or len(calls[id(after[0].operation)]) != 1:
            break
        try:
            node = graph.node(after[0].operation.name)
        except KeyError:  # a nested model
            break
        if node.kind != Kind.PASS or len(node.inputs) != 1:
            break
        if _absorbs(node):
            anchor = node.layer
        elif getattr(node.layer, "weights", None):  # PReLU, Normalization: stop before it
            break
    return anchor


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def _fresh(layer):
    """A new layer (fresh weights) from a layer's config; nested models are cloned
    (re-creating a Sequential from its config would call its layers twice)."""
    if keras_adapter.is_nested_model(layer):
        return keras.models.clone_model(layer, clone_function=_fresh)
    return keras_adapter.from_config_trusted(layer, layer.get_config())


def _clone(fn, call_function):
    """Clones a functional graph layer by layer (fresh weights), calling each clone
    through `call_function(original, clone, *args, **kwargs)`."""
    originals = {}

    def clone_layer(layer):
        clone = _fresh(layer)
        originals[id(clone)] = layer
        return clone

    def call_layer(layer, *args, **kwargs):
        return call_function(originals[id(layer)], layer, *args, **kwargs)

    return keras.models.clone_model(fn, clone_function=clone_layer, call_function=call_layer)


def _copy_weights(source, target) -> None:
    """Copies the weights of every layer of `source` to the layer of the same name."""
    for layer in source.layers:
        if layer.weights and not isinstance(layer, ChannelGate):
            target.get_layer(layer.name).set_weights(layer.get_weights())


def insert(model, graph: ChannelGraph | None = None, *, temperature: float = TEMPERATURE,
           threshold: float = THRESHOLD, init_probability: float = INIT_PROBABILITY,
           logit_scale: float = LOGIT_SCALE, seed: int | None = None):
    """A copy of `model` with a `ChannelGate` after each prunable channel source.

    Args:
        model: A functional or Sequential model (left untouched).
        graph: `build_graph(model)`, if already computed.
        temperature: Gate relaxation temperature.
        threshold: Keep-probability under which a gate closes at inference; use
            the regularizer's threshold.
        init_probability: Initial keep-probability of every channel.
        logit_scale: How much faster than other weights the logits learn.
        seed: Base seed of the gates' samplers (gate `i` uses `seed + i`);
            None draws them from Keras's global seed.

    Returns:
        A new functional model with the seed's weights, and gates named
        `{layer}_gate` after the layer that absorbs them (see the module
        docstring). Sources inside nested models get no gate.
    """
    def gate(anchor, i: int, name: str):
        return ChannelGate(temperature=temperature, threshold=threshold,
                           init_probability=init_probability, logit_scale=logit_scale,
                           seed=None if seed is None else seed + i, name=name)

    return insert_after_sources(model, graph, gate, "gate")[0]


def insert_after_sources(model, graph: ChannelGraph | None, make, suffix: str):
    """A copy of `model` (its weights copied) with one per-channel layer after the
    layer that absorbs each prunable source's channels (module docstring).

    Args:
        model: A functional or Sequential model (left untouched).
        graph: `build_graph(model)`, if already computed.
        make: `make(anchor_layer, index, name)` returns the layer to insert.
        suffix: Inserted layers are named `{anchor}_{suffix}` (made unique).

    Returns:
        `(copy, inserted)`: `inserted` maps each anchor layer's name to the layer
        inserted after it.
    """
    graph = graph or build_graph(model)
    fn = keras_adapter.functional_of(model)
    taken = {layer.name for layer in fn.layers}
    anchors = _anchors(fn, graph)
    made = {id(anchor): make(anchor, i, _unique(f"{anchor.name}_{suffix}", taken))
            for i, anchor in enumerate(anchors)}

    def call(original, clone, *args, **kwargs):
        out = clone(*args, **kwargs)
        layer = made.get(id(original))
        return out if layer is None else layer(out)

    copy = _clone(fn, call)
    _copy_weights(fn, copy)
    return (keras.Model(copy.input, copy.output, name=model.name),
            {anchor.name: made[id(anchor)] for anchor in anchors})


# ---------------------------------------------------------------------------
# Folding gates away.


def _fold(layer, node: LayerNode, hard: np.ndarray) -> None:
    """Multiplies the trainable weights producing each channel of `node` by `hard`."""
    role = OUT if node.kind == Kind.SOURCE else IN
    specs = node.rule.weights(node) if node.rule and node.rule.weights else []
    for variable, spec in zip(layer.weights, specs, strict=True):
        axes = [axis for axis, r in spec.items() if r == role]
        if not variable.trainable or not axes:
            continue
        value = np.array(variable.numpy())
        shape = [1] * value.ndim
        shape[axes[0]] = -1
        variable.assign(value * hard.reshape(shape).astype(value.dtype))


def remove(model, graph: ChannelGraph | None = None):
    """The model without its gates, each folded into the layer before it.

    Args:
        model: A model made by `insert` (left untouched), trained or not.
        graph: `build_graph(model)`, if already computed.

    Returns:
        A new functional model with the seed's layers (same names) and the
        gated model's weights, closed gates multiplied in as zeros: its
        predictions equal the gated model's at inference.

    Raises:
        ModelError: A gate follows a layer that cannot absorb it.
    """
    graph = graph or build_graph(model)

    def call(original, clone, *args, **kwargs):
        return args[0] if isinstance(clone, ChannelGate) else clone(*args, **kwargs)

    clean = _clone(keras_adapter.functional_of(model), call)
    _copy_weights(keras_adapter.functional_of(model), clean)
    done = set()
    for node in graph.nodes:
        if not isinstance(node.layer, ChannelGate) or id(node.layer) in done:
            continue
        done.add(id(node.layer))
        anchor = keras_adapter.first_caller_input(node.layer)
        anchor_node = next(n for n in graph.nodes if n.layer is anchor)
        if not _absorbs(anchor_node):
            raise ModelError(
                f"Gate `{node.name}` follows `{anchor_node.name}` ({anchor_node.type}), "
                "which cannot absorb it: expected a conv, dense, depthwise conv or a "
                f"scaled batch norm. Received: layer={anchor_node.name}")
        _fold(clean.get_layer(anchor.name), anchor_node,
              ops.convert_to_numpy(node.layer.hard()))
    return keras.Model(clean.input, clean.output, name=model.name)


def rekey(values: Mapping[int, T], graph: ChannelGraph, other: ChannelGraph) -> dict[int, T]:
    """Re-keys per-group values (masks, vectors, reasons) from `graph`'s group ids to
    `other`'s, matching groups by their first source layer.

    Raises:
        ModelError: A group's source layer is not in `other`.
    """
    if graph is other:
        return dict(values)
    result = {}
    for gid, value in values.items():
        group = graph.groups[gid]
        name = group.sources[0] if group.sources else None
        try:
            # The source's output may hold several groups: the same part in both.
            part = graph.source_space(name).groups.index(gid)
            result[other.source_space(name).groups[part]] = value
        except (KeyError, ValueError):
            raise ModelError(f"Group {gid} ({group.describe()}) has no source layer in the "
                             f"other model. Received: source={name}") from None
    return result


def export(model, alive: Mapping[int, np.ndarray], graph: ChannelGraph | None = None, *,
           with_graph: bool = False):
    """The exported model: gates folded away and dead channels removed.

    Args:
        model: A model made by `insert`, trained.
        alive: Boolean mask per group id of `graph`.
        graph: The graph `alive` is keyed by: the gated model's (default) or
            the seed's (groups are matched by their first source layer).

        with_graph: Also return the exported model's channel graph.

    Returns:
        A new functional model whose predictions equal the gated model's at
        inference when the layers after each gate map 0 to 0 (module docstring);
        with `with_graph`, `(model, graph)`.
    """
    gated_graph = graph if graph is not None and graph.model is model else build_graph(model)
    clean = remove(model, gated_graph)
    clean_graph = build_graph(clean)
    exported = rebuild(clean, rekey(alive, graph or gated_graph, clean_graph), clean_graph)
    return exported if with_graph else exported[0]
