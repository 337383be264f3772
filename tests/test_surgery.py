"""Tests for morphcli.core.surgery: for every pattern and probe, the rebuilt model equals
the seed with its dead channels zeroed, has the widths of the masks, costs what
the cost model predicts, and survives a .keras round trip."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
from keras import layers
from patterns import (
    APPLICATIONS,
    PATTERNS,
    PROBES,
    application,
    group_of,
    probe_model,
    randomize,
    sample_input,
    shared_layer,
)

from morphcli.core.costs import RESOURCES, CostModel
from morphcli.core.graph import build_graph
from morphcli.core.surgery import apply_structure, resize, zero_dead_channels
from morphcli.errors import ModelError

# LayerNormalization is pruned as a per-channel layer (issue 2 lists it so), but its
# mean and variance run over the channel axis: removing channels, even zero ones,
# changes the survivors. A documented approximation, not an exact rebuild.
COUPLED = pytest.mark.xfail(strict=True, reason=(
    "LayerNormalization's statistics span the channel axis; its rebuild is approximate"))


# --- helpers ------------------------------------------------------------------------------


def random_alive(graph, seed: int = 0) -> dict[int, np.ndarray]:
    """A seeded mask per prunable group, with at least one dead and one alive channel."""
    rng = np.random.default_rng(seed)
    alive = {}
    for group in graph.prunable_groups():
        mask = rng.random(group.width) < 0.5
        order = rng.permutation(group.width)
        mask[order[0]] = True
        if group.width > 1:
            mask[order[1]] = False
        alive[group.id] = mask
    return alive


def weight_copy(model):
    """A clone of `model` with the same weights (Lambda layers reused, not re-created)."""
    def clone(layer):
        if isinstance(layer, layers.Lambda):
            return layer
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def masked_and_rebuilt(model, alive):
    """Predictions of the seed with dead channels zeroed and of the rebuilt model."""
    masked = weight_copy(model)
    zero_dead_channels(masked, alive, build_graph(masked))
    rebuilt = apply_structure(model, alive, build_graph(model), fold_constants=False)
    x = sample_input(model)
    return masked(x, training=False).numpy(), rebuilt(x, training=False).numpy(), rebuilt


@functools.cache
def _pruned(name: str):
    """(seed, graph, alive, rebuilt) for a pattern; cached, never mutated."""
    seed = randomize(PATTERNS[name](), seed=3)
    graph = build_graph(seed)
    alive = random_alive(graph, seed=7)
    return seed, graph, alive, apply_structure(seed, alive, graph, fold_constants=False)


def widths_of(alive) -> dict[int, int]:
    return {gid: int(mask.sum()) for gid, mask in alive.items()}


def _patterns():
    marks = {}
    return [pytest.param(name, marks=marks.get(name, ())) for name in sorted(PATTERNS)]


def _channels(layer) -> int:
    return layer.output.shape[-1]


# --- every pattern -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_rebuilt_model_equals_masked_seed(name):
    seed = randomize(PATTERNS[name](), seed=3)
    alive = random_alive(build_graph(seed), seed=7)
    assert alive and all(not m.all() for m in alive.values() if m.size > 1)
    masked, rebuilt, _ = masked_and_rebuilt(seed, alive)
    np.testing.assert_allclose(rebuilt, masked, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", _patterns())
def test_rebuilt_widths_match_masks(name):
    seed, graph, alive, rebuilt = _pruned(name)
    new_graph = build_graph(rebuilt)
    assert [n.name for n in new_graph.nodes] == [n.name for n in graph.nodes]
    for node in graph.nodes:
        expected = len(graph.indices(node.outputs[0], alive))
        assert new_graph.node(node.name).out_shapes[0][-1] == expected, node.name
    for gid, mask in alive.items():
        source = graph.groups[gid].members[0]
        assert new_graph.groups[group_of(new_graph, source)].width == mask.sum()
    # Frozen groups keep their width; nothing became frozen or prunable.
    assert [g.prunable for g in new_graph.groups.values()] == [
        g.prunable for g in graph.groups.values()]


@pytest.mark.parametrize("name", _patterns())
def test_rebuilt_model_costs_what_was_predicted(name):
    seed, graph, alive, rebuilt = _pruned(name)
    predicted, actual = CostModel(graph, "T4"), CostModel(build_graph(rebuilt), "T4")
    for resource in RESOURCES:
        assert actual.total(resource) == pytest.approx(
            predicted.total(resource, widths_of(alive)), rel=1e-12), resource
    assert rebuilt.count_params() == predicted.total("params", widths_of(alive))
    assert rebuilt.count_params() < seed.count_params()


@pytest.mark.parametrize("name", _patterns())
def test_resize_doubles_every_prunable_width(name):
    model = PATTERNS[name]()
    graph = build_graph(model)
    doubled = {g.id: 2 * g.width for g in graph.prunable_groups()}
    wide = resize(model, doubled, graph)
    wide_graph = build_graph(wide)
    for node in graph.nodes:
        space = node.outputs[0]
        seed_channels = node.out_shapes[0][-1]
        prunable = all(graph.groups[g].prunable for g in space.groups)
        expected = 2 * seed_channels if prunable else graph.width(space, doubled)
        assert wide_graph.node(node.name).out_shapes[0][-1] == expected, node.name
    assert wide.count_params() == CostModel(graph).total("params", doubled)
    assert CostModel(wide_graph).total("flops") == CostModel(graph).total("flops", doubled)


def test_resize_by_hand():
    wide = resize(PATTERNS["concat"](), {1: 10, 2: 12, 3: 14})
    channels = {layer.name: _channels(layer) for layer in wide.layers}
    assert channels == {"image": 3, "branch_a": 10, "branch_b": 12, "cat": 22, "cat_bn": 22,
                        "conv": 14, "gap": 14, "logits": 4}
    # branch_a 9*3*10 + 10, branch_b 3*12 + 12, cat_bn 4*22, conv 9*22*14 + 14, logits 14*4 + 4
    assert wide.count_params() == 280 + 48 + 88 + 2786 + 60


@pytest.mark.parametrize("name", _patterns())
def test_rebuilt_model_round_trips_through_keras_file(name, tmp_path):
    _, _, _, rebuilt = _pruned(name)
    path = tmp_path / f"{name}.keras"
    rebuilt.save(path)
    loaded = keras.models.load_model(path, safe_mode=name != "boundary")
    x = sample_input(rebuilt, seed=5)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                  rebuilt(x, training=False).numpy())


def test_apply_structure_slices_weights_by_hand():
    seed, graph, _, _ = _pruned("chain")
    alive = {1: np.array([1, 0, 1, 1, 0], bool), 2: np.array([0, 1, 1, 0, 1, 1, 0], bool)}
    rebuilt = apply_structure(seed, alive, graph, fold_constants=False)
    keep1, keep2 = [0, 2, 3], [1, 2, 4, 5]

    def weights(model, name):
        return [np.asarray(w) for w in model.get_layer(name).get_weights()]

    (k1,), (n1,) = weights(seed, "conv1"), weights(rebuilt, "conv1")
    np.testing.assert_array_equal(n1, k1[..., keep1])
    (k2, b2), (n2, c2) = weights(seed, "conv2"), weights(rebuilt, "conv2")
    np.testing.assert_array_equal(n2, k2[:, :, keep1][..., keep2])
    np.testing.assert_array_equal(c2, b2[keep2])
    for old, new in zip(weights(seed, "bn2"), weights(rebuilt, "bn2"), strict=True):
        np.testing.assert_array_equal(new, old[keep2])  # gamma, beta, mean, variance
    (k3, b3), (n3, c3) = weights(seed, "logits"), weights(rebuilt, "logits")
    np.testing.assert_array_equal(n3, k3[keep2])
    np.testing.assert_array_equal(c3, b3)


def test_apply_structure_slices_flattened_features():
    seed, graph, _, _ = _pruned("flatten_dense")
    rebuilt = apply_structure(seed, {1: np.array([0, 1, 0, 1], bool)}, graph)
    old = seed.get_layer("fc").get_weights()[0]  # (36, 9): feature p * 4 + c
    np.testing.assert_array_equal(rebuilt.get_layer("fc").get_weights()[0], old[1::2])


def test_zero_dead_channels_zeroes_the_dead_activations():
    seed, graph, _, _ = _pruned("residual")
    copy = weight_copy(seed)
    alive = {1: np.array([1, 1, 0, 1, 0, 1, 1, 1], bool)}
    zero_dead_channels(copy, alive, build_graph(copy))
    probe = keras.Model(copy.input, [copy.get_layer(n).output for n in ("stem_bn", "relu1")])
    bn, relu = (v.numpy() for v in probe(sample_input(seed), training=False))
    assert np.all(bn[..., [2, 4]] == 0) and np.all(relu[..., [2, 4]] == 0)
    assert np.all(bn[..., [0, 1, 3, 5, 6, 7]] != 0)
    # Weights of other groups are untouched.
    np.testing.assert_array_equal(copy.get_layer("proj_bn").get_weights()[0],
                                  seed.get_layer("proj_bn").get_weights()[0])


def test_apply_structure_leaves_the_seed_alone():
    seed = randomize(PATTERNS["chain"](), seed=3)
    before = [w.copy() for w in seed.get_weights()]
    graph = build_graph(seed)
    apply_structure(seed, random_alive(graph), graph)
    resize(seed, {1: 9}, graph)
    for old, new in zip(before, seed.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert [_channels(layer) for layer in seed.layers[1:]] == [5, 5, 5, 7, 7, 7, 7, 4]


def test_unlisted_and_all_alive_groups_keep_every_channel():
    seed, graph, _, _ = _pruned("concat")
    rebuilt = apply_structure(seed, {2: np.ones(6, bool)}, graph)
    assert rebuilt.count_params() == seed.count_params()
    x = sample_input(seed)
    np.testing.assert_allclose(rebuilt(x, training=False), seed(x, training=False), atol=1e-6)


# --- one probe per layer class ------------------------------------------------------------

PROBE_MARKS = {"LayerNormalization": COUPLED}


@pytest.mark.parametrize("key", [pytest.param(k, marks=PROBE_MARKS.get(k, ()))
                                 for k in sorted(PROBES)])
def test_probe_rebuilt_equals_masked_seed(key):
    seed = randomize(probe_model(key), seed=11)
    graph = build_graph(seed)
    alive = random_alive(graph, seed=13)
    masked, rebuilt_out, rebuilt = masked_and_rebuilt(seed, alive)
    np.testing.assert_allclose(rebuilt_out, masked, rtol=0, atol=1e-5)
    predicted, actual = CostModel(graph), CostModel(build_graph(rebuilt))
    for resource in ("flops", "params"):
        assert actual.total(resource) == predicted.total(resource, widths_of(alive))
    assert rebuilt.count_params() == predicted.total("params", widths_of(alive))


# --- keras.applications --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_applications_rebuilt_equals_masked_seed(name):
    seed = randomize(application(name), seed=3)
    graph = build_graph(seed)
    alive = random_alive(graph, seed=7)
    masked, rebuilt_out, rebuilt = masked_and_rebuilt(seed, alive)
    np.testing.assert_allclose(rebuilt_out, masked, rtol=0, atol=1e-5)
    assert np.abs(masked).max() > 0.1  # logits, not vanishing
    assert rebuilt.count_params() == CostModel(graph).total("params", widths_of(alive))


# --- shared layers and boundaries ----------------------------------------------------------


def test_shared_layer_can_be_pruned():
    seed = randomize(shared_layer(), seed=3)
    graph = build_graph(seed)
    alive = random_alive(graph, seed=7)
    masked, rebuilt, _ = masked_and_rebuilt(seed, alive)
    np.testing.assert_allclose(rebuilt, masked, rtol=0, atol=1e-5)


def test_model_with_a_lambda_can_be_resized():
    model = PATTERNS["boundary"]()
    wide = resize(model, {5: 14})
    assert wide.get_layer("conv_c").output.shape[-1] == 14


# --- errors ------------------------------------------------------------------------------


def test_frozen_group_cannot_lose_channels():
    seed, graph, _, _ = _pruned("chain")
    with pytest.raises(ModelError, match=r"Group 3 is frozen \(model output\)"):
        apply_structure(seed, {3: np.array([1, 1, 0, 1], bool)}, graph)
    with pytest.raises(ModelError, match="Group 0 is frozen"):
        apply_structure(seed, {0: np.array([1, 0, 1], bool)}, graph)
    # An all-alive mask of a frozen group is no change, and fine.
    assert apply_structure(seed, {3: np.ones(4, bool)}, graph).count_params() == 537


def test_empty_mask_is_an_error():
    seed, graph, _, _ = _pruned("chain")
    with pytest.raises(ModelError, match="Group 1 would have no channels left"):
        apply_structure(seed, {1: np.zeros(5, bool)}, graph)


def test_wrong_size_mask_is_an_error():
    seed, graph, _, _ = _pruned("chain")
    with pytest.raises(ModelError, match=r"has 4 entries but the group has 5 channels\. "
                                         r"Received: mask_shape=\(4,\)"):
        apply_structure(seed, {1: np.ones(4, bool)}, graph)


def test_resize_errors():
    model = PATTERNS["chain"]()
    graph = build_graph(model)
    with pytest.raises(ModelError, match=r"Group 3 is frozen .* Received: width=8"):
        resize(model, {3: 8}, graph)
    with pytest.raises(ModelError, match="Received: width=0"):
        resize(model, {1: 0}, graph)
    assert resize(model, {3: 4}, graph).count_params() == 537  # frozen at its own width is fine


def test_check_names_layer_norm_groups_approximate_from_the_rule():
    from morphcli.core import rules, surgery

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, name="fc")(inputs)
    x = keras.layers.LayerNormalization(name="ln")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    graph = build_graph(model)
    assert rules.get(model.get_layer("ln")).mixes_channels
    (group,) = graph.prunable_groups()
    alive = {group.id: np.arange(group.width) % 2 == 0}
    rebuilt, _ = surgery.rebuild(model, alive, graph)
    report = surgery.check(model, alive, rebuilt, graph)
    assert "`ln` normalizes over the channel axis" in report["approximate"][group.id]
    assert report["max_abs_delta"] > 1e-3  # the survivors' statistics changed
