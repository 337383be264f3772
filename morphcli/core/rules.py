"""The one table from Keras layer class to channel rule.

Every layer type morphcli understands has exactly one entry here, and that
entry is all the rest of the tool needs to know about it:

- `kind`: how the layer treats the channel axis (see `Kind`), read by
  `graph.py` to build the groups of channels that live or die together;
- `weights`: for each weight variable, which axes index input or output
  channels, read by `surgery.py` to slice weights;
- `resize`: how to edit the layer's config for new channel counts
  (`filters`, `units`, a reshape's target), read by `surgery.py`; `widths`
  names those keys, which a latency profile's table key leaves out;
- `moving`: the moving statistics of a batch norm, re-estimated by precise
  batch norm and synchronized across replicas (`morphcli.training`);
- `activation`, `bias`, `padding`, `kernel_size`: the config keys of those
  settings, read by surgery's constant folding and the channel gates;
- `granularity`: how many adjacent channels must go together (a group
  normalization's group size), read by the graph, masks, rounding and solver;
- `flops` / `params`: the layer's cost as a sum of monomials in the alive
  widths of its channel spaces, read by `costs.py` for reports, targets and
  the regularizer alike.

Supporting a new layer type is one `register(...)` call; the `Rule` it takes
is defined in `morphcli.core.layers`, below the pricers. A layer class that is
not registered is a *boundary*: the channel spaces it touches are frozen and
the report says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from morphcli.core import attention
from morphcli.core.layers import CONV_KEYS, Rule
from morphcli.core.pricing import (  # the pricers, weight specs and resizers of the table
    activation_flops,
    average_flops,
    batch_norm_flops,
    conv_flops,
    conv_macs,
    conv_params,
    conv_transpose_flops,
    conv_transpose_macs,
    conv_transpose_weights,
    conv_weights,
    dense_flops,
    dense_macs,
    dense_params,
    dense_weights,
    depthwise_flops,
    depthwise_macs,
    depthwise_params,
    depthwise_weights,
    einsum_dense_flops,
    einsum_dense_params,
    einsum_dense_weights,
    elementwise_flops,
    elu_flops,
    global_average_flops,
    group_norm_flops,
    group_size,
    grouped_depthwise_weights,
    join_flops,
    last_axis_weights,
    layer_norm_flops,
    no_flops,
    per_channel_params,
    per_output,
    pool_flops,
    positions,
    prelu_flops,
    relu_flops,
    resize_einsum_dense,
    resize_group_norm,
    resize_grouped,
    resize_key,
    resize_reshape,
    separable_flops,
    separable_macs,
    separable_params,
    separable_weights,
    softmax_flops,
    upsampling_flops,
)
from morphcli.core.terms import IN, OUT, Kind, Term

__all__ = ["IN", "OUT", "Kind", "Rule", "Term", "get", "moving_statistics", "positions", "register",
           "registered", "width_keys"]


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


def moving_statistics(layer) -> list:
    """The moving mean and variance variables of a layer whose rule names them
    (`Rule.moving`: a batch norm's), else an empty list."""
    rule = get(layer)
    return [getattr(layer, name) for name in rule.moving] if rule and rule.moving else []


def width_keys() -> set[str]:
    """Every config key a rule writes widths to (`Rule.widths`), the rules a
    `check` picks instead of a registered one included."""
    rules = [*_RULES.values(), _grouped_depthwise_rule]
    return {key for rule in rules for key in rule.widths}


# ---------------------------------------------------------------------------
# Checks that turn a registered layer into a boundary in unusual settings.


def _single_multiplier(node) -> str | None:
    if node.config.get("depth_multiplier", 1) != 1:
        return "depth_multiplier != 1 couples channels"
    return None


def _channels_last(node) -> str | None:
    if node.config.get("data_format", "channels_last") == "channels_first":
        return "channels_first data format is not supported"
    return None


def _grouped_conv(node) -> str | Rule | None:
    groups = node.config.get("groups", 1) or 1
    if groups == node.in_shape[-1] == node.out_shape[-1]:
        return _grouped_depthwise_rule  # ConvNeXt's depthwise convs
    if groups != 1:
        return f"grouped convolution (groups={groups}) couples channels"
    return _channels_last(node)


def _last_axis(node) -> str | None:
    axis = node.config.get("axis", -1)
    axes = axis if isinstance(axis, list | tuple) else [axis]
    rank = len(node.in_shape)
    if [a % (rank + 1) for a in axes] != [rank]:
        return f"normalizes over axis {axis}, not the channel axis"
    return None


def _across_channels(node) -> Rule | None:
    """Softmax over the channel axis mixes channels: removing one changes the rest.
    Its channels are still its input's (a classifier's logits become the model's
    output classes), so it passes them on, frozen."""
    axis = node.config.get("axis", -1)
    softmax_layer = "axis" in node.config and axis in (-1, len(node.out_shape))
    if softmax_layer or node.config.get("activation") == "softmax":
        return dataclasses.replace(node.rule, check=None,
                                   couples="softmax over the channel axis couples channels")
    return None


def _baked_constants(node) -> str | None:
    if node.config.get("mean") is not None or node.config.get("variance") is not None:
        return "its mean and variance are constants of the config"
    return _per_channel_params(node)


def _per_channel_params(node) -> str | None:
    for w in node.layer.weights:
        if len(w.shape) and w.shape[-1] != node.in_shape[-1]:
            return "its weights are not per-channel"
    return None


def _concat_axis(node) -> str | Rule | None:
    """A concatenation along another axis than the channels' joins like an add."""
    rank = len(node.out_shape)
    if node.config.get("axis", -1) % (rank + 1) != rank:
        return _concat_other_axis_rule
    return None


def _flatten_layout(node) -> str | None:
    """Flatten keeps a channel's positions together only in channels-last layout."""
    if len(node.in_shape) > 1:
        return _channels_last(node)
    return None


def _dense_like(node) -> str | None:
    """An `EinsumDense` is a Dense on the last axis when its equation reads
    `<x>a,ab-><x>b` (e.g. `abc,cd->abd`, `...b,bc->...c`): one 2-D kernel from the
    input's last axis to the output's, and a bias, if any, on the output axis."""
    equation = str(node.config.get("equation", "")).replace(" ", "")
    try:
        operands, result = equation.split("->")
        x, kernel = operands.split(",")
    except ValueError:
        return f"EinsumDense equation {equation!r} is not `input,kernel->output`"
    dense = (len(kernel) == 2 and x and result and kernel[0] == x[-1] and kernel[1] == result[-1]
             and x[:-1] == result[:-1] and kernel[0] not in result and kernel[1] not in x)
    if not dense:
        return f"EinsumDense equation {equation} is not a dense layer on the last axis"
    if node.config.get("bias_axes") not in (None, "", kernel[1]):
        return f"EinsumDense bias on axes {node.config.get('bias_axes')!r}, not the output axis"
    if node.config.get("lora_rank"):
        return "EinsumDense with a LoRA adapter"
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
                               grouped_depthwise_weights, resize_grouped, macs=depthwise_macs,
                               tiled=True, widths=("filters", "groups"), **CONV_KEYS)
