"""Tiny Keras models shared by the graph, cost and surgery tests.

- `PATTERNS`: one builder per supported pattern (chain, residual, concat,
  depthwise, separable, flatten_dense, squeeze_excite, nested, boundary,
  transpose, conv1d, mlp). Layers have explicit names and odd sizes
  (input 6x6x3, widths 5, 7, ...), so a mistaken axis, width or position
  count shows up in the numbers. `mlp` is a Sequential model, the rest are
  functional.
- `PROBES` / `probe_model(key)`: one small model per registered layer class
  (or configuration) the patterns do not contain.
- `application(name)`: a `keras.applications` network at 32x32.
- `randomize`, `sample_input`: seeded weights and inputs, so pruning tests
  compare non-trivial outputs.
- `alive_from_counts`: masks keeping the first channels of some groups.
- `every_model()`: a model for each registered layer class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers
from keras.src.applications.convnext import LayerScale  # not in keras.layers
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer  # idem


def _conv(filters, kernel, name, **kwargs):
    return layers.Conv2D(filters, kernel, padding="same", name=name, **kwargs)


def chain() -> keras.Model:
    """input 6x6x3 -> conv1 (5, 3x3, no bias) -> bn1 -> relu1 -> conv2 (7, 3x3)
    -> bn2 -> relu2 -> gap -> logits (4)."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = _conv(5, 3, "conv1", use_bias=False)(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = _conv(7, 3, "conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="chain")


def residual() -> keras.Model:
    """An identity block on 8 channels, then a strided projection block to 12.

    stem (8, 3x3) -> stem_bn -> stem_relu -> [res_conv (8, 3x3) -> res_bn] + identity
    -> add1 -> relu1 -> [proj_conv (12, 3x3, stride 2) -> proj_bn]
    + [shortcut (12, 1x1, stride 2)] -> add2 -> gap -> logits (4).
    """
    inputs = keras.Input((6, 6, 3), name="image")
    x = _conv(8, 3, "stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    y = _conv(8, 3, "res_conv")(x)
    y = layers.BatchNormalization(name="res_bn")(y)
    x = layers.Add(name="add1")([x, y])
    x = layers.ReLU(name="relu1")(x)
    y = _conv(12, 3, "proj_conv", strides=2)(x)
    y = layers.BatchNormalization(name="proj_bn")(y)
    s = _conv(12, 1, "shortcut", strides=2)(x)
    x = layers.Add(name="add2")([y, s])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="residual")


def concat() -> keras.Model:
    """branch_a (5, 3x3) and branch_b (6, 1x1) from the input -> cat -> cat_bn
    -> conv (7, 3x3) -> gap -> logits (4)."""
    inputs = keras.Input((6, 6, 3), name="image")
    a = _conv(5, 3, "branch_a")(inputs)
    b = _conv(6, 1, "branch_b")(inputs)
    x = layers.Concatenate(name="cat")([a, b])
    x = layers.BatchNormalization(name="cat_bn")(x)
    x = _conv(7, 3, "conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="concat")


def depthwise() -> keras.Model:
    """conv1 (6, 3x3) -> bn1 -> relu1 -> dw (3x3) -> dw_bn -> dw_relu
    -> pw (8, 1x1) -> pw_bn -> gap -> logits (4)."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = _conv(6, 3, "conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.ReLU(name="dw_relu")(x)
    x = _conv(8, 1, "pw")(x)
    x = layers.BatchNormalization(name="pw_bn")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="depthwise")


def separable() -> keras.Model:
    """conv1 (6, 3x3) -> bn1 -> relu1 -> sep (8, 3x3 separable) -> sep_bn
    -> sep_relu -> gap -> logits (4)."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = _conv(6, 3, "conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = layers.BatchNormalization(name="sep_bn")(x)
    x = layers.ReLU(name="sep_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="separable")


def flatten_dense() -> keras.Model:
    """conv (4, 3x3) -> bn -> relu -> pool (2x2) -> flat -> fc (9) -> fc_bn
    -> fc_relu -> logits (3)."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = _conv(4, 3, "conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(9, name="fc")(x)
    x = layers.BatchNormalization(name="fc_bn")(x)
    x = layers.ReLU(name="fc_relu")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x), name="flatten_dense")


def squeeze_excite() -> keras.Model:
    """conv (8, 3x3) -> bn -> relu -> [se_pool -> se_reshape (1,1,8)
    -> se_reduce (2, 1x1, relu) -> se_expand (8, 1x1, sigmoid)] * trunk
    -> scale -> gap -> logits (4)."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = _conv(8, 3, "conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    s = layers.GlobalAveragePooling2D(name="se_pool")(x)
    s = layers.Reshape((1, 1, 8), name="se_reshape")(s)
    s = layers.Conv2D(2, 1, activation="relu", name="se_reduce")(s)
    s = layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    x = layers.Multiply(name="scale")([x, s])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="squeeze_excite")


def nested() -> keras.Model:
    """A Sequential and a functional sub-model inside a functional model.

    stem (4, 3x3) -> stem_relu -> block [Sequential: conv (5, 3x3) -> bn]
    -> head [functional: conv (7, 1x1) -> relu] -> gap -> logits (4).
    The block's input channels come from a prunable group.
    """
    block = keras.Sequential(
        [keras.Input((6, 6, 4)), _conv(5, 3, "conv"), layers.BatchNormalization(name="bn")],
        name="block",
    )
    head_in = keras.Input((6, 6, 5))
    head_out = layers.ReLU(name="relu")(_conv(7, 1, "conv")(head_in))
    head = keras.Model(head_in, head_out, name="head")
    inputs = keras.Input((6, 6, 3), name="image")
    x = _conv(4, 3, "stem")(inputs)
    x = layers.ReLU(name="stem_relu")(x)
    x = head(block(x))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="nested")


