"""Measured devices: `morph profile` writes a valid, versioned file; pricing on a
profile equals hand interpolation of its tables; the latency regularizer's weights
are the profile's slopes (checked against finite differences of the pricing); a
profile from another machine is flagged and one of another format refused."""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from morphcli.cli import cli
from morphcli.core import profile as profiles
from morphcli.core.costs import CostModel, get_hardware
from morphcli.core.graph import build_graph
from morphcli.errors import MorphError
from morphcli.steps import profile as measure
from morphcli.steps.context import round_to_of
from morphcli.training.regularizers import make_regularizer


def _model(side: int = 4):
    keras.utils.set_random_seed(0)
    inp = keras.Input((side, side, 2), name="input")
    x = keras.layers.Conv2D(8, 1, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="c1_bn")(x)
    x = keras.layers.ReLU(name="c1_relu")(x)
    x = keras.layers.Conv2D(4, 1, name="c2")(x)
    x = keras.layers.BatchNormalization(name="c2_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inp, out, name="tiny")


def _synthetic(graph, tables: dict, *, overhead=1e-6, scale=2.0, round_to=1, device=None):
    """A profile whose unit tables are given by leader name (others: constant 1 µs)."""
    built = {}
    for unit in profiles.units(graph):
        key = profiles.unit_key(graph, unit)
        lead = graph.nodes[unit[0]]
        win, wout, secs = tables.get(lead.name, ([lead.in_shapes[0][-1]],
                                                 [graph.nodes[unit[-1]].out_shapes[0][-1]],
                                                 [[1e-6]]))
        built[key] = profiles.Table(key, win, wout, secs)
    return profiles.Profile("synthetic.json", device or profiles.machine(), "keras", 1, None,
                            overhead, built, round_to, scale, {"name": graph.model.name})


def _write(tmp_path, profile, **changes):
    data = {**profile.to_dict(), **changes}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return path


TABLES = {
    # c1: input fixed (2 channels, the model's input), output measured at 2, 4, 8, 12.
    "c1": ([2], [2, 4, 8, 12], [[1e-6, 2e-6, 5e-6, 6e-6]]),
    # c2: input (c1's channels) at 2 and 12, output at 1 and 6.
    "c2": ([2, 12], [1, 6], [[1e-6, 2e-6], [3e-6, 7e-6]]),
}


def test_units_fuse_batch_norms_and_activations_and_share_tables():
    graph = build_graph(_model())
    names = [[graph.nodes[i].name for i in unit] for unit in profiles.units(graph)]
    assert names == [["c1", "c1_bn", "c1_relu"], ["c2", "c2_bn"], ["pool"], ["head"]]
    # Identical configurations at the same spatial size share a key; widths do not count.
    a, b = build_graph(_model()), build_graph(_model())
    assert ([profiles.unit_key(a, u) for u in profiles.units(a)]
            == [profiles.unit_key(b, u) for u in profiles.units(b)])


def test_pricing_on_a_synthetic_profile_equals_hand_interpolation():
    graph = build_graph(_model())
    costs = CostModel(graph, _synthetic(graph, TABLES))
    g1 = next(g.id for g in graph.groups.values() if "c1" in g.sources)
    g2 = next(g.id for g in graph.groups.values() if "c2" in g.sources)
    per = costs.per_layer("latency", {g1: 6, g2: 3})
    by_name = {n.name: per[i] for i, n in enumerate(graph.nodes)}
    # c1 at 6 outputs: halfway between 4 (2 µs) and 8 (5 µs).
    c1 = 2e-6 + (6 - 4) / (8 - 4) * (5e-6 - 2e-6)
    # c2 at (6 in, 3 out): u = (6-2)/10 = 0.4, v = (3-1)/5 = 0.4, bilinear.
    u = v = 0.4
    c2 = 1e-6 * (1 - u) * (1 - v) + 3e-6 * u * (1 - v) + 2e-6 * (1 - u) * v + 7e-6 * u * v
    assert by_name["c1"] == pytest.approx(2.0 * c1 + 1e-6)  # scale 2; the overhead on node 0
    assert by_name["c2"] == pytest.approx(2.0 * c2)
    assert by_name["c1_bn"] == by_name["c1_relu"] == by_name["c2_bn"] == 0.0  # in their units
    assert by_name["pool"] == by_name["head"] == pytest.approx(2e-6)
    assert costs.total("latency", {g1: 6, g2: 3}) == pytest.approx(
        1e-6 + 2 * (c1 + c2 + 2e-6))
    # Past the largest width it grows in proportion; below the smallest it stays.
    assert costs.per_layer("latency", {g1: 24, g2: 3})[0] == pytest.approx(
        2 * 6e-6 * 2 + 1e-6)
    assert costs.per_layer("latency", {g1: 1, g2: 1})[0] == pytest.approx(2 * 1e-6 + 1e-6)
    # Many structures at once price like one at a time.
    rows = np.array([costs.width_vector({g1: w1, g2: w2}) for w1, w2 in [(6, 3), (3, 5)]])
    np.testing.assert_allclose(costs.totals("latency", rows),
                               [costs.total("latency", {g1: 6, g2: 3}),
                                costs.total("latency", {g1: 3, g2: 5})])


def test_a_tiled_table_prices_an_output_width_at_its_next_multiple_of_the_step():
    # Measured on multiples of 16 (16: 1 µs, 32: 3 µs, 48: 4 µs); the seed width 56
    # is no multiple of 16.
    table = profiles.Table("k", [8], [16, 32, 48, 56], [[1e-6, 3e-6, 4e-6, 4.5e-6]], step=16)
    widths = [1, 16, 17, 31, 32, 40, 49, 56, 112, 113]
    # 1..16 -> 16; 17..32 -> 32; 33..48 -> 48; 49..56 -> 56 (capped at the widest
    # measured width inside the grid); past it the next multiple, grown in proportion
    # from the tile 56 is in (64): 57..64 cost what 56 costs.
    widths.insert(-2, 64)
    expected = [1e-6, 1e-6, 3e-6, 3e-6, 3e-6, 4e-6, 4.5e-6, 4.5e-6, 4.5e-6, 4.5e-6 * 112 / 64,
                4.5e-6 * 128 / 64]
    np.testing.assert_allclose(table.at(8, widths), expected, rtol=1e-12)
    # Without the step the same table interpolates between its points.
    smooth = profiles.Table("k", [8], [16, 32, 48, 56], [[1e-6, 3e-6, 4e-6, 4.5e-6]])
    assert smooth.at(8, 24) == pytest.approx(2e-6) and table.at(8, 24) == pytest.approx(3e-6)
    # A layer narrower than the step is measured inside one tile: a width costs what
    # the next measured width costs (6 -> 8, 13 -> 16), not the widest one's; past
    # the grid, up to the end of the tile 16 is in (32), what 16 costs.
    narrow = profiles.Table("k", [8], [2, 4, 8, 12, 16], [[1e-6, 2e-6, 3e-6, 4e-6, 5e-6]],
                            step=32)
    np.testing.assert_allclose(narrow.at(8, [1, 4, 6, 8, 13, 16, 32, 64]),
                               [1e-6, 2e-6, 3e-6, 3e-6, 5e-6, 5e-6, 5e-6, 1e-5], rtol=1e-12)
    # The input axis stays linear: only output channels come in tiles.
    both = profiles.Table("k", [16, 32], [16, 32], [[1e-6, 2e-6], [3e-6, 4e-6]], step=16)
    assert both.at(24, 17) == pytest.approx((2e-6 + 4e-6) / 2)


def test_latency_regularizer_weights_are_the_profile_slopes():
    graph = build_graph(_model())
    costs = CostModel(graph, _synthetic(graph, TABLES))
    reg = make_regularizer(graph, costs, resource="latency")
    weights = reg.channel_weights()
    seed = costs.width_vector()
    for gid in reg.groups:
        # At a measured width the regularizer takes the segment above it (the one
        # below at the largest measured width): a one-sided difference.
        step = 1e-3 if seed[gid] < 12 else -1e-3
        moved = seed.copy()
        moved[gid] += step
        slope = (costs.total("latency", moved) - costs.total("latency", seed)) / step
        assert weights[gid] == pytest.approx(slope, rel=1e-4), gid
    # The term is those weights times the sums of the values (all gammas are 1).
    sums = {gid: float(tf.reduce_sum(v)) for gid, v in reg.vectors().items()}
    assert float(reg.term()) == pytest.approx(sum(weights[g] * s for g, s in sums.items()),
                                              rel=1e-5)


def test_latency_regularizer_prices_a_masked_model_as_the_report_prices_it_rebuilt():
    """Issue 23: the number optimised is the number shown. On a profile with tiles
    (output widths cost their next multiple of the step) and a curve of three points,
    the regularizer's cost at the mask's alive counts is the profile's price of the
    rebuilt model, and its weights are the table slopes times the scale of the curve's
    line at the alive sum (not the profile's one global `scale`)."""
    from morphcli.core import surgery
    from morphcli.reporting import build_report

    model = _model()
    graph = build_graph(model)
    prof = _synthetic(graph, {
        "c1": ([2], [4, 8], [[2e-6, 5e-6]]),  # tiles of 4
        "c2": ([4, 8], [2, 4], [[1e-6, 2e-6], [3e-6, 7e-6]]),  # tiles of 2
    })  # pool and head: 1 µs each, fixed; overhead 1 µs; global scale 2
    for table in prof.tables.values():
        table.step = {(4, 8): 4, (2, 4): 2}.get(tuple(table.widths_out), 1)
    # Lines 1 µs/µs + 3 µs up to a sum of 12 µs, then 7/6 µs/µs + 1 µs.
    prof.curve = [[2e-6, 5e-6], [12e-6, 15e-6], [18e-6, 22e-6]]
    costs = CostModel(graph, prof)
    reg = make_regularizer(graph, costs, resource="latency")
    g1, g2 = (next(g.id for g in graph.groups.values() if name in g.sources)
              for name in ("c1", "c2"))
    graph.node("c1_bn").layer.gamma.assign([1.0] * 5 + [0.0] * 3)  # 5 of 8 alive
    graph.node("c2_bn").layer.gamma.assign([1.0] * 3 + [0.0])  # 3 of 4 alive
    assert reg.alive_widths() == {g1: 5, g2: 3}
    rebuilt, rebuilt_graph = surgery.rebuild(model, reg.alive_masks(), graph)
    shown = build_report(rebuilt_graph, CostModel(rebuilt_graph, prof)).totals["latency_s"]
    # By hand: c1 at 5 costs its tile, 8: 5 µs; c2 at (5 in, 3 out -> tile 4): a quarter
    # of the way from 2 to 7 µs, 3.25 µs; pool and head 2 µs. Sum 10.25 µs, on the first
    # line: 3 + 10.25, and the overhead.
    assert shown == pytest.approx(1e-6 + 3e-6 + 10.25e-6, rel=1e-12)
    assert float(reg.priced()) == pytest.approx(shown, rel=1e-5)  # the issue asks 1%
    assert float(tf.function(reg.priced)()) == pytest.approx(shown, rel=1e-5)
    # The seed's sum, 14 µs, is on the second line: priced there too.
    assert float(reg.priced(costs.width_vector())) == pytest.approx(
        costs.total("latency"), rel=1e-5)
    assert costs.total("latency") == pytest.approx(1e-6 + 1e-6 + 7 / 6 * 14e-6)
    # The weights: the cells' slopes (across a tile, the secant between its measured
    # widths) times the first line's scale, 1. c1: its own output, (5 - 2) / 4 µs, and
    # c2's input at c2's 3 outputs, halfway between the rows' slopes 2/4 and 5/4 µs.
    # c2: its output at 5 inputs, (0.75 · 1 + 0.25 · 4) / 2 µs.
    weights = reg.channel_weights()
    assert weights[g1] == pytest.approx(0.75e-6 + 0.875e-6, rel=1e-5)
    assert weights[g2] == pytest.approx(0.875e-6, rel=1e-5)
    # The term is those weights times the sums of the values (the alive counts).
    assert float(reg.term()) == pytest.approx(5 * weights[g1] + 3 * weights[g2], rel=1e-5)


def test_latency_regularizer_on_a_profile_runs_compiled():
    # The train step is a tf.function: the table lookups and slopes must trace, and
    # give there what they give eagerly, also after the widths change.
    graph = build_graph(_model())
    costs = CostModel(graph, _synthetic(graph, TABLES))
    reg = make_regularizer(graph, costs, resource="latency")
    compiled = tf.function(lambda: reg.term())
    assert float(compiled()) == pytest.approx(float(reg.term()), rel=1e-6)
    gamma = graph.node("c1_bn").layer.gamma
    gamma.assign(np.where(np.arange(8) < 3, 1.0, 0.0).astype("float32"))  # 3 alive
    assert float(compiled()) == pytest.approx(float(reg.term()), rel=1e-6)
    with tf.GradientTape() as tape:
        term = compiled()
    grad = tape.gradient(term, gamma)
    # The 3 alive channels carry c1's slope at 3 output channels (between 2 and 4).
    assert float(grad[0]) == pytest.approx(reg.channel_weights()[
        next(g.id for g in graph.groups.values() if "c1" in g.sources)], rel=1e-5)


def test_profile_of_a_tiny_model_is_a_valid_file(tmp_path):
    model = _model(32)  # at 4 x 4, Keras's per-call cost is most of the model's time
    result = measure.profile(model, runtime="keras", warmup=1, repeats=3)
    path = tmp_path / "tiny.profile.json"
    result.path = str(path)
    path.write_text(json.dumps(result.to_dict()))
    loaded = profiles.load(path)
    assert loaded.device["tensorflow"] == tf.__version__
    assert loaded.device["cores"] == os.cpu_count()
    assert (loaded.runtime, loaded.batch, loaded.threads) == ("keras", 1, None)
    graph = build_graph(model)
    assert set(loaded.tables) == {profiles.unit_key(graph, u) for u in profiles.units(graph)}
    step = loaded.round_to
    assert step in (1, *measure.STEPS)
    c2 = next(t for t in loaded.tables.values() if t.layers == ["c2"])
    # c2's input (8 channels) and output (4) at 1/8, 1/4, 1/2, 3/4 and all of the width.
    assert c2.widths_in == measure._grid(8, step) and c2.widths_out == measure._grid(4, step)
    assert measure._grid(64, 1) == [8, 16, 32, 48, 64]
    assert measure._grid(64, 32) == [8, 16, 32, 64]
    assert measure._grid(40, 16) == [5, 10, 16, 32, 40]  # the seed width stays measured
    for table in loaded.tables.values():
        secs = np.asarray(table.seconds)
        assert (secs >= 0).all()
        assert (np.diff(secs, axis=0) >= 0).all() and (np.diff(secs, axis=1) >= 0).all()
    # Layers that compute output channels in tiles are priced on the step; pooling not.
    steps = {t.layers[0]: t.step for t in loaded.tables.values()}
    assert steps == {"c1": step, "c2": step, "pool": 1, "head": step}
    whole = loaded.model
    assert whole["name"] == "tiny" and whole["measured_s"] > 0
    # The whole model is timed in passes spread over the profile; the median counts.
    assert len(whole["passes_s"]) == measure.WHOLE_PASSES
    assert whole["measured_s"] == pytest.approx(float(np.median(whole["passes_s"])), rel=1e-6)
    # Narrower versions were timed beside it (those of distinct structures); the
    # profile's curve runs through the ones it keeps, so it predicts them.
    narrower = whole["narrower"]
    assert narrower and all(n["unscaled_s"] > 0 and n["measured_s"] > 0 for n in narrower)
    assert [n["flops_share"] for n in narrower] == [s for s in measure.CURVE
                                                    if s in {n["flops_share"] for n in narrower}]
    o = loaded.overhead_s
    for n in [whole, *narrower]:
        point = [n["unscaled_s"] - o, n["measured_s"] - o]
        if any(p == pytest.approx(point, rel=1e-6) for p in loaded.curve):
            assert n["predicted_s"] == pytest.approx(n["measured_s"], rel=1e-6)
    assert loaded.curve == sorted(loaded.curve)
    assert (np.diff(np.array(loaded.curve), axis=0) > 0).all()
    # The profiled model's own time is predicted: it is a point of the curve, or
    # (no curve) the scale was fitted on it.
    assert whole["predicted_s"] == pytest.approx(whole["measured_s"], rel=1e-3)
    assert CostModel(graph, loaded).total("latency") == pytest.approx(whole["predicted_s"])


def test_scale_and_fixed_cost_fit_two_whole_models():
    # Units sum to 10 and 4 (overhead aside); the models measure 25 and 13: 2 x + 5.
    assert measure._calibrate(25.0, 10.0, 13.0, 4.0) == (2.0, 5.0)
    # A fixed cost over half the time is not believed (25 and 23 give x / 3 + 21.7).
    assert measure._calibrate(25.0, 10.0, 23.0, 4.0) == (2.5, 0.0)
    # 25 and 4 would need a negative fixed cost: the seed's ratio alone, no fixed cost.
    assert measure._calibrate(25.0, 10.0, 4.0, 4.0) == (2.5, 0.0)
    assert measure._calibrate(25.0, 10.0, None, None) == (2.5, 0.0)
    # Priced: overhead + fixed + scale x the tables.
    graph = build_graph(_model())
    prof = _synthetic(graph, TABLES)
    before = CostModel(graph, prof).total("latency")
    prof.fixed_s = 3e-6
    assert CostModel(graph, prof).total("latency") == pytest.approx(before + 3e-6)


def test_curve_keeps_rising_points_and_prices_on_its_segments(tmp_path):
    # The profiled model (first) is kept; narrower points are sorted by the sum, of
    # two equal sums the lesser time kept, and those above it in time (30 > 25) or
    # sum (11 > 10), above a wider one's time (9 > 8.5) or not positive dropped.
    points = [(10, 25), (4, 13), (7, 30), (2, 9), (2, 8), (-1, 3), (11, 20), (3, 8.5)]
    assert measure._curve(points) == [[2, 8], [3, 8.5], [4, 13], [10, 25]]
    points = [(10, 25), (4, 13), (7, 30), (2, 9), (3, 8.5)]
    assert measure._curve(points) == [[3, 8.5], [4, 13], [10, 25]]
    assert measure._curve([(10, 12), (4, 13)]) == []  # one point left: no curve
    # Sums equal as written (12 decimals) are one sum: the file's curve must rise.
    assert measure._curve([(1e-4, 2e-4), (5e-5 + 1e-16, 1e-4), (5e-5, 9e-5)]) == [
        [5e-5, 9e-5], [1e-4, 2e-4]]
    prof = profiles.Profile("", {}, "tflite", 1, 2, 0.0, {}, curve=[[2, 8], [4, 13], [10, 25]])
    units = np.array([1.0, 2.0, 3.0, 4.0, 7.0, 10.0, 18.0])
    scale, fixed = prof.line(units)
    # Segments 2.5 u + 3 and 2 u + 5; below, the first one (its fixed cost is not
    # negative); past the last point, the rise from the first: 17 / 8 u + 3.75.
    assert fixed + scale * units == pytest.approx([5.5, 8, 10.5, 13, 19, 25, 42])
    # A first segment with a negative fixed cost is not extended: proportion below.
    steep = profiles.Profile("", {}, "tflite", 1, 2, 0.0, {}, curve=[[2, 1], [4, 13]])
    scale, fixed = steep.line(np.array([1.0, 3.0, 8.0]))
    assert fixed + scale * np.array([1.0, 3.0, 8.0]) == pytest.approx([0.5, 7, 26])
    # A graph is priced on it: overhead + fixed + scale x each unit's table, where
    # the units' sum falls (here halfway along a segment from 1e-5 to 3e-5 s).
    graph = build_graph(_model())
    prof = _synthetic(graph, TABLES, scale=1.0)
    line = CostModel(graph, prof)
    units = line.total("latency") - prof.overhead_s
    tables = line.per_layer("latency")
    prof.curve = [[units / 2, 1e-5], [units * 1.5, 3e-5]]
    curved = CostModel(graph, prof)
    assert curved.total("latency") == pytest.approx(prof.overhead_s + 2e-5)
    slope = 2e-5 / units
    per = curved.per_layer("latency")
    assert per[1:] == pytest.approx(slope * tables[1:])
    # Written and read back, it prices the same; a falling curve is refused.
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof.to_dict()))
    assert CostModel(graph, profiles.load(path)).total("latency") == pytest.approx(
        curved.total("latency"), rel=1e-12)
    path.write_text(json.dumps({**prof.to_dict(), "curve": [[1e-6, 2e-5], [2e-6, 1e-5]]}))
    with pytest.raises(MorphError, match="damaged: curve must rise"):
        profiles.load(path)


