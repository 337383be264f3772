"""`morphcli.measure`: what `expand --measure` times is what `morph export`
writes (the same bytes), and `--measure` times the way `morph bench` does."""

import hashlib
import json

import keras
import pytest
from test_cli import morph

from morphcli.core import profile as profiles
from morphcli.core.graph import build_graph
from morphcli.core.machine import machine
from morphcli.measure import bench
from morphcli.models.zoo import load_static


def _tflite_profile(graph, path):
    """A profile for the tflite runtime, 1 thread, whose every unit costs
    1 ns x its input x output channels (its grid: 1 and the seed's widths)."""
    tables = {}
    for unit in profiles.units(graph):
        key = profiles.unit_key(graph, unit)
        w_in = int(graph.nodes[unit[0]].in_shapes[0][-1])
        w_out = int(graph.nodes[unit[-1]].out_shapes[0][-1])
        grid_in, grid_out = sorted({1, w_in}), sorted({1, w_out})
        tables[key] = profiles.Table(key, grid_in, grid_out,
                                     [[1e-9 * a * b for b in grid_out] for a in grid_in])
    prof = profiles.Profile(str(path), machine(), "tflite", 1, 1, 0.0, tables, 1, 1.0,
                            {"name": graph.model.name})
    path.write_text(json.dumps(prof.to_dict()))


def _on_the_aim(calls, xs, *, warmup, repeats, progress=None):
    """A clock on which the candidate is 0.49 of the seed each round: on the
    aim of a 50% budget (2% under it), so the loop keeps its first candidate."""
    assert len(calls) == 2  # the seed beside the candidate
    return [[1.0] * repeats, [0.49] * repeats]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# MobileNetV2 converts in 20 s on an idle machine, 65 s on a loaded one, four times.
@pytest.mark.parametrize("spec", ["zoo:resnet20", pytest.param(
    "applications:MobileNetV2", marks=pytest.mark.slow)])
def test_the_tflite_measure_times_is_the_file_export_writes(spec, tmp_path, monkeypatch):
    """`morph expand --measure` on a tflite profile converts the seed and its
    candidate for the clock (the clock is faked, the conversions are real);
    `morph export` of the seed and of the written result gives files whose
    sha256 are the ones the expansion record says were timed."""
    keras.utils.set_random_seed(0)
    seed = load_static(spec, input_shape=(32, 32, 3), classes=10)
    seed_path, out = tmp_path / "seed.keras", tmp_path / "half.keras"
    seed.save(seed_path)
    _tflite_profile(build_graph(seed), tmp_path / "p.json")
    monkeypatch.setattr(bench, "time_rounds", _on_the_aim)
    result = morph("expand", str(seed_path), "--target", "latency=50%", "--measure",
                   "--hardware", f"profile:{tmp_path / 'p.json'}", "-o", str(out), "--json")
    record = json.loads(result.stdout)["measured"]
    (chosen,) = record["candidates"]
    assert record["runtime"] == "tflite" and record["threads"] == 1
    morph("export", str(seed_path), "-o", str(tmp_path / "seed.tflite"))
    morph("export", str(out), "-o", str(tmp_path / "half.tflite"))
    assert record["source_sha256"] == _sha(tmp_path / "seed.tflite")
    assert chosen["sha256"] == _sha(tmp_path / "half.tflite")
    assert chosen["sha256"] != record["source_sha256"]


# --- `--measure` times the way `morph bench` does ----------------------------------------


class _Fake:
    """A runner that is never called: the fake clock reads its model."""

    def __init__(self, model, threads):
        self.model, self.threads = model, threads

    def __call__(self, x):
        raise AssertionError("the fake clock times nothing")


@pytest.fixture()
def cnn(tmp_path):
    """zoo:cnn saved, with a tflite profile (1 thread) beside it."""
    keras.utils.set_random_seed(0)
    seed = load_static("zoo:cnn")
    seed.save(tmp_path / "seed.keras")
    _tflite_profile(build_graph(seed), tmp_path / "p.json")
    return tmp_path


def _fake_clock(monkeypatch, share_of):
    """Runners that convert nothing, and a clock on which each round of the source
    (first) and a candidate takes 1 s and `share_of(pass, model, round)` s; records
    every timing's (runners, warm-up rounds, timed rounds)."""
    timings, passes = [], {}

    def runner(target, batch, threads, trust_code, runtime):
        return "model", runtime, _Fake(target, threads), None, None

    def rounds(calls, xs, *, warmup, repeats, progress=None):
        timings.append((calls, warmup, repeats))
        source, *others = calls
        found = [[1.0] * repeats]
        for call in others:
            n = passes[id(call.model)] = passes.get(id(call.model), 0) + 1
            found.append([share_of(n, call.model, r) for r in range(repeats)])
        return found

    monkeypatch.setattr(bench, "_runner", runner)
    monkeypatch.setattr(bench, "time_rounds", rounds)
    return timings