def boundary() -> keras.Model:
    """Layers morphcli cannot see through, and a keras.ops expression it can.

    conv_a (5, 3x3) -> bn_a -> double (Lambda) -> conv_b (6, 3x3) -> bn_b
    -> swap (Permute) -> conv_c (7, 1x1) -> `x + 3.0` (keras.ops Add)
    -> relu_c -> gap -> logits (4).
    """
    inputs = keras.Input((6, 6, 3), name="image")
    x = _conv(5, 3, "conv_a")(inputs)
    x = layers.BatchNormalization(name="bn_a")(x)
    x = layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = _conv(6, 3, "conv_b")(x)
    x = layers.BatchNormalization(name="bn_b")(x)
    x = layers.Permute((2, 1, 3), name="swap")(x)
    x = _conv(7, 1, "conv_c")(x)
    x = x + 3.0
    x = layers.ReLU(name="relu_c")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="boundary")


def transpose() -> keras.Model:
    """input 5x5x3 -> conv (4, 3x3) -> bn -> relu -> up (6, 3x3 transposed,
    stride 2: 10x10) -> up_bn -> up_relu -> head (2, 1x1)."""
    inputs = keras.Input((5, 5, 3), name="image")
    x = _conv(4, 3, "conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")(x)
    x = layers.BatchNormalization(name="up_bn")(x)
    x = layers.ReLU(name="up_relu")(x)
    return keras.Model(inputs, _conv(2, 1, "head")(x), name="transpose")


def conv1d() -> keras.Model:
    """input 9x3 -> conv1 (5, k3 valid: 7 steps) -> bn -> relu -> conv2 (7, k3
    same) -> gmp -> logits (3)."""
    inputs = keras.Input((9, 3), name="sequence")
    x = layers.Conv1D(5, 3, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Conv1D(7, 3, padding="same", name="conv2")(x)
    x = layers.GlobalMaxPooling1D(name="gmp")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x), name="conv1d")


def mlp() -> keras.Sequential:
    """A Sequential model: input 10 -> fc1 (7) -> bn1 -> relu1 -> drop -> fc2 (5)
    -> bn2 -> relu2 -> logits (2)."""
    return keras.Sequential(
        [
            keras.Input((10,), name="features"),
            layers.Dense(7, name="fc1"),
            layers.BatchNormalization(name="bn1"),
            layers.ReLU(name="relu1"),
            layers.Dropout(0.5, name="drop"),
            layers.Dense(5, name="fc2"),
            layers.BatchNormalization(name="bn2"),
            layers.ReLU(name="relu2"),
            layers.Dense(2, name="logits"),
        ],
        name="mlp",
    )


def shared_layer() -> keras.Model:
    """One conv layer called on two branches (not in PATTERNS: see test_graph).

    a (5, 3x3) and b (5, 1x1) from the input -> shared (6, 3x3) on each
    -> cat -> gap -> logits (2).
    """
    inputs = keras.Input((5, 4, 3), name="image")
    a = _conv(5, 3, "a")(inputs)
    b = _conv(5, 1, "b")(inputs)
    shared = _conv(6, 3, "shared")
    x = layers.Concatenate(name="cat")([shared(a), shared(b)])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(2, name="logits")(x), name="shared_layer")


