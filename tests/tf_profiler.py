"""Ground truth for FLOPs: TensorFlow's own profiler on a batch-1 inference graph.

Test utility (not a test module). The model is traced as
`model(x, training=False)` in a `tf.function` with batch-1 `TensorSpec`s,
frozen with `convert_variables_to_constants_v2` and profiled with
`tf.compat.v1.profiler.profile(..., ProfileOptionBuilder.float_operation())`,
the profiler's printed report switched off. The profiler prices each op from
its static shapes only (registry: tensorflow/python/profiler/internal/
flops_registry.py and the `RegisterStatistics` calls in nn_ops.py); the rules
it follows for every Keras layer are in /work/notes/profiler_rules.md.

Two switches, both keyword-only:

- `see_through_xla` (default True). Keras runs grouped convolutions
  (`Conv2D(groups>1)`, e.g. ConvNeXt's depthwise convs) inside a nested
  `tf.function(jit_compile=True)`. The profiler cannot see into that call: it
  counts 0 for the conv, and the call's unknown output shape also zeroes the
  shape-dependent ops after it until a `Reshape` restores a static shape
  (ConvNeXtTiny at 224: 8.759 G instead of 8.990 G). With the switch on, the
  nested function is traced inline, so the graph holds a plain `Conv2D` whose
  filter has `C_in / groups` input channels. The graph is only traced and
  profiled, never run, so the CPU kernel's lack of grouped-conv support does
  not matter.
- `freeze` (default True). Freezing copies every weight into the graph and
  costs ~2 s for ResNet50 and ~28 s for VGG16 at 224; the profiler gives the
  same totals on the unfrozen graph (checked on ten keras.applications
  models), so `freeze=False` is the fast path for big models.

Example:

>>> profiler_flops(keras.applications.ResNet50(weights=None))
7755299312
>>> profiler_flops_by_type(model)["Conv2D"]
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)

Shape = Sequence[int | None]


def _per_input_shapes(model, input_shape) -> list[tuple]:
    """One static shape (without the batch axis) per model input."""
    inputs = list(model.inputs)
    if input_shape is None:
        shapes = [tuple(x.shape[1:]) for x in inputs]
    elif len(input_shape) and isinstance(input_shape[0], Sequence):
        shapes = [tuple(s) for s in input_shape]
    else:
        shapes = [tuple(input_shape)]
    if len(shapes) != len(inputs):
        raise ValueError(
            f"Expected {len(inputs)} input shapes, one per model input. "
            f"Received: input_shape={input_shape}"
        )
    for shape in shapes:
        if any(d is None for d in shape):
            raise ValueError(
                "FLOPs need a static input shape; pass `input_shape` without the "
                f"batch axis, e.g. (224, 224, 3). Received: input_shape={shape}"
            )
    return shapes


class _InlineJitFunctions:
    """Stands in for the `tf` module, making `tf.function(jit_compile=True)` a no-op."""

    def __init__(self, tf_module):
        self._tf = tf_module

    def __getattr__(self, name):
        return getattr(self._tf, name)

    def function(self, func=None, **kwargs):
        if not kwargs.get("jit_compile"):
            return self._tf.function(func, **kwargs)
        return func if func is not None else (lambda f: f)


@contextlib.contextmanager
def _inline_keras_xla_calls(enabled: bool) -> Iterator[None]:
    """Temporarily traces Keras's nested XLA convolutions inline."""
    from keras.src.backend.tensorflow import nn

    original = nn.tf
    if enabled:
        nn.tf = _InlineJitFunctions(original)
    try:
        yield
    finally:
        nn.tf = original


def inference_graph(
    model,
    input_shape: Shape | Sequence[Shape] | None = None,
    *,
    see_through_xla: bool = True,
    freeze: bool = True,
) -> tf.Graph:
    """Traces `model(x, training=False)` at batch 1, frozen by default.

    Args:
        model: A built Keras model.
        input_shape: Shape without the batch axis (or one per input) for models
            whose input shape is dynamic; defaults to the model's own.
        see_through_xla: Trace Keras's nested `jit_compile` convolutions
            (grouped convs) inline so the profiler can count them.
        freeze: Turn variables into constants (`convert_variables_to_constants_v2`).

    Returns:
        The traced `tf.Graph`, with static shapes.

    Raises:
        ValueError: If an input dimension stays unknown.
    """
    shapes = _per_input_shapes(model, input_shape)
    specs = [
        tf.TensorSpec((1, *shape), x.dtype or tf.float32)
        for shape, x in zip(shapes, model.inputs, strict=True)
    ]

    def call(*xs):
        return model(xs[0] if len(xs) == 1 else list(xs), training=False)

    with _inline_keras_xla_calls(see_through_xla):
        concrete = tf.function(call, autograph=False).get_concrete_function(*specs)
    return convert_variables_to_constants_v2(concrete).graph if freeze else concrete.graph


