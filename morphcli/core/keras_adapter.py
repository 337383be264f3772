"""The one place that touches Keras internals.

Keras 3 has no public API for walking a functional model's call graph node by
node, for telling which call of a shared layer a node is, for re-creating a
layer with safe mode off, or for building a model's metrics from a data spec.
Everything morphcli needs of that lives here, so a Keras upgrade that moves
one of these names breaks one module, and `tests/test_layering.py` keeps
every other module off `keras.src` and private attributes.

Tested against Keras 3.15 (`keras.src.models.functional.Functional`,
`Functional._nodes_by_depth`, `Layer._inbound_nodes`,
`keras.src.saving.serialization_lib.SafeModeScope`,
`Trainer._maybe_symbolic_build`).
"""

from __future__ import annotations

from collections.abc import Iterator

from morphcli.errors import ModelError


def is_nested_model(layer) -> bool:
    """True for functional and Sequential models used as a layer."""
    return hasattr(layer, "_nodes_by_depth") or type(layer).__name__ == "Sequential"


def is_functional(model) -> bool:
    """True for a functional model (not a Sequential or subclassed one)."""
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def functional_of(model):
    """The functional graph behind a model (a built Sequential keeps one inside).

    Raises:
        ModelError: The model was never built, so it has no graph.
    """
    if hasattr(model, "_nodes_by_depth"):
        return model
    inner = getattr(model, "_functional", None)
    if inner is None:
        raise ModelError(
            f"Model `{model.name}` has no functional graph to analyse: it was never built.",
            hint="build it (call it on data or pass --input-shape) and save it again.",
        )
    return inner


def nodes_in_order(model) -> Iterator:
    """The call nodes of `model`'s own graph (not of nested models), inputs first."""
    fn = functional_of(model)
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        yield from fn._nodes_by_depth[depth]


def graph_calls(model) -> dict[int, list]:
    """The call nodes of every layer in `model`'s graph (nested models included),
    by id of the layer, in the order of the layer's own calls.

    A layer's `_inbound_nodes` also lists calls outside this graph: a Sequential
    loaded from a file has been built several times, so its layers carry one
    dangling node per build. Only the calls that are part of the graph count.
    """
    calls: dict[int, list] = {}

    def visit(fn):
        for node in nodes_in_order(fn):
            op = node.operation
            if node.is_input or op is None:
                continue
            calls.setdefault(id(op), []).append(node)
            if is_nested_model(op):
                visit(functional_of(op))

    visit(model)
    for nodes in calls.values():
        layer_nodes = getattr(nodes[0].operation, "_inbound_nodes", [])
        order = {id(n): i for i, n in enumerate(layer_nodes)}
        nodes.sort(key=lambda n: order.get(id(n), len(order)))
    return calls


def first_caller_input(layer):
    """The layer whose output `layer` reads in its first call."""
    return layer._inbound_nodes[0].parent_nodes[0].operation


def from_config_trusted(layer, config: dict):
    """Re-creates a layer from `config`. A Lambda's function is re-created from the
    model in memory, whose code was trusted when it was loaded, hence safe mode off
    when Keras refuses it."""
    from keras.src.saving.serialization_lib import SafeModeScope

    try:
        return layer.__class__.from_config(config)
    except ValueError as err:
        if "safe_mode" not in str(err):
            raise
    with SafeModeScope(False):
        return layer.__class__.from_config(config)


def spec_built_model_class():
    """A `keras.Model` base class that builds its compiled metrics from
    `self.data_spec` (a dataset's element spec) instead of a pulled batch.

    Keras builds the metrics' state from a batch it first averages over the
    replicas, which TF's multi-worker strategy cannot do for (x, y) pairs
    (keras-team/keras#20585); building from the spec pulls no batch.
    """
    import keras

    class SpecBuilt(keras.Model):
        data_spec = None

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            super()._maybe_symbolic_build(data_batch=self.data_spec)

    return SpecBuilt


def argument_names(node) -> list[str] | None:
    """The argument each input tensor of a call node was passed as, in the node's
    input order: its position ("0", "1"...) or keyword ("key", "attention_mask");
    None when a tensor sits inside a nested argument or the order cannot be told."""
    from keras.src.backend import KerasTensor

    arguments = node.arguments
    named = [(str(i), a) for i, a in enumerate(arguments.args)]
    named += sorted(arguments.kwargs.items())  # flattened as a dict: by key
    named = [(k, v) for k, v in named if isinstance(v, KerasTensor)]
    tensors = list(node.input_tensors)
    if [id(v) for _, v in named] != [id(t) for t in tensors]:
        return None
    return [k for k, _ in named]


def call_options(node) -> dict:
    """The plain keyword options of a call (`use_causal_mask=True`), not its tensors."""
    return {k: v for k, v in node.arguments.kwargs.items()
            if isinstance(v, bool | int | float | str)}


def profiled_flops(layer, node) -> int:
    """FLOPs TensorFlow's profiler counts for one call of a layer at batch 1.

    Prices layers without a channel rule (`MultiHeadAttention`, custom layers):
    the call is traced alone in a `tf.function` on batch-1 `TensorSpec`s of its
    inputs (`node.arguments`, Keras's record of the call, fills the traced
    tensors in where the symbolic ones were) and the graph is profiled with
    `ProfileOptionBuilder.float_operation()`, the counter the rule table follows.
    Tracing adds no node to the model's graph. Returns 0 when the call cannot be
    traced alone (a layer that needs its training-time state).
    """
    import tensorflow as tf

    inputs = list(node.arguments.keras_tensors)
    specs = [tf.TensorSpec((1, *t.shape[1:]), t.dtype or tf.float32) for t in inputs]

    def call(*tensors):
        args, kwargs = node.arguments.fill_in({id(k): v for k, v in zip(inputs, tensors,
                                                                          strict=True)})
        kwargs = {**kwargs, "training": False} if "training" in _call_args(layer) else kwargs
        return layer(*args, **kwargs)

    try:
        graph = tf.function(call, autograph=False).get_concrete_function(*specs).graph
    except Exception:  # noqa: BLE001 (an untraceable layer is priced 0 and said so)
        return 0
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    return int(tf.compat.v1.profiler.profile(graph=graph, cmd="op",
                                             options=options).total_float_ops)


def _call_args(layer) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(layer.call).parameters)
    except (TypeError, ValueError):
        return set()