def group_norm(scale: bool = True, center: bool = True) -> keras.Model:
    """A group normalization read in blocks (not in PATTERNS: see test_group_norm).

    input 6x6x3 -> conv1 (12, 3x3) -> gn (4 groups of 3) -> relu -> conv2 (5, 3x3)
    -> gap -> logits (4).
    """
    inputs = keras.Input((6, 6, 3), name="image")
    x = _conv(12, 3, "conv1")(inputs)
    x = layers.GroupNormalization(groups=4, scale=scale, center=center, name="gn")(x)
    x = layers.ReLU(name="relu")(x)
    x = _conv(5, 3, "conv2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="group_norm")


PATTERNS = {
    f.__name__: f
    for f in [chain, residual, concat, depthwise, separable, flatten_dense, squeeze_excite,
              nested, boundary, transpose, conv1d, mlp]
}


APPLICATIONS = ("ResNet50", "MobileNetV2", "EfficientNetB0", "DenseNet121")


def application(name: str) -> keras.Model:
    """A `keras.applications` network with random weights, at its smallest input
    (32x32), 10 classes and logits out."""
    build = getattr(keras.applications, name)
    return build(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)


# ---------------------------------------------------------------------------
# Probes: one registered layer class after source convs, for the layer types
# the patterns above do not contain. A probe model is
#   input -> src (5 filters, 3-wide "same" conv of the probe's rank)
#   [-> src1, src2 for joins] -> the probe layer -> flat (if not a vector)
#   -> logits (3).

PROBE_INPUTS = {1: (7, 3), 2: (5, 4, 3), 3: (3, 4, 5, 2)}  # 7, 20 and 60 positions
_CONVS = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}
SOURCES = ("src", "src1", "src2")


@dataclass(frozen=True)
class Probe:
    """A layer class to exercise. `make(*sources)` applies it."""

    cls: str
    make: Callable
    rank: int = 2
    arity: int = 1


def _layer(factory, **kwargs):
    return lambda *xs: factory(name="probe", **kwargs)(xs[0] if len(xs) == 1 else list(xs))