def test_no_layer_is_priced_below_zero_on_a_steep_segment_of_the_curve(tmp_path):
    """Issue 25, 4: a segment steeper than proportion has a negative fixed part;
    put on the first layer it priced zoo:cnn's conv1 at -5.32e+04 ns. The price is
    the same, each layer's share is the segment's time over the sum of the units."""
    graph = build_graph(_model())
    prof = _synthetic(graph, TABLES, scale=1.0)
    tables = CostModel(graph, prof).per_layer("latency")
    tables[0] -= prof.overhead_s
    units = float(tables.sum())  # 10.88 us: c1 5 us, c2 3.88 us, pool and head 1 us
    assert units == pytest.approx(10.88e-6)
    # From 0.9 of the sum at 0.1 us to 1.1 of it at 30 us: at the sum, 15.05 us, on a
    # line whose fixed part is 0.1 us - 29.9 us / 0.2 x 0.9 = -134.45 us.
    prof.curve = [[0.9 * units, 1e-7], [1.1 * units, 3e-5]]
    costs = CostModel(graph, prof)
    per = costs.per_layer("latency")
    price = 1e-7 + 2.99e-5 / 2
    assert costs.total("latency") == pytest.approx(prof.overhead_s + price, rel=1e-12)
    expected = tables * price / units
    expected[0] += prof.overhead_s
    np.testing.assert_allclose(per, expected, rtol=1e-12)
    assert per.min() >= 0
    # At every width the shares stay at least 0 and add up to the total.
    g1 = next(g.id for g in graph.groups.values() if "c1" in g.sources)
    g2 = next(g.id for g in graph.groups.values() if "c2" in g.sources)
    for w1, w2 in [(1, 1), (3, 2), (6, 3), (8, 4), (12, 6), (24, 8)]:
        shares = costs.per_layer("latency", {g1: w1, g2: w2})
        assert shares.min() >= 0, (w1, w2, shares)
        assert shares.sum() == pytest.approx(costs.total("latency", {g1: w1, g2: w2}))
    # And so in the report of the model on the profile file.
    model = tmp_path / "tiny.keras"
    _model().save(model)
    prof.path = str(tmp_path / "steep.json")
    (tmp_path / "steep.json").write_text(json.dumps(prof.to_dict()))
    result = CliRunner().invoke(cli, ["report", str(model), "--hardware",
                                      f"profile:{prof.path}", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row["latency_s"] for row in json.loads(result.stdout)["layers"]}
    assert rows["c1"] == pytest.approx(expected[0], rel=1e-6) and min(rows.values()) >= 0


def _cnn_graph():
    from morphcli.models.zoo import load_model

    return build_graph(load_model("zoo:cnn", input_shape=(8, 8, 1)))


def test_layers_whose_times_differ_get_tables_of_their_own():
    """Issue 25, 5: zoo:cnn's conv1 (one fixed input channel) and conv2 (32 prunable
    ones) had one key, so conv2 was priced on a table measured with one input channel."""
    graph = _cnn_graph()
    keys = {graph.nodes[u[0]].name: profiles.unit_key(graph, u) for u in profiles.units(graph)}
    assert len(set(keys.values())) == len(keys) == 6
    shapes = {name: json.loads(key)["shapes"] for name, key in keys.items()}
    assert shapes["conv1"] == {"in": [[8, 8, 1]], "out": [[8, 8, "*"]]}
    assert shapes["conv2"] == {"in": [[8, 8, "*"]], "out": [[8, 8, "*"]]}
    assert shapes["predictions"] == {"in": [["*"]], "out": [[10]]}
    # A fixed channel count is part of the key: conv1 on 3 input channels is another unit.
    from morphcli.models.zoo import load_model

    rgb = build_graph(load_model("zoo:cnn", input_shape=(8, 8, 3)))
    assert profiles.unit_key(rgb, profiles.units(rgb)[0]) != keys["conv1"]
    # Priced on its own table: conv2 at 9 us, conv1 at 2 us, scale 2.
    tables = {"conv1": ([1], [16, 32], [[1e-6, 2e-6]]),
              "conv2": ([16, 32], [32, 64], [[3e-6, 5e-6], [5e-6, 9e-6]])}
    prof = _synthetic(graph, tables, overhead=0.0)
    assert len(prof.tables) == 6
    per = dict(zip([n.name for n in graph.nodes], CostModel(graph, prof).per_layer("latency"),
                   strict=True))
    assert per["conv1"] == pytest.approx(2 * 2e-6) and per["conv2"] == pytest.approx(2 * 9e-6)
    assert per["conv3"] == pytest.approx(2 * 1e-6)  # the default table of `_synthetic`


@pytest.mark.parametrize("paired_overhead", [1e-4, 5e-4])
def test_the_overhead_is_timed_beside_the_whole_model(monkeypatch, paired_overhead):
    """Timed apart from the whole model, under a load that came and went, the
    per-call overhead came out above the whole model's own time, and the profile
    then priced the model it had just measured at 1.5x to 3x that time. Now it is
    timed in the same passes, and one at or above the whole model's time is capped
    at OVERHEAD_CAP of it: the profiled model is still priced at its measured time."""
    def together(self, models, min_time=0):
        # The baseline model first (only an input and a ReLU), then the whole model
        # at 0.4 ms and its narrower versions, 0.05 ms less each.
        return [measure.Timing(*[paired_overhead] * 3),
                *(measure.Timing(*[4e-4 - 5e-5 * k] * 3) for k in range(len(models) - 1))]

    monkeypatch.setattr(measure.Clock, "time", lambda self, model, keep=False:
                        measure.Timing(*[1e-3 + 1e-7 * model.count_params()] * 3))
    monkeypatch.setattr(measure.Clock, "time_together", together)
    monkeypatch.setattr(measure.Clock, "baseline", lambda self, shapes: 1e-3)  # the tables'
    result = measure.profile(_model(), runtime="keras", round_to=1)
    first = [layer.__class__.__name__ for layer in measure.Clock(
        "keras", 1, None, 1, 1).baseline_model(((4, 4, 2),)).layers]
    assert first == ["InputLayer", "ReLU"]
    assert result.model["overhead_measured_s"] == paired_overhead
    assert result.overhead_s == pytest.approx(min(paired_overhead, measure.OVERHEAD_CAP * 4e-4))
    assert result.model["measured_s"] == 4e-4
    assert result.model["predicted_s"] == pytest.approx(4e-4, rel=1e-6)


def test_morph_profile_warns_when_the_overhead_was_capped(monkeypatch, tmp_path):
    monkeypatch.setattr(measure.Clock, "time", lambda self, model, keep=False:
                        measure.Timing(1e-3, 1e-3, 1e-3))
    monkeypatch.setattr(measure.Clock, "time_together", lambda self, models, min_time=0: [
        measure.Timing(*[5e-4 if k == 0 else 4e-4] * 3) for k in range(len(models))])
    monkeypatch.setattr(measure.Clock, "baseline", lambda self, shapes: 1e-3)
    seed = tmp_path / "tiny.keras"
    _model().save(seed)
    args = ["profile", str(seed), "--runtime", "keras", "--round-to", "1", "-o"]
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning == ["warning: a call with no layers measured 0.500 ms, not less than the "
                       "model's own 0.400 ms: its layers' time is below this machine's noise, "
                       "so the profile takes them as 10% of it and a latency target on it "
                       "cannot be trusted (profile on a quieter machine, or with a larger input "
                       "or batch)"]
    monkeypatch.setattr(measure.Clock, "time_together", lambda self, models, min_time=0: [
        measure.Timing(*[1e-4 if k == 0 else 4e-4] * 3) for k in range(len(models))])
    quiet = CliRunner().invoke(cli, [*args, str(tmp_path / "q.json")])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_a_model_with_no_layer_time_is_a_fixed_cost():
    # No unit above its own overhead: the model's time (overhead aside) is fixed.
    assert measure._calibrate(3e-4, 0.0, None, None) == (1.0, 3e-4)
    # The ratio alone keeps 6 significant digits, however small (rounding it to 4
    # decimals priced a model 1% off its own time).
    assert measure._calibrate(2e-5, 3e-3, None, None) == (0.00666667, 0.0)


def test_the_progress_plan_ends_where_the_measurements_end(monkeypatch):
    """Issue 25, 16: the bar started at 0/? and stopped at 239/245. The count is
    planned before the first measurement, planned again when the rounding sweep reads
    a step of 16 (fewer widths to measure), and the last measurement reaches it."""
    from morphcli.models.zoo import load_model

    def staircase(self, model, keep=False):  # 16 output channels at a time
        t = 1e-6 * (1 + math.ceil(model.outputs[0].shape[-1] / 16))
        return measure.Timing(t, t, t)

    monkeypatch.setattr(measure.Clock, "time", staircase)
    monkeypatch.setattr(measure.Clock, "time_together", lambda self, models, min_time=0: [
        measure.Timing(1e-4, 1e-4, 1e-4) for _ in models])
    monkeypatch.setattr(measure.Clock, "baseline", lambda self, shapes: 0.0)
    plans, ticks = [], []
    result = measure.profile(load_model("zoo:cnn", input_shape=(8, 8, 1)), runtime="keras",
                             plan=plans.append, progress=lambda done, what: ticks.append(done))
    assert result.round_to == 16
    sweep = (2 * measure.SWEEP + 1) * measure.SWEEP_PASSES
    assert ticks == list(range(1, len(ticks) + 1))
    # Step 1 grids: conv1 1 x 5, conv2 5 x 5, pool 5, conv3 5 x 5, avg_pool 5, head 5.
    assert plans == [sweep + 5 + 25 + 5 + 25 + 5 + 5 + measure.WHOLE_PASSES, ticks[-1]]
    assert ticks[-1] < plans[0]


def test_morph_profile_writes_a_tflite_profile(tmp_path):
    # The tiny model: every table cell is a conversion through a SavedModel (about a
    # second each), and zoo:cnn has three times its cells.
    seed, path = tmp_path / "tiny.keras", tmp_path / "p.json"
    _model().save(seed)
    result = CliRunner().invoke(cli, ["profile", str(seed), "--threads", "1", "--repeats", "3",
                                      "--round-to", "8", "-o", str(path), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    data = json.loads(path.read_text())
    assert data["format"] == profiles.FORMAT and data["version"] == profiles.VERSION
    assert (data["runtime"], data["threads"], data["round_to"]) == ("tflite", 1, 8)
    assert printed["measured_s"] == data["model"]["measured_s"] > 0
    assert printed["distinct_units"] == len(data["tables"])
    # Refuses to overwrite what exists, in one line.
    again = CliRunner().invoke(cli, ["profile", str(seed), "-o", str(path)])
    assert again.exit_code == 2 and "exists" in again.output


def test_step_of_a_sweep():
    widths = list(range(32, 65))
    steps16 = [1e-5 * math.ceil(w / 16) for w in widths]
    assert measure.step_of(widths, steps16) == 16
    assert measure.step_of(widths, [1e-5 * math.ceil(w / 32) for w in widths]) == 32
    assert measure.step_of(widths, [1e-7 * w for w in widths]) == 1  # smooth: no step
    # The sweep's span: two steps of 32. A staircase of 16 with 8% noise (RMS) on every
    # width, as this shared machine gives, is still read as 16, and its exact misfit is 0.
    widths = list(range(32, 97))
    stairs = np.array([1e-5 * (1 + math.ceil(w / 16)) for w in widths])
    assert measure.misfits(widths, list(stairs))[16] == pytest.approx(0, abs=1e-12)
    noisy = stairs * (1 + 0.08 * np.random.default_rng(0).standard_normal(len(widths)))
    assert measure.step_of(widths, list(noisy)) == 16
    assert measure.step_of(widths, [1e-5] * len(widths)) == 1  # flat: nothing to read


def test_round_to_auto_is_the_profile_step(tmp_path):
    graph = build_graph(_model())
    assert round_to_of("auto", _synthetic(graph, TABLES, round_to=4)) == 4
    assert round_to_of("auto", get_hardware("T4")) == 1
    assert round_to_of(8, get_hardware("T4")) == 8


def test_expand_on_a_profile_lands_on_the_measured_budget(tmp_path):
    model = _model()
    path = tmp_path / "tiny.keras"
    model.save(path)
    graph = build_graph(model)
    # A bilinear device: t = 1e-7 · in · out for both convs, measured on a grid.
    tables = {name: (grid_in, grid_out, [[1e-7 * a * b for b in grid_out] for a in grid_in])
              for name, grid_in, grid_out in [("c1", [2], [2, 4, 8, 16]),
                                             ("c2", [2, 4, 8, 16], [1, 2, 4, 8])]}
    prof = _write(tmp_path, _synthetic(graph, tables, round_to=2))
    out = tmp_path / "half.keras"
    result = CliRunner().invoke(cli, ["expand", str(path), "--target", "latency=60%",
                                      "--hardware", f"profile:{prof}", "--round-to", "auto",
                                      "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    widths = [g["width_after"] for g in record["groups"]]
    # round_to auto: the profile's step (or the floor of one channel).
    assert all(w % 2 == 0 or w == 1 for w in widths) and any(w > 1 for w in widths), widths
    small = keras.models.load_model(out)
    priced = CostModel(build_graph(small), profiles.load(prof)).total("latency")
    seed = CostModel(graph, profiles.load(prof)).total("latency")
    assert priced <= 0.6 * seed


def test_a_profile_from_another_machine_is_flagged(tmp_path):
    graph = build_graph(_model())
    other = {**profiles.machine(), "tensorflow": "2.0.0", "cpu": "Phone SoC", "cores": 8}
    prof = _write(tmp_path, _synthetic(graph, TABLES, device=other))
    model = tmp_path / "tiny.keras"
    _model().save(model)
    result = CliRunner().invoke(cli, ["report", str(model), "--hardware", f"profile:{prof}",
                                      "--json"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("TensorFlow 2.0.0" in w for w in warnings)
    assert any("Phone SoC (8 cores), not this machine" in w for w in warnings)
    notes = json.loads(result.stdout)["notes"]
    assert any("Phone SoC" in n for n in notes)


@pytest.mark.parametrize("change,message", [
    ({"version": 99}, "has format version 99"),
    ({"format": "something-else"}, "is not a morphcli profile"),
    ({"tables": [{"key": "k", "widths_in": [1], "widths_out": [2, 1],
                  "seconds": [[1, 2]]}]}, "tables[0].widths_out must rise"),
])
def test_a_profile_of_another_format_is_refused(tmp_path, change, message):
    graph = build_graph(_model())
    prof = _write(tmp_path, _synthetic(graph, TABLES), **change)
    result = CliRunner().invoke(cli, ["report", "zoo:cnn", "--hardware", f"profile:{prof}"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_a_profile_of_another_model_is_refused(tmp_path):
    prof = _write(tmp_path, _synthetic(build_graph(_model()), TABLES))
    result = CliRunner().invoke(cli, ["report", "zoo:cnn", "--hardware", f"profile:{prof}"])
    assert result.exit_code == 2
    assert "has no measurement for" in result.output and "morph profile" in result.output
    missing = CliRunner().invoke(cli, ["report", "zoo:cnn", "--hardware", "profile:nope.json"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_expand_measure_corrects_the_multiplier_until_the_clock_agrees(monkeypatch):
    """A clock that adds a tenth of the seed's predicted latency to every model: half
    the measured seed is then 0.55 of its prediction, which the profile alone misses
    (its structure measures 0.6) and the loop must find."""
    from morphcli.core.quantities import Quantity
    from morphcli.measure import bench, isolated
    from morphcli.steps import expand as ex

    model = _model()
    graph = build_graph(model)
    tables = {name: (grid_in, grid_out, [[1e-7 * a * b for b in grid_out] for a in grid_in])
              for name, grid_in, grid_out in [("c1", [2], [2, 4, 8, 16]),
                                             ("c2", [2, 4, 8, 16], [1, 2, 4, 8])]}
    prof = _synthetic(graph, tables, overhead=0.0, scale=1.0)
    predicted_seed = CostModel(graph, prof).total("latency")

    calls = []

    def clock(models, hardware, repeats=50, runners=None):
        calls.append((len(models), repeats))
        times = [CostModel(build_graph(m), prof).total("latency") + 0.1 * predicted_seed
                 for m in models]
        found = [bench.BenchResult("model", "keras", 1, None, repeats, t, t, t,
                                    t / times[0] if k else None) for k, t in enumerate(times)]
        return found, {"runtime": "keras", "threads": None, "batch": 1, "repeats": repeats}

    monkeypatch.setattr(isolated, "latencies", clock)
    result = ex.expand(ex.Priced.of(model, prof), "latency", Quantity(0.5, True),
                       measure=True)
    measured = result.record["measured"]
    goal = 0.55 * predicted_seed
    assert measured["target_s"] == pytest.approx(goal)
    first = measured["candidates"][0]
    assert first["measured_s"] == pytest.approx(first["predicted_s"] + 0.1 * predicted_seed)
    assert first["predicted_s"] <= 0.5 * predicted_seed  # the profile alone's structure...
    assert first["measured_s"] > goal * 1.02  # ...is too slow on this clock
    got = clock([result.expanded.model], prof)[0][0].median_s
    assert got == pytest.approx(measured["latency_s"])
    assert goal * 0.95 <= got <= goal  # a budget: not above it
    # A steady clock: 3 passes of the source and a candidate per candidate, then each
    # candidate timed once more beside the source, and the same figures there.
    tried = len(measured["candidates"])
    assert tried > 1
    assert calls[:-1] == [(2, 50)] * 3 * tried + [(2, 150)] * tried
    for c in measured["candidates"]:
        assert c["passes"] == 3
        assert c["measured_s"] == pytest.approx(c["measured_in_loop_s"])


def test_expand_measure_is_for_latency_targets(tmp_path):
    result = CliRunner().invoke(cli, ["expand", "zoo:cnn", "--target", "flops=50%",
                                      "--measure", "-o", str(tmp_path / "x.keras")])
    assert result.exit_code == 2 and "Measuring checks latency targets" in result.output


def _clock_on(prof, distort):
    """A fake `latencies`: each model's price on `prof`, distorted by
    `distort(call number, number of models, times)`; records its calls."""
    from morphcli.measure import bench

    calls = []

    def clock(models, hardware, repeats=50, runners=None):
        calls.append((len(models), repeats))
        times = distort(len(calls), len(models),
                        [CostModel(build_graph(m), prof).total("latency") for m in models])
        found = [bench.BenchResult("model", "keras", 1, None, repeats, t, t, t,
                                    t / times[0] if k else None) for k, t in enumerate(times)]
        return found, {"runtime": "keras", "threads": None, "batch": 1, "repeats": repeats}

    return clock, calls


def _bilinear_profile(graph):
    tables = {name: (grid_in, grid_out, [[1e-7 * a * b for b in grid_out] for a in grid_in])
              for name, grid_in, grid_out in [("c1", [2], [2, 4, 8, 16]),
                                             ("c2", [2, 4, 8, 16], [1, 2, 4, 8])]}
    return _synthetic(graph, tables, overhead=0.0, scale=1.0)


def test_expand_measure_adds_passes_until_most_agree(monkeypatch):
    """A candidate's timings read 6% low, 6% high, then true: after three passes
    their median deviation is 6%, after four 3%, after five 0 (three agree), so the
    loop stops at five passes, on the true ratio."""
    from morphcli.core.quantities import Quantity
    from morphcli.measure import isolated
    from morphcli.steps import expand as ex

    model = _model()
    prof = _bilinear_profile(build_graph(model))
    noise = {1: 0.94, 2: 1.06}
    clock, calls = _clock_on(prof, lambda n, k, t: [t[0]] + [v * noise.get(n, 1.0)
                                                           for v in t[1:]])
    monkeypatch.setattr(isolated, "latencies", clock)
    result = ex.expand(ex.Priced.of(model, prof), "latency", Quantity(0.5, True),
                       measure=True)
    measured = result.record["measured"]
    assert measured["candidates"][0]["passes"] == 5
    assert calls[:5] == [(2, 50)] * 5
    assert ex._spread([0.94, 1.06, 1.0]) == pytest.approx(0.06)
    assert ex._spread([0.94, 1.06, 1.0, 1.0]) == pytest.approx(0.03)
    true = CostModel(build_graph(result.expanded.model), prof).total("latency")
    assert measured["latency_s"] == pytest.approx(true)
    # A candidate whose passes never agree gets MAX_PASSES of them.
    clock_noisy, _ = _clock_on(prof, lambda n, k, t: [t[0]] + [
        v * (0.94, 1.0, 1.06)[n % 3] for v in t[1:]])
    monkeypatch.setattr(isolated, "latencies", clock_noisy)
    result = ex.expand(ex.Priced.of(model, prof), "latency", Quantity(0.5, True),
                       measure=True)
    assert result.record["measured"]["candidates"][0]["passes"] == ex.MAX_PASSES == 7


def test_expand_measure_chooses_on_the_final_timing_of_all_candidates(monkeypatch):
    """In the loop every model pays a tenth of the seed's predicted latency more
    (the profile's first candidate is then too slow, and the loop corrects it); in
    the final timings of each candidate beside the seed the load is gone: there the
    last candidate of the loop is far below the target, and the choice is the
    candidate nearest the target in those timings."""
    from morphcli.core.quantities import Quantity
    from morphcli.measure import isolated
    from morphcli.steps import expand as ex

    model = _model()
    graph = build_graph(model)
    prof = _bilinear_profile(graph)
    seed = CostModel(graph, prof).total("latency")

    def distort(n, k, times):
        final = calls[-1][1] == ex.FINAL_REPEATS
        return [times[0]] + [t if final else t + 0.1 * seed for t in times[1:]]

    clock, calls = _clock_on(prof, distort)
    monkeypatch.setattr(isolated, "latencies", clock)
    result = ex.expand(ex.Priced.of(model, prof), "latency", Quantity(0.5, True),
                       measure=True)
    measured = result.record["measured"]
    tried = measured["candidates"]
    assert len(tried) > 1 and calls[-len(tried):] == [(2, ex.FINAL_REPEATS)] * len(tried)
    for c in tried:  # in the final timing each candidate costs what the profile says
        assert c["measured_s"] == pytest.approx(c["predicted_s"])
        assert c["measured_in_loop_s"] == pytest.approx(c["predicted_s"] + 0.1 * seed)
    fits = [c for c in tried if c["measured_s"] <= 0.5 * seed]
    best = min(fits, key=lambda c: abs(c["measured_s"] - 0.98 * 0.5 * seed))
    assert measured["latency_s"] == pytest.approx(best["measured_s"])
    assert measured["latency_s"] != pytest.approx(tried[-1]["measured_s"])
    assert CostModel(build_graph(result.expanded.model), prof).total("latency") == \
        pytest.approx(best["predicted_s"])


def test_expand_measure_aims_under_a_budget_and_on_a_nearest_target(monkeypatch):
    """A clock on which the profile's own structure measures 1% over the target: a
    budget (mode below) does not take it, aims 2% under the target and keeps a
    candidate not above it; mode nearest aims at the target and stops there."""
    from morphcli.core.quantities import Quantity
    from morphcli.measure import isolated
    from morphcli.steps import expand as ex

    model = _model()
    graph = build_graph(model)
    prof = _bilinear_profile(graph)
    costs = CostModel(graph, prof)
    seed = costs.total("latency")
    for mode in ("below", "nearest"):
        first = ex.solve_multiplier(costs, "latency", 0.5 * seed, mode=mode).achieved
        factor = 1.01 * 0.5 * seed / first  # the first candidate measures 1.01 x goal
        clock, _ = _clock_on(prof, lambda n, k, t, f=factor: [t[0]] + [v * f for v in t[1:]])
        monkeypatch.setattr(isolated, "latencies", clock)
        result = ex.expand(ex.Priced.of(model, prof), "latency", Quantity(0.5, True),
                           measure=True, mode=mode)
        measured = result.record["measured"]
        tried = measured["candidates"]
        assert tried[0]["measured_s"] == pytest.approx(1.01 * 0.5 * seed)
        if mode == "nearest":
            assert measured["aim_s"] == pytest.approx(0.5 * seed) and len(tried) == 1
            assert measured["error"] == pytest.approx(0.01)
            continue
        assert measured["aim_s"] == pytest.approx(0.98 * 0.5 * seed)
        assert len(tried) > 1 and measured["latency_s"] <= 0.5 * seed
        fits = [c["measured_s"] for c in tried if c["measured_s"] <= 0.5 * seed]
        assert measured["latency_s"] == pytest.approx(
            min(fits, key=lambda v: abs(v - 0.98 * 0.5 * seed)))


def test_expand_measure_halves_the_bracket_when_the_correction_repeats(monkeypatch):
    """A clock that adds a twentieth of the seed's predicted latency: the first
    candidate is too slow; a correction to 40% of the seed gives a second one below
    the band the loop stops in (0-4% under the target); a correction that then gives a
    structure already timed is replaced by the target halfway between the two,
    which the loop tries next."""
    from morphcli.core.quantities import Quantity
    from morphcli.measure import isolated
    from morphcli.steps import expand as ex

    model = _model()
    graph = build_graph(model)
    prof = _bilinear_profile(graph)
    seed = CostModel(graph, prof).total("latency")
    clock, _ = _clock_on(prof, lambda n, k, t: [t[0]] + [v + 0.05 * seed for v in t[1:]])
    monkeypatch.setattr(isolated, "latencies", clock)

    def repeating(tried, goal):  # 40% of the seed, then the first candidate again
        return 0.4 * seed if len(tried) == 1 else tried[0][0].achieved

    monkeypatch.setattr(ex, "_next_goal", repeating)
    assert ex._midpoint([], 0.5) is None
    result = ex.expand(ex.Priced.of(model, prof), "latency", Quantity(0.5, True),
                       measure=True)
    tried = result.record["measured"]["candidates"]
    goal = 0.5 * seed  # the clock adds 0.05 x seed to the candidates, not to the seed
    assert tried[0]["measured_in_loop_s"] > goal * 1.02
    assert tried[1]["measured_in_loop_s"] < goal * 0.96
    assert len(tried) >= 3
    halfway = (tried[0]["predicted_s"] + tried[1]["predicted_s"]) / 2
    # The third structure is the solver's answer to the halfway target.
    solved = ex.solve_multiplier(CostModel(graph, prof), "latency", halfway)
    assert tried[2]["predicted_s"] == pytest.approx(solved.achieved)
    assert tried[1]["predicted_s"] < tried[2]["predicted_s"] < tried[0]["predicted_s"]


def test_expand_measure_steps_past_the_nearest_when_all_are_on_one_side(monkeypatch):
    """A clock that adds a tenth of the seed's predicted latency to every model and a
    correction that keeps giving the first structure: with no candidate below the
    goal there is no bracket to halve, so the loop steps the first candidate's
    cost-model target down by goal / measured (at least 3%), compounded, until the
    solver gives a structure not yet timed."""
    from morphcli.core.quantities import Quantity
    from morphcli.measure import isolated
    from morphcli.steps import expand as ex

    model = _model()
    graph = build_graph(model)
    prof = _bilinear_profile(graph)
    costs = CostModel(graph, prof)
    seed = costs.total("latency")
    clock, _ = _clock_on(prof, lambda n, k, t: [t[0]] + [v + 0.1 * seed for v in t[1:]])
    monkeypatch.setattr(isolated, "latencies", clock)
    monkeypatch.setattr(ex, "_next_goal", lambda tried, goal: tried[0][0].achieved)
    result = ex.expand(ex.Priced.of(model, prof), "latency", Quantity(0.5, True),
                       measure=True)
    tried = result.record["measured"]["candidates"]
    assert len(tried) >= 2
    first = tried[0]
    assert first["measured_in_loop_s"] > 0.5 * seed * 1.02  # above the goal, alone
    corrected = first["predicted_s"] * 0.5 * seed / first["measured_in_loop_s"]
    k = 1
    while (new := ex.solve_multiplier(costs, "latency", corrected * (1 - ex.NOTCH) ** k)
           ).achieved == pytest.approx(first["predicted_s"]):
        k += 1
    assert tried[1]["predicted_s"] == pytest.approx(new.achieved)
    assert tried[1]["predicted_s"] < first["predicted_s"]
    # Without the step the loop would have stopped at the first candidate.
    monkeypatch.setattr(ex, "_beyond", lambda tried, goal, solve: None)
    result = ex.expand(ex.Priced.of(model, prof), "latency", Quantity(0.5, True),
                       measure=True)
    assert len(result.record["measured"]["candidates"]) == 1


def test_beyond_takes_the_first_new_stair_past_the_correction():
    """On a staircase of structures, `_beyond` creeps on from the correction that
    repeated a known structure, 3% at a time: the next stair up (not one further),
    the next one down (a solver rounding to the nearest), None when all are known."""
    from collections import namedtuple

    from morphcli.steps import expand as ex

    stairs = [1.0, 2.0, 2.3, 2.6, 3.0]
    Stair = namedtuple("Stair", "widths achieved")

    def below(goal):
        return Stair({0: (s := max(x for x in stairs if x <= goal))}, s)

    def nearest(goal):
        return Stair({0: (s := min(stairs, key=lambda x: abs(x - goal)))}, s)

    # Measured 0.30 against a goal of 0.5: the correction 1.0 x 0.5 / 0.3 = 1.67
    # still gives stair 1.0; 1.67 x 1.03^k first reaches 2.0 at k = 6.
    tried = [(below(1.0), None, 0.30)]
    assert below(1.0 * 0.5 / 0.30) == tried[0][0]
    assert ex._beyond(tried, 0.5, below).achieved == 2.0
    # Measured 0.51: 3.0 x 0.5 / 0.51 = 2.94 is nearest 3.0; 2.94 x 0.97^2 = 2.77
    # is nearest 2.6 (the 2.3 stair is not skipped to).
    tried = [(nearest(3.0), None, 0.51)]
    assert ex._beyond(tried, 0.5, nearest).achieved == 2.6
    tried += [(nearest(x), None, 0.4) for x in (2.6, 2.3, 2.0, 1.0)]
    assert ex._beyond(tried, 0.5, nearest) is None


def test_clock_keeps_runners_until_release_and_sizes_rounds_from_the_last_warm_up(
        monkeypatch):
    """A kept runner is built once and dropped by `release`; an unkept one is built
    per call. `time_together` reads a round's time from its last warm-up round:
    0.01 + 0.03 s, so a second of rounds is 25 of them (more than `repeats`, 5)."""
    from morphcli.measure import clock as clock_module

    model = _model()
    clock = measure.Clock("keras", 1, None, warmup=3, repeats=5)
    kept = clock._call(model, keep=True)[0]
    assert clock._call(model, keep=True)[0] is kept
    assert clock._call(model)[0] is not kept
    clock.release()
    assert clock._call(model, keep=True)[0] is not kept
    calls = []

    def rounds(fns, xs, *, warmup, repeats, progress=None):
        calls.append((len(fns), warmup, repeats))
        return [[0.01] * repeats, [0.03] * repeats]

    monkeypatch.setattr(clock_module, "time_rounds", rounds)
    timings = clock.time_together([model, _model(side=8)], min_time=1.0)
    assert calls == [(2, 2, 1), (2, 0, 25)]
    assert [t.median for t in timings] == [0.01, 0.03]
