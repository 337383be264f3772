"""Channel gates: placement, inference, the regularizer by hand, sampling, folding, training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from patterns import PATTERNS, randomize, sample_input, shared_layer

from morphcli.core import rules
from morphcli.core.costs import RESOURCES, CostModel
from morphcli.core.graph import build_graph
from morphcli.errors import ModelError, MorphError
from morphcli.training.gates import (
    LOGIT_SCALE,
    ChannelGate,
    export,
    insert,
    log_odds,
    rekey,
    remove,
)
from morphcli.training.regularizers import canonical_kind, make_regularizer, strength_scale

ALL = {**PATTERNS, "shared_layer": shared_layer}


def gates_of(model) -> dict[str, str]:
    """Gate name -> name of the layer it follows."""
    return {layer.name: layer._inbound_nodes[0].parent_nodes[0].operation.name
            for layer in model.layers if isinstance(layer, ChannelGate)}


def set_probabilities(model, probabilities: dict[str, list[float]]):
    for name, p in probabilities.items():
        model.get_layer(name).set_probability(p)
    return model


def group_of(graph, layer):
    return graph.node(layer).outputs[0].groups[0]


def predict(model, x):
    return np.asarray(model(x, training=False))


# -- placement ----------------------------------------------------------------------


@pytest.mark.parametrize("pattern, expected", [
    ("chain", {"bn1_gate": "bn1", "bn2_gate": "bn2"}),  # after the batch norm, before ReLU
    ("residual", {"stem_bn_gate": "stem_bn", "res_bn_gate": "res_bn",
                  "proj_bn_gate": "proj_bn", "shortcut_gate": "shortcut"}),  # no BN: the conv
    ("depthwise", {"dw_bn_gate": "dw_bn", "pw_bn_gate": "pw_bn"}),  # through the depthwise
    ("squeeze_excite", {"bn_gate": "bn", "se_reduce_gate": "se_reduce"}),  # sigmoid: none
    ("nested", {"stem_gate": "stem"}),  # sources inside nested models get none
    ("boundary", {"conv_c_gate": "conv_c"}),  # conv_a, conv_b are frozen
    ("shared_layer", {"a_gate": "a", "b_gate": "b", "shared_gate": "shared"}),
])
def test_one_gate_after_each_prunable_source(pattern, expected):
    seed = ALL[pattern]()
    weights = [w.copy() for w in seed.get_weights()]
    gated = insert(seed)
    assert gates_of(gated) == expected
    assert gated.name == seed.name
    # The seed is untouched: same weights, no extra calls of its layers.
    assert all(len(layer._inbound_nodes) == (2 if layer.name == "shared" else 1)
               for layer in seed.layers if not isinstance(layer, keras.layers.InputLayer))
    for old, new in zip(weights, seed.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_a_shared_source_gets_one_shared_gate():
    gated = insert(shared_layer())
    graph = build_graph(gated)
    assert sorted(n.name for n in graph.nodes if n.type == "ChannelGate") == [
        "a_gate", "b_gate", "shared_gate#0", "shared_gate#1"]
    _, reg = setup(gated)
    assert len(reg.sources[group_of(graph, "shared#0")]) == 1  # one gate, counted once


@pytest.mark.parametrize("pattern", sorted(ALL))
def test_gated_model_at_inference_equals_the_seed(pattern):
    seed = randomize(ALL[pattern]())
    x = sample_input(seed, batch=3)
    np.testing.assert_allclose(predict(insert(seed), x), predict(seed, x), atol=1e-6)


def _groups(graph):
    return sorted((tuple(sorted(g.sources)), g.width, g.prunable) for g in graph.groups.values())


@pytest.mark.parametrize("pattern", sorted(ALL))
def test_gates_join_their_source_group_and_cost_nothing(pattern):
    seed = ALL[pattern]()
    gated = insert(seed)
    graph, gated_graph = build_graph(seed), build_graph(gated)
    assert _groups(gated_graph) == _groups(graph)
    for name, anchor in gates_of(gated).items():
        gate_node = next(n for n in gated_graph.nodes if n.layer.name == name)
        anchor_node = next(n for n in gated_graph.nodes if n.layer.name == anchor)
        assert gate_node.outputs == [anchor_node.outputs[0]]
    for resource in RESOURCES:
        assert CostModel(gated_graph, "T4").total(resource) == pytest.approx(
            CostModel(graph, "T4").total(resource), rel=1e-12), resource


def test_the_rule_entry():
    rule = rules.registered()["ChannelGate"]
    assert rules.get(ChannelGate()) is rule
    node = next(n for n in build_graph(insert(PATTERNS["chain"]())).nodes
                if n.type == "ChannelGate")
    assert rule.kind == rules.Kind.PASS and not rule.moves_memory
    assert rule.flops(node) == [] and rule.params(node) == []
    assert rule.weights(node) == [{-1: rules.IN}]


# -- the regularizer by hand ----------------------------------------------------------


def bn_chain():
    """input 4x4x2 -> c1 (1x1, 3) -> b1 -> c2 (1x1, 5) -> b2 -> GAP -> Dense(2), as in
    test_regularizers; gates go after b1 and b2."""
    inputs = keras.Input((4, 4, 2))
    x = layers.Conv2D(3, 1, use_bias=False, name="c1")(inputs)
    x = layers.BatchNormalization(name="b1")(x)
    x = layers.Conv2D(5, 1, use_bias=False, name="c2")(x)
    x = layers.BatchNormalization(name="b2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(2, name="logits")(x))


def setup(model, resource="flops", **kwargs):
    graph = build_graph(model)
    return graph, make_regularizer(graph, CostModel(graph, "T4"), "gates", resource, **kwargs)


P1, P2 = [0.5, 0.05, 0.2], [0.9, 0.08, 0.3, 0.02, 0.8]


def test_term_cost_and_gradient_by_hand():
    gated = set_probabilities(insert(bn_chain()), {"b1_gate": P1, "b2_gate": P2})
    graph, reg = setup(gated)
    g1, g2 = group_of(graph, "c1"), group_of(graph, "c2")
    np.testing.assert_allclose(reg.numpy_vectors()[g1], P1, rtol=1e-6)
    assert reg.alive_masks()[g1].tolist() == [True, False, True]  # p > 0.1
    assert reg.alive_masks()[g2].tolist() == [True, False, True, False, True]
    # Same pricing as test_regularizers (gates cost nothing):
    # flops(A1, A2) = 102*A1 + 32*A1*A2 + 58*A2 + 2
    assert reg.cost() == 102 * 2 + 32 * 2 * 3 + 58 * 3 + 2 == 572
    r1, r2 = sum(P1), sum(P2)  # 0.75, 2.1; alive W1 = 2, W2 = 3; input/output frozen
    expected = (32 * (2 * r1) + 38 * r1 + 32 * (2 * r2 + 3 * r1) + 38 * r2 + 16 * r2
                + 2 * (2 * r2))
    scores = [gated.get_layer(n).score for n in ("b1_gate", "b2_gate")]
    with tf.GradientTape() as tape:
        term = reg.term()
    assert float(term) == pytest.approx(expected, rel=1e-6)
    # dterm/dp: 198 per channel of group 1, 122 of group 2 (test_regularizers); times
    # dp/dscore = p (1 - p) * 5 (the logit is 5 * score).
    assert LOGIT_SCALE == 5
    d1, d2 = tape.gradient(term, scores)
    np.testing.assert_allclose(d1, [198 * p * (1 - p) * 5 for p in P1], rtol=1e-5)
    np.testing.assert_allclose(d2, [122 * p * (1 - p) * 5 for p in P2], rtol=1e-5)


def test_strength_scale_counts_every_channel_at_092():
    _, reg = setup(insert(bn_chain()))
    r1, r2 = 3 * 0.92, 5 * 0.92  # every gate at its initial keep-probability
    expected = (32 * (2 * r1) + 38 * r1 + 32 * (3 * r2 + 5 * r1) + 38 * r2 + 16 * r2
                + 2 * (2 * r2))
    assert strength_scale(reg) == pytest.approx(expected, rel=1e-6)


def tied_model():
    """input 4x4x3 -> [ca (1x1, 3) -> ba] + [cb (1x1, 3) -> bb] -> add -> GAP -> Dense(2)."""
    inputs = keras.Input((4, 4, 3))
    a = layers.BatchNormalization(name="ba")(layers.Conv2D(3, 1, use_bias=False, name="ca")(inputs))
    b = layers.BatchNormalization(name="bb")(layers.Conv2D(3, 1, use_bias=False, name="cb")(inputs))
    x = layers.GlobalAveragePooling2D(name="gap")(layers.Add(name="add")([a, b]))
    return keras.Model(inputs, layers.Dense(2, name="logits")(x))


PA, PB = [0.5, 0.06, 0.05], [0.3, 0.06, 0.02]


def test_tied_group_probability_by_hand():
    gated = set_probabilities(insert(tied_model()), {"ba_gate": PA, "bb_gate": PB})
    graph, reg = setup(gated)
    gid = group_of(graph, "add")
    assert group_of(graph, "ca") == group_of(graph, "cb") == gid
    # 1 - (1 - pa)(1 - pb): 1 - 0.5*0.7, 1 - 0.94*0.94, 1 - 0.95*0.98
    p = [0.65, 0.1164, 0.069]
    np.testing.assert_allclose(reg.numpy_vectors()[gid], p, rtol=1e-5)
    # Channel 1 lives (0.1164 > 0.1) though each of its gates alone is closed (0.06).
    assert reg.alive_masks()[gid].tolist() == [True, True, False]
    # Per channel of the group (16 positions): ca, cb 2*16*3 = 96 each (frozen input 3);
    # ba, bb 2*16 + 6 = 38 each; add 16; gap 16; logits 2*2 = 4: 304 in all.
    assert float(reg.term()) == pytest.approx(304 * sum(p), rel=1e-5)
    assert reg.cost() == 304 * 2 + 2  # + the logits' bias
    score = gated.get_layer("ba_gate").score
    with tf.GradientTape() as tape:
        term = reg.term()
    expected = [304 * (1 - q) * v * (1 - v) * 5 for v, q in zip(PA, PB, strict=True)]
    np.testing.assert_allclose(tape.gradient(term, score), expected, rtol=1e-5)


def test_export_of_a_tie_folds_closed_gates_of_living_channels():
    gated = set_probabilities(insert(randomize(tied_model())), {"ba_gate": PA, "bb_gate": PB})
    graph, reg = setup(gated)
    shrunk = export(gated, reg.alive_masks(), graph)
    assert shrunk.get_layer("ca").filters == shrunk.get_layer("cb").filters == 2
    # Channel 1 is kept, but both its gates are closed: folded into zero gammas and betas.
    np.testing.assert_array_equal(shrunk.get_layer("ba").gamma.numpy()[1], 0.0)
    np.testing.assert_array_equal(shrunk.get_layer("bb").beta.numpy()[1], 0.0)
    x = sample_input(gated, batch=4)
    np.testing.assert_allclose(predict(shrunk, x), predict(gated, x), atol=1e-5)


def test_groups_without_a_gate_are_kept_whole():
    graph, reg = setup(insert(PATTERNS["nested"]()))
    assert reg.groups == [group_of(graph, "stem")]
    inner = {group_of(graph, "block/conv"), group_of(graph, "head/conv")}
    assert set(reg.kept_whole) == inner
    assert all("no gate" in reason for reason in reg.kept_whole.values())


def test_gates_need_gates_and_their_threshold():
    with pytest.raises(MorphError, match="gates.insert"):
        setup(bn_chain())
    with pytest.raises(MorphError, match="threshold is 0.05"):
        setup(insert(bn_chain()), threshold=0.05)
    graph, reg = setup(insert(bn_chain(), threshold=0.05), threshold=0.05)
    assert reg.threshold == 0.05


@pytest.mark.parametrize("text", ["gates", "Gates", "gating", "gate"])
def test_kind_aliases(text):
    assert canonical_kind(text) == "gates"


def test_default_threshold():
    assert setup(insert(bn_chain()))[1].threshold == 0.1


# -- the layer -------------------------------------------------------------------------


def test_inference_gate_is_hard_at_the_threshold():
    gate = ChannelGate()
    gate.build((None, 4))
    gate.set_probability([0.11, 0.09, 1e-4, 0.5])
    np.testing.assert_allclose(gate.probability(), [0.11, 0.09, 1e-4, 0.5], rtol=1e-5)
    x = np.full((2, 4), 3.0, "float32")
    np.testing.assert_array_equal(gate(x), [[3, 0, 0, 3]] * 2)


def test_one_sample_per_channel_shared_across_the_batch_and_positions():
    gate = ChannelGate(seed=3)
    x = np.ones((4, 3, 3, 6), "float32")
    first = np.asarray(gate(x, training=True))
    np.testing.assert_array_equal(first, np.broadcast_to(first[0, 0, 0], first.shape))
    second = np.asarray(gate(x, training=True))
    assert not np.array_equal(first, second)  # a new draw at every step
    replay = ChannelGate(seed=3)
    np.testing.assert_array_equal(replay(x, training=True), first)
    np.testing.assert_array_equal(replay(x, training=True), second)


def test_sampling_follows_the_global_seed():
    x = np.ones((2, 16), "float32")
    draws = []
    for _ in range(2):
        keras.utils.set_random_seed(11)
        draws.append(np.asarray(ChannelGate()(x, training=True)))
    np.testing.assert_array_equal(draws[0], draws[1])


def test_relaxed_samples_are_nearly_binary():
    gate = ChannelGate(seed=0)
    s = np.asarray(gate(np.ones((1, 20000), "float32"), training=True))[0]
    # P(on) = P(logit + noise > 0) = p = 0.92. The sample is in (0.1, 0.9) when
    # |logit + noise| < t * ln 9, with logistic noise: sigmoid(-L + a) - sigmoid(-L - a).
    logit, a = log_odds(0.92), 0.1 * math.log(9)

    def sigmoid(v):
        return 1 / (1 + math.exp(-v))

    soft = sigmoid(-logit + a) - sigmoid(-logit - a)  # 0.0324
    assert np.mean(s > 0.5) == pytest.approx(0.92, abs=0.01)
    assert np.mean((s > 0.1) & (s < 0.9)) == pytest.approx(soft, abs=0.005)


def test_gated_model_saves_loads_and_checkpoints_its_sampler(tmp_path):
    gated = randomize(insert(PATTERNS["chain"](), seed=5))
    x = sample_input(gated)
    gated.save(tmp_path / "gated.keras")
    loaded = keras.saving.load_model(tmp_path / "gated.keras")
    np.testing.assert_array_equal(predict(loaded, x), predict(gated, x))
    assert loaded.get_layer("bn1_gate").get_config()["temperature"] == 0.1
    gated.save_weights(tmp_path / "gated.weights.h5")
    after = np.asarray(gated(x, training=True))
    fresh = insert(PATTERNS["chain"](), seed=5)
    fresh.load_weights(tmp_path / "gated.weights.h5")
    np.testing.assert_array_equal(fresh(x, training=True), after)  # same next draw


# -- folding -------------------------------------------------------------------------

# Patterns whose layers between a gate and the next kernels map 0 to 0. Not exact:
# `concat` (a batch norm after the Concatenate turns a closed channel into its beta)
# and `boundary` (`x + 3.0` after conv_c's gate).
EXACT = sorted(set(ALL) - {"concat", "boundary"})


@pytest.mark.parametrize("pattern", EXACT)
def test_export_equals_the_gated_model(pattern):
    seed = randomize(ALL[pattern]())
    gated = insert(seed)
    rng = np.random.default_rng(0)
    for layer in gated.layers:
        if isinstance(layer, ChannelGate):  # about a third of the gates closed, and the first
            p = rng.uniform(0.0, 0.3, layer.score.shape)
            layer.set_probability(np.concatenate([[0.01], p[1:]]))
    graph, reg = setup(gated)
    masks = reg.alive_masks()
    assert any(not m.all() for m in masks.values())
    shrunk = export(gated, masks, graph)
    assert not any(isinstance(layer, ChannelGate) for layer in shrunk.layers)
    assert CostModel(build_graph(shrunk), "T4").total("flops") == pytest.approx(reg.cost())
    x = sample_input(gated, batch=4)
    np.testing.assert_allclose(predict(shrunk, x), predict(gated, x), atol=1e-5)
    # Masks keyed by the seed's graph (as `morph shrink` keeps them) export the same model.
    seed_graph = build_graph(seed)
    again = export(gated, rekey(masks, graph, seed_graph), seed_graph)
    np.testing.assert_array_equal(predict(again, x), predict(shrunk, x))


@pytest.mark.parametrize("pattern", sorted(ALL))
def test_remove_gives_back_the_seed_architecture(pattern):
    seed = ALL[pattern]()
    clean = remove(insert(seed))

    def names(model):
        return [(type(lr).__name__, lr.name) for lr in model.layers
                if not isinstance(lr, keras.layers.InputLayer)]

    assert names(clean) == names(seed)
    assert _groups(build_graph(clean)) == _groups(build_graph(seed))


def test_remove_refuses_a_gate_it_cannot_fold():
    inputs = keras.Input((4, 4, 2))
    x = layers.Activation("sigmoid", name="act")(layers.Conv2D(3, 1, name="c")(inputs))
    x = ChannelGate(name="gate")(x)
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ModelError, match="cannot absorb"):
        remove(model)


def test_rekey_matches_groups_by_source_layer():
    seed = PATTERNS["concat"]()
    graph, gated_graph = build_graph(seed), build_graph(insert(seed))
    names = ("branch_a", "branch_b", "conv")
    by_gated = {group_of(gated_graph, n): n for n in names}
    # Inserting gates changes the traversal order, hence the ids: rekey follows names.
    assert by_gated != {group_of(graph, n): n for n in names}
    rekeyed = rekey(by_gated, gated_graph, graph)
    assert rekeyed == {group_of(graph, n): n for n in names}
    with pytest.raises(ModelError, match="no source layer"):
        rekey(by_gated, gated_graph, build_graph(PATTERNS["chain"]()))


# -- training --------------------------------------------------------------------------


def test_training_closes_gates_and_export_matches(tmp_path):
    from morphcli.models import zoo
    from morphcli.training import data
    from morphcli.training import engine as train

    train.set_seed(0)
    dataset = data.load_dataset("builtin:digits", batch_size=64, seed=0)
    seed = zoo.build_seed("cnn", input_shape=dataset.input_shape, classes=dataset.num_classes)
    before = [w.copy() for w in seed.get_weights()]
    gated = insert(seed)
    graph, reg = setup(gated)
    lam = 5.0 / strength_scale(reg)  # a strong penalty: the term starts at 5
    spec = train.TrainSpec(epochs=3, learning_rate=0.02)
    train.fit(gated, dataset, spec, workdir=tmp_path, penalty=reg.term, strength=lam,
              tensorboard=False)
    masks = reg.alive_masks()
    assert sum(int((~m).sum()) for m in masks.values()) > 20  # of 224 channels
    assert reg.cost() < 0.8 * reg.costs.total("flops")
    shrunk = export(gated, masks, graph)
    x, _ = next(iter(dataset.val))
    np.testing.assert_allclose(predict(shrunk, x), predict(gated, x), atol=1e-5)
    assert CostModel(build_graph(shrunk)).total("flops") == pytest.approx(reg.cost())
    for old, new in zip(before, seed.get_weights(), strict=True):  # the seed never trained
        np.testing.assert_array_equal(old, new)