PROBES: dict[str, Probe] = {
    # Channel sources and depthwise layers.
    "Conv3D": Probe("Conv3D", _layer(layers.Conv3D, filters=4, kernel_size=2), rank=3),
    "Conv1DTranspose": Probe("Conv1DTranspose", _layer(
        layers.Conv1DTranspose, filters=4, kernel_size=3, strides=2), rank=1),
    "Conv3DTranspose": Probe("Conv3DTranspose", _layer(
        layers.Conv3DTranspose, filters=4, kernel_size=2, strides=2), rank=3),
    "Conv2D:grouped": Probe("Conv2D", _layer(
        layers.Conv2D, filters=5, kernel_size=3, padding="same", groups=5)),
    "Conv2D:dilated": Probe("Conv2D", _layer(
        layers.Conv2D, filters=4, kernel_size=3, padding="same", dilation_rate=2)),
    "Dense:positions": Probe("Dense", _layer(layers.Dense, units=4)),  # on 5x4 positions
    "EinsumDense:positions": Probe("EinsumDense", _layer(  # a Dense written as an einsum
        layers.EinsumDense, equation="abcd,de->abce", output_shape=(5, 4, 4), bias_axes="e")),
    "MultiHeadAttention": Probe("MultiHeadAttention", lambda *xs: layers.MultiHeadAttention(
        num_heads=2, key_dim=3, output_shape=4, name="probe")(xs[0], xs[0]), rank=1),
    "DepthwiseConv1D": Probe("DepthwiseConv1D", _layer(
        layers.DepthwiseConv1D, kernel_size=3, padding="same"), rank=1),
    "SeparableConv1D": Probe("SeparableConv1D", _layer(
        layers.SeparableConv1D, filters=4, kernel_size=3, padding="same"), rank=1),
    # Per-channel layers with weights.
    "BatchNormalization:plain": Probe("BatchNormalization", _layer(
        layers.BatchNormalization, center=False, scale=False)),
    "LayerNormalization": Probe("LayerNormalization", _layer(layers.LayerNormalization)),
    "PReLU": Probe("PReLU", _layer(layers.PReLU)),
    "Normalization": Probe("Normalization", _layer(layers.Normalization)),
    "Normalization:constants": Probe("Normalization", _layer(
        layers.Normalization, mean=[0.5, 1.0, -1.0, 2.0, 0.0], variance=[1.0, 2.0, 0.5, 4.0, 1.5])),
    "LayerScale": Probe("LayerScale", _layer(LayerScale, init_values=0.5, projection_dim=5)),
    # Per-channel layers without weights.
    "Activation": Probe("Activation", _layer(layers.Activation, activation="tanh")),
    "Activation:sigmoid": Probe("Activation", _layer(layers.Activation, activation="sigmoid")),
    "ReLU:max4": Probe("ReLU", _layer(layers.ReLU, max_value=4.0)),
    "LeakyReLU": Probe("LeakyReLU", _layer(layers.LeakyReLU, negative_slope=0.2)),
    "ELU": Probe("ELU", _layer(layers.ELU)),
    "Softmax": Probe("Softmax", _layer(layers.Softmax)),
    "Rescaling": Probe("Rescaling", _layer(layers.Rescaling, scale=0.5)),
    "SpatialDropout1D": Probe("SpatialDropout1D", _layer(layers.SpatialDropout1D, rate=0.3),
                              rank=1),
    "SpatialDropout2D": Probe("SpatialDropout2D", _layer(layers.SpatialDropout2D, rate=0.3)),
    "SpatialDropout3D": Probe("SpatialDropout3D", _layer(layers.SpatialDropout3D, rate=0.3),
                              rank=3),
    "GaussianNoise": Probe("GaussianNoise", _layer(layers.GaussianNoise, stddev=0.1)),
    "GaussianDropout": Probe("GaussianDropout", _layer(layers.GaussianDropout, rate=0.1)),
    "AlphaDropout": Probe("AlphaDropout", _layer(layers.AlphaDropout, rate=0.1)),
    "ActivityRegularization": Probe("ActivityRegularization", _layer(
        layers.ActivityRegularization, l1=0.01)),
    # Pooling.
    "MaxPooling1D": Probe("MaxPooling1D", _layer(layers.MaxPooling1D, pool_size=2), rank=1),
    "MaxPooling3D": Probe("MaxPooling3D", _layer(layers.MaxPooling3D, pool_size=2), rank=3),
    "AveragePooling1D": Probe("AveragePooling1D", _layer(
        layers.AveragePooling1D, pool_size=3, strides=1), rank=1),
    "AveragePooling2D": Probe("AveragePooling2D", _layer(layers.AveragePooling2D, pool_size=2)),
    "AveragePooling3D": Probe("AveragePooling3D", _layer(
        layers.AveragePooling3D, pool_size=(1, 2, 2)), rank=3),
    "GlobalAveragePooling1D": Probe("GlobalAveragePooling1D", _layer(
        layers.GlobalAveragePooling1D), rank=1),
    "GlobalAveragePooling3D": Probe("GlobalAveragePooling3D", _layer(
        layers.GlobalAveragePooling3D), rank=3),
    "GlobalMaxPooling2D": Probe("GlobalMaxPooling2D", _layer(layers.GlobalMaxPooling2D)),
    "GlobalMaxPooling3D": Probe("GlobalMaxPooling3D", _layer(layers.GlobalMaxPooling3D), rank=3),
    # Padding, cropping, upsampling.
    "ZeroPadding1D": Probe("ZeroPadding1D", _layer(layers.ZeroPadding1D, padding=2), rank=1),
    "ZeroPadding2D": Probe("ZeroPadding2D", _layer(layers.ZeroPadding2D, padding=1)),
    "ZeroPadding3D": Probe("ZeroPadding3D", _layer(layers.ZeroPadding3D, padding=1), rank=3),
    "Cropping1D": Probe("Cropping1D", _layer(layers.Cropping1D, cropping=(1, 2)), rank=1),
    "Cropping2D": Probe("Cropping2D", _layer(layers.Cropping2D, cropping=((1, 0), (0, 1)))),
    "Cropping3D": Probe("Cropping3D", _layer(
        layers.Cropping3D, cropping=((1, 0), (0, 1), (1, 1))), rank=3),
    "UpSampling1D": Probe("UpSampling1D", _layer(layers.UpSampling1D, size=2), rank=1),
    "UpSampling2D": Probe("UpSampling2D", _layer(layers.UpSampling2D, size=2)),
    "UpSampling3D": Probe("UpSampling3D", _layer(layers.UpSampling3D, size=2), rank=3),
    # Joins: layers, and keras.ops operations on a tensor and a constant.
    "Add:3": Probe("Add", _layer(layers.Add), arity=3),
    "Subtract": Probe("Subtract", _layer(layers.Subtract), arity=2),
    "Average": Probe("Average", _layer(layers.Average), arity=2),
    "Maximum": Probe("Maximum", _layer(layers.Maximum), arity=2),
    "Minimum": Probe("Minimum", _layer(layers.Minimum), arity=2),
    "Multiply:broadcast": Probe("Multiply", lambda x: layers.Multiply(name="probe")(
        [x, layers.Conv2D(1, 1, activation="sigmoid", name="attention")(x)])),
    "CustomScaleLayer": Probe("CustomScaleLayer", _layer(CustomScaleLayer, scale=0.25), arity=2),
    "Concatenate:axis1": Probe("Concatenate", _layer(layers.Concatenate, axis=1), arity=2),
    "TrueDivide:op": Probe("TrueDivide", lambda x: x / 2.0),
    "Divide:op": Probe("Divide", lambda x: keras.ops.divide(x, 4.0)),
    "Add:op": Probe("Add", lambda x: x + 3.0),
}


