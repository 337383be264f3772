"""Tests for morphcli.steps.expand: the width-multiplier solver and expand_model."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from keras import layers

from morphcli.config import Quantity
from morphcli.core.costs import CostModel
from morphcli.core.graph import build_graph
from morphcli.core.solver import resolve_target, solve_multiplier
from morphcli.errors import ModelError, MorphError
from morphcli.steps.expand import expand_model

FACTORS = (0.3, 0.5, 2.0, 3.0)


# -- tiny models: 8x8 inputs, five prunable groups of 24-96 channels -------------


def chain():
    x = inp = keras.Input((8, 8, 3))
    for filters in (32, 48, 64, 96):
        x = layers.Conv2D(filters, 3, padding="same")(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Dense(64, activation="relu")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, layers.Dense(10)(x), name="chain")


def residual():
    x = inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    for filters in (40, 56, 72):
        y = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        y = layers.Conv2D(32, 3, padding="same")(y)
        x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(64, 1)(x))
    return keras.Model(inp, layers.Dense(10)(x), name="residual")


def concat():
    x = inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    a = layers.Conv2D(24, 1, activation="relu")(x)
    b = layers.Conv2D(40, 3, padding="same", activation="relu")(x)
    x = layers.Concatenate()([a, b, x])
    x = layers.Conv2D(48, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(layers.MaxPooling2D(4)(x))
    return keras.Model(inp, layers.Dense(10)(x), name="concat")


def separable():
    x = inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Conv2D(64, 1, activation="relu")(x)
    x = layers.SeparableConv2D(48, 3, padding="same", activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.SeparableConv2D(40, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(56, 1, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10)(x), name="separable")


def mlp():
    """4 -> Dense(8) -> Dense(2): params = 4B + B + 2B + 2 = 7B + 2 for hidden width B."""
    inp = keras.Input((4,))
    return keras.Model(inp, layers.Dense(2)(layers.Dense(8)(inp)), name="mlp")


BUILDERS = {f.__name__: f for f in (chain, residual, concat, separable)}


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def costs(models):
    return {name: CostModel(build_graph(m), "T4") for name, m in models.items()}


@pytest.fixture(scope="module")
def mlp_costs():
    return CostModel(build_graph(mlp()))


# -- hand-computed: the MLP --------------------------------------------------


def test_mlp_groups_and_cost(mlp_costs):
    prunable = mlp_costs.graph.prunable_groups()
    assert [(g.id, g.width) for g in prunable] == [(1, 8)]
    assert mlp_costs.total("params") == 7 * 8 + 2


def test_mlp_exact_target(mlp_costs):
    # 7 * 12 + 2 = 86; round(8 w) stays 12 up to w = 12.5 / 8.
    result = solve_multiplier(mlp_costs, "params", 86)
    assert result.widths == {1: 12}
    assert result.achieved == 86 and result.error == 0
    assert result.multiplier == pytest.approx(12.5 / 8, abs=1e-9)
    assert result.base_widths == {1: 8}


@pytest.mark.parametrize("target, mode, width, achieved", [
    (88, "below", 12, 86),     # 13 channels would cost 93 > 88
    (88, "nearest", 12, 86),   # |86 - 88| = 2 < |93 - 88| = 5
    (90, "below", 12, 86),
    (90, "nearest", 13, 93),   # |93 - 90| = 3 < |86 - 90| = 4
    (9, "below", 1, 9),        # the smallest structure exactly
])
def test_mlp_modes(mlp_costs, target, mode, width, achieved):
    result = solve_multiplier(mlp_costs, "params", target, mode=mode)
    assert (result.widths, result.achieved) == ({1: width}, achieved)
    assert result.error == pytest.approx((achieved - target) / target)


def test_mlp_impossible_below(mlp_costs):
    # One hidden channel: 7 + 2 = 9 weights; the output bias alone: 2.
    with pytest.raises(MorphError, match=r"smallest structure .* costs 9 \(frozen layers "
                                         r"alone cost 2\)\. Received: target=5") as info:
        solve_multiplier(mlp_costs, "params", 5)
    assert info.value.exit_code == 2


def test_mlp_min_channels_floor(mlp_costs):
    with pytest.raises(MorphError, match=r"at 3 channel\(s\)\) costs 23 "):
        solve_multiplier(mlp_costs, "params", 20, min_channels=3)
    assert solve_multiplier(mlp_costs, "params", 23, min_channels=3).widths == {1: 3}


def test_mlp_impossible_above(mlp_costs):
    # w = 64 gives 512 channels: 7 * 512 + 2 = 3586.
    assert solve_multiplier(mlp_costs, "params", 3586).widths == {1: 512}
    with pytest.raises(MorphError, match=r"at most 64 reaches 3,586 .*Received: target=3,587"):
        solve_multiplier(mlp_costs, "params", 3587)


def test_to_dict(mlp_costs):
    result = solve_multiplier(mlp_costs, "params", 90)
    data = json.loads(json.dumps(result.to_dict(mlp_costs.graph)))
    assert data == {
        "multiplier": pytest.approx(12.5 / 8, abs=1e-9), "resource": "params",
        "target": 90.0, "achieved": 86.0, "relative_error": pytest.approx(-4 / 90),
        "groups": [{"id": 1, "layers": [mlp_costs.graph.groups[1].members[0]],
                    "width_before": 8, "width_after": 12}],
    }


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "middle"}, "Expected one of below, nearest. Received: mode='middle'"),
    ({"round_to": 0}, "Received: round_to=0, min_channels=1"),
    ({"min_channels": 0}, "Received: round_to=1, min_channels=0"),
    ({"base_widths": {0: 4}}, r"Received: base_widths keys=\[0\]"),
    ({"base_widths": {1: 0}}, "Every base width must be >= 1"),
])
def test_bad_options(mlp_costs, kwargs, match):
    with pytest.raises(MorphError, match=match):
        solve_multiplier(mlp_costs, "params", 86, **kwargs)


def test_bad_target_and_resource(mlp_costs):
    with pytest.raises(MorphError, match="Received: target=0"):
        solve_multiplier(mlp_costs, "params", 0)
    with pytest.raises(MorphError, match="Received: metric='weights'"):
        solve_multiplier(mlp_costs, "weights", 86)


def test_no_prunable_group():
    inp = keras.Input((4,))
    costs = CostModel(build_graph(keras.Model(inp, layers.Dense(3)(inp))))
    with pytest.raises(ModelError, match="no channel group that can be resized"):
        solve_multiplier(costs, "params", 15)


def test_resolve_target(mlp_costs):
    assert resolve_target(mlp_costs, "params", Quantity(0.5, True)) == 29.0
    assert resolve_target(mlp_costs, "flops", Quantity(2.0, True)) == 2 * 106.0
    assert resolve_target(mlp_costs, "params", Quantity(1e6, False)) == 1e6


# -- the conv models ------------------------------------------------------------


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("resource", ["flops", "params"])
def test_seed_target_keeps_seed(costs, name, resource):
    c = costs[name]
    result = solve_multiplier(c, resource, c.total(resource))
    assert result.widths == {g.id: g.width for g in c.graph.prunable_groups()}
    assert result.achieved == c.total(resource)
    assert result.multiplier >= 1.0


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("resource", ["flops", "params"])
@pytest.mark.parametrize("factor", FACTORS)
def test_hits_target(costs, name, resource, factor):
    c = costs[name]
    target = factor * c.total(resource)
    below = solve_multiplier(c, resource, target)
    nearest = solve_multiplier(c, resource, target, mode="nearest")
    assert -0.01 <= below.error <= 0
    assert abs(nearest.error) <= abs(below.error)
    for result in (below, nearest):
        assert sorted(result.widths) == [g.id for g in c.graph.prunable_groups()]
        assert result.achieved == pytest.approx(c.total(resource, result.widths), rel=1e-12)
    # Widths grow with the target and shrink below the seed for fractions.
    seed = {g.id: g.width for g in c.graph.prunable_groups()}
    assert all((w > seed[g]) == (factor > 1) for g, w in below.widths.items())


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("resource", ["flops", "params", "latency"])
def test_target_sweep(costs, name, resource):
    # Starting the fix-up from the structure at the bisected w alone misses 1%
    # here (e.g. residual, flops at 0.6x: -1.5%); the few structures below it help.
    c = costs[name]
    for factor in np.linspace(0.2, 3.5, 34):
        result = solve_multiplier(c, resource, factor * c.total(resource))
        assert -0.01 <= result.error <= 0, (factor, result.error)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_latency_target(costs, name, factor):
    c = costs[name]
    assert c.hardware.name == "T4"
    target = factor * c.total("latency")
    result = solve_multiplier(c, "latency", target)
    assert -0.02 <= result.error <= 0
    assert result.achieved == pytest.approx(c.total("latency", result.widths), rel=1e-12)


def assert_near_multiplier(result, step: int) -> None:
    """Every width is w * base rounded to a multiple of `step`, moved by the fix-up
    or the exact search by at most 10% of itself or 2 steps (solver.WINDOW); except
    the groups `held` for the budget (solver._refit), at most 3."""
    assert len(result.held) <= 3
    free = [g for g in result.widths if g not in result.held]
    widths = np.array([result.widths[g] for g in free])
    scaled = result.multiplier * np.array([result.base_widths[g] for g in free])
    reach = np.maximum(2 * step, np.ceil(0.1 * scaled / step + 1) * step)
    assert np.all(np.abs(widths - scaled) <= reach + step / 2), (widths, scaled)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("factor", [0.3, 2.0])
def test_round_to(costs, name, factor):
    c = costs[name]
    target = factor * c.total("flops")
    result = solve_multiplier(c, "flops", target, round_to=4, min_channels=2)
    assert all(w % 4 == 0 or w == 2 for w in result.widths.values())
    assert -0.03 <= result.error <= 0  # one 4-channel step of one group, at most
    assert_near_multiplier(result, step=4)


def test_round_to_floor(mlp_costs):
    # w * 8 ~ 0.6 rounds to 0 channels: the min_channels floor, not a multiple of 4.
    assert solve_multiplier(mlp_costs, "params", 9, round_to=4).widths == {1: 1}
    assert solve_multiplier(mlp_costs, "params", 30, round_to=4).widths == {1: 4}


@pytest.mark.parametrize("name", BUILDERS)
def test_expands_shrunk_structure(costs, name):
    c = costs[name]
    groups = c.graph.prunable_groups()
    # A "shrunk" structure with uneven survival (25% to 75% of each group).
    base = {g.id: max(1, round(g.width * f))
            for g, f in zip(groups, np.linspace(0.25, 0.75, len(groups)), strict=True)}
    target = c.total("flops")  # expand back to the seed's budget
    result = solve_multiplier(c, "flops", target, base_widths=base)
    assert result.base_widths == base
    assert -0.01 <= result.error <= 0
    assert_near_multiplier(result, step=1)
    assert result.multiplier > 1.3
    data = result.to_dict(c.graph)
    assert [(g["width_before"], g["width_after"]) for g in data["groups"]] == [
        (base[g], result.widths[g]) for g in sorted(base)]


@pytest.mark.parametrize("name", BUILDERS)
def test_impossible_target_numbers(costs, name):
    c = costs[name]
    ids = [g.id for g in c.graph.prunable_groups()]
    smallest = c.total("flops", dict.fromkeys(ids, 1))
    frozen = c.total("flops", dict.fromkeys(ids, 0))
    assert 0 < frozen < smallest
    with pytest.raises(MorphError) as info:
        solve_multiplier(c, "flops", 0.9 * smallest)
    assert f"costs {smallest:,.6g} (frozen layers alone cost {frozen:,.6g})" in str(info.value)
    assert f"Received: target={0.9 * smallest:,.6g}" in str(info.value)
    assert solve_multiplier(c, "flops", smallest).achieved == smallest


# -- expand_model ------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILDERS)
def test_expand_model(models, costs, name):
    model, c = models[name], costs[name]
    new, result = expand_model(model, "flops", Quantity(2.0, True), hardware="T4")
    assert -0.01 <= result.error <= 0
    assert result.target == 2.0 * c.total("flops")
    assert new.count_params() == c.total("params", result.widths)
    assert CostModel(build_graph(new)).total("flops") == pytest.approx(result.achieved)
    batch = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    assert tuple(new(batch).shape) == (2, 10)
    assert model.count_params() == c.total("params")  # the seed is left untouched


def test_expand_model_params_absolute(models, costs):
    c = costs["residual"]
    target = 0.5 * c.total("params")
    new, result = expand_model(models["residual"], "params", Quantity(target, False),
                               round_to=2, mode="nearest")
    assert new.count_params() == result.achieved
    assert abs(result.error) <= 0.02
    assert all(w % 2 == 0 for w in result.widths.values())


def test_expand_model_latency(models, costs):
    new, result = expand_model(models["chain"], "latency", Quantity(0.5, True), hardware="T4")
    rebuilt = CostModel(build_graph(new), "T4").total("latency")
    assert rebuilt == pytest.approx(result.achieved, rel=1e-9)
    assert -0.02 <= result.error <= 0


# -- small nets: two prunable groups (issue 10.4) ------------------------------------


def mnist_convnet():
    """The Keras gallery's MNIST convnet: two prunable groups, 32 and 64 wide."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dropout(0.5), layers.Dense(10, activation="softmax"),
    ])


