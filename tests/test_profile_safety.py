"""A profile is untrusted input (issue 25, groups 8, 9 and 15): every field of the file
is checked when it is read, the file is read bounded and only if it is a regular
file, and `morph profile` bounds `--batch` and `--threads` against the machine
before it measures anything.

Each case: exit code 2, one `Error:` line naming the field and the value received,
and the profile's bytes unchanged.
"""

import hashlib
import json
import os
import time

import pytest
from test_cli import morph, user_error

from morphcli.core import profile as profiles
from morphcli.core import profile_file
from morphcli.core.graph import build_graph
from morphcli.errors import MorphError
from morphcli.models.zoo import load_model
from morphcli.steps import profile as measure

CNN = ("zoo:cnn", "--input-shape", "8,8,1")


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid() -> dict:
    """A well-formed profile of zoo:cnn at 8x8x1: one table per unit, each unit's
    tables measured at its seed widths and at half of each varying width."""
    graph = build_graph(load_model("zoo:cnn", input_shape=(8, 8, 1)))
    tables = {}
    for unit in profiles.units(graph):
        key = profiles.unit_key(graph, unit)
        vary_in, vary_out = profiles.unit_axes(graph, unit)
        w_in = graph.nodes[unit[0]].in_shapes[0][-1]
        w_out = graph.nodes[unit[-1]].out_shapes[0][-1]
        grid_in = [w_in // 2, w_in] if vary_in else [w_in]
        grid_out = [w_out // 2, w_out] if vary_out else [w_out]
        seconds = [[1e-6 * (i + 1) * (j + 1) for j in range(len(grid_out))]
                   for i in range(len(grid_in))]
        tables[key] = profiles.Table(key, grid_in, grid_out, seconds, layers=[
            graph.nodes[unit[0]].name])
    prof = profiles.Profile("", profiles.machine(), "tflite", 1, 1, 2e-6, tables, 1, 1.0,
                            {"name": "cnn"}, curve=[[5e-6, 9e-6], [2e-5, 3e-5]])
    return prof.to_dict()


@pytest.fixture()
def write(tmp_path):
    def written(data=None, text=None):
        path = tmp_path / "p.json"
        path.write_text(text if text is not None else json.dumps(data))
        return path
    return written


def _refused(path) -> str:
    before = _digest(path) if path.is_file() else None
    line = user_error("report", *CNN, "--hardware", f"profile:{path}")
    if before is not None:
        assert _digest(path) == before
    return line


def test_a_well_formed_profile_prices_the_model(write):
    path = write(_valid())
    data = json.loads(morph("report", *CNN, "--hardware", f"profile:{path}", "--json").stdout)
    assert data["totals"]["latency_s"] > 0
    assert all(row["latency_s"] >= 0 for row in data["layers"])


def _table(data, k=0):
    return data["tables"][k]


DAMAGED = [
    # (how the file is damaged, the field named, what was received)
    (lambda d: _table(d).update(seconds=[[-1.0] * len(r) for r in _table(d)["seconds"]]),
     "tables[0].seconds[0][0] must be a finite number of seconds, from 0 to 3600",
     "Received: -1.0"),
    (lambda d: _table(d, 1)["seconds"][1].__setitem__(1, float("nan")),
     "tables[1].seconds[1][1] must be a finite number of seconds", "Received: nan"),
    (lambda d: _table(d, 1)["seconds"][1].__setitem__(1, float("inf")),
     "tables[1].seconds[1][1] must be a finite number of seconds", "Received: inf"),
    (lambda d: _table(d, 1)["seconds"][1].__setitem__(1, 1e300),
     "tables[1].seconds[1][1] must be a finite number of seconds", "Received: 1e+300"),
    (lambda d: _table(d)["seconds"][0].__setitem__(0, "fast"),
     "tables[0].seconds[0][0] must be a finite number of seconds", "Received: 'fast'"),
    (lambda d: _table(d).update(widths_out=[0, 32]),
     "tables[0].widths_out[0] must be an integer from 1", "Received: 0"),
    (lambda d: _table(d).update(step=0), "tables[0].step must be an integer from 1",
     "Received: 0"),
    (lambda d: _table(d).update(colour="red"), "tables[0] has an unknown field `colour`",
     "Received: colour='red'"),
    (lambda d: _table(d, 1)["seconds"][1].__setitem__(1, 0.0),
     "tables[1].seconds must not fall as a width grows", "Received: [[1e-06, 2e-06], [2e-06, 0.0]]"),
    (lambda d: d.update(overhead_s=-1.0), "overhead_s must be a finite number of seconds",
     "Received: -1.0"),
    (lambda d: d.update(overhead_s=float("nan")), "overhead_s must be a finite number",
     "Received: nan"),
    (lambda d: d.update(fixed_s=-1e-6), "fixed_s must be a finite number", "Received: -1e-06"),
    (lambda d: d.update(scale=0), "scale must be a finite number above 0", "Received: 0"),
    (lambda d: d["curve"][0].__setitem__(1, float("nan")),
     "curve[0][1] must be a finite number of seconds, from 0 to 3600", "Received: nan"),
    (lambda d: d.update(curve=[[1e-5, 2e-5], [2e-5, 1e-5]]),
     "curve must rise: curve[1] takes less time than curve[0]",
     "Received: [[1e-05, 2e-05], [2e-05, 1e-05]]"),
    (lambda d: d.update(curve=[[1e-5, 2e-5, 3e-5]]),
     "curve[0] must be a pair [sum of units, seconds]", "Received: [1e-05, 2e-05, 3e-05]"),
    (lambda d: d.update(round_to=0), "round_to must be an integer from 1", "Received: 0"),
    (lambda d: d.update(round_to=-4), "round_to must be an integer from 1", "Received: -4"),
    (lambda d: d.update(round_to=2.5), "round_to must be an integer from 1", "Received: 2.5"),
    (lambda d: d.update(threads="two"), "threads must be null or an integer from 1 to 1024",
     "Received: 'two'"),
    (lambda d: d.update(threads=-7), "threads must be null or an integer from 1",
     "Received: -7"),
    (lambda d: d.update(batch=0), "batch must be an integer from 1", "Received: 0"),
    (lambda d: d.update(batch=True), "batch must be an integer from 1", "Received: True"),
    (lambda d: d.update(runtime="pytorch"), "runtime must be one of tflite, keras",
     "Received: 'pytorch'"),
    (lambda d: d.update(tables={}), "tables must be a list of tables", "Received: {}"),
    (lambda d: d.update(device=[]), "device must be a mapping", "Received: []"),
    (lambda d: d.pop("overhead_s"), "overhead_s is missing", "Received: no overhead_s"),
]


@pytest.mark.parametrize("damage,field,received", DAMAGED,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(DAMAGED)])
def test_a_damaged_profile_is_refused_in_one_line_naming_the_field(
        write, damage, field, received):
    data = _valid()
    damage(data)
    path = write(data)
    line = _refused(path)
    assert line.startswith(f"Error: The profile {path} is damaged: {field}"), line
    assert received in line, line


@pytest.mark.parametrize("version,message", [
    ("4", "version must be an integer. Received: '4'"),
    (3, "has format version 3, whose layer keys could give two different layers one table; "
        "this morphcli reads version 4"),
    (99, "has format version 99; this morphcli reads version 4"),
])
def test_a_profile_of_another_version_is_refused(write, version, message):
    data = _valid()
    data["version"] = version
    line = _refused(write(data))
    assert message in line, line
    if version != "4":
        assert "morph profile" in line  # measure it again


def test_a_deeply_nested_profile_is_refused(write):
    path = write(text='{"format": "morphcli-profile", "device": ' + "[" * 100_000
                 + "]" * 100_000 + "}")
    assert f"The profile {path} is damaged: nested too deeply" in _refused(path)


def test_a_profile_that_is_not_json_is_refused(write):
    path = write(text="{not json")
    assert f"The profile {path} is damaged: not JSON" in _refused(path)


def test_a_profile_larger_than_the_limit_is_refused_unread(write):
    path = write(text="{}")
    os.truncate(path, profile_file.MAX_BYTES + 1)  # sparse: no 16 MiB written
    line = _refused(path)
    assert f"The profile {path} is larger than 16 MiB" in line, line


@pytest.mark.parametrize("kind", ["dev-zero-link", "fifo", "directory"])
def test_a_profile_that_is_no_regular_file_is_refused_quickly(tmp_path, kind):
    path = tmp_path / "p.json"
    if kind == "dev-zero-link":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)  # opening it would wait for a writer forever
    else:
        path.mkdir()
    start = time.monotonic()
    line = user_error("report", *CNN, "--hardware", f"profile:{path}")
    assert time.monotonic() - start < 30
    assert line.startswith(f"Error: The profile {path} is not a regular file"), line