def _expand(folder, *extra):
    return morph("expand", str(folder / "seed.keras"), "--target", "latency=50%", "--measure",
                 "--hardware", f"profile:{folder / 'p.json'}", "-o", str(folder / "out.keras"),
                 *extra)


def test_measure_times_the_source_beside_each_candidate_as_bench_does(cnn, monkeypatch):
    """Every timing is `morph bench SOURCE CANDIDATE`'s: the source first, one
    candidate beside it, bench's warm-up and rounds, the profile's runtime and
    threads; after several candidates each is timed again beside the source
    (150 rounds), never three models in one set of rounds. Here the clock puts
    each candidate 5% above its price on the profile, so the first misses."""
    from morphcli.cli.deploy import bench as bench_command
    from morphcli.core.costs import CostModel
    from morphcli.steps import expand as ex

    prof = profiles.load(str(cnn / "p.json"))
    seed = CostModel(build_graph(keras.saving.load_model(cnn / "seed.keras")),
                     prof).total("latency")
    timings = _fake_clock(monkeypatch, lambda n, model, r: 1.05 * CostModel(
        build_graph(model), prof).total("latency") / seed)
    _expand(cnn)
    record = json.loads((cnn / "out.expand.json").read_text())["measured"]
    tried = len(record["candidates"])
    defaults = {p.name: p.default for p in bench_command.params}
    assert (bench.WARMUP, bench.REPEATS) == (defaults["warmup"], defaults["repeats"]) == (10, 50)
    assert tried > 1
    assert [(len(c), w, r) for c, w, r in timings] == \
        [(2, 10, 50)] * (3 * tried) + [(2, 10, ex.FINAL_REPEATS)] * tried
    sources = {id(c[0].model) for c, _, _ in timings}
    assert len(sources) == 1  # always the source first, converted once
    assert {(c[1].threads, c[0].threads) for c, _, _ in timings} == {(1, 1)}
    assert record["runtime"] == "tflite" and record["threads"] == 1
    assert record["share"] == pytest.approx(record["latency_s"] / record["source_s"])
    assert record["met"] and record["share"] <= 0.5


def test_measure_prints_its_share_and_spread_as_bench_would(cnn, monkeypatch):
    """The candidate's rounds read 0.47, 0.49 and 0.51 of the source in turn:
    bench's median 0.490 and percentiles 0.470-0.510; three timings agree (±0.0%),
    within the 2% tolerance, so no warning."""
    _fake_clock(monkeypatch, lambda n, model, r: (0.47, 0.49, 0.51)[r % 3])
    result = _expand(cnn)
    record = json.loads((cnn / "out.expand.json").read_text())["measured"]
    assert (record["share"], record["timings"], record["spread"]) == (0.49, 3, 0.0)
    assert record["spread_wide"] is False and len(record["candidates"]) == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith(("measured", "warn"))]
    assert lines == [
        "measured 490 ms here (tflite, 1 thread) for target 500 ms (-2.0%): 0.490x the "
        "source, timed beside it as `morph bench SOURCE OUT` times (50 rounds, 10th-90th "
        "percentile 0.470-0.510x); its 3 timings spread ±0.0%"]


def test_measure_says_when_its_spread_is_wider_than_the_tolerance(cnn, monkeypatch):
    """Timings of 0.45, 0.53 and 0.49 of the source in turn never agree: seven of
    them (the most), median 0.49, median deviation 0.04 (8.2% of 0.49), wider than
    the 2% tolerance: the result says so."""
    from morphcli.steps import expand as ex

    _fake_clock(monkeypatch, lambda n, model, r: (0.49, 0.45, 0.53)[n % 3])
    result = _expand(cnn)
    record = json.loads((cnn / "out.expand.json").read_text())["measured"]
    assert record["timings"] == ex.MAX_PASSES == 7 and record["share"] == 0.49
    assert record["spread"] == pytest.approx(0.04 / 0.49) and record["spread_wide"] is True
    lines = [line for line in result.stderr.splitlines() if line.startswith(("measured", "warn"))]
    assert lines[0].endswith("its 7 timings spread ±8.2%")
    assert lines[1:] == [
        "warning: the spread (±8.2%) is wider than the 2% tolerance: the machine's load "
        "moved the timings, and `morph bench` may measure the result that far from this"]


def test_an_absolute_target_is_timed_alone_and_printed_in_milliseconds():
    from morphcli.steps.expand import describe_measured

    record = {"runtime": "keras", "threads": None, "repeats": 50, "final_repeats": None,
              "latency_s": 0.0019, "target_s": 0.002, "error": -0.05, "share": None,
              "rounds_p10": 0.0018, "rounds_p90": 0.0021, "timings": 4, "spread": 0.031,
              "tolerance": 0.02, "spread_wide": True}
    first, warning = describe_measured(record)
    assert first == ("measured 1.9 ms here (keras) for target 2 ms (-5.0%): timed alone as "
                     "`morph bench OUT` times (50 calls, 10th-90th percentile 1.8-2.1 ms); "
                     "its 4 timings spread ±3.1%")
    assert warning.startswith("warning: the spread (±3.1%) is wider than the 2% tolerance")
