"""The one table from Keras layer class to channel rule.

Every layer type morphcli understands has exactly one entry here, and that
entry is all the rest of the tool needs to know about it:

- `kind`: how the layer treats the channel axis (see `Kind`), read by
  `graph.py` to build the groups of channels that live or die together;
- `weights`: for each weight variable, which axes index input or output
  channels, read by `surgery.py` to slice weights;
- `resize`: how to edit the layer's config for new channel counts
  (`filters`, `units`, a reshape's target), read by `surgery.py`;
- `flops` / `params`: the layer's cost as a sum of monomials in the alive
  widths of its channel spaces, read by `costs.py` for reports, targets and
  the regularizer alike.

Supporting a new layer type is one `register(...)` call. A layer class that
is not registered is a *boundary*: the channel spaces it touches are frozen
and the report says why.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from morphcli.core.graph import LayerNode


class Kind(enum.Enum):
    """How a layer maps input channels to output channels."""

    SOURCE = "source"  # produces a new channel space (conv/dense outputs)
    PASS = "pass"  # output channels are the input channels (BN, ReLU, depthwise)
    TIE = "tie"  # element-wise join: all inputs become one channel space
    CONCAT = "concat"  # channel spaces side by side
    FLATTEN = "flatten"  # channels repeated over flattened positions
    RESHAPE = "reshape"  # pass-through when the channel axis is kept, else boundary
    BOUNDARY = "boundary"  # freezes the channel spaces it touches
    INPUT = "input"  # a model input (never pruned)


# Axis roles in `weights` specs.
IN, OUT = "in", "out"


@dataclass(frozen=True)
class Term:
    """One monomial of a cost: `coef * prod(width(space) for space in spaces)`.

    `spaces` holds 0, 1 or 2 channel spaces (`graph.Space`). Costs of all
    layers are sums of such terms: bilinear for conv/dense (input × output
    channels), linear for per-channel work (batch norm, depthwise, adds),
    constant for work that no channel choice changes.
    """

    coef: float
    spaces: tuple = ()
    kernel: bool = False  # a kernel-weights term (for `kernel_params`)


Pricer = Callable[["LayerNode"], list[Term]]
WeightSpec = Callable[["LayerNode"], list[dict[int, str]]]
Resizer = Callable[[dict, int, int], dict]  # (config, width_in, width_out) -> config


@dataclass(frozen=True)
class Rule:
    """What morphcli knows about one layer class. See the module docstring."""

    kind: Kind
    flops: Pricer | None = None
    params: Pricer | None = None
    weights: WeightSpec | None = None
    resize: Resizer | None = None
    # Real multiply-adds of the kernels (`flops` follows the profiler, which
    # prices dilated and transposed convs by what TF runs, not by the math).
    macs: Pricer | None = None
    # The weight that multiplies each output channel (a norm's or LayerScale's
    # `gamma`, a depthwise `kernel`): a 0/1 gate folds into it (morphcli.training.gates).
    scale: str | None = None
    # Whether `scale` is a batch norm's gamma, what `regularizer.kind: gamma` reads.
    normalizes: bool = False
    # Whether running the layer reads and writes activations (roofline latency);
    # False for views such as Flatten, Reshape, Dropout at inference.
    moves_memory: bool = True
    # A closer look at one layer's config: returns None (the rule holds), a
    # reason why the layer is a boundary here, or another rule to use instead.
    check: Callable[[LayerNode], str | Rule | None] | None = field(default=None)


_RULES: dict[str, Rule] = {}


def register(names: str | Sequence[str], rule: Rule) -> None:
    """Registers `rule` for one or more layer class names."""
    for name in [names] if isinstance(names, str) else names:
        _RULES[name] = rule


def get(layer) -> Rule | None:
    """Returns the rule for a layer instance (by class name, then base classes)."""
    for cls in type(layer).__mro__:
        rule = _RULES.get(cls.__name__)
        if rule is not None:
            return rule
    return None


def registered() -> dict[str, Rule]:
    """All registered layer class names and their rules (read-only copy)."""
    return dict(_RULES)


# ---------------------------------------------------------------------------
# Shape helpers. Shapes exclude the batch axis; the channel axis is the last.


def positions(shape: Sequence[int]) -> int:
    """Number of positions (product of all but the channel axis)."""
    return math.prod(shape[:-1]) if len(shape) > 1 else 1


def _in(node) -> tuple:
    return node.in_shapes[0]


def _out(node) -> tuple:
    return node.out_shapes[0]


def _cfg(node, key, default=None):
    return node.config.get(key, default)


def _kernel_area(node) -> int:
    return math.prod(_cfg(node, "kernel_size", (1,)))


# ---------------------------------------------------------------------------
# FLOPs, as TensorFlow's profiler counts them for the frozen inference graph at
# batch 1 (tests/tf_profiler.py): it sums the flops registered for each TF op
# (2 per multiply-add of Conv2D/MatMul/DepthwiseConv2dNative, 1 per element of
# BiasAdd, AddV2, Mul, Sub..., 2 per element of Rsqrt, 5 of Softmax, the input
# size of Mean, pool area per output of pooling) and counts 0 for unregistered
# ops (Relu, Relu6, Sigmoid, Tanh, ConcatV2, Pad, Max...).

# Profiler flops per output element of a fused or standalone activation.
ACTIVATION_FLOPS = {"mish": 1, "swish": 2, "silu": 2, "hard_sigmoid": 2, "hard_swish": 3,
                    "hard_silu": 3, "gelu": 4, "softmax": 5}


def _activation(node) -> float:
    act = _cfg(node, "activation")
    if isinstance(act, dict):  # a serialized activation
        act = act.get("config", {}).get("name", act.get("class_name"))
    return ACTIVATION_FLOPS.get(str(act).lower(), 0) if act else 0


def _per_output(node, per_position: float) -> list[Term]:
    coef = per_position * positions(_out(node))
    return [Term(coef, (node.outputs[0],))] if coef else []


def _bias_act_terms(node) -> list[Term]:
    """Bias add and fused activation: one op per bias, `e` per activation output."""
    return _per_output(node, int(bool(_cfg(node, "use_bias", False))) + _activation(node))


def _tuple(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,) * n


def _conv_positions(node) -> int:
    """Positions the conv op computes: the output's, except with dilation, where TF
    runs it on an input padded up to a multiple of the rate (SpaceToBatchND)."""
    spatial = _in(node)[:-1]
    rates = _tuple(_cfg(node, "dilation_rate", 1), len(spatial))
    if all(r == 1 for r in rates):
        return positions(_out(node))
    kernel = _tuple(_cfg(node, "kernel_size", 1), len(spatial))
    padded = _cfg(node, "padding", "valid") in ("same", "causal")
    return math.prod(d * (math.ceil((n + ((k - 1) * d if padded else 0)) / d) - k + 1)
                     for n, k, d in zip(spatial, kernel, rates, strict=True))


def conv_flops(node) -> list[Term]:
    """2 · kh·kw · positions · (A / groups) · B, plus bias and fused activation."""
    groups = _cfg(node, "groups", 1) or 1
    coef = 2 * _kernel_area(node) * _conv_positions(node) / groups
    return [Term(coef, (node.inputs[0], node.outputs[0]))] + _bias_act_terms(node)


def conv_transpose_flops(node) -> list[Term]:
    """2 · kh·kw · A · B per output position / stride area (3-D: not counted)."""
    if len(_in(node)) == 4:  # Conv3DBackpropInputV2 has no registered flops
        return _bias_act_terms(node)
    strides = math.prod(_tuple(_cfg(node, "strides", 1), len(_in(node)) - 1))
    coef = 2 * _kernel_area(node) * positions(_out(node)) / strides
    return [Term(coef, (node.inputs[0], node.outputs[0]))] + _bias_act_terms(node)


def dense_flops(node) -> list[Term]:
    """2 · A · B per position (Dense acts on the last axis), plus bias and activation."""
    coef = 2 * positions(_out(node))
    return [Term(coef, (node.inputs[0], node.outputs[0]))] + _bias_act_terms(node)


def depthwise_flops(node) -> list[Term]:
    """2 · kh·kw · positions per channel (linear in the width), plus bias and activation."""
    coef = 2 * _kernel_area(node) * _conv_positions(node) * _cfg(node, "depth_multiplier", 1)
    return [Term(coef, (node.inputs[0],))] + _bias_act_terms(node)


def separable_flops(node) -> list[Term]:
    """Depthwise part (linear in A) plus pointwise part (bilinear A·B)."""
    mult = _cfg(node, "depth_multiplier", 1)
    depthwise = Term(2 * _kernel_area(node) * _conv_positions(node) * mult, (node.inputs[0],))
    pointwise = Term(2 * positions(_out(node)) * mult, (node.inputs[0], node.outputs[0]))
    return [depthwise, pointwise] + _bias_act_terms(node)


def elementwise_flops(per_element: float = 1.0, per_channel: float = 0.0) -> Pricer:
    """Cost linear in the output width: `per_element` ops per output value and
    `per_channel` ops per channel."""

    def price(node) -> list[Term]:
        coef = per_element * positions(_out(node)) + per_channel
        return [Term(coef, (node.outputs[0],))] if coef else []

    return price


def batch_norm_flops(node) -> list[Term]:
    """Inference batch norm, not fused: x·a + b per value (2 ops); per channel
    var + eps (1), rsqrt (2), mean·a (1), beta − · (1), and ·gamma (1) with scale."""
    per_channel = 5 + int(bool(_cfg(node, "scale", True)))
    return elementwise_flops(2, per_channel)(node)


def layer_norm_flops(node) -> list[Term]:
    """Means, squared differences and affine per value; rsqrt and more per position."""
    scale, center = int(bool(_cfg(node, "scale", True))), int(bool(_cfg(node, "center", True)))
    where = positions(_out(node))
    return [Term((6 + 2 * scale + center) * where, (node.outputs[0],)),
            Term((5 - scale) * where)]


def activation_flops(node) -> list[Term]:
    return _per_output(node, _activation(node))


def relu_flops(node) -> list[Term]:
    """`ReLU()`, `ReLU(6.)` and a plain leaky slope are single uncounted ops;
    other settings add comparisons, clips and a slope multiply."""
    slope = _cfg(node, "negative_slope", 0.0) or 0.0
    threshold = _cfg(node, "threshold", 0.0) or 0.0
    max_value = _cfg(node, "max_value")
    if slope and max_value is None and not threshold:
        return []
    ops = (3 + (threshold != 0) if slope else 0) + (threshold != 0)
    ops += 2 if max_value is not None and (threshold != 0 or max_value != 6) else 0
    return _per_output(node, ops)


def elu_flops(node) -> list[Term]:
    return _per_output(node, 0 if _cfg(node, "alpha", 1.0) == 1.0 else 2)


def softmax_flops(node) -> list[Term]:
    axis = _cfg(node, "axis", -1)
    last = axis in (-1, len(_out(node)))
    return _per_output(node, 5) + ([] if last else [Term(2)])


def prelu_flops(node) -> list[Term]:
    alpha = math.prod(node.layer.weights[0].shape) if node.layer.weights else 0
    return [Term(3 * positions(_out(node)) + alpha / _out(node)[-1], (node.outputs[0],))]


def join_flops(node) -> list[Term]:
    """An n-way element-wise join does n - 1 ops per output value (one op for a
    keras.ops call with a constant operand, such as `x + 3.0`)."""
    return _per_output(node, max(len(node.inputs), 2) - 1)


def average_flops(node) -> list[Term]:
    """n - 1 adds and a division per output value."""
    return _per_output(node, len(node.inputs))


def pool_flops(node) -> list[Term]:
    """Pooling: one op per window element per output value (3-D pooling: uncounted)."""
    if len(_out(node)) == 4:
        return []
    return _per_output(node, math.prod(_tuple(_cfg(node, "pool_size", 1), len(_out(node)) - 1)))


def global_average_flops(node) -> list[Term]:
    """A mean reads every input position once per channel."""
    return [Term(positions(_in(node)), (node.outputs[0],))]


def upsampling_flops(node) -> list[Term]:
    """Nearest up-sampling: two scalar multiplies in its shape arithmetic."""
    return [Term(2)] if _cfg(node, "interpolation", "nearest") == "nearest" else []


def no_flops(node) -> list[Term]:
    return []


# ---------------------------------------------------------------------------
# Multiply-adds of the kernels: positions × taps × channels.


def conv_macs(node) -> list[Term]:
    groups = _cfg(node, "groups", 1) or 1
    coef = _kernel_area(node) * positions(_out(node)) / groups
    return [Term(coef, (node.inputs[0], node.outputs[0]))]


def conv_transpose_macs(node) -> list[Term]:
    """Every input position scatters a full kernel."""
    return [Term(_kernel_area(node) * positions(_in(node)), (node.inputs[0], node.outputs[0]))]


def dense_macs(node) -> list[Term]:
    return [Term(positions(_out(node)), (node.inputs[0], node.outputs[0]))]


def depthwise_macs(node) -> list[Term]:
    coef = _kernel_area(node) * positions(_out(node)) * _cfg(node, "depth_multiplier", 1)
    return [Term(coef, (node.inputs[0],))]


def separable_macs(node) -> list[Term]:
    mult, where = _cfg(node, "depth_multiplier", 1), positions(_out(node))
    return [Term(_kernel_area(node) * where * mult, (node.inputs[0],)),
            Term(where * mult, (node.inputs[0], node.outputs[0]))]


# ---------------------------------------------------------------------------
# Parameters: every weight Keras counts (kernels, biases, batch-norm gamma, beta
# and moving statistics), so totals equal `model.count_params()`.


def _bias_params(node) -> list[Term]:
    return [Term(1, (node.outputs[0],))] if _cfg(node, "use_bias", False) else []


def conv_params(node) -> list[Term]:
    groups = _cfg(node, "groups", 1) or 1
    terms = [Term(_kernel_area(node) / groups, (node.inputs[0], node.outputs[0]), kernel=True)]
    return terms + _bias_params(node)


def dense_params(node) -> list[Term]:
    return [Term(1, (node.inputs[0], node.outputs[0]), kernel=True)] + _bias_params(node)


def depthwise_params(node) -> list[Term]:
    mult = _cfg(node, "depth_multiplier", 1)
    return [Term(_kernel_area(node) * mult, (node.inputs[0],), kernel=True)] + _bias_params(node)


def separable_params(node) -> list[Term]:
    mult = _cfg(node, "depth_multiplier", 1)
    return [
        Term(_kernel_area(node) * mult, (node.inputs[0],), kernel=True),
        Term(mult, (node.inputs[0], node.outputs[0]), kernel=True),
    ] + _bias_params(node)


def per_channel_params(node) -> list[Term]:
    """Weights indexed by channel on their last axis (BN, LayerNorm, PReLU...);
    other weights (e.g. a `Normalization` count) are a constant."""
    channels = _out(node)[-1]
    per_channel = sum(math.prod(w.shape) / channels for w in node.layer.weights
                      if len(w.shape) and w.shape[-1] == channels)
    fixed = sum(math.prod(w.shape) for w in node.layer.weights
                if not len(w.shape) or w.shape[-1] != channels)
    terms = [Term(per_channel, (node.outputs[0],))] if per_channel else []
    return terms + ([Term(fixed)] if fixed else [])


# ---------------------------------------------------------------------------
# Weight axes: which axis of each weight indexes input / output channels.


def conv_weights(node) -> list[dict[int, str]]:
    specs = [{-2: IN, -1: OUT}]
    return specs + ([{0: OUT}] if _cfg(node, "use_bias", False) else [])


def conv_transpose_weights(node) -> list[dict[int, str]]:
    specs = [{-2: OUT, -1: IN}]  # Keras stores transposed kernels as (..., out, in)
    return specs + ([{0: OUT}] if _cfg(node, "use_bias", False) else [])


def dense_weights(node) -> list[dict[int, str]]:
    specs = [{0: IN, 1: OUT}]
    return specs + ([{0: OUT}] if _cfg(node, "use_bias", False) else [])


def depthwise_weights(node) -> list[dict[int, str]]:
    specs = [{-2: IN}]
    return specs + ([{0: IN}] if _cfg(node, "use_bias", False) else [])


def separable_weights(node) -> list[dict[int, str]]:
    specs = [{-2: IN}, {-2: IN, -1: OUT}]
    return specs + ([{0: OUT}] if _cfg(node, "use_bias", False) else [])


def last_axis_weights(node) -> list[dict[int, str]]:
    """Weights indexed by channel on their last axis (BN, LayerNorm, PReLU)."""
    channels = _in(node)[-1]
    return [{-1: IN} if len(w.shape) and w.shape[-1] == channels else {}
            for w in node.layer.weights]


def grouped_depthwise_weights(node) -> list[dict[int, str]]:
    """A Conv with groups == filters == input channels: kernel (kh, kw, 1, C)."""
    return [{-1: IN}] + ([{0: IN}] if _cfg(node, "use_bias", False) else [])


# ---------------------------------------------------------------------------
# Config edits for new widths.


def resize_key(key: str) -> Resizer:
    """Sets one config key (`filters`, `units`) to the new output width."""
    return lambda config, width_in, width_out: {**config, key: width_out}


def resize_grouped(config, width_in, width_out) -> dict:
    return {**config, "filters": width_in, "groups": width_in}


def resize_reshape(config, width_in, width_out) -> dict:
    return {**config, "target_shape": (*tuple(config["target_shape"])[:-1], width_out)}


# ---------------------------------------------------------------------------
# Checks that turn a registered layer into a boundary in unusual settings.


def _single_multiplier(node) -> str | None:
    if _cfg(node, "depth_multiplier", 1) != 1:
        return "depth_multiplier != 1 couples channels"
    return None


def _channels_last(node) -> str | None:
    if _cfg(node, "data_format", "channels_last") == "channels_first":
        return "channels_first data format is not supported"
    return None


def _grouped_conv(node) -> str | Rule | None:
    groups = _cfg(node, "groups", 1) or 1
    if groups == _in(node)[-1] == _out(node)[-1]:
        return _grouped_depthwise_rule  # ConvNeXt's depthwise convs
    if groups != 1:
        return f"grouped convolution (groups={groups}) couples channels"
    return _channels_last(node)


def _last_axis(node) -> str | None:
    axis = _cfg(node, "axis", -1)
    axes = axis if isinstance(axis, list | tuple) else [axis]
    rank = len(_in(node))
    if [a % (rank + 1) for a in axes] != [rank]:
        return f"normalizes over axis {axis}, not the channel axis"
    return None


def _across_channels(node) -> str | None:
    """Softmax over the channel axis mixes channels: removing one changes the rest."""
    axis = _cfg(node, "axis", -1)
    softmax_layer = "axis" in node.config and axis in (-1, len(_out(node)))
    if softmax_layer or _cfg(node, "activation") == "softmax":
        return "softmax over the channel axis couples channels"
    return None


def _baked_constants(node) -> str | None:
    if _cfg(node, "mean") is not None or _cfg(node, "variance") is not None:
        return "its mean and variance are constants of the config"
    return _per_channel_params(node)


def _per_channel_params(node) -> str | None:
    for w in node.layer.weights:
        if len(w.shape) and w.shape[-1] != _in(node)[-1]:
            return "its weights are not per-channel"
    return None


def _all(*checks) -> Callable:
    def check(node) -> str | Rule | None:
        for c in checks:
            reason = c(node)
            if reason:
                return reason
        return None

    return check


# ---------------------------------------------------------------------------
# The table.

_grouped_depthwise_rule = Rule(Kind.PASS, depthwise_flops, depthwise_params,
                               grouped_depthwise_weights, resize_grouped, macs=depthwise_macs)
register(
    ["Conv1D", "Conv2D", "Conv3D"],
    Rule(Kind.SOURCE, conv_flops, conv_params, conv_weights, resize_key("filters"),
         macs=conv_macs, check=_grouped_conv),
)
register(
    ["Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"],
    Rule(Kind.SOURCE, conv_transpose_flops, conv_params, conv_transpose_weights,
         resize_key("filters"), macs=conv_transpose_macs, check=_channels_last),
)
register("Dense", Rule(Kind.SOURCE, dense_flops, dense_params, dense_weights,
                       resize_key("units"), macs=dense_macs))
register(
    ["DepthwiseConv1D", "DepthwiseConv2D"],
    Rule(Kind.PASS, depthwise_flops, depthwise_params, depthwise_weights, macs=depthwise_macs,
         scale="kernel", check=_all(_single_multiplier, _channels_last)),
)
register(
    ["SeparableConv1D", "SeparableConv2D"],
    Rule(Kind.SOURCE, separable_flops, separable_params, separable_weights,
         resize_key("filters"), macs=separable_macs,
         check=_all(_single_multiplier, _channels_last)),
)

# Per-channel layers with weights. Batch norm at inference is x * a + b with
# a = gamma * rsqrt(var + eps) and b = beta - mean * a: two ops per value and a
# handful per channel (measured against the profiler; see tests/test_costs.py).
register(
    "BatchNormalization",
    Rule(Kind.PASS, batch_norm_flops, per_channel_params, last_axis_weights, scale="gamma",
         normalizes=True, check=_last_axis),
)
register(
    "LayerNormalization",
    Rule(Kind.PASS, layer_norm_flops, per_channel_params, last_axis_weights, scale="gamma",
         check=_last_axis),
)
register(
    "PReLU",
    Rule(Kind.PASS, prelu_flops, per_channel_params, last_axis_weights,
         check=_per_channel_params),
)
register(
    "Normalization",
    Rule(Kind.PASS, elementwise_flops(2, 1), per_channel_params, last_axis_weights,
         check=_baked_constants),
)
register(  # keras.applications.convnext.LayerScale: gamma of size projection_dim
    "LayerScale",
    Rule(Kind.PASS, elementwise_flops(1), per_channel_params, last_axis_weights,
         resize=lambda config, width_in, width_out: {**config, "projection_dim": width_in},
         scale="gamma", check=_per_channel_params),
)

register(  # morphcli.training.gates.ChannelGate: inserted for `regularizer.kind: gates`, folded
    # into the layer before it on export, so it costs nothing and moves no memory.
    "ChannelGate",
    Rule(Kind.PASS, no_flops, no_flops, last_axis_weights, moves_memory=False),
)

# Per-channel layers without weights.
register("Activation", Rule(Kind.PASS, activation_flops, check=_across_channels))
register("ReLU", Rule(Kind.PASS, relu_flops))
register("LeakyReLU", Rule(Kind.PASS, no_flops))
register("ELU", Rule(Kind.PASS, elu_flops))
register("Softmax", Rule(Kind.PASS, softmax_flops, check=_across_channels))
register(["Rescaling"], Rule(Kind.PASS, elementwise_flops(2)))
register(
    ["Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
     "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization"],
    Rule(Kind.PASS, no_flops, moves_memory=False),
)
register(
    ["MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
     "AveragePooling1D", "AveragePooling2D", "AveragePooling3D"],
    Rule(Kind.PASS, pool_flops, check=_channels_last),
)
register(
    ["GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D"],
    Rule(Kind.PASS, global_average_flops, check=_channels_last),
)
register(
    ["GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D"],
    Rule(Kind.PASS, no_flops, check=_channels_last),
)
register(
    ["ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
     "Cropping3D", "UpSampling1D", "UpSampling3D"],
    Rule(Kind.PASS, no_flops, check=_channels_last),
)
register("UpSampling2D", Rule(Kind.PASS, upsampling_flops, check=_channels_last))

# Joins, concatenation, views.
# Layers and the keras.ops operations of the same name (`x + y`, `x * 0.5`).
register(["Add", "Subtract", "Multiply", "Maximum", "Minimum", "TrueDivide", "Divide"],
         Rule(Kind.TIE, join_flops))
register("Average", Rule(Kind.TIE, average_flops))
register(  # keras.applications.inception_resnet_v2: x0 + x1 * scale
    "CustomScaleLayer", Rule(Kind.TIE, lambda node: _per_output(node, 2)))
register("Concatenate", Rule(Kind.CONCAT, no_flops))
register("Flatten", Rule(Kind.FLATTEN, no_flops, moves_memory=False))
register("Reshape", Rule(Kind.RESHAPE, no_flops, resize=resize_reshape, moves_memory=False))
register("InputLayer", Rule(Kind.INPUT, no_flops, moves_memory=False))