def probe_model(key: str) -> keras.Model:
    """The probe model of `PROBES[key]` (see the section comment)."""
    probe = PROBES[key]
    inputs = keras.Input(PROBE_INPUTS[probe.rank], name="image")
    conv = _CONVS[probe.rank]
    sources = [conv(5, 3, padding="same", name=name)(inputs) for name in SOURCES[: probe.arity]]
    x = probe.make(*sources)
    if len(x.shape) > 2:
        x = layers.Flatten(name="flat")(x)
    name = "probe_" + key.replace(":", "_").lower()
    return keras.Model(inputs, layers.Dense(3, name="logits")(x), name=name)


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Gives every weight seeded random values and returns the model.

    Kernels get a fan-in scaled normal (outputs stay near 1, so absolute
    tolerances are meaningful); biases and batch-norm parameters a normal of
    standard deviation 0.5; variances a uniform draw in [0.5, 1.5].
    """
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "variance" in weight.path:
            value = rng.uniform(0.5, 1.5, size=shape)
        elif len(shape) >= 2:
            value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), size=shape)
        else:
            value = rng.normal(0.0, 0.5, size=shape)
        weight.assign(value.astype(weight.dtype))
    return model


def sample_input(model: keras.Model, batch: int = 2, seed: int = 1) -> np.ndarray:
    """A seeded random batch for the model's (single) input."""
    shape = (batch, *model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def group_of(graph, layer: str) -> int:
    """Id of the (first) group on the output channel axis of `layer`."""
    return graph.node(layer).outputs[0].groups[0]


def every_model():
    """Every pattern and probe, a chain with channel gates and a group norm: a model
    for each registered layer class."""
    from morphcli.training import gates

    yield from (build() for build in PATTERNS.values())
    yield from (probe_model(key) for key in PROBES)
    yield gates.insert(PATTERNS["chain"]())  # ChannelGate
    yield group_norm()


def alive_from_counts(graph, counts: dict[int, int]) -> dict[int, np.ndarray]:
    """Masks keeping the first `counts[g]` channels of each listed group."""
    masks = {}
    for gid, count in counts.items():
        mask = np.zeros(graph.groups[gid].width, dtype=bool)
        mask[: int(count)] = True
        masks[gid] = mask
    return masks


def probe_node(graph, key: str):
    """The node of the probed layer in `graph` of `probe_model(key)`."""
    names = [n.name for n in graph.nodes]
    if "probe" in names:
        return graph.node("probe")
    return next(n for n in graph.nodes if n.type == PROBES[key].cls)


def inception_residual() -> keras.Model:
    """Inception-ResNet's tie (not in PATTERNS: see test_user_models): a trunk that
    is a concatenation, tied by `x + scale * up` to one conv's output.

    trunk = cat(conv_a (4) -> bn_a -> relu_a, conv_b (5) -> bn_b -> relu_b); two blocks
    of [branch (3, 1x1) -> up (9, 1x1)] -> scale_i (x + 0.2 * up) -> relu_i; gap -> logits.
    """
    inputs = keras.Input((6, 6, 3), name="image")
    parts = []
    for name, width in (("a", 4), ("b", 5)):
        y = _conv(width, 3, f"conv_{name}")(inputs)
        parts.append(layers.ReLU(name=f"relu_{name}")(layers.BatchNormalization(
            name=f"bn_{name}")(y)))
    x = layers.Concatenate(name="trunk")(parts)
    for i in (1, 2):
        y = _conv(3, 1, f"branch{i}", activation="relu")(x)
        y = _conv(9, 1, f"up{i}")(y)
        x = layers.ReLU(name=f"relu{i}")(CustomScaleLayer(0.2, name=f"scale{i}")([x, y]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="inception_residual")
