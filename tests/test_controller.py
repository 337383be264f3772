"""The target-aware shrink: lambda steered so that the shrink lands on the budget.

Unit checks against hand computation (the goal schedule, one controller step,
the bounds, the landing threshold), the per-channel weights against
TensorFlow's own gradient, precise batch norm against NumPy, and real shrinks
of zoo:cnn on digits: within 10% of the target for 50% and 20%, and a fixed
numeric strength that keeps its lambda."""

import json
import logging
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from morphcli.config import load_config
from morphcli.core.costs import CostModel, get_hardware
from morphcli.core.graph import build_graph
from morphcli.models.zoo import load_static
from morphcli.steps.shrink import shrink
from morphcli.training import controller, engine, regularizers


def test_goal_falls_geometrically_over_the_first_half_then_holds():
    assert controller.goal(0.0, 100.0, 25.0) == pytest.approx(100.0)
    assert controller.goal(0.25, 100.0, 25.0) == pytest.approx(50.0)  # sqrt(100 * 25)
    assert controller.goal(0.5, 100.0, 25.0) == pytest.approx(25.0)
    assert controller.goal(0.9, 100.0, 25.0) == pytest.approx(25.0)


def test_one_step_moves_lambda_by_the_clipped_log_error_times_the_fraction():
    # alive 2x the goal, a quarter of an epoch: lambda * exp(log 2 / 4) = lambda * 2^0.25
    assert controller.step(1.0, 200.0, 100.0, 0.25) == pytest.approx(2 ** 0.25)
    # far below the goal: the log error is clipped at -1
    assert controller.step(1.0, 1.0, 100.0, 0.5) == pytest.approx(math.exp(-0.5))
    assert controller.step(3.0, 100.0, 100.0, 1.0) == pytest.approx(3.0)


def test_bounds_stop_where_even_the_cheapest_channel_is_clipped():
    low, high = controller.bounds(1e-6, learning_rate=0.1, min_weight=10.0, threshold=0.01)
    assert low == pytest.approx(1e-9)
    assert high == pytest.approx(0.15 * 0.01 / (0.1 * 10.0))  # 1.5e-3, below 1e4 * 1e-6
    assert controller.bounds(1e-6, 0.1, 1e-9, 0.01)[1] == pytest.approx(1e-2)  # the range
    assert controller.cheapest(np.array([0.0, 30.0, 10.0, 1000.0])) == 10.0  # 0: unregularized
    assert controller.cheapest(np.zeros(3)) == 0.0


@pytest.fixture
def cnn():
    keras.utils.set_random_seed(0)
    model = load_static("zoo:cnn", input_shape=(28, 28, 1), classes=10)
    graph = build_graph(model)
    return model, graph, CostModel(graph, get_hardware("cpu"))


@pytest.mark.parametrize("metric", ["flops", "params", "latency"])
def test_channel_weights_are_the_terms_gradient(cnn, metric):
    _, graph, costs = cnn
    reg = regularizers.make_regularizer(graph, costs, "gamma", metric)
    variables = [src.variable for gid in reg.groups for src in reg.sources[gid]]
    with tf.GradientTape() as tape:
        term = reg.term()
    grads = tape.gradient(term, variables)  # gammas are 1: d|gamma|/dgamma = 1
    weights = reg.channel_weights()
    for gid, grad in zip(reg.groups, grads, strict=True):
        np.testing.assert_allclose(grad.numpy(), weights[gid], rtol=1e-5)


def test_the_step_limit_clips_each_channel_weight_in_the_term(cnn):
    _, graph, costs = cnn
    reg = regularizers.make_regularizer(graph, costs, "gamma", "flops")
    weights = reg.channel_weights()[reg.groups]  # every gamma is 1
    np.testing.assert_allclose(weights, [918854, 905526, 226406], rtol=1e-6)
    assert list(costs.width_vector()[reg.groups]) == [32, 64, 128]
    strength = tf.Variable(1e-7)
    # one step of lr 0.1 moves a value by at most 5e-3: at lambda 1e-7 the
    # weights are clipped at 5e-3 / (0.1 * 1e-7) = 5e5 (the first two groups)
    reg.limit_step(strength, learning_rate=0.1, largest_step=5e-3)
    assert float(reg.term()) == pytest.approx(5e5 * 32 + 5e5 * 64 + 226406 * 128, rel=1e-5)
    variables = [src.variable for gid in reg.groups for src in reg.sources[gid]]
    with tf.GradientTape() as tape:
        term = reg.term()
    for grad, weight in zip(tape.gradient(term, variables), [5e5, 5e5, 226406], strict=True):
        np.testing.assert_allclose(grad.numpy(), weight, rtol=1e-5)
    strength.assign(1e-6)  # read at every call: the clip falls to 5e4, below every weight
    assert float(reg.term()) == pytest.approx(5e4 * (32 + 64 + 128), rel=1e-5)