def _profile(graph: tf.Graph, cmd: str):
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    return tf.compat.v1.profiler.profile(graph=graph, cmd=cmd, options=options)


def graph_flops(graph: tf.Graph) -> int:
    """The profiler's total float operations for a graph with static shapes."""
    return int(_profile(graph, "op").total_float_ops)


def graph_flops_by_op(graph: tf.Graph) -> dict[str, int]:
    """Profiler FLOPs of each graph node that counts any.

    Args:
        graph: A graph with static shapes.

    Returns:
        Graph node name -> float operations (nodes counting 0 are left out).
    """
    flops: dict[str, int] = {}
    stack = [_profile(graph, "scope")]
    while stack:
        node = stack.pop()
        if node.float_ops:
            flops[node.name] = int(node.float_ops)
        stack.extend(node.children)
    return flops


def group_by_type(graph: tf.Graph, by_op: dict[str, int]) -> dict[str, int]:
    """Sums per-node FLOPs by op type (`Conv2D`, `Mul`, `BiasAdd`, ...).

    Args:
        graph: The graph the node names come from.
        by_op: Node name -> FLOPs, as from `graph_flops_by_op`.

    Returns:
        Op type -> summed FLOPs.
    """
    by_type: dict[str, int] = defaultdict(int)
    for name, flops in by_op.items():
        by_type[graph.get_operation_by_name(name).type] += flops
    return dict(by_type)


def profiler_flops(
    model,
    input_shape: Shape | Sequence[Shape] | None = None,
    *,
    see_through_xla: bool = True,
    freeze: bool = True,
) -> int:
    """Total float operations TensorFlow's profiler counts at batch 1.

    Args:
        model: A built Keras model.
        input_shape: Shape without the batch axis (or one per input), needed
            when the model's input shape is dynamic.
        see_through_xla: As for `inference_graph`; `False` reproduces the plain
            method, which counts 0 for grouped convs and what follows them.
        freeze: As for `inference_graph`; `False` is much faster for big models.

    Returns:
        The profiler's `total_float_ops` for one example.
    """
    graph = inference_graph(model, input_shape, see_through_xla=see_through_xla, freeze=freeze)
    return graph_flops(graph)


def profiler_flops_by_op(
    model,
    input_shape: Shape | Sequence[Shape] | None = None,
    *,
    see_through_xla: bool = True,
    freeze: bool = True,
) -> dict[str, int]:
    """Profiler FLOPs per graph node (TF op name), at batch 1.

    Args:
        model: A built Keras model.
        input_shape: As for `profiler_flops`.
        see_through_xla: As for `profiler_flops`.
        freeze: As for `profiler_flops`.

    Returns:
        Node name (e.g. `"functional_1/conv1_conv/convolution"`) -> float
        operations; the values sum to `profiler_flops(model, input_shape)`.
    """
    graph = inference_graph(model, input_shape, see_through_xla=see_through_xla, freeze=freeze)
    return graph_flops_by_op(graph)


def profiler_flops_by_type(
    model,
    input_shape: Shape | Sequence[Shape] | None = None,
    *,
    see_through_xla: bool = True,
    freeze: bool = True,
) -> dict[str, int]:
    """Profiler FLOPs summed per TF op type, at batch 1.

    Args:
        model: A built Keras model.
        input_shape: As for `profiler_flops`.
        see_through_xla: As for `profiler_flops`.
        freeze: As for `profiler_flops`.

    Returns:
        Op type -> float operations.
    """
    graph = inference_graph(model, input_shape, see_through_xla=see_through_xla, freeze=freeze)
    return group_by_type(graph, graph_flops_by_op(graph))
