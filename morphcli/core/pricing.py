"""What a layer costs and how its weights and config follow its channels: the
pricers (FLOPs, MACs, params as `Term`s), weight axis specs and config resizers
that the rule table (`morphcli.core.rules`) assigns to each layer class.

FLOPs follow TensorFlow's profiler on the frozen inference graph at batch 1
(tests/test_profiler_agreement.py); MACs count the kernels' real multiply-adds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from morphcli.core.layers import Pricer, Resizer
from morphcli.core.terms import IN, OUT, Term

# ---------------------------------------------------------------------------
# Shape helpers. Shapes exclude the batch axis; the channel axis is the last.


def positions(shape: Sequence[int]) -> int:
    """Number of positions (product of all but the channel axis)."""
    return math.prod(shape[:-1]) if len(shape) > 1 else 1


def _kernel_area(node) -> int:
    return math.prod(node.config.get("kernel_size", (1,)))


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
    act = node.config.get("activation")
    if isinstance(act, dict):  # a serialized activation
        act = act.get("config", {}).get("name", act.get("class_name"))
    return ACTIVATION_FLOPS.get(str(act).lower(), 0) if act else 0


def per_output(node, per_position: float) -> list[Term]:
    coef = per_position * positions(node.out_shape)
    return [Term(coef, (node.outputs[0],))] if coef else []


def _bias_act_terms(node) -> list[Term]:
    """Bias add and fused activation: one op per bias, `e` per activation output."""
    return per_output(node, int(bool(node.config.get("use_bias", False))) + _activation(node))


def _tuple(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,) * n


def _conv_positions(node) -> int:
    """Positions the conv op computes: the output's, except with dilation, where TF
    runs it on an input padded up to a multiple of the rate (SpaceToBatchND)."""
    spatial = node.in_shape[:-1]
    rates = _tuple(node.config.get("dilation_rate", 1), len(spatial))
    if all(r == 1 for r in rates):
        return positions(node.out_shape)
    kernel = _tuple(node.config.get("kernel_size", 1), len(spatial))
    padded = node.config.get("padding", "valid") in ("same", "causal")
    return math.prod(d * (math.ceil((n + ((k - 1) * d if padded else 0)) / d) - k + 1)
                     for n, k, d in zip(spatial, kernel, rates, strict=True))


def conv_flops(node) -> list[Term]:
    """2 · kh·kw · positions · (A / groups) · B, plus bias and fused activation."""
    groups = node.config.get("groups", 1) or 1
    coef = 2 * _kernel_area(node) * _conv_positions(node) / groups
    return [Term(coef, (node.inputs[0], node.outputs[0]))] + _bias_act_terms(node)


def conv_transpose_flops(node) -> list[Term]:
    """2 · kh·kw · A · B per output position / stride area (3-D: not counted)."""
    if len(node.in_shape) == 4:  # Conv3DBackpropInputV2 has no registered flops
        return _bias_act_terms(node)
    strides = math.prod(_tuple(node.config.get("strides", 1), len(node.in_shape) - 1))
    coef = 2 * _kernel_area(node) * positions(node.out_shape) / strides
    return [Term(coef, (node.inputs[0], node.outputs[0]))] + _bias_act_terms(node)


def dense_flops(node) -> list[Term]:
    """2 · A · B per position (Dense acts on the last axis), plus bias and activation."""
    coef = 2 * positions(node.out_shape)
    return [Term(coef, (node.inputs[0], node.outputs[0]))] + _bias_act_terms(node)


def _einsum_bias(node) -> bool:
    return bool(node.config.get("bias_axes"))


def einsum_dense_flops(node) -> list[Term]:
    """A dense-like `EinsumDense` (last axis in, last axis out): what `dense_flops`
    counts (the profiler sees a MatMul or BatchMatMulV2 and a BiasAdd)."""
    coef = 2 * positions(node.out_shape)
    per_position = int(_einsum_bias(node)) + _activation(node)
    return [Term(coef, (node.inputs[0], node.outputs[0]))] + per_output(node, per_position)


def einsum_dense_params(node) -> list[Term]:
    bias = [Term(1, (node.outputs[0],))] if _einsum_bias(node) else []
    return [Term(1, (node.inputs[0], node.outputs[0]), kernel=True)] + bias


def einsum_dense_weights(node) -> list[dict[int, str]]:
    return [{0: IN, 1: OUT}] + ([{0: OUT}] if _einsum_bias(node) else [])


def resize_einsum_dense(config, width_in, width_out, node=None) -> dict:
    """Sets the last entry of `output_shape` (an int for a 2-D output)."""
    shape = config["output_shape"]
    if isinstance(shape, int):
        return {**config, "output_shape": width_out}
    return {**config, "output_shape": [*list(shape)[:-1], width_out]}


def depthwise_flops(node) -> list[Term]:
    """2 · kh·kw · positions per channel (linear in the width), plus bias and activation."""
    coef = 2 * _kernel_area(node) * _conv_positions(node) * node.config.get("depth_multiplier", 1)
    return [Term(coef, (node.inputs[0],))] + _bias_act_terms(node)


def separable_flops(node) -> list[Term]:
    """Depthwise part (linear in A) plus pointwise part (bilinear A·B)."""
    mult = node.config.get("depth_multiplier", 1)
    depthwise = Term(2 * _kernel_area(node) * _conv_positions(node) * mult, (node.inputs[0],))
    pointwise = Term(2 * positions(node.out_shape) * mult, (node.inputs[0], node.outputs[0]))
    return [depthwise, pointwise] + _bias_act_terms(node)


def elementwise_flops(per_element: float = 1.0, per_channel: float = 0.0) -> Pricer:
    """Cost linear in the output width: `per_element` ops per output value and
    `per_channel` ops per channel."""

    def price(node) -> list[Term]:
        coef = per_element * positions(node.out_shape) + per_channel
        return [Term(coef, (node.outputs[0],))] if coef else []

    return price


def batch_norm_flops(node) -> list[Term]:
    """Inference batch norm, not fused: x·a + b per value (2 ops); per channel
    var + eps (1), rsqrt (2), mean·a (1), beta − · (1), and ·gamma (1) with scale."""
    per_channel = 5 + int(bool(node.config.get("scale", True)))
    return elementwise_flops(2, per_channel)(node)


def layer_norm_flops(node) -> list[Term]:
    """Means, squared differences and affine per value; rsqrt and more per position."""
    scale, center = (int(bool(node.config.get(k, True))) for k in ("scale", "center"))
    where = positions(node.out_shape)
    return [Term((6 + 2 * scale + center) * where, (node.outputs[0],)),
            Term((5 - scale) * where)]


def group_norm_flops(node) -> list[Term]:
    """Measured against the profiler: 6 per value, 3 per channel and 4 per group with
    both gamma and beta; without gamma 2 fewer per channel and 1 more per group,
    without beta 1 fewer per channel. Groups are `width / group_size`, so every
    term is linear in the width."""
    scale, center = (int(bool(node.config.get(k, True))) for k in ("scale", "center"))
    per_channel = 6 * positions(node.out_shape) + 3 - 2 * (1 - scale) - (1 - center)
    per_group = 4 + (1 - scale)
    return [Term(per_channel + per_group / group_size(node), (node.outputs[0],))]


def activation_flops(node) -> list[Term]:
    return per_output(node, _activation(node))


def relu_flops(node) -> list[Term]:
    """`ReLU()`, `ReLU(6.)` and a plain leaky slope are single uncounted ops;
    other settings add comparisons, clips and a slope multiply."""
    slope = node.config.get("negative_slope", 0.0) or 0.0
    threshold = node.config.get("threshold", 0.0) or 0.0
    max_value = node.config.get("max_value")
    if slope and max_value is None and not threshold:
        return []
    ops = (3 + (threshold != 0) if slope else 0) + (threshold != 0)
    ops += 2 if max_value is not None and (threshold != 0 or max_value != 6) else 0
    return per_output(node, ops)


def elu_flops(node) -> list[Term]:
    return per_output(node, 0 if node.config.get("alpha", 1.0) == 1.0 else 2)


def softmax_flops(node) -> list[Term]:
    axis = node.config.get("axis", -1)
    last = axis in (-1, len(node.out_shape))
    return per_output(node, 5) + ([] if last else [Term(2)])


def prelu_flops(node) -> list[Term]:
    alpha = math.prod(node.layer.weights[0].shape) if node.layer.weights else 0
    return [Term(3 * positions(node.out_shape) + alpha / node.out_shape[-1], (node.outputs[0],))]


def join_flops(node) -> list[Term]:
    """An n-way element-wise join does n - 1 ops per output value (one op for a
    keras.ops call with a constant operand, such as `x + 3.0`)."""
    return per_output(node, max(len(node.inputs), 2) - 1)


def average_flops(node) -> list[Term]:
    """n - 1 adds and a division per output value."""
    return per_output(node, len(node.inputs))


def pool_flops(node) -> list[Term]:
    """Pooling: one op per window element per output value (3-D pooling: uncounted)."""
    if len(node.out_shape) == 4:
        return []
    window = _tuple(node.config.get("pool_size", 1), len(node.out_shape) - 1)
    return per_output(node, math.prod(window))


def global_average_flops(node) -> list[Term]:
    """A mean reads every input position once per channel."""
    return [Term(positions(node.in_shape), (node.outputs[0],))]


def upsampling_flops(node) -> list[Term]:
    """Nearest up-sampling: two scalar multiplies in its shape arithmetic."""
    return [Term(2)] if node.config.get("interpolation", "nearest") == "nearest" else []


def no_flops(node) -> list[Term]:
    return []


# ---------------------------------------------------------------------------
# Multiply-adds of the kernels: positions × taps × channels.


def conv_macs(node) -> list[Term]:
    groups = node.config.get("groups", 1) or 1
    coef = _kernel_area(node) * positions(node.out_shape) / groups
    return [Term(coef, (node.inputs[0], node.outputs[0]))]


def conv_transpose_macs(node) -> list[Term]:
    """Every input position scatters a full kernel."""
    return [Term(_kernel_area(node) * positions(node.in_shape), (node.inputs[0], node.outputs[0]))]


def dense_macs(node) -> list[Term]:
    return [Term(positions(node.out_shape), (node.inputs[0], node.outputs[0]))]


def depthwise_macs(node) -> list[Term]:
    coef = _kernel_area(node) * positions(node.out_shape) * node.config.get("depth_multiplier", 1)
    return [Term(coef, (node.inputs[0],))]


def separable_macs(node) -> list[Term]:
    mult, where = node.config.get("depth_multiplier", 1), positions(node.out_shape)
    return [Term(_kernel_area(node) * where * mult, (node.inputs[0],)),
            Term(where * mult, (node.inputs[0], node.outputs[0]))]


# ---------------------------------------------------------------------------
# Parameters: every weight Keras counts (kernels, biases, batch-norm gamma, beta
# and moving statistics), so totals equal `model.count_params()`.


def _bias_params(node) -> list[Term]:
    return [Term(1, (node.outputs[0],))] if node.config.get("use_bias", False) else []


def conv_params(node) -> list[Term]:
    groups = node.config.get("groups", 1) or 1
    terms = [Term(_kernel_area(node) / groups, (node.inputs[0], node.outputs[0]), kernel=True)]
    return terms + _bias_params(node)


def dense_params(node) -> list[Term]:
    return [Term(1, (node.inputs[0], node.outputs[0]), kernel=True)] + _bias_params(node)


def depthwise_params(node) -> list[Term]:
    mult = node.config.get("depth_multiplier", 1)
    return [Term(_kernel_area(node) * mult, (node.inputs[0],), kernel=True)] + _bias_params(node)


def separable_params(node) -> list[Term]:
    mult = node.config.get("depth_multiplier", 1)
    return [
        Term(_kernel_area(node) * mult, (node.inputs[0],), kernel=True),
        Term(mult, (node.inputs[0], node.outputs[0]), kernel=True),
    ] + _bias_params(node)


def per_channel_params(node) -> list[Term]:
    """Weights indexed by channel on their last axis (BN, LayerNorm, PReLU...);
    other weights (e.g. a `Normalization` count) are a constant."""
    channels = node.out_shape[-1]
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
    return specs + ([{0: OUT}] if node.config.get("use_bias", False) else [])


def conv_transpose_weights(node) -> list[dict[int, str]]:
    specs = [{-2: OUT, -1: IN}]  # Keras stores transposed kernels as (..., out, in)
    return specs + ([{0: OUT}] if node.config.get("use_bias", False) else [])


def dense_weights(node) -> list[dict[int, str]]:
    specs = [{0: IN, 1: OUT}]
    return specs + ([{0: OUT}] if node.config.get("use_bias", False) else [])


def depthwise_weights(node) -> list[dict[int, str]]:
    specs = [{-2: IN}]
    return specs + ([{0: IN}] if node.config.get("use_bias", False) else [])


def separable_weights(node) -> list[dict[int, str]]:
    specs = [{-2: IN}, {-2: IN, -1: OUT}]
    return specs + ([{0: OUT}] if node.config.get("use_bias", False) else [])


def last_axis_weights(node) -> list[dict[int, str]]:
    """Weights indexed by channel on their last axis (BN, LayerNorm, PReLU)."""
    channels = node.in_shape[-1]
    return [{-1: IN} if len(w.shape) and w.shape[-1] == channels else {}
            for w in node.layer.weights]


def grouped_depthwise_weights(node) -> list[dict[int, str]]:
    """A Conv with groups == filters == input channels: kernel (kh, kw, 1, C)."""
    return [{-1: IN}] + ([{0: IN}] if node.config.get("use_bias", False) else [])


# ---------------------------------------------------------------------------
# Config edits for new widths.


def resize_key(key: str) -> Resizer:
    """Sets one config key (`filters`, `units`) to the new output width."""
    return lambda config, width_in, width_out, node=None: {**config, key: width_out}


def resize_grouped(config, width_in, width_out, node=None) -> dict:
    return {**config, "filters": width_in, "groups": width_in}


def resize_reshape(config, width_in, width_out, node=None) -> dict:
    return {**config, "target_shape": (*tuple(config["target_shape"])[:-1], width_out)}


def group_size(node) -> int:
    """Channels per normalization group of a `GroupNormalization` in the seed."""
    return node.in_shape[-1] // (node.config.get("groups", 32) or 1)


def resize_group_norm(config, width_in, width_out, node=None) -> dict:
    """Keeps each group's size: whole groups come and go (the rule's granularity)."""
    return {**config, "groups": width_in // group_size(node)}
