"""MultiHeadAttention's channel rule (issue 10): its per-head key and value widths
are prunable groups, Q/K tied, V tied to the output projection; FLOPs equal
TensorFlow's profiler, surgery equals the masked seed."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from keras import layers
from patterns import alive_from_counts

from morphcli.cli import cli
from morphcli.core.costs import CostModel
from morphcli.core.graph import build_graph
from morphcli.core.surgery import check, rebuild


def morph(*args, code=0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"COLUMNS": "120"})
    assert result.exit_code == code, result.output
    return result


def transformer(blocks: int = 2, dropout: float = 0.1) -> keras.Model:
    """The gallery's time-series transformer (examples/timeseries/
    timeseries_classification_transformer), small: LayerNormalization,
    MultiHeadAttention and a Conv1D feed-forward per block, residual adds."""
    keras.utils.set_random_seed(0)
    x = inputs = keras.Input((24, 6))
    for block in range(blocks):
        y = layers.LayerNormalization(epsilon=1e-6)(x)
        y = layers.MultiHeadAttention(key_dim=8, num_heads=2, dropout=dropout,
                                      name=f"attention_{block}")(y, y)
        x = layers.Add()([layers.Dropout(0.1)(y), x])
        y = layers.LayerNormalization(epsilon=1e-6)(x)
        y = layers.Conv1D(12, 1, activation="relu")(y)
        x = layers.Add()([layers.Conv1D(6, 1)(layers.Dropout(0.1)(y)), x])
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x), name="transformer")


def attention_net(call=None, **options) -> keras.Model:
    """dense (query, 8) and dense (memory, 5) -> MultiHeadAttention -> pooled dense.
    `call(mha, q, m)` calls the attention (default: cross attention `mha(q, m)`)."""
    keras.utils.set_random_seed(1)
    x = inputs = keras.Input((12, 6))
    q = layers.Dense(8, name="q_in")(x)
    m = layers.Dense(5, name="m_in")(x)
    mha = layers.MultiHeadAttention(**{"num_heads": 2, "key_dim": 4, "name": "mha", **options})
    y = (call or (lambda a, b, c: a(b, c)))(mha, q, m)
    y = layers.Dense(3, name="head")(layers.GlobalAveragePooling1D()(y))
    model = keras.Model(inputs, y)
    rng = np.random.default_rng(0)
    for w in model.weights:  # non-zero biases, so dead channels matter everywhere
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.5)
    return model


VARIANTS = {
    "cross": ({}, None),
    "self": ({}, lambda a, b, c: a(b, b)),
    "key by keyword": ({"value_dim": 3}, lambda a, b, c: a(query=b, value=c, key=c)),
    "dropout": ({"dropout": 0.1}, None),  # Keras's explicit (unfused) path
    "gate": ({"use_gate": True, "value_dim": 3}, None),
    "no bias": ({"use_bias": False}, None),
    "causal, dropout": ({"dropout": 0.1}, lambda a, b, c: a(b, c, use_causal_mask=True)),
    "sliding window": ({"sliding_window": 3}, None),
    "output_shape": ({"output_shape": 7}, None),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_flops_and_params_equal_the_profiler_at_any_width(name):
    from tf_profiler import profiler_flops

    options, call = VARIANTS[name]
    model = attention_net(call, **options)
    graph = build_graph(model)
    costs = CostModel(graph)
    assert costs.total("flops") == profiler_flops(model)
    assert costs.total("params") == model.count_params()
    # A narrower model (every group, the attention's inner ones included, cut) is
    # priced at the new widths before it exists, and the profiler agrees after.
    counts = {g.id: max(1, g.width // 2 + 1) for g in graph.prunable_groups()}
    narrow, _ = rebuild(model, alive_from_counts(graph, counts), graph)
    assert costs.total("flops", counts) == profiler_flops(narrow)
    assert costs.total("params", counts) == narrow.count_params()


def test_key_and_value_widths_are_groups_query_and_key_tied():
    model = attention_net(value_dim=3)
    graph = build_graph(model)
    by_key = {g.key: g for g in graph.groups.values()}
    qk, v = by_key["mha:query_key"], by_key["mha:value"]
    assert (qk.width, v.width, qk.prunable, v.prunable) == (4, 3, True, True)
    # The attention's output is a source of its own; its inputs stay the denses' groups.
    out = graph.node("mha").outputs[0].groups[0]
    assert graph.groups[out].sources == ["mha"]
    narrow, new_graph = rebuild(model, alive_from_counts(
        graph, {qk.id: 2, v.id: 1, by_key["m_in"].id: 4}), graph)
    mha = narrow.get_layer("mha")
    shapes = {w.path.split("/", 1)[1]: tuple(w.shape) for w in mha.weights}
    # One key width gone from the query and the key in both heads; one value width
    # left in the value projection and in the output projection's rows.
    assert shapes == {"query/kernel": (8, 2, 2), "query/bias": (2, 2),
                      "key/kernel": (4, 2, 2), "key/bias": (2, 2),
                      "value/kernel": (4, 2, 1), "value/bias": (2, 1),
                      "attention_output/kernel": (2, 1, 8), "attention_output/bias": (8,)}
    assert (mha.get_config()["key_dim"], mha.get_config()["value_dim"]) == (2, 1)
    keys = {g.key for g in new_graph.groups.values()}
    assert {"mha:query_key", "mha:value"} <= keys


@pytest.mark.parametrize("name", ["cross", "self", "key by keyword", "gate", "no bias",
                                  "dropout"])
def test_surgery_equals_the_masked_seed(name):
    options, call = VARIANTS[name]
    model = attention_net(call, **options)
    graph = build_graph(model)
    rng = np.random.default_rng(3)
    alive = {}
    for group in graph.prunable_groups():
        mask = rng.random(group.width) < 0.5
        mask[rng.integers(group.width)] = True
        alive[group.id] = mask
    assert all(not m.all() for m in alive.values())
    narrow, _ = rebuild(model, alive, graph)
    # The scores are scaled by 1/sqrt(key_dim): with fewer key widths the query
    # projection is rescaled so that every score stays what it was.
    result = check(model, alive, narrow, graph)
    assert result["max_abs_delta"] < 1e-5
    assert result["approximate"] == {}


def test_group_lasso_regularizes_the_inner_widths():
    import tensorflow as tf

    from morphcli.training.regularizers import make_regularizer

    model = attention_net(value_dim=3)
    graph = build_graph(model)
    reg = make_regularizer(graph, CostModel(graph), kind="group_lasso", resource="flops")
    by_key = {g.key: g.id for g in graph.groups.values()}
    qk, v = by_key["mha:query_key"], by_key["mha:value"]
    # The query and key kernels (and the output's rows for the value) give the values.
    assert [len(reg.sources[qk]), len(reg.sources[v])] == [2, 2]
    mha = model.get_layer("mha")
    query = next(w for w in mha.weights if w.path.endswith("query/kernel"))
    values = reg.numpy_vectors()[qk]
    rms = np.sqrt((np.asarray(query.numpy()) ** 2).mean(axis=(0, 1)))
    key = next(w for w in mha.weights if w.path.endswith("key/kernel"))
    rms_key = np.sqrt((np.asarray(key.numpy()) ** 2).mean(axis=(0, 1)))
    np.testing.assert_allclose(values, np.maximum(rms, rms_key), rtol=1e-6)
    with tf.GradientTape() as tape:
        term = reg.term()
    grad = tape.gradient(term, query)
    assert float(tf.reduce_max(tf.abs(grad))) > 0


def test_transformer_file_reports_expands_and_shrinks(tmp_path):
    from tf_profiler import profiler_flops

    model = transformer()
    path = tmp_path / "transformer.keras"
    model.save(path)
    data = json.loads(morph("report", str(path), "--json").stdout)
    assert data["totals"]["flops"] == profiler_flops(model)
    assert not any(r.get("priced_by") == "profiler" for r in data["layers"])
    prunable = {g["sources"][0]: g["width"] for g in data["groups"] if g["prunable"]}
    assert prunable["attention_0:query_key"] == 8
    assert prunable["attention_1:value"] == 8
    info = json.loads(morph("expand", str(path), "--target", "flops=0.5", "-o",
                            str(tmp_path / "half.keras"), "--json").stdout)
    assert -0.001 < info["relative_error"] <= 0
    half = keras.models.load_model(tmp_path / "half.keras")
    assert CostModel(build_graph(half)).total("flops") == profiler_flops(half)
    assert abs(profiler_flops(half) / profiler_flops(model) - 0.5) < 0.001
    widths = [half.get_layer(n).get_config()["key_dim"]
              for n in ("attention_0", "attention_1")]
    assert all(1 <= w < 8 for w in widths)
    # A short shrink with group lasso on 1-D signals: the attention's groups are
    # regularized, and the rebuilt model is priced as the summary says.
    rng = np.random.default_rng(0)
    npz = tmp_path / "signals.npz"
    np.savez(npz, x_train=rng.random((64, 24, 6)).astype("float32"),
             y_train=rng.integers(0, 2, 64), x_test=rng.random((16, 24, 6)).astype("float32"),
             y_test=rng.integers(0, 2, 16))
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  source: npz:{npz}\nregularizer:\n  kind: group_lasso\n"
                      "shrink:\n  epochs: 1\n")
    morph("shrink", str(path), "-c", str(config), "-o", str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    shrunk = keras.models.load_model(tmp_path / "out" / "shrunk.keras")
    assert CostModel(build_graph(shrunk)).total("flops") == pytest.approx(
        summary["shrunk"]["flops"])
    structure = json.loads((tmp_path / "out" / "structure.json").read_text())
    assert {"attention_0:query_key", "attention_1:value"} <= {g["key"] for g in
                                                              structure["groups"]}
    assert summary["groups_kept_whole"] == {}  # the inner groups have their values too
    assert summary["surgery"]["max_abs_delta"] < 1e-5


def _attention_profile(graph, mha_seconds: float):
    """A synthetic profile of `graph`: the attention's table one point at its seed
    widths, measured with inner widths 4 and 3; every other unit 1 us; scale 2."""
    from morphcli.core import profile as profiles

    tables = {}
    for unit in profiles.units(graph):
        key, lead = profiles.unit_key(graph, unit), graph.nodes[unit[0]]
        width_in, width_out = lead.in_shapes[0][-1], graph.nodes[unit[-1]].out_shapes[0][-1]
        mha = lead.name == "mha"
        tables[key] = profiles.Table(key, [width_in], [width_out],
                                     [[mha_seconds if mha else 1e-6]],
                                     inner=[4, 3] if mha else [])
    return profiles.Profile("synthetic.json", profiles.machine(), "keras", 1, None, 0.0,
                            tables, 1, 2.0, {"name": graph.model.name})


def test_a_profile_prices_the_inner_widths_by_the_attentions_flops():
    """On a synthetic profile (no clock: exact numbers whatever the machine's load),
    an attention's table is scaled by its FLOPs at the inner widths over its FLOPs
    at the inner widths it was measured at."""
    model = attention_net(value_dim=3)
    graph = build_graph(model)
    lead = graph.nodes.index(graph.node("mha"))
    costs = CostModel(graph, _attention_profile(graph, 8e-6))
    flops = CostModel(graph)
    by_key = {g.key: g.id for g in graph.groups.values()}
    # Measured at the seed's inner widths: the table's 8 us times the scale, 2.
    assert costs.per_layer("latency")[lead] == pytest.approx(16e-6, rel=1e-12)
    for qk, v in [(2, 1), (1, 3), (4, 2), (8, 6)]:
        widths = {by_key["mha:query_key"]: qk, by_key["mha:value"]: v}
        ratio = flops.per_layer("flops", widths)[lead] / flops.per_layer("flops")[lead]
        assert costs.per_layer("latency", widths)[lead] == pytest.approx(16e-6 * ratio,
                                                                         rel=1e-12)
    narrow = {by_key["mha:query_key"]: 2, by_key["mha:value"]: 1}
    ratio = flops.per_layer("flops", narrow)[lead] / flops.per_layer("flops")[lead]
    assert 0 < ratio < 1  # narrower inner widths: fewer FLOPs, a lower price
    # The narrower model, priced on its own graph, gets the same number.
    small, small_graph = rebuild(model, alive_from_counts(graph, narrow), graph)
    small_costs = CostModel(small_graph, _attention_profile(graph, 8e-6))
    small_lead = small_graph.nodes.index(small_graph.node("mha"))
    assert small_costs.per_layer("latency")[small_lead] == pytest.approx(16e-6 * ratio,
                                                                         rel=1e-12)


def test_a_real_profile_of_an_attention_records_its_inner_widths():
    """Measured for real (Keras runtime, few calls), only the file's shape is checked:
    every unit, the attention's with its query and memory inputs, gets a table, which
    records the inner widths it ran at."""
    from morphcli.core import profile as profiles
    from morphcli.steps import profile as measure

    model = attention_net(value_dim=3)
    result = measure.profile(model, runtime="keras", warmup=1, repeats=3, round_to=1)
    graph = build_graph(model)
    lead = graph.nodes.index(graph.node("mha"))
    bound = profiles.bind(graph, result, CostModel(graph)._index)
    assert len(bound) == len(profiles.units(graph))
    unit = next(u for u in bound if u.nodes[0] == lead)
    assert unit.table.inner == [4, 3] and unit.table.layers == ["mha"]
    assert all(np.min(u.table.seconds) >= 0 for u in bound)


def test_coarse_key_widths_are_held_so_the_budget_is_met_within_a_tenth_of_a_percent(
        monkeypatch):
    from morphcli.core import solver

    # One block of the gallery's transformer on 128 steps: each key or value width of
    # the 4 heads costs 2 * 4 * 128 * 128 score flops, about 1.5% of the model.
    keras.utils.set_random_seed(0)
    x = inputs = keras.Input((128, 8))
    y = layers.LayerNormalization(epsilon=1e-6)(x)
    y = layers.MultiHeadAttention(key_dim=32, num_heads=4, dropout=0.1, name="mha")(y, y)
    x = layers.Add()([x, y])
    y = layers.Conv1D(32, 1, activation="relu")(layers.LayerNormalization(epsilon=1e-6)(x))
    x = layers.Add()([x, layers.Conv1D(8, 1)(y)])
    x = layers.Dense(64, activation="relu")(layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, layers.Dense(2)(x))
    costs = CostModel(build_graph(model))
    by_key = {g.key: g.id for g in costs.graph.groups.values()}
    target = 0.5 * costs.total("flops")
    result = solver.solve_multiplier(costs, "flops", target)
    assert -0.001 < result.error <= 0
    assert result.achieved == costs.total("flops", result.widths)
    assert set(result.held) == {by_key["mha:query_key"], by_key["mha:value"]}
    assert [g.get("held", False) for g in result.to_dict(costs.graph)["groups"]] == [
        gid in result.held for gid in sorted(result.widths)]
    # Without holding them, one multiplier for all four groups misses by over 1%.
    monkeypatch.setattr(solver, "REFIT_ERROR", float("inf"))
    assert solver.solve_multiplier(costs, "flops", target).error < -0.01


def _normed_attention(use_bias: bool = True) -> keras.Model:
    """embed (8) -> batch norm -> self-attention (gated) -> pooled head, random
    weights and statistics."""
    keras.utils.set_random_seed(2)
    x = inputs = keras.Input((10, 4))
    x = layers.Dense(8, name="embed")(x)
    y = layers.BatchNormalization(name="norm")(x)
    y = layers.MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3, use_gate=True,
                                  use_bias=use_bias, name="mha")(y, y)
    y = layers.Dense(2, name="head")(layers.GlobalAveragePooling1D()(y))
    model = keras.Model(inputs, y)
    rng = np.random.default_rng(0)
    for w in model.weights:
        value = rng.normal(size=w.shape) * 0.5
        w.assign((np.abs(value) + 0.5 if "variance" in w.path else value).astype("float32"))
    return model


def test_a_constant_on_dead_channels_is_folded_into_the_projections():
    # A batch norm's beta stays on the channels it loses (the regularizer zeroes the
    # kernel and gamma, not beta): the attention then reads a constant there.
    for use_bias in (True, False):
        model = _normed_attention(use_bias)
        graph = build_graph(model)
        by_key = {g.key: g.id for g in graph.groups.values()}
        alive = {by_key["embed"]: np.array([1, 0, 1, 1, 0, 1, 1, 1], bool),
                 by_key["mha:query_key"]: np.array([1, 1, 0, 1], bool)}
        narrow, _ = rebuild(model, alive, graph)
        result = check(model, alive, narrow, graph)
        if use_bias:  # query, key, value and gate biases take it in: exact
            assert result["max_abs_delta"] < 1e-5 and result["approximate"] == {}
            unfolded, _ = rebuild(model, alive, graph, fold_constants=False)
            assert check(model, alive, unfolded, graph)["max_abs_delta"] > 1e-2
        else:  # nowhere to fold it: approximate, and said so
            assert result["max_abs_delta"] > 1e-2
            assert "no bias to fold it into" in result["approximate"][by_key["embed"]]


def test_gates_and_gammas_keep_the_inner_widths_whole_and_say_why():
    from morphcli.training import gates
    from morphcli.training.regularizers import make_regularizer

    model = _normed_attention()
    gated = gates.insert(model)
    graph = build_graph(gated)
    by_key = {g.key: g.id for g in graph.groups.values()}
    for kind in ("gates", "gamma"):
        reg = make_regularizer(graph, CostModel(graph), kind=kind)
        assert {by_key["mha:query_key"], by_key["mha:value"]} <= set(reg.kept_whole)
        assert "only group_lasso regularizes it" in reg.kept_whole[by_key["mha:value"]]
    # The gate on the attention's output folds into its output projection.
    reg = make_regularizer(graph, CostModel(graph), kind="gates")
    assert by_key["mha"] in reg.groups
    for layer in gated.layers:  # close every third channel of every gate
        if type(layer).__name__ == "ChannelGate":
            layer.score.assign(np.where(np.arange(layer.score.shape[0]) % 3 == 1, -20.0, 20.0))
    alive = reg.alive_masks()
    assert not alive[by_key["mha"]].all()
    exported = gates.export(gated, alive, graph)
    assert exported.get_layer("mha").output.shape[-1] == int(alive[by_key["mha"]].sum())
    x = np.random.default_rng(0).random((2, 10, 4)).astype("float32")
    np.testing.assert_allclose(exported(x).numpy(), gated(x).numpy(), atol=1e-5)