register(
    ["Conv1D", "Conv2D", "Conv3D"],
    Rule(Kind.SOURCE, conv_flops, conv_params, conv_weights, resize_key("filters"),
         macs=conv_macs, tiled=True, widths=("filters",), check=_grouped_conv, **CONV_KEYS),
)
register(
    ["Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"],
    Rule(Kind.SOURCE, conv_transpose_flops, conv_params, conv_transpose_weights,
         resize_key("filters"), macs=conv_transpose_macs, tiled=True, widths=("filters",),
         check=_channels_last, **CONV_KEYS),
)
register("Dense", Rule(Kind.SOURCE, dense_flops, dense_params, dense_weights,
                       resize_key("units"), macs=dense_macs, tiled=True, widths=("units",),
                       activation="activation", bias="use_bias"))
register("EinsumDense", Rule(Kind.SOURCE, einsum_dense_flops, einsum_dense_params,
                             einsum_dense_weights, resize_einsum_dense, macs=dense_macs,
                             tiled=True, widths=("output_shape",), activation="activation",
                             check=_dense_like))
register(
    ["DepthwiseConv1D", "DepthwiseConv2D"],
    Rule(Kind.PASS, depthwise_flops, depthwise_params, depthwise_weights, macs=depthwise_macs,
         scale="kernel", tiled=True, check=_all(_single_multiplier, _channels_last),
         **CONV_KEYS),
)
register(
    ["SeparableConv1D", "SeparableConv2D"],
    Rule(Kind.SOURCE, separable_flops, separable_params, separable_weights,
         resize_key("filters"), macs=separable_macs, tiled=True, widths=("filters",),
         check=_all(_single_multiplier, _channels_last), **CONV_KEYS),
)