def test_two_groups_are_searched_exactly():
    costs = CostModel(build_graph(mnist_convnet()))
    a, b = (g.id for g in costs.graph.prunable_groups())
    target = 0.5 * costs.total("flops")
    expansion = solve_multiplier(costs, "flops", target)
    # By hand: 2·9·26·26·32 + 32 biases, then conv2 2·9·11·11·A·B, dense 2·1600·10.
    assert expansion.widths == {a: 21, b: 47}
    assert -0.001 < expansion.error <= 0  # -0.087%; the one-group-at-a-time fix-up gave
    # (22, 44), 1.30% below. Every pair within 5 channels of those widths, priced one
    # at a time, finds nothing closer below the target:
    fits = [costs.total("flops", {a: x, b: y}) for x in range(17, 28) for y in range(39, 50)]
    assert expansion.achieved == max(c for c in fits if c <= target)


def test_batch_totals_equal_single_totals(costs):
    for cost_model in costs.values():
        rng = np.random.default_rng(0)
        widths = rng.integers(1, 100, (6, cost_model.n_groups)).astype(float)
        for resource in ("flops", "macs", "params", "kernel_params", "latency"):
            np.testing.assert_allclose(cost_model.totals(resource, widths),
                                       [cost_model.total(resource, w) for w in widths],
                                       rtol=1e-12)
