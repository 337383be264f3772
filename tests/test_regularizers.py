"""Regularization vectors, alive masks, cost and the differentiable term, by hand."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from morphcli.core.costs import CostModel
from morphcli.core.graph import build_graph
from morphcli.errors import MorphError
from morphcli.training.regularizers import canonical_kind, make_regularizer, strength_scale


def bn_chain():
    """input 4x4x2 -> c1 (1x1, 3) -> b1 -> c2 (1x1, 5) -> b2 -> GAP -> Dense(2)."""
    inputs = keras.Input((4, 4, 2))
    x = layers.Conv2D(3, 1, use_bias=False, name="c1")(inputs)
    x = layers.BatchNormalization(name="b1")(x)
    x = layers.Conv2D(5, 1, use_bias=False, name="c2")(x)
    x = layers.BatchNormalization(name="b2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, layers.Dense(2, name="logits")(x))
    model.get_layer("b1").gamma.assign([0.5, 0.0, -0.2])
    model.get_layer("b2").gamma.assign([1.0, 0.005, 0.3, 0.0, -0.8])
    return model


def setup(model, kind="gamma", resource="flops", **kwargs):
    graph = build_graph(model)
    costs = CostModel(graph, "T4")
    return graph, make_regularizer(graph, costs, kind, resource, **kwargs)


def group_of(graph, layer):
    return next(g.id for g in graph.groups.values() if layer in g.members)


# Hand pricing of bn_chain (16 positions everywhere):
#   c1: 2*1*16 = 32 per (in x out)   b1: 2*16 + 6 = 38 per channel (x*a + b per value;
#   c2: 32 per (A1 x A2)                 var+eps, rsqrt (2), *gamma, mean*a, beta- per channel)
#   b2: 38 per channel, gap: 16 per channel, logits: 2 per (A2 x 2) + bias 2
#   cost(A1, A2) = 32*2*A1 + 38*A1 + 32*A1*A2 + 38*A2 + 16*A2 + 4*A2 + 2
#                = 102*A1 + 32*A1*A2 + 58*A2 + 2
def hand_cost(a1, a2):
    return 102 * a1 + 32 * a1 * a2 + 58 * a2 + 2


def test_gamma_masks_and_cost_by_hand():
    graph, reg = setup(bn_chain())
    g1, g2 = group_of(graph, "c1"), group_of(graph, "c2")
    assert reg.groups == sorted([g1, g2])
    masks = reg.alive_masks()
    assert masks[g1].tolist() == [True, False, True]  # |gamma| > 1e-2
    assert masks[g2].tolist() == [True, False, True, False, True]
    assert CostModel(graph).total("flops") == hand_cost(3, 5) == 1078
    assert reg.cost() == hand_cost(2, 3) == 572


def test_gamma_term_and_gradient_by_hand():
    graph, reg = setup(bn_chain())
    # R1 = 0.5 + 0 + 0.2 = 0.7, R2 = 1 + 0.005 + 0.3 + 0 + 0.8 = 2.105; input frozen (R = 0,
    # W = 2); alive widths W1 = 2, W2 = 3; output frozen (R = 0, W = 2).
    expected = (32 * (2 * 0.7) + 38 * 0.7 + 32 * (2 * 2.105 + 3 * 0.7) + 38 * 2.105
                + 16 * 2.105 + 2 * (2 * 2.105))
    gamma1 = graph.node("b1").layer.gamma
    gamma2 = graph.node("b2").layer.gamma
    with tf.GradientTape() as tape:
        term = reg.term()
    assert float(term) == pytest.approx(expected, rel=1e-6)
    d1, d2 = tape.gradient(term, [gamma1, gamma2])
    # d/d|gamma| of a channel of group 1: c1 32*2 + b1 38 + c2 32*W2 = 198;
    # of group 2: c2 32*W1 + b2 38 + gap 16 + logits 2*2 = 122. Sign follows gamma.
    np.testing.assert_allclose(d1.numpy(), [198, 0, -198], rtol=1e-6)  # d|x|/dx at 0 is 0
    np.testing.assert_allclose(d2.numpy(), [122, 122, 122, 0, -122], rtol=1e-6)


def test_strength_scale_is_the_initial_term():
    _, reg = setup(bn_chain())
    assert strength_scale(reg) == pytest.approx(float(reg.term()))


def mlp_without_bn():
    inputs = keras.Input((3,))
    x = layers.Dense(4, name="d1")(inputs)
    x = layers.ReLU(name="relu")(x)
    model = keras.Model(inputs, layers.Dense(2, name="logits")(x))
    kernel = np.array([[1, 0, 0.003, 2], [1, 0, 0.003, 0], [1, 0, 0.003, 0]], "float32")
    model.get_layer("d1").kernel.assign(kernel)
    return model


def test_group_lasso_by_hand():
    graph, reg = setup(mlp_without_bn(), kind="GroupLasso")
    gid = group_of(graph, "d1")
    # RMS of each kernel column: 1, 0, 0.003, sqrt(4/3)
    values = reg.numpy_vectors()[gid]
    np.testing.assert_allclose(values, [1, 0, 0.003, np.sqrt(4 / 3)], rtol=1e-6)
    assert reg.alive_masks()[gid].tolist() == [True, False, False, True]
    # flops(A) = d1 2*3*A + bias A + logits 2*A*2 + bias 2 = 11*A + 2
    assert reg.cost() == 11 * 2 + 2
    assert float(reg.term()) == pytest.approx(11 * values.sum(), rel=1e-6)


def test_params_resource_by_hand():
    graph, reg = setup(bn_chain(), resource="params")
    # params(A1, A2) = c1 2*A1 + b1 4*A1 + c2 A1*A2 + b2 4*A2 + logits 2*A2 + 2
    assert reg.cost() == 2 * 2 + 4 * 2 + 2 * 3 + 4 * 3 + 2 * 3 + 2
    expected = 2 * 0.7 + 4 * 0.7 + (2 * 2.105 + 3 * 0.7) + 4 * 2.105 + 2 * 2.105
    assert float(reg.term()) == pytest.approx(expected, rel=1e-6)


def test_min_channels_keeps_the_strongest():
    model = bn_chain()
    model.get_layer("b1").gamma.assign([0.001, 0.004, -0.002])
    graph, reg = setup(model, min_channels=2)
    assert reg.alive_masks()[group_of(graph, "c1")].tolist() == [False, True, True]


def test_tied_group_takes_the_max_of_its_members():
    inputs = keras.Input((4, 4, 3))
    a = layers.BatchNormalization(name="ba")(layers.Conv2D(3, 1, name="ca")(inputs))
    b = layers.BatchNormalization(name="bb")(layers.Conv2D(3, 1, name="cb")(inputs))
    x = layers.GlobalAveragePooling2D()(layers.Add(name="add")([a, b]))
    model = keras.Model(inputs, layers.Dense(2)(x))
    model.get_layer("ba").gamma.assign([0.5, 0.0, 0.0])
    model.get_layer("bb").gamma.assign([0.0, -0.3, 0.001])
    graph, reg = setup(model)
    gid = group_of(graph, "add")
    assert group_of(graph, "ca") == group_of(graph, "cb") == gid
    np.testing.assert_allclose(reg.numpy_vectors()[gid], [0.5, 0.3, 0.001])
    assert reg.alive_masks()[gid].tolist() == [True, True, False]


def test_gamma_refuses_a_model_without_batch_norm():
    with pytest.raises(MorphError, match="group_lasso"):
        setup(mlp_without_bn(), kind="gamma")


def test_gamma_refuses_scale_false():
    inputs = keras.Input((4, 4, 2))
    x = layers.BatchNormalization(scale=False, name="bn")(layers.Conv2D(3, 1, name="c")(inputs))
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(MorphError, match="scale=False"):
        setup(model)


def test_groups_without_batch_norm_are_kept_whole():
    inputs = keras.Input((4, 4, 2))
    x = layers.BatchNormalization(name="bn")(layers.Conv2D(3, 1, name="c1")(inputs))
    x = layers.Conv2D(4, 1, name="c2")(x)  # no batch norm after it
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    graph, reg = setup(model)
    assert reg.groups == [group_of(graph, "c1")]
    assert "group_lasso" in reg.kept_whole[group_of(graph, "c2")]


@pytest.mark.parametrize("text, kind", [("gamma", "gamma"), ("GroupLasso", "group_lasso"),
                                        ("group-lasso", "group_lasso"), ("BN", "gamma")])
def test_kind_aliases(text, kind):
    assert canonical_kind(text) == kind


def test_unknown_kind_suggests():
    with pytest.raises(MorphError, match="group_lasso"):
        canonical_kind("group_laso")


def test_latency_term_by_hand_on_a_memory_bound_model():
    model = bn_chain()
    for layer in ("b1", "b2"):
        gamma = model.get_layer(layer).gamma
        gamma.assign(np.ones(gamma.shape))
    graph, reg = setup(model, resource="latency")
    # On a T4 (8.1 TFLOP/s, 300 GB/s) every layer of this model is memory-bound
    # (c2: 480 flops vs 572 bytes), so the term is the bytes term / bandwidth.
    # Bytes (float32) with R1 = W1 = 3, R2 = W2 = 5 and frozen input/output (R = 0):
    #   c1: out 4*16*R1 + kernel 4*(2*R1)                = 192 + 24        = 216
    #   b1: in 64*R1 + out 64*R1 + 4 weights 16*R1        = 144*3           = 432
    #   c2: in 64*R1 + out 64*R2 + kernel 4*(W1*R2+W2*R1) = 192 + 320 + 120 = 632
    #   b2: 144*R2 = 720;  gap: in 64*R2 + out 4*R2 = 340;  logits: in 4*R2 + kernel 4*2*R2 = 60
    expected = (216 + 432 + 632 + 720 + 340 + 60) / 300e9
    assert float(reg.term()) == pytest.approx(expected, rel=1e-6)
    assert reg.cost() == pytest.approx(reg.costs.total("latency"))


def test_latency_term_by_hand_on_a_compute_bound_device():
    from morphcli.core.costs import get_hardware

    model = bn_chain()
    graph = build_graph(model)
    device = get_hardware("slow", {"peak_gflops": 1, "bandwidth_gbs": 1e6})  # all compute
    reg = make_regularizer(graph, CostModel(graph, device), "gamma", "latency")
    flops_term = (32 * (2 * 0.7) + 38 * 0.7 + 32 * (2 * 2.105 + 3 * 0.7) + 38 * 2.105
                  + 16 * 2.105 + 2 * (2 * 2.105))  # as in test_gamma_term_and_gradient_by_hand
    assert float(reg.term()) == pytest.approx(flops_term / 1e9, rel=1e-6)


def test_latency_term_runs_inside_a_compiled_step():
    _, reg = setup(bn_chain(), resource="latency")
    assert float(tf.function(reg.term)()) == pytest.approx(float(reg.term()), rel=1e-6)


def _conv(filters, name):
    return layers.Conv2D(filters, 1, use_bias=False, name=name)


def _assign(model, gammas):
    for name, value in gammas.items():
        model.get_layer(name).gamma.assign(value)
    return model


def test_concat_block_term_by_hand():
    # input 2x2x3 (4 positions) -> [ca(2)-ba, cb(3)-bb] -> concat(5) -> cc(4)-bc -> GAP -> Dense(2)
    inputs = keras.Input((2, 2, 3))
    a = layers.BatchNormalization(name="ba")(_conv(2, "ca")(inputs))
    b = layers.BatchNormalization(name="bb")(_conv(3, "cb")(inputs))
    x = layers.Concatenate(name="cat")([a, b])
    x = layers.BatchNormalization(name="bc")(_conv(4, "cc")(x))
    x = layers.GlobalAveragePooling2D()(x)
    model = _assign(keras.Model(inputs, layers.Dense(2)(x)),
                    {"ba": [1, 0], "bb": [0.5, 0.5, 0], "bc": [1, 1, 1, 1]})
    graph, reg = setup(model)
    # R_a = 1, R_b = 1, R_c = 4; alive A_a = 1, A_b = 2, A_c = 4; concat: W = 3, R = 2.
    # ca, cb: 8 per pair (1x1 on 4 positions) x input 3 (frozen): 8*3*R = 24 each
    # ba, bb: (2*4 + 6) = 14 per channel: 14*R = 14 each
    # cc: 8*(W_cat*R_c + W_c*R_cat) = 8*(3*4 + 4*2) = 160;  bc: 14*4 = 56
    # GAP: 4*R_c = 16;  Dense: 2*(2*R_c) = 16
    assert float(reg.term()) == pytest.approx(24 + 14 + 24 + 14 + 160 + 56 + 16 + 16)
    # alive flops: 24 + 14 + 48 + 28 + 96 + 56 + 16 + 16 + bias 2
    assert reg.cost() == 300
    assert reg.alive_masks()[group_of(graph, "ca")].tolist() == [True, False]


def test_depthwise_block_term_by_hand():
    # input 3x3x2 (9 positions) -> c1(3)-b1 -> depthwise 3x3 -> bd -> GAP -> Dense(2)
    inputs = keras.Input((3, 3, 2))
    x = layers.BatchNormalization(name="b1")(_conv(3, "c1")(inputs))
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = layers.BatchNormalization(name="bd")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = _assign(keras.Model(inputs, layers.Dense(2)(x)),
                    {"b1": [1, 0, 0.5], "bd": [0.2, 0, 0]})
    graph, reg = setup(model)
    gid = group_of(graph, "dw")
    assert group_of(graph, "c1") == gid  # the depthwise conv passes channels through
    np.testing.assert_allclose(reg.numpy_vectors()[gid], [1, 0, 0.5])  # max over b1, bd
    # R = 1.5: c1 18*(2*R) = 54; b1 (2*9 + 6)*R = 36; dw 2*9*9*R = 243 (linear);
    # bd 36; GAP 9*R = 13.5; Dense 2*(2*R) = 6
    assert float(reg.term()) == pytest.approx(54 + 36 + 243 + 36 + 13.5 + 6)


def test_flatten_dense_head_term_by_hand():
    # input 2x2x1 -> c(3)-b -> Flatten (12 = 4 positions x 3) -> d1(2)-bd1 -> Dense(2)
    inputs = keras.Input((2, 2, 1))
    x = layers.BatchNormalization(name="b")(_conv(3, "c")(inputs))
    x = layers.Flatten(name="flat")(x)
    x = layers.BatchNormalization(name="bd1")(layers.Dense(2, name="d1")(x))
    model = _assign(keras.Model(inputs, layers.Dense(2, name="out")(x)),
                    {"b": [1, 0, 0.5], "bd1": [0.5, 0.25]})
    graph, reg = setup(model)
    # R_c = 1.5 (A_c = 2), flattened: W = 4*2 = 8, R = 4*1.5 = 6; R_d = 0.75 (A_d = 2)
    # c: 8*(1*R_c) = 12; b: 14*R_c = 21; d1: 2*(8*R_d + 2*6) = 36, bias R_d = 0.75;
    # bd1 (one position): (2 + 6)*R_d = 6; out: 2*(2*R_d) = 3
    assert float(reg.term()) == pytest.approx(12 + 21 + 36 + 0.75 + 6 + 3)
    # Dense d1 reads 4 positions x 2 alive channels = 8 of its 12 inputs. Params:
    # c 1*2, b 4*2, d1 8*2 + bias 2, bd1 4*2, out 2*2 + bias 2
    assert reg.costs.total("params", reg.alive_widths()) == 2 + 8 + 16 + 2 + 8 + 4 + 2
