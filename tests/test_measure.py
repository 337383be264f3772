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
