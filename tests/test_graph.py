"""Tests for morphcli.core.graph: channel groups of every supported pattern, and the
registry coverage of morphcli.core.rules."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers
from patterns import (
    PATTERNS,
    PROBES,
    alive_from_counts,
    every_model,
    group_of,
    probe_model,
    probe_node,
    shared_layer,
)

from morphcli.core import rules
from morphcli.core.graph import build_graph
from morphcli.core.layers import Space
from morphcli.core.rules import Kind
from morphcli.errors import ModelError

# --- the groups of every pattern ------------------------------------------------
#
# One row per group, in id order: (width, sources, members, frozen), sources and
# members space-separated (compared as sets), frozen a tuple of substrings, one
# per frozen reason. "{op}" stands for the auto-generated name of a keras.ops node.

INPUT3 = (3, "", "input", ("model input",))
EXPECTED_GROUPS = {
    "chain": [
        INPUT3,
        (5, "conv1", "conv1 bn1 relu1", ()),
        (7, "conv2", "conv2 bn2 relu2 gap", ()),
        (4, "logits", "logits", ("model output",)),
    ],
    "residual": [
        INPUT3,
        # The identity shortcut ties the stem and the residual conv.
        (8, "stem res_conv", "stem stem_bn stem_relu res_conv res_bn add1 relu1", ()),
        # The projection shortcut ties the strided conv and the 1x1 shortcut conv.
        (12, "proj_conv shortcut", "proj_conv proj_bn shortcut add2 gap", ()),
        (4, "logits", "logits", ("model output",)),
    ],
    "concat": [
        INPUT3,
        (5, "branch_a", "branch_a cat cat_bn", ()),
        (6, "branch_b", "branch_b cat cat_bn", ()),
        (7, "conv", "conv gap", ()),
        (4, "logits", "logits", ("model output",)),
    ],
    "depthwise": [
        INPUT3,
        (6, "conv1", "conv1 bn1 relu1 dw dw_bn dw_relu", ()),  # depthwise passes through
        (8, "pw", "pw pw_bn gap", ()),
        (4, "logits", "logits", ("model output",)),
    ],
    "separable": [
        INPUT3,
        (6, "conv1", "conv1 bn1 relu1", ()),
        (8, "sep", "sep sep_bn sep_relu gap", ()),  # separable conv is a source
        (4, "logits", "logits", ("model output",)),
    ],
    "flatten_dense": [
        INPUT3,
        (4, "conv", "conv bn relu pool flat", ()),
        (9, "fc", "fc fc_bn fc_relu", ()),
        (3, "logits", "logits", ("model output",)),
    ],
    "squeeze_excite": [
        INPUT3,
        # The excitation's output is multiplied into the trunk: tied.
        (8, "conv se_expand", "conv bn relu se_pool se_reshape se_expand scale gap", ()),
        (2, "se_reduce", "se_reduce", ()),
        (4, "logits", "logits", ("model output",)),
    ],
    "nested": [
        INPUT3,
        (4, "stem", "stem stem_relu", ()),
        (5, "block/conv", "block/conv block/bn", ()),
        (7, "head/conv", "head/conv head/relu gap", ()),
        (4, "logits", "logits", ("model output",)),
    ],
    "boundary": [
        INPUT3,
        (5, "conv_a", "conv_a bn_a", ("`double`",)),
        (5, "", "double", ("`double`",)),
        (6, "conv_b", "conv_b bn_b", ("`swap`",)),
        (6, "", "swap", ("`swap`",)),
        (7, "conv_c", "conv_c {op} relu_c gap", ()),  # `x + 3.0` passes channels
        (4, "logits", "logits", ("model output",)),
    ],
    "transpose": [
        INPUT3,
        (4, "conv", "conv bn relu", ()),
        (6, "up", "up up_bn up_relu", ()),
        (2, "head", "head", ("model output",)),
    ],
    "conv1d": [
        INPUT3,
        (5, "conv1", "conv1 bn relu", ()),
        (7, "conv2", "conv2 gmp", ()),
        (3, "logits", "logits", ("model output",)),
    ],
    "mlp": [
        (10, "", "input", ("model input",)),
        (7, "fc1", "fc1 bn1 relu1 drop", ()),
        (5, "fc2", "fc2 bn2 relu2", ()),
        (2, "logits", "logits", ("model output",)),
    ],
}


def _op_name(graph) -> str:
    ops = [n.name for n in graph.nodes if not isinstance(n.layer, keras.layers.Layer)]
    return ops[0] if ops else ""


def test_expected_groups_cover_every_pattern():
    assert sorted(EXPECTED_GROUPS) == sorted(PATTERNS)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_groups(name):
    graph = build_graph(PATTERNS[name]())
    op = _op_name(graph)
    assert sorted(graph.groups) == list(range(len(EXPECTED_GROUPS[name])))
    for gid, (width, sources, members, frozen) in enumerate(EXPECTED_GROUPS[name]):
        group = graph.groups[gid]
        assert group.id == gid
        assert group.width == width, group.describe()
        assert sorted(group.sources) == sorted(sources.split()), group.describe()
        assert sorted(group.members) == sorted(members.format(op=op).split()), group.describe()
        assert len(group.frozen) == len(frozen), group.describe()
        for reason, expected in zip(group.frozen, frozen, strict=True):
            assert expected in reason, group.describe()
        assert group.prunable == (not frozen)
    expected_prunable = [gid for gid, row in enumerate(EXPECTED_GROUPS[name]) if not row[3]]
    assert [g.id for g in graph.prunable_groups()] == expected_prunable


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_group_widths_match_layer_shapes(name):
    graph = build_graph(PATTERNS[name]())
    assert graph.widths() == {gid: g.width for gid, g in graph.groups.items()}
    for node in graph.nodes:
        for space, shape in zip(node.outputs, node.out_shapes, strict=True):
            assert graph.width(space) == shape[-1], node.name


def test_boundary_reasons_name_the_layer_and_its_type():
    graph = build_graph(PATTERNS["boundary"]())
    assert graph.node("double").kind == Kind.BOUNDARY
    assert graph.node("double").note == "no channel rule for Lambda"
    assert graph.node("swap").note == "no channel rule for Permute"
    assert graph.groups[1].frozen == ["touches `double` (no channel rule for Lambda)"]
    assert graph.groups[3].frozen == ["touches `swap` (no channel rule for Permute)"]
    assert graph.frozen_reasons() == [
        "model input", "model output",
        "touches `double` (no channel rule for Lambda)",
        "touches `swap` (no channel rule for Permute)",
    ]


def test_keras_ops_node_is_a_one_input_join():
    graph = build_graph(PATTERNS["boundary"]())
    node = graph.node(_op_name(graph))
    assert (node.type, node.kind) == ("Add", Kind.TIE)
    assert node.inputs == node.outputs == [Space((5,))]


def test_describe():
    graph = build_graph(PATTERNS["residual"]())
    assert graph.groups[1].describe() == (
        "group 1 (8 ch, prunable, tied from 2 sources): "
        "stem, stem_bn, stem_relu, res_conv, res_bn, add1, relu1")
    assert graph.groups[3].describe() == "group 3 (4 ch, frozen: model output): logits"


def test_nodes_are_topological_with_static_shapes():
    graph = build_graph(PATTERNS["residual"]())
    assert [n.name for n in graph.nodes] == [
        "stem", "stem_bn", "stem_relu", "res_conv", "res_bn", "add1", "relu1",
        "proj_conv", "proj_bn", "shortcut", "add2", "gap", "logits"]
    proj = graph.node("proj_conv")
    assert (proj.in_shapes, proj.out_shapes) == ([(6, 6, 8)], [(3, 3, 12)])
    assert graph.node("add1").in_shapes == [(6, 6, 8), (6, 6, 8)]
    assert graph.node("gap").out_shapes == [(12,)]


def test_every_input_and_output_is_frozen():
    image, extra = keras.Input((5, 4, 3), name="image"), keras.Input((5, 4, 2), name="extra")
    conv = layers.Conv2D(4, 3, padding="same", name="conv")(image)
    x = layers.Conv2D(6, 1, name="mix")(layers.Concatenate(name="cat")([conv, extra]))
    aux = layers.Conv2D(2, 1, name="aux")(x)
    logits = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D(name="gap")(x))
    graph = build_graph(keras.Model([image, extra], [logits, aux]))
    table = [(g.width, g.sources, g.frozen) for g in graph.groups.values()]
    assert table == [
        (3, [], ["model input"]),
        (2, [], ["model input"]),
        (4, ["conv"], []),
        (6, ["mix"], []),
        (2, ["aux"], ["model output"]),
        (3, ["logits"], ["model output"]),
    ]
    assert graph.node("cat").outputs == [Space((2, 1))]


# --- spaces: concatenation and flattening -------------------------------------------


def test_concat_space_is_segments_side_by_side():
    graph = build_graph(PATTERNS["concat"]())
    space = graph.node("cat").outputs[0]
    assert space == Space((1, 2)) == graph.node("conv").inputs[0]
    assert graph.width(space) == 11
    assert graph.width(space, {1: 2, 2: 4}) == 6
    alive = {1: np.array([1, 0, 0, 1, 1], bool), 2: np.array([0, 1, 0, 0, 0, 1], bool)}
    # Segment 1 keeps 0, 3, 4; segment 2 (offset 5) keeps 5+1, 5+5.
    assert graph.indices(space, alive).tolist() == [0, 3, 4, 6, 10]
    assert graph.indices(space, {2: alive[2]}).tolist() == [0, 1, 2, 3, 4, 6, 10]


def test_flatten_space_repeats_channels_over_positions():
    graph = build_graph(PATTERNS["flatten_dense"]())
    space = graph.node("flat").outputs[0]
    assert space == Space((1,), repeat=9)  # 3x3 positions of 4 channels
    assert graph.width(space) == 36
    assert graph.width(space, {1: 3}) == 27
    # Feature p * 4 + c is channel c at position p: keeping channels 1 and 3
    # keeps 1, 3, 5, 7, ..., 35.
    kept = graph.indices(space, {1: np.array([0, 1, 0, 1], bool)})
    assert kept.tolist() == list(range(1, 36, 2))


def test_alive_from_counts_keeps_the_first_channels():
    graph = build_graph(PATTERNS["chain"]())
    masks = alive_from_counts(graph, {1: 2, 2: 5})
    assert masks[1].tolist() == [True, True, False, False, False]
    assert masks[2].tolist() == [True] * 5 + [False] * 2


# --- layers that are boundaries in some configurations ----------------------------


def _mini(make, input_shape=(5, 4, 3)) -> keras.Model:
    """input -> src (6, 3x3) -> make(x) -> flat -> logits (3)."""
    inputs = keras.Input(input_shape, name="image")
    x = make(layers.Conv2D(6, 3, padding="same", name="src")(inputs))
    if len(x.shape) > 2:
        x = layers.Flatten(name="flat")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x))


BOUNDARY_CASES = {
    "depth_multiplier": (lambda x: layers.DepthwiseConv2D(3, depth_multiplier=2, name="probe")(x),
                         "depth_multiplier != 1 couples channels"),
    "grouped_conv": (lambda x: layers.Conv2D(4, 3, groups=2, name="probe")(x),
                     "grouped convolution (groups=2) couples channels"),
    "bn_on_height": (lambda x: layers.BatchNormalization(axis=1, name="probe")(x),
                     "normalizes over axis 1, not the channel axis"),
    "reshape_mixes_channels": (lambda x: layers.Reshape((5, 24), name="probe")(x),
                               "Reshape does not keep channels apart here"),
    "concat_of_flattened": (
        lambda x: layers.Concatenate(name="probe")(
            [layers.Flatten(name="f1")(x), layers.Flatten(name="f2")(x)]),
        "Concatenate does not keep channels apart here"),
    "custom_layer": (lambda x: _Scale(name="probe")(x), "no channel rule for _Scale"),
}


class _Scale(layers.Layer):
    def call(self, x):
        return x * 2.0


@pytest.mark.parametrize("case", sorted(BOUNDARY_CASES))
def test_configurations_that_couple_channels_are_boundaries(case):
    make, note = BOUNDARY_CASES[case]
    graph = build_graph(_mini(make))
    node = graph.node("probe")
    assert node.kind == Kind.BOUNDARY
    assert node.note == note
    src = graph.groups[group_of(graph, "src")]
    assert src.frozen == [f"touches `probe` ({note})"]
    out = graph.groups[group_of(graph, "probe")]
    assert out.frozen and "`probe`" in out.frozen[0]
    assert out.sources == [] and out.members[0] == "probe"


def test_channels_first_conv_is_a_boundary():
    inputs = keras.Input((3, 5, 4), name="image")
    x = layers.Conv2D(6, 3, data_format="channels_first", name="probe")(inputs)
    model = keras.Model(inputs, layers.Dense(2, name="logits")(layers.Flatten(name="flat")(x)))
    graph = build_graph(model)
    assert graph.node("probe").note == "channels_first data format is not supported"


def test_subclass_of_a_registered_layer_uses_its_rule():
    class MyConv(layers.Conv2D):
        pass

    graph = build_graph(_mini(lambda x: MyConv(4, 1, name="probe")(x)))
    assert graph.node("probe").kind == Kind.SOURCE
    assert graph.node("probe").rule is rules.registered()["Conv2D"]
    assert graph.groups[group_of(graph, "probe")].prunable


def test_one_channel_operand_broadcasts_and_is_not_tied():
    graph = build_graph(probe_model("Multiply:broadcast"))
    src, attention = group_of(graph, "src"), group_of(graph, "attention")
    assert src != attention
    assert graph.groups[attention].width == 1
    assert graph.node("probe").outputs == [Space((src,))]
    assert graph.groups[src].sources == ["src"]


def test_grouped_conv_with_one_group_per_channel_is_depthwise():
    graph = build_graph(probe_model("Conv2D:grouped"))
    node = graph.node("probe")
    assert node.kind == Kind.PASS and node.note is None
    assert node.inputs == node.outputs == [Space((group_of(graph, "src"),))]


def test_concatenate_on_another_axis_ties_its_inputs():
    graph = build_graph(probe_model("Concatenate:axis1"))
    gid = group_of(graph, "src")
    assert group_of(graph, "src1") == gid
    assert sorted(graph.groups[gid].sources) == ["src", "src1"]


# --- shared layers ------------------------------------------------------------------


def test_shared_layer_calls_share_groups():
    graph = build_graph(shared_layer())
    assert [n.name for n in graph.nodes if n.name.startswith("shared")] == [
        "shared#0", "shared#1"]
    assert group_of(graph, "shared#0") == group_of(graph, "shared#1")
    assert group_of(graph, "a") == group_of(graph, "b")


# --- errors -------------------------------------------------------------------------


def test_dynamic_shapes_are_an_error():
    inputs = keras.Input((None, None, 3), name="image")
    model = keras.Model(inputs, layers.Conv2D(4, 3, name="conv")(inputs))
    with pytest.raises(ModelError, match=r"dynamic shape \(None, None, None, 3\)"):
        build_graph(model)


def test_unbuilt_sequential_is_an_error():
    with pytest.raises(ModelError, match="never built"):
        build_graph(keras.Sequential([layers.Dense(3)], name="unbuilt"))


# --- the registry ---------------------------------------------------------------------

# Registered names that are not `keras.layers` classes, and why.
NOT_KERAS_LAYERS = {
    "ChannelGate": "morphcli.training.gates.ChannelGate (inserted for regularizer.kind: gates)",
    "Divide": "keras.ops.divide operation",
    "TrueDivide": "keras.ops.true_divide operation (`x / y`)",
    "LayerScale": "keras.applications.convnext.LayerScale (not exported)",
    "CustomScaleLayer": "keras.applications.inception_resnet_v2.CustomScaleLayer (not exported)",
}
# Registered names no test model can contain, and why (ThresholdedReLU was one: Keras 3
# has no such layer; it has left the registry).
NOT_BUILDABLE: dict[str, str] = {}


def test_every_registered_layer_is_exercised():
    seen = set()
    for model in every_model():
        graph = build_graph(model)
        seen |= {node.type for node in graph.nodes}
        seen |= {type(layer).__name__ for layer in model.layers}  # InputLayer
    missing = set(rules.registered()) - seen - set(NOT_BUILDABLE)
    assert not missing, f"registered layers no test model contains: {sorted(missing)}"


def test_every_probe_contains_its_class():
    for key, probe in PROBES.items():
        graph = build_graph(probe_model(key))
        node = probe_node(graph, key)
        assert node.type == probe.cls, key
        assert rules.get(node.layer) is rules.registered()[probe.cls], key


def test_registered_names_are_real_classes():
    # Catches a typo in a registered name, which would silently make the class a boundary.
    for name in rules.registered():
        assert hasattr(keras.layers, name) or name in NOT_KERAS_LAYERS, name
    from keras.src.ops import numpy as ops_numpy

    for name in ("Divide", "TrueDivide"):
        assert hasattr(ops_numpy, name)


def test_rules_have_what_their_kind_needs():
    for name, rule in rules.registered().items():
        assert rule.flops is not None, name
        if rule.kind == Kind.SOURCE:
            assert rule.params and rule.weights and rule.resize, name


def test_scale_weights_named_by_rules_exist():
    checked = set()
    for model in every_model():
        for node in build_graph(model).nodes:
            rule = node.rule
            if rule is None or rule.scale is None or not node.config.get("scale", True):
                continue
            weight = getattr(node.layer, rule.scale)
            assert node.out_shapes[0][-1] in tuple(weight.shape), node.name
            checked.add(node.type)
    assert {"BatchNormalization", "LayerNormalization", "DepthwiseConv2D", "LayerScale"} <= checked
    assert [name for name, rule in rules.registered().items() if rule.normalizes] == [
        "BatchNormalization", "GroupNormalization"]