def test_cost_exponent_zero_weighs_every_channel_alike(cnn):
    _, graph, costs = cnn
    plain = regularizers.make_regularizer(graph, costs, "gamma", "flops")
    flat = regularizers.make_regularizer(graph, costs, "gamma", "flops", cost_exponent=0.0)
    raw = plain.channel_weights()[plain.groups]
    np.testing.assert_allclose(flat.channel_weights()[flat.groups], raw.mean(), rtol=1e-6)
    half = regularizers.make_regularizer(graph, costs, "gamma", "flops", cost_exponent=0.5)
    np.testing.assert_allclose(half.channel_weights()[half.groups],
                               np.sqrt(raw) * np.sqrt(raw.mean()), rtol=1e-5)
    widths = costs.width_vector()  # every gamma is 1: the term is sum_g weight_g * width_g
    expected = sum(raw.mean() * widths[g] for g in flat.groups)
    assert float(flat.term()) == pytest.approx(expected, rel=1e-5)


def test_landing_revives_the_strongest_dead_channels_up_to_the_aim(cnn):
    model, graph, costs = cnn
    reg = regularizers.make_regularizer(graph, costs, "gamma", "flops")
    rng = np.random.default_rng(0)
    for gid in reg.groups:  # every group: half its channels dead at distinct values
        for src in reg.sources[gid]:
            n = src.variable.shape[0]
            values = rng.uniform(0.02, 1.0, n).astype("float32")
            values[: n // 2] = rng.uniform(0.0, 0.009, n // 2)
            src.variable.assign(values)
    now = reg.cost()
    full = costs.total("flops")
    aim = (now + full) / 2
    threshold = controller.landing_threshold(reg, aim)
    assert threshold < reg.threshold
    assert reg.cost(threshold) <= aim
    # one more revival (the next lower dead value) would pass the aim
    dead = np.concatenate([v[v <= reg.threshold] for v in reg.numpy_vectors().values()])
    below = dead[dead <= threshold]
    assert reg.cost(float(np.nextafter(below.max(), -np.inf))) > aim
    assert controller.landing_threshold(reg, now * 0.5) == reg.threshold  # above: unchanged


def test_precise_batch_norm_averages_the_batch_statistics():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.99)(inputs))
    batches = [np.random.default_rng(i).normal(i, 1 + i, (8, 3)).astype("float32")
               for i in range(4)]
    data = tf.data.Dataset.from_tensor_slices(
        (np.stack(batches), np.zeros((4, 8)))).map(lambda x, y: (x, y))
    used = engine.recalibrate_batch_norm(model, data, 3)
    norm = model.layers[-1]
    assert used == 3
    np.testing.assert_allclose(norm.moving_mean.numpy(),
                               np.mean([b.mean(0) for b in batches[:3]], 0), rtol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(),
                               np.mean([b.var(0) for b in batches[:3]], 0), rtol=1e-5)
    assert norm.momentum == 0.99


def _shrink(tmp_path, **overrides):
    conf = load_config(None, {"model.seed": "zoo:cnn", "seed": 0, **overrides})
    result = shrink(conf, tmp_path)
    return result, json.loads((tmp_path / "summary.json").read_text())


@pytest.mark.parametrize("target", [0.5, 0.2])
def test_the_steered_shrink_lands_within_ten_percent_of_the_target(tmp_path, target):
    result, summary = _shrink(tmp_path, **{"target.value": target})
    reached = result.shrunk_costs["flops"] / result.seed_costs["flops"]
    assert abs(reached / target - 1) < 0.10, reached
    history = summary["history"]
    assert history["target_fraction"][-1] == pytest.approx(target)
    assert len(set(history["lambda"])) > 1  # it was steered
    assert result.shrunk_val["accuracy"] > 0.8  # precise batch norm: the shrunk net works


def test_a_fixed_strength_keeps_its_lambda(tmp_path, caplog):
    result, summary = _shrink(tmp_path, **{"regularizer.strength": 2.0, "shrink.epochs": 3})
    structure = json.loads((tmp_path / "structure.json").read_text())
    lam = structure["regularizer"]["lambda_start"]
    assert structure["regularizer"]["steered"] is False
    assert structure["regularizer"]["landing_threshold"] == structure["regularizer"]["threshold"]
    assert result.strength == pytest.approx(lam, rel=1e-6)  # float32 variable
    assert "lambda" not in summary["history"]
    # strength 2: the regularization loss starts at 2 (the definition of strength)
    assert summary["history"]["reg_loss"][0] == pytest.approx(2.0, rel=0.3)


def test_a_shrink_that_removed_nothing_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="morphcli"):
        _shrink(tmp_path, **{"regularizer.strength": 1e-6, "shrink.epochs": 1})
    lines = [r.getMessage() for r in caplog.records if "removed almost nothing" in r.getMessage()]
    assert len(lines) == 1 and "regularizer.strength" in lines[0]
