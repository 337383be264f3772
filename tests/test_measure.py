"""`morphcli.measure`: what `expand --measure` times is what `morph export`
writes (the same bytes), and `--measure` times the way `morph bench` does."""

import hashlib
import json
from pathlib import Path

import keras
import pytest
from test_cli import morph

from morphcli.core import profile as profiles
from morphcli.core.graph import build_graph
from morphcli.core.machine import machine
from morphcli.measure import bench, isolated
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
    monkeypatch.setattr(isolated, "IN_WORKER", False)  # the fake clock is here
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
    monkeypatch.setattr(isolated, "IN_WORKER", False)  # the fake clock is here
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


# --- the TFLite clock runs in a process of its own ----------------------------------------


def test_tflite_latencies_are_timed_in_fresh_processes_on_the_exported_bytes(tmp_path):
    """`isolated.latencies` times what `morph export` writes, in three worker
    processes kept for the caller's `runners`: the sha256 timed are the exported
    files', the workers are other processes and are reused, and `release` ends
    them and removes their files."""
    import os
    from types import SimpleNamespace

    from morphcli.steps import export as ex

    keras.utils.set_random_seed(0)
    seed, other = load_static("zoo:cnn"), load_static("zoo:cnn", input_shape=(16, 16, 1))
    ex.export(seed, tmp_path / "seed.tflite")
    ex.export(other, tmp_path / "other.tflite")
    hardware = SimpleNamespace(runtime="tflite", threads=1, batch=1)
    runners: dict = {}
    found, how = isolated.latencies([seed, other], hardware, repeats=3, runners=runners)
    assert how == {"runtime": "tflite", "threads": 1, "batch": 1, "repeats": 3,
                   "interleaved": True, "process": "fresh", "processes": 3}
    assert [r.sha256 for r in found] == [_sha(tmp_path / "seed.tflite"),
                                         _sha(tmp_path / "other.tflite")]
    assert [r.path for r in found] == ["model", "model"] and found[0].ratio is None
    assert found[1].ratio > 0 and found[1].repeats == 3
    pids, folder = [w.pid for w in runners["workers"].workers], runners["folder"]
    assert len(set(pids)) == 3 and os.getpid() not in pids
    isolated.latencies([seed, other], hardware, repeats=2, runners=runners)
    assert [w.pid for w in runners["workers"].workers] == pids
    assert sorted(p.name for p in Path(folder).iterdir()) == [
        "model-0.tflite", "model-1.tflite"]  # each model converted once
    isolated.release(runners)
    assert runners == {} and not Path(folder).exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_each_figure_is_the_median_over_the_processes():
    """Three processes' timings of the same two targets merge into one result per
    target whose every figure is the median of the three; bytes that differ
    between processes are an error."""
    from morphcli.errors import ModelError

    def timing(seed_s, ratio, sha="b"):
        return [bench.BenchResult("a", "tflite", 1, 2, 50, seed_s, seed_s - 1, seed_s + 1,
                                  sha256="a"),
                bench.BenchResult("b", "tflite", 1, 2, 50, seed_s * ratio, 0.0, 9.0,
                                  ratio, ratio - 0.1, ratio + 0.1, sha256=sha)]

    seed, other = isolated.median_results([timing(10.0, 0.42), timing(12.0, 0.53),
                                           timing(11.0, 0.44)])
    assert (seed.median_s, seed.p10_s, seed.p90_s, seed.ratio) == (11.0, 10.0, 12.0, None)
    assert other.median_s == pytest.approx(4.84)  # of 4.2, 6.36 and 4.84
    assert (other.ratio, other.ratio_p10, other.ratio_p90) == pytest.approx((0.44, 0.34, 0.54))
    assert (other.path, other.sha256, other.repeats) == ("b", "b", 50)
    with pytest.raises(ModelError, match="^The timing processes timed different bytes for b"):
        isolated.median_results([timing(10.0, 0.4), timing(10.0, 0.4, sha="c")])


def test_the_timing_process_refuses_in_one_line_and_its_end_is_an_error(tmp_path):
    """A file the worker cannot load is refused with bench's one line, and the
    worker serves the next request; a worker that died is a ModelError."""
    import os
    import signal

    from morphcli.errors import ModelError
    from morphcli.steps import export as ex

    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer")
    ex.export(load_static("zoo:cnn"), tmp_path / "cnn.tflite")
    worker = isolated.Worker()
    ask = {"batch": 1, "threads": 1, "warmup": 0, "repeats": 1}
    try:
        with pytest.raises(ModelError, match=r"^Could not load .*bad\.tflite as a tflite "
                                             r"model: ") as err:
            worker.time([str(tmp_path / "bad.tflite")], **ask)
        assert "\n" not in str(err.value)
        (good,) = worker.time([str(tmp_path / "cnn.tflite")], **ask)
        assert good.sha256 == _sha(tmp_path / "cnn.tflite")
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(ModelError, match="^The timing process ended: "):
            worker.time([str(tmp_path / "cnn.tflite")], **ask)
    finally:
        worker.close()


def test_morph_bench_with_processes_gives_the_medians_of_fresh_processes(tmp_path):
    """`morph bench --processes 2` times the files in two workers and prints the
    medians of theirs with the files' sha256; a file none can load is refused
    in one line, exit 2."""
    from test_cli import user_error

    from morphcli.steps import export as ex

    keras.utils.set_random_seed(0)
    ex.export(load_static("zoo:cnn"), tmp_path / "a.tflite")
    ex.export(load_static("zoo:cnn", input_shape=(16, 16, 1)), tmp_path / "b.tflite")
    paths = [str(tmp_path / "a.tflite"), str(tmp_path / "b.tflite")]
    found = json.loads(morph("bench", *paths, "--processes", "2", "--repeats", "3",
                             "--threads", "1", "--json").stdout)
    assert [r["path"] for r in found] == paths
    assert [r["sha256"] for r in found] == [_sha(tmp_path / "a.tflite"),
                                            _sha(tmp_path / "b.tflite")]
    assert found[0]["ratio"] is None and found[1]["ratio"] > 0
    assert [r["repeats"] for r in found] == [3, 3]
    text = morph("bench", paths[0], "--processes", "2", "--repeats", "2").stdout
    assert text.startswith("tflite, batch 1: median ") and text.rstrip().endswith(
        "2 calls in each of 2 processes, medians of theirs)")
    (tmp_path / "bad.tflite").write_bytes(b"no")
    assert user_error("bench", str(tmp_path / "bad.tflite"), "--processes", "2").startswith(
        f"Error: Could not load {tmp_path / 'bad.tflite'} as a tflite model: ")