register(  # per-head key and value widths as groups of their own: see core/attention.py
    "MultiHeadAttention",
    Rule(Kind.SOURCE, attention.flops, attention.params, attention.weights, attention.resize,
         macs=attention.macs, inner=attention.inner, rescale=attention.rescale,
         fold=attention.fold, bias="use_bias", widths=("output_shape", "key_dim", "value_dim"),
         check=attention.check),
)

# Per-channel layers with weights. Batch norm at inference is x * a + b with
# a = gamma * rsqrt(var + eps) and b = beta - mean * a: two ops per value and a
# handful per channel (measured against the profiler; see tests/test_costs.py).
register(
    "BatchNormalization",
    Rule(Kind.PASS, batch_norm_flops, per_channel_params, last_axis_weights, scale="gamma",
         normalizes=True, fuses=True, moving=("moving_mean", "moving_variance"),
         check=_last_axis),
)
register(
    "LayerNormalization",
    Rule(Kind.PASS, layer_norm_flops, per_channel_params, last_axis_weights, scale="gamma",
         mixes_channels=True, check=_last_axis),
)
register(  # statistics per group of channels: pruned in whole groups, so surgery is exact
    "GroupNormalization",
    Rule(Kind.PASS, group_norm_flops, per_channel_params, last_axis_weights, resize_group_norm,
         scale="gamma", normalizes=True, granularity=group_size, widths=("groups",),
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
         resize=lambda config, width_in, width_out, node=None: {**config,
                                                                "projection_dim": width_in},
         scale="gamma", widths=("projection_dim",), check=_per_channel_params),
)

register(  # morphcli.training.gates.ChannelGate: inserted for `regularizer.kind: gates`, folded
    # into the layer before it on export, so it costs nothing and moves no memory.
    "ChannelGate",
    Rule(Kind.PASS, no_flops, no_flops, last_axis_weights, moves_memory=False, gate=True,
         fuses=True),
)

# Per-channel layers without weights.
register("Activation", Rule(Kind.PASS, activation_flops, fuses=True, check=_across_channels))
register("ReLU", Rule(Kind.PASS, relu_flops, fuses=True))
register("LeakyReLU", Rule(Kind.PASS, no_flops))
register("ELU", Rule(Kind.PASS, elu_flops))
register("Softmax", Rule(Kind.PASS, softmax_flops, check=_across_channels))
register(["Rescaling"], Rule(Kind.PASS, elementwise_flops(2)))
register(
    ["Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
     "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization"],
    Rule(Kind.PASS, no_flops, moves_memory=False, fuses=True),  # identities at inference
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
    "CustomScaleLayer", Rule(Kind.TIE, lambda node: per_output(node, 2)))
_concat_other_axis_rule = Rule(Kind.TIE, no_flops)
register("Concatenate", Rule(Kind.CONCAT, no_flops, check=_concat_axis))
register("Flatten", Rule(Kind.FLATTEN, no_flops, moves_memory=False, check=_flatten_layout))
register("Reshape", Rule(Kind.RESHAPE, no_flops, resize=resize_reshape, moves_memory=False,
                         widths=("target_shape",)))
register("InputLayer", Rule(Kind.INPUT, no_flops, moves_memory=False))
