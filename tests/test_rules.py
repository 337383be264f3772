"""What surgery, training and profiling ask of a layer comes from its rule: a new
norm layer with moving statistics is one entry in the table, and then precise
batch norm re-estimates its statistics and surgery slices and folds them. The
rules' config keys and width keys name what the layers really have."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops
from patterns import every_model, group_of, probe_model

from morphcli.core import rules
from morphcli.core.graph import build_graph
from morphcli.core.layers import Rule
from morphcli.core.pricing import batch_norm_flops, last_axis_weights, per_channel_params
from morphcli.core.profile import _layer_signature
from morphcli.core.surgery import check, rebuild
from morphcli.core.terms import Kind
from morphcli.training import engine


class RunningNorm(layers.Layer):
    """A normalization that is no batch norm: `(x - mean) / sqrt(var + eps) * gamma
    + beta` over the batch in training, which it folds into its moving statistics
    by `momentum`; over the moving statistics at inference."""

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum, self.epsilon = momentum, epsilon

    def build(self, shape):
        width = (shape[-1],)
        self.gamma = self.add_weight(shape=width, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=width, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=width, initializer="zeros",
                                           trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape=width, initializer="ones",
                                               trainable=False, name="moving_variance")

    def call(self, x, training=False):
        if training:
            axes = list(range(len(x.shape) - 1))
            mean, variance = ops.mean(x, axis=axes), ops.var(x, axis=axes)
            for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                moving.assign(self.momentum * moving + (1 - self.momentum) * batch)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return (x - mean) * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


@pytest.fixture
def running_norm(monkeypatch):
    """`RunningNorm` in the rule table for one test: the one entry it takes."""
    monkeypatch.setattr(rules, "_RULES", rules.registered())  # the table is restored after
    rules.register("RunningNorm", Rule(
        Kind.PASS, batch_norm_flops, per_channel_params, last_axis_weights, scale="gamma",
        normalizes=True, fuses=True, moving=("moving_mean", "moving_variance")))


def two_norms() -> keras.Model:
    """c1 -> n1 -> relu -> c2 (1x1, no bias) -> n2 -> pool -> dense, seeded weights
    and moving statistics away from their initial values."""
    x = keras.Input((5, 5, 3))
    h = layers.Conv2D(6, 3, padding="same", name="c1")(x)
    h = layers.ReLU(name="r1")(RunningNorm(name="n1")(h))
    h = RunningNorm(name="n2")(layers.Conv2D(4, 1, use_bias=False, name="c2")(h))
    y = layers.Dense(3, name="head")(layers.GlobalAveragePooling2D(name="pool")(h))
    model = keras.Model(x, y)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        low, high = (0.5, 1.5) if "variance" in weight.path else (-1.0, 1.0)
        weight.assign(rng.uniform(low, high, tuple(weight.shape)).astype("float32"))
    return model


def test_precise_batch_norm_averages_a_registered_norms_batch_statistics(running_norm):
    model = two_norms()
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(8, 5, 5, 3)).astype("float32") for _ in range(3)]
    train = tf.data.Dataset.from_tensor_slices(
        (np.concatenate(batches), np.zeros(24, "int32"))).batch(8)
    n1 = model.get_layer("n1")
    assert engine.batch_norms(model) == [n1, model.get_layer("n2")]
    conv = keras.Model(model.input, model.get_layer("c1").output)

    assert engine.recalibrate_batch_norm(model, train, 3) == 3

    # By hand: the mean over the 3 batches of each batch's mean and variance.
    outputs = [np.asarray(conv(b)) for b in batches]
    expected_mean = np.mean([o.mean(axis=(0, 1, 2)) for o in outputs], axis=0)
    expected_variance = np.mean([o.var(axis=(0, 1, 2)) for o in outputs], axis=0)
    np.testing.assert_allclose(n1.moving_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(n1.moving_variance.numpy(), expected_variance, rtol=1e-5,
                               atol=1e-6)
    assert n1.momentum == 0.9  # its own momentum is back


def test_surgery_slices_a_registered_norms_statistics_and_folds_into_its_mean(running_norm):
    model = two_norms()
    graph = build_graph(model)
    kept = np.array([0, 2, 3, 5])
    alive = {group_of(graph, "c1"): np.isin(np.arange(6), kept)}

    new_model, _ = rebuild(model, alive, graph)

    old, new = model.get_layer("n1"), new_model.get_layer("n1")
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(getattr(new, name).numpy(),
                                      getattr(old, name).numpy()[kept])
    # With their kernels and gammas zeroed (what the shrink drives to zero), dead
    # channels 1 and 4 leave r1 as the constant relu(beta); c2 has no bias, so their
    # share of c2's output is taken off n2's moving mean.
    dead = np.array([1, 4])
    constant = np.maximum(old.beta.numpy()[dead], 0)
    kernel = model.get_layer("c2").kernel.numpy()[0, 0]
    shift = constant @ kernel[dead]
    assert np.abs(shift).max() > 0.1
    np.testing.assert_allclose(new_model.get_layer("n2").moving_mean.numpy(),
                               model.get_layer("n2").moving_mean.numpy() - shift, atol=1e-5)
    # And the rebuilt model predicts what the seed with those channels zeroed does.
    result = check(model, alive, new_model, graph)
    assert result["max_abs_delta"] < 1e-5 and not result["approximate"], result


def test_a_layer_without_a_rule_has_no_moving_statistics():
    model = two_norms()  # RunningNorm not registered: a boundary, not a batch norm
    assert engine.batch_norms(model) == []
    assert rules.moving_statistics(model.get_layer("n1")) == []
    bn = layers.BatchNormalization()
    bn.build((None, 3))
    assert rules.moving_statistics(bn) == [bn.moving_mean, bn.moving_variance]


# --- the config keys of every rule ----------------------------------------------------

SETTINGS = ("activation", "bias", "padding", "kernel_size")


def test_config_keys_named_by_rules_exist():
    # A typo in a key would silently read None: every key a rule names is in the config
    # of every layer of its class the tests build.
    checked = set()
    for model in every_model():
        for node in build_graph(model).nodes:
            if node.rule is None:
                continue
            for setting in SETTINGS:
                key = getattr(node.rule, setting)
                assert key is None or key in node.config, (node.name, setting, key)
                if key:
                    checked.add((node.type, setting))
            for name in node.rule.moving or ():
                assert tuple(getattr(node.layer, name).shape) == (node.out_shape[-1],)
                checked.add((node.type, "moving"))
    assert {("Conv2D", s) for s in SETTINGS} | {("Dense", "activation"),
                                                 ("MultiHeadAttention", "bias"),
                                                 ("BatchNormalization", "moving")} <= checked


def test_a_resize_writes_only_its_rules_width_keys():
    seen = set()
    for model in every_model():
        for node in build_graph(model).nodes:
            rule = node.rule
            if rule is None or rule.resize is None or node.kind == Kind.BOUNDARY:
                continue
            inner = {"inner": [w + 2 for _, w in rule.inner(node)]} if rule.inner else {}
            width_in, width_out = node.in_shape[-1] * 2, node.out_shape[-1] * 2
            new = rule.resize(dict(node.config), width_in, width_out, node, **inner)
            changed = {k for k in new if new[k] != node.config.get(k)}
            assert changed and changed <= set(rule.widths), (node.name, changed, rule.widths)
            seen.add(node.type)
    assert {"Conv2D", "Dense", "MultiHeadAttention", "Reshape", "LayerScale"} <= seen


def test_a_latency_tables_key_leaves_out_the_width_keys():
    assert rules.width_keys() == {"filters", "groups", "units", "output_shape", "key_dim",
                                  "value_dim", "target_shape", "projection_dim"}
    for key in ("LayerScale", "MultiHeadAttention"):
        graph = build_graph(probe_model(key))
        node = next(n for n in graph.nodes if n.type == key)
        config = _layer_signature(node)["config"]
        assert config and set(config).isdisjoint(rules.width_keys()), config