def test_a_profile_device_without_a_path_is_refused():
    line = user_error("report", *CNN, "--hardware", "profile:")
    assert line.startswith("Error: A profile device needs a path: profile:PATH. "
                           "Received: hardware='profile:'"), line


def test_a_missing_profile_is_refused(tmp_path):
    line = user_error("report", *CNN, "--hardware", f"profile:{tmp_path / 'nope.json'}")
    assert "The profile does not exist" in line


# --- morph profile bounds what it is asked to measure ---------------------------------


def test_profile_refuses_a_batch_larger_than_memory_before_allocating(tmp_path):
    out = tmp_path / "p.json"
    start = time.monotonic()
    line = user_error("profile", *CNN, "--batch", "100000000", "-o", str(out))
    assert time.monotonic() - start < 60
    # The largest tensor of zoo:cnn at 8x8x1 is conv2's output, 8x8x64 floats.
    gib = 100_000_000 * 8 * 8 * 64 * 4 / 2**30
    assert line.startswith(f"Error: --batch 100000000 needs {gib:.1f} GiB for one tensor "
                           "of `cnn`"), line
    assert "Received: batch=100000000" in line
    assert not out.exists()


def test_profile_refuses_more_threads_than_the_cores(tmp_path):
    out = tmp_path / "p.json"
    cores = os.cpu_count()
    line = user_error("profile", *CNN, "--threads", str(cores + 1), "-o", str(out))
    assert line.startswith(f"Error: Invalid value for '--threads': {cores + 1} is more than "
                           f"this machine's {cores} CPU core(s)"), line
    assert not out.exists()
    model = load_model("zoo:cnn", input_shape=(8, 8, 1))  # the step itself, from Python
    with pytest.raises(MorphError, match=f"--threads {cores + 1} is more than this machine's"):
        measure.profile(model, threads=cores + 1)


@pytest.mark.parametrize("threads", ["two", 0, -7, 2.0, True])
def test_the_profile_step_refuses_threads_that_are_not_a_count(threads):
    model = load_model("zoo:cnn", input_shape=(8, 8, 1))
    with pytest.raises(MorphError, match="threads must be a whole number from 1"):
        measure.profile(model, threads=threads)
