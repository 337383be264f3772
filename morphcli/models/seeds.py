"""The built-in seeds (``zoo:NAME``): small networks built fresh with random weights.

Every layer is named after its role, so names are stable across builds: a conv
unit ``stage2_block1_conv1`` is followed by ``stage2_block1_conv1_bn`` and
``stage2_block1_conv1_relu``; residual adds end in ``_add``; the classifier is
``predictions`` (Dense with softmax).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from morphcli.errors import ModelError
from morphcli.models.naming import normalise, shorten, unknown

DEFAULT_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Seed:
    """A built-in seed network.

    Attributes:
        name: The name after ``zoo:``.
        build: ``build(inputs, classes) -> outputs`` on a Keras tensor.
        input_shape: Default input shape (without batch).
        description: A few words for help texts and reports.
        aliases: Other names accepted after ``zoo:``.
    """

    name: str
    build: Callable[[Any, int], Any]
    input_shape: tuple[int, ...]
    description: str
    aliases: tuple[str, ...] = ()


_SEEDS: dict[str, Seed] = {}


def _seed(name: str, input_shape: tuple[int, ...], description: str,
          aliases: tuple[str, ...] = ()):
    """Registers the decorated builder as ``zoo:NAME``."""

    def register(build):
        _SEEDS[name] = Seed(name, build, input_shape, description, aliases)
        return build

    return register


def builtin_names() -> list[str]:
    """Names of the built-in seeds (without aliases), sorted."""
    return sorted(_SEEDS)


def _find_seed(name: str) -> Seed:
    choices = {normalise(alias): seed.name for seed in _SEEDS.values()
               for alias in (seed.name, *seed.aliases)}
    if normalise(name) not in choices:
        raise unknown("built-in seed (zoo:NAME)", name, choices)
    return _SEEDS[choices[normalise(name)]]


def build_seed(name: str, *, input_shape: tuple[int, ...] | None = None,
               classes: int | None = None):
    """Builds a built-in seed with fresh random weights.

    Args:
        name: A name from `builtin_names()` or an alias (``plain_cnn``).
        input_shape: Input shape without batch (default: the seed's).
        classes: Output classes (default: 10).

    Returns:
        A functional `keras.Model` named after the seed, with an input layer
        named ``input`` and a softmax Dense layer named ``predictions``.

    Raises:
        ModelError: Unknown name, or an input the network cannot take
            (wrong rank, too small for its pooling).
    """
    import keras

    seed = _find_seed(name)
    shape = tuple(input_shape) if input_shape is not None else seed.input_shape
    classes = DEFAULT_CLASSES if classes is None else classes
    try:
        inputs = keras.Input(shape=shape, name="input")
        return keras.Model(inputs, seed.build(inputs, classes), name=seed.name)
    except ValueError as err:
        raise ModelError(f"zoo:{seed.name} cannot be built for this input: "
                         f"{shorten(' '.join(str(err).split()))}. "
                         f"Received: input_shape={shape}",
                         hint=f"its default is {','.join(map(str, seed.input_shape))}.") from None


def _conv(filters: int, kernel: int, name: str, strides: int = 1):
    """Conv2D without bias (batch norm follows), 'same' padding, He init."""
    from keras import layers

    return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)


def _unit(x, layer, activation: str | None = "relu"):
    """`layer` -> BatchNormalization -> ReLU/ReLU6, named ``{layer}_bn``, ``{layer}_relu``."""
    from keras import layers

    # Momentum 0.9, not Keras's 0.99: the moving statistics must settle within the
    # few hundred steps of a small-data shrink, or validation accuracy sits at chance.
    x = layers.BatchNormalization(scale=True, momentum=0.9, name=f"{layer.name}_bn")(layer(x))
    if activation is None:
        return x
    max_value = {"relu": None, "relu6": 6.0}[activation]
    return layers.ReLU(max_value=max_value, name=f"{layer.name}_{activation}")(x)


def _gap_head(x, classes: int):
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return layers.Dense(classes, activation="softmax", name="predictions")(x)


def _flatten_head(x, hidden: Sequence[int], classes: int):
    """Flatten, then Dense(no bias)-BN-ReLU units ``fc1``, ``fc2``..., then predictions."""
    from keras import layers

    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden, start=1):
        x = _unit(x, layers.Dense(units, use_bias=False, name=f"fc{i}"))
    return layers.Dense(classes, activation="softmax", name="predictions")(x)


@_seed("cnn", (8, 8, 1), "plain CNN with batch norm", aliases=("plain_cnn",))
def _cnn(x, classes: int):
    """conv1(32)-conv2(64)-maxpool-conv3(128), each conv-BN-ReLU, then GAP and Dense."""
    from keras import layers

    x = _unit(x, _conv(32, 3, "conv1"))
    x = _unit(x, _conv(64, 3, "conv2"))
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = _unit(x, _conv(128, 3, "conv3"))
    return _gap_head(x, classes)


@_seed("cnn_flatten", (8, 8, 1), "CNN with a Flatten-Dense head")
def _cnn_flatten(x, classes: int):
    """conv1(16)-conv2(32)-maxpool, Flatten, fc1(64)-BN-ReLU, Dense.

    The pool keeps the Flatten-Dense kernel small at 32x32 inputs.
    """
    from keras import layers

    x = _unit(x, _conv(16, 3, "conv1"))
    x = _unit(x, _conv(32, 3, "conv2"))
    x = layers.MaxPooling2D(2, name="pool")(x)
    return _flatten_head(x, (64,), classes)


@_seed("mlp", (8, 8, 1), "multilayer perceptron with batch norm")
def _mlp(x, classes: int):
    """Flatten, fc1(128) and fc2(64) as Dense-BN-ReLU, Dense."""
    return _flatten_head(x, (128, 64), classes)


@_seed("resnet20", (32, 32, 3), "CIFAR ResNet-20 (He et al. 2016)")
def _resnet20(x, classes: int):
    """conv1(16), 3 stages x 3 basic blocks of 16/32/64 filters, GAP, Dense.

    Stages 2 and 3 halve the resolution in their first block (32->16->8, or
    8->4->2 on digits), where a 1x1 conv + BN projects the shortcut.
    """
    x = _unit(x, _conv(16, 3, "conv1"))
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, strides, f"stage{stage}_block{block}")
    return _gap_head(x, classes)


def _basic_block(x, filters: int, strides: int, name: str):
    from keras import layers

    y = _unit(x, _conv(filters, 3, f"{name}_conv1", strides))
    y = _unit(y, _conv(filters, 3, f"{name}_conv2"), activation=None)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _unit(x, _conv(filters, 1, f"{name}_shortcut", strides), activation=None)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_relu")(y)


# (expansion, filters, strides) per inverted residual block. Two stride-2
# blocks: 32x32 -> 8x8, 8x8 -> 2x2. Blocks 3 and 5 keep width and resolution,
# so they add their input back.
_MOBILENET_BLOCKS = ((1, 8, 1), (6, 16, 2), (6, 16, 1), (6, 32, 2), (6, 32, 1))


@_seed("mobilenet_v2", (32, 32, 3), "small MobileNetV2 (inverted residuals)",
       aliases=("mobilenetv2_tiny",))
def _mobilenet_v2(x, classes: int):
    """stem_conv(16), five inverted residual blocks, head_conv(128), GAP, Dense."""
    x = _unit(x, _conv(16, 3, "stem_conv"), "relu6")
    for i, (expansion, filters, strides) in enumerate(_MOBILENET_BLOCKS, start=1):
        x = _inverted_residual(x, expansion, filters, strides, f"block{i}")
    x = _unit(x, _conv(128, 1, "head_conv"), "relu6")
    return _gap_head(x, classes)


def _inverted_residual(x, expansion: int, filters: int, strides: int, name: str):
    """[1x1 expand-BN-ReLU6], 3x3 depthwise-BN-ReLU6, 1x1 project-BN, [+ input]."""
    from keras import layers

    y = x
    if expansion != 1:  # as in MobileNetV2, a block without expansion has no expand conv
        y = _unit(y, _conv(expansion * x.shape[-1], 1, f"{name}_expand"), "relu6")
    depthwise = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                       depthwise_initializer="he_normal",
                                       name=f"{name}_depthwise")
    y = _unit(y, depthwise, "relu6")
    y = _unit(y, _conv(filters, 1, f"{name}_project"), activation=None)
    if strides == 1 and x.shape[-1] == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y
