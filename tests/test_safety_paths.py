"""Nothing lost, part 2 (issue 25): output paths of every command, the inputs they
must never touch (profiles, structures and data too), resume that trusts nothing it
finds, benchmark cells, and temporaries left by killed commands.

Each test asserts the exit code, the one `Error:` line and that inputs and unrelated
files keep their bytes.
"""

import errno
import hashlib
import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import morph, user_error

from morphcli import files
from morphcli.config import demo_config_path, dump_yaml, load_config
from morphcli.errors import MorphError
from morphcli.steps import records

ROOT = Path(__file__).resolve().parent.parent


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory):
    from morphcli.models.zoo import load_model

    path = tmp_path_factory.mktemp("seed") / "seed.keras"
    load_model("zoo:cnn").save(path)
    return path


@pytest.fixture()
def seed(seed_file, tmp_path):
    path = tmp_path / "seed.keras"
    path.write_bytes(seed_file.read_bytes())
    return path


# --- 1. --overwrite never removes a folder morph did not make, nor one holding an input ----

def test_export_overwrite_never_replaces_the_folder_holding_its_input(seed, tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    before = _digest(seed)
    line = user_error("export", str(seed), "--format", "saved_model", "-o", str(tmp_path),
                      "--overwrite")
    assert "holds the input MODEL" in line
    assert _digest(seed) == before and (tmp_path / "precious.txt").read_text() == "mine"


def test_export_overwrite_refuses_a_folder_morph_did_not_make(seed, tmp_path):
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "precious.txt").write_text("mine")
    line = user_error("export", str(seed), "--format", "saved_model", "-o", str(folder),
                      "--overwrite")
    assert "not a folder morph made" in line and str(folder) in line
    assert sorted(p.name for p in folder.iterdir()) == ["precious.txt"]
    assert (folder / "precious.txt").read_text() == "mine"


def test_export_overwrite_replaces_a_saved_model_morph_exported(seed, tmp_path):
    out = tmp_path / "sm"
    morph("export", str(seed), "--format", "saved_model", "-o", str(out))
    assert (out / files.MARKER).is_file() and (out / "saved_model.pb").is_file()
    assert "--overwrite" in user_error("export", str(seed), "--format", "saved_model", "-o",
                                       str(out))
    morph("export", str(seed), "--format", "saved_model", "-o", str(out), "--overwrite")
    assert (out / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.keras", "sm"]  # no temporary


# --- 2. profiles, structures and data are inputs too ---------------------------------------

@pytest.fixture()
def profile_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"format": "morphcli-profile"}\n')  # refused before it is read
    return path


def test_expand_never_writes_over_its_profile(profile_file):
    before = _digest(profile_file)
    line = user_error("expand", "zoo:cnn", "--target", "flops=0.5", "--hardware",
                      f"profile:{profile_file}", "-o", str(profile_file), "--overwrite")
    assert "is the input --hardware" in line
    assert _digest(profile_file) == before


@pytest.mark.parametrize("command", [["profile", "--runtime", "keras"], ["export"],
                                     ["expand", "--target", "latency=50%", "--measure"]])
def test_the_latency_commands_never_write_over_their_model(seed, command):
    """README "What is guaranteed": the latency commands too (bench writes nothing)."""
    before = _digest(seed)
    line = user_error(command[0], str(seed), *command[1:], "-o", str(seed), "--overwrite")
    assert line == (f"Error: The output -o is the input MODEL ({seed}): writing it would "
                    f"destroy the input. Received: -o={seed} Hint: choose another output path.")
    assert _digest(seed) == before


def test_expand_measure_never_writes_over_its_profile(profile_file):
    before = _digest(profile_file)
    line = user_error("expand", "zoo:cnn", "--target", "latency=50%", "--measure",
                      "--hardware", f"profile:{profile_file}", "-o", str(profile_file),
                      "--overwrite")
    assert "is the input --hardware" in line
    assert _digest(profile_file) == before


def test_report_never_writes_over_its_profile_or_structure(profile_file, tmp_path):
    structure = tmp_path / "structure.json"
    structure.write_text("{}")
    before = _digest(profile_file), _digest(structure)
    assert "is the input --hardware" in user_error(
        "report", "zoo:cnn", "--hardware", f"profile:{profile_file}", "--markdown",
        str(profile_file))
    assert "is the input --structure" in user_error(
        "report", "zoo:cnn", "--structure", str(structure), "--plot", str(structure))
    assert (_digest(profile_file), _digest(structure)) == before


def test_a_run_folder_never_holds_the_profile_or_the_data(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "p.json").write_text("{}")
    (out / "d.npz").write_bytes(b"npz")
    before = _digest(out / "p.json"), _digest(out / "d.npz")
    line = user_error("run", "-o", str(out), "--set", f"target.hardware=profile:{out}/p.json")
    assert "holds the input target.hardware" in line
    assert "holds the input data.source" in user_error(
        "run", "-o", str(out), "--set", f"data.source=npz:{out}/d.npz")
    assert (_digest(out / "p.json"), _digest(out / "d.npz")) == before


# --- 3. never a device, a pipe or a socket ---------------------------------------------------

def _specials(tmp_path) -> list[Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    found = [fifo]
    try:  # a copy of /dev/null, where the machine lets us make one
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        found.append(tmp_path / "null")
    except (PermissionError, OSError):
        pass
    return found


def _still_special(path: Path) -> bool:
    mode = os.lstat(path).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def test_overwrite_never_replaces_a_device_or_a_pipe(seed, tmp_path):
    for special in _specials(tmp_path):
        for args in (["expand", str(seed), "--target", "flops=0.5", "-o", str(special),
                      "--overwrite"],
                     ["export", str(seed), "-o", str(special), "--overwrite"],
                     ["profile", str(seed), "-o", str(special), "--overwrite"],
                     ["report", str(seed), "--markdown", str(special)]):
            line = user_error(*args)
            assert "is not a regular file" in line and str(special) in line, args
            assert _still_special(special)


def test_an_atomic_write_never_replaces_a_pipe(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(MorphError, match="not a regular file"):
        files.write_text(fifo, "x")
    assert _still_special(fifo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]  # its temporary removed


# --- 13. output paths checked before the work --------------------------------------------------

@pytest.fixture()
def no_profiling(monkeypatch):
    from morphcli.steps import profile

    def measured(*args, **kwargs):
        raise AssertionError("the output path was checked only after measuring")

    monkeypatch.setattr(profile, "profile", measured)


def test_profile_into_a_folder_fails_before_measuring(tmp_path, no_profiling):
    line = user_error("profile", "zoo:cnn", "-o", str(tmp_path))
    assert f"{tmp_path} is a folder" in line and files.TEMP not in line


def test_profile_into_an_unwritable_folder_fails_before_measuring(tmp_path, no_profiling,
                                                                  monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let the check see what a user would
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False
                            if Path(path) == ro else access(path, mode, **kw))
    try:
        line = user_error("profile", "zoo:cnn", "-o", str(ro / "p.json"))
    finally:
        ro.chmod(0o755)
    assert f"Cannot write {ro / 'p.json'}" in line and "not writable" in line
    assert files.TEMP not in line and list(ro.iterdir()) == []


def test_an_output_under_a_file_fails_before_measuring(tmp_path, no_profiling):
    (tmp_path / "f").write_text("mine")
    line = user_error("profile", "zoo:cnn", "-o", str(tmp_path / "f" / "p.json"))
    assert "is not a folder" in line and (tmp_path / "f").read_text() == "mine"


def test_a_failed_write_names_the_users_path_not_a_temporary(tmp_path, monkeypatch):
    replace = os.replace

    def full_disk(src, dst):
        if Path(src).name.startswith(files.TEMP):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    line = user_error("report", "zoo:cnn", "--markdown", str(tmp_path / "r.md"))
    assert f"No space left on device: {tmp_path / 'r.md'}" in line and files.TEMP not in line
    assert list(tmp_path.iterdir()) == []  # the temporary removed


def test_export_creates_a_missing_parent_folder(seed, tmp_path):
    out = tmp_path / "new" / "sub" / "m.tflite"
    morph("export", str(seed), "-o", str(out))
    assert out.stat().st_size > 1000
    assert [p.name for p in out.parent.iterdir()] == ["m.tflite"]


def test_expand_refuses_an_existing_output_without_overwrite(seed, tmp_path):
    out = tmp_path / "out.keras"
    out.write_bytes(b"mine")
    assert "--overwrite" in user_error("expand", str(seed), "--target", "flops=0.5", "-o",
                                       str(out))
    assert out.read_bytes() == b"mine" and not (tmp_path / "out.expand.json").exists()
    morph("expand", str(seed), "--target", "flops=0.5", "-o", str(out), "--overwrite")
    assert out.read_bytes() != b"mine" and (tmp_path / "out.expand.json").is_file()


# --- 11. resume trusts nothing it finds --------------------------------------------------------

def _run_folder(tmp_path, **overrides) -> tuple[Path, str]:
    """A run folder as `morph run` leaves it after its first step began."""
    out = tmp_path / "r"
    (out / "shrink").mkdir(parents=True)
    files.write_text(out / files.MARKER, "")
    conf = load_config(demo_config_path(), {"shrink.epochs": 1, "retrain.epochs": 1,
                                            **overrides})
    text = dump_yaml(conf)
    (out / "config.yaml").write_text(text)
    return out, text


def test_resume_without_the_recorded_config_is_refused(tmp_path):
    out, _ = _run_folder(tmp_path)
    (out / "config.yaml").unlink()
    line = user_error("run", "--resume", "-o", str(out))
    assert "recorded config.yaml is missing" in line
    assert not (out / "config.yaml").exists() and list((out / "shrink").iterdir()) == []


def test_resume_with_a_truncated_recorded_config_is_refused(tmp_path):
    out, text = _run_folder(tmp_path)
    cut = text[: len(text) // 2].rsplit("\n", 1)[0] + "\n"  # still valid YAML
    (out / "config.yaml").write_text(cut)
    line = user_error("run", "--resume", "-o", str(out))
    assert "is damaged" in line and "keys missing" in line
    assert (out / "config.yaml").read_text() == cut  # not rewritten with the defaults
    assert list((out / "shrink").iterdir()) == []


@pytest.mark.parametrize("command", ["run", "shrink"])
def test_resume_of_a_mistyped_folder_is_refused(tmp_path, command):
    missing = tmp_path / "runs" / "typo"
    line = user_error(command, "--resume", "-o", str(missing))
    assert "holds no run to continue" in line and not missing.exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    assert "holds no run" in user_error(command, "--resume", "-o", str(tmp_path / "notes"))
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["a.txt"]


def test_a_run_records_its_profile_and_refuses_a_changed_one(tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text('{"tables": []}\n')
    hardware = f"profile:{profile}"
    rundir = tmp_path / "r"
    rundir.mkdir()
    records.record_profile(hardware, rundir, started=False)  # a new run: recorded
    recorded = (rundir / records.PROFILE_RECORD).read_text()
    assert recorded.split()[0] == _digest(profile)
    records.record_profile(hardware, rundir, started=True)  # the same profile: resumes
    profile.write_text('{"tables": [] }\n')  # replaced between runs
    with pytest.raises(MorphError, match="changed since this run started"):
        records.record_profile(hardware, rundir, started=True)
    (rundir / records.PROFILE_RECORD).unlink()
    with pytest.raises(MorphError, match="no record of its profile"):
        records.record_profile(hardware, rundir, started=True)
    records.record_profile("cpu", rundir, started=True)  # a named device: nothing to record
    assert not (rundir / records.PROFILE_RECORD).exists()


def test_resume_of_a_run_whose_profile_changed_is_refused(tmp_path):
    morph("profile", "zoo:cnn", "--runtime", "keras", "--repeats", "1", "--warmup", "0",
          "--round-to", "8", "-o", str(tmp_path / "p.json"))
    profile = tmp_path / "p.json"
    out, _ = _run_folder(tmp_path, **{"target.hardware": f"profile:{profile}"})
    (out / records.PROFILE_RECORD).write_text(f"{_digest(profile)}  {profile}\n")
    data = json.loads(profile.read_text())
    profile.write_text(json.dumps(data, indent=1))  # the same numbers, another file
    before = _digest(profile), _digest(out / "config.yaml")
    line = user_error("run", "--resume", "-o", str(out))
    assert "changed since this run started" in line
    assert (_digest(profile), _digest(out / "config.yaml")) == before
    assert list((out / "shrink").iterdir()) == []  # nothing trained


@pytest.fixture(scope="module")
def cnn_profile(tmp_path_factory):
    """A synthetic profile of zoo:cnn (every unit 1 µs at its own widths): a valid
    `profile:` device, made without timing anything."""
    from morphcli.core import profile as profiles
    from morphcli.core.graph import build_graph
    from morphcli.models.zoo import load_model

    graph = build_graph(load_model("zoo:cnn"))
    tables = {key: profiles.Table(key, [1], [1], [[1e-6]])
              for key in (profiles.unit_key(graph, u) for u in profiles.units(graph))}
    path = tmp_path_factory.mktemp("profile") / "p.json"
    path.write_text(json.dumps(profiles.Profile(
        str(path), profiles.machine(), "keras", 1, None, 1e-6, tables,
        model={"name": graph.model.name}).to_dict()))
    return path


def _shrink_folder(tmp_path, text: str = "") -> tuple[Path, Path, str]:
    """A `morph shrink` output folder as a killed shrink leaves it (its training
    begun: checkpoints), the config file it was made with, and its recorded config."""
    config = tmp_path / "c.yaml"
    config.write_text(f"shrink:\n  epochs: 1\nretrain:\n  epochs: 1\n{text}")
    out = tmp_path / "s"
    (out / "checkpoints").mkdir(parents=True)
    files.write_text(out / files.MARKER, "")
    recorded = dump_yaml(load_config(config))
    (out / "config.yaml").write_text(recorded)
    return out, config, recorded


def _shrink_resume_refused(out: Path, config: Path, *inputs: Path) -> str:
    """`morph shrink -c CONFIG -o OUT --resume`, refused: its one Error: line. The
    inputs and the folder keep their bytes, and nothing is trained."""
    def state():
        held = [config, *inputs, *(p for p in out.rglob("*") if p.name != files.LOCK)]
        return {p: _digest(p) if p.is_file() else "folder" for p in held}

    before = state()
    line = user_error("shrink", "-c", str(config), "-o", str(out), "--resume")
    assert state() == before
    assert list((out / "checkpoints").iterdir()) == []
    return line


def test_overwrite_removes_every_output_a_run_or_shrink_writes(tmp_path):
    """A stale trained.keras would make a new shrink folder look begun (its resume
    refused), a stale search/ or best.keras would be taken for the new run's."""
    out = tmp_path / "r"
    (out / "search").mkdir(parents=True)
    for name in ("trained.keras", "best.keras", "shrunk.keras", "notes.txt", files.MARKER,
                 "search/search.json"):
        (out / name).write_text("old")
    files.prepare_outdir(out, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [files.MARKER, "notes.txt"]


def test_shrink_resume_without_the_recorded_config_is_refused(tmp_path):
    out, config, _ = _shrink_folder(tmp_path)
    (out / "config.yaml").unlink()
    line = _shrink_resume_refused(out, config)
    assert line == (f"Error: {out} holds a run whose recorded config.yaml is missing; resuming "
                    f"without it would run another config. Received: -o {out} Hint: restore it, "
                    "or start the run again with --overwrite.")
    assert not (out / "config.yaml").exists()


def test_shrink_resume_with_a_truncated_recorded_config_is_refused(tmp_path):
    out, config, recorded = _shrink_folder(tmp_path)
    cut = recorded[: len(recorded) // 2].rsplit("\n", 1)[0] + "\n"  # still valid YAML
    (out / "config.yaml").write_text(cut)
    line = _shrink_resume_refused(out, config)
    assert line.startswith(f"Error: The run's recorded config {out / 'config.yaml'} is "
                           "damaged: it is not the whole config morph wrote (keys missing")
    assert (out / "config.yaml").read_text() == cut  # not rewritten with the defaults


def test_shrink_resume_with_a_changed_profile_is_refused(tmp_path, cnn_profile):
    profile = tmp_path / "p.json"
    profile.write_bytes(cnn_profile.read_bytes())
    out, config, _ = _shrink_folder(tmp_path, f"target:\n  hardware: profile:{profile}\n")
    (out / records.PROFILE_RECORD).write_text(f"{_digest(profile)}  {profile}\n")
    profile.write_text(json.dumps(json.loads(profile.read_text()), indent=1))  # same numbers
    line = _shrink_resume_refused(out, config, profile)
    assert line.startswith(f"Error: The profile {profile} changed since this run started")
    assert f"Received: target.hardware=profile:{profile}" in line
    # With no record of the profile, a changed one cannot be ruled out: refused too.
    (out / records.PROFILE_RECORD).unlink()
    line = _shrink_resume_refused(out, config, profile)
    assert f"{out} holds a run with no record of its profile (profile.sha256)" in line


# --- 12. benchmark cells -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def quality():
    name = "benchmarks_quality"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)


@pytest.mark.parametrize("model", ["/data/models/seed.keras", "zoo:cnn", "../../x/.hidden",
                                   "C:\\models\\a b.keras", "..", "/"])
def test_benchmark_cells_stay_inside_the_work_folder(quality, tmp_path, model):
    name = quality.cell_name(model)
    assert (tmp_path / f"{name}-b0.1-s0").parent == tmp_path
    assert not name.startswith(".") and "/" not in name and "\\" not in name
    assert len(name) <= 49


def test_benchmark_cell_names_tell_models_of_one_stem_apart(quality):
    a, b = quality.cell_name("/a/seed.keras"), quality.cell_name("/b/seed.keras")
    assert a != b and a.startswith("seed-") and b.startswith("seed-")
    assert quality.cell_name("zoo:cnn") == quality.cell_name("zoo:cnn")


def test_benchmark_cells_made_by_other_arguments_or_code_are_redone(quality, tmp_path,
                                                                     monkeypatch):
    args = quality.parse_args(["--quick"])
    args.data_source = None
    key = quality.cell_key(quality.make_config(args, "zoo:cnn", 0.5, 0), args)
    assert key == quality.cell_key(quality.make_config(args, "zoo:cnn", 0.5, 0), args)
    other = [quality.cell_key(quality.make_config(args, "zoo:cnn", 0.25, 0), args),
             quality.cell_key(quality.make_config(args, "zoo:cnn", 0.5, 1), args)]
    args.pretrain = 2
    other.append(quality.cell_key(quality.make_config(args, "zoo:cnn", 0.5, 0), args))
    args.pretrain = 0
    monkeypatch.setattr(quality, "source_hash", lambda: "other code")
    other.append(quality.cell_key(quality.make_config(args, "zoo:cnn", 0.5, 0), args))
    assert len({key, *other}) == 5
    rundir, log = tmp_path / "cell", []
    assert quality.prepare_cell(rundir, key, log.append)  # new
    (rundir / "shrink").mkdir()
    assert not quality.prepare_cell(rundir, key, log.append)  # same key: resumed
    assert (rundir / "shrink").is_dir() and log == []
    assert quality.prepare_cell(rundir, other[0], log.append)  # another key: redone
    assert not (rundir / "shrink").exists() and "redone" in log[0]


# --- 14. temporaries of killed commands are swept ----------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_killed_commands_are_swept_when_the_folder_is_next_written(tmp_path):
    host, dead = files._host(), _dead_pid()
    stale_file = tmp_path / f"{files.TEMP}.{host}.{dead}.m.keras.abc123.keras"
    stale_file.write_bytes(b"half")
    stale_folder = tmp_path / f"{files.TEMP}.{host}.{dead}.sm.xyz"  # a killed export's
    (stale_folder / "saved_model" / "variables").mkdir(parents=True)
    (stale_folder / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    old = tmp_path / f"{files.TEMP}.otherhost.{dead}.r.md.q"  # another host's: by age
    old.write_text("x")
    week = time.time() - 7 * 24 * 3600
    os.utime(old, (week, week))
    kept = {
        f"{files.TEMP}.{host}.{os.getpid()}.live.json.a": "a live writer's",
        f"{files.TEMP}.otherhost.{dead}.recent.json.b": "another host's, recent",
        ".seed.keras.abc.keras": "not named by morph",
        "precious.txt": "the user's",
    }
    for name, text in kept.items():
        (tmp_path / name).write_text(text)
    morph("report", "zoo:cnn", "--markdown", str(tmp_path / "r.md"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "r.md"])
    assert all((tmp_path / name).read_text() == text for name, text in kept.items())


# --- every file read has a bound (issue 25, group 9) -------------------------------------

def test_a_deeply_nested_config_is_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")  # 100 KB, under the 1 MiB cap
    line = user_error("config", "show", str(deep))
    assert line.startswith(f"Error: Invalid YAML in {deep}: it is nested too deeply")


def test_bench_refuses_a_tflite_link_to_a_device(tmp_path):
    link = tmp_path / "zero.tflite"
    link.symlink_to("/dev/zero")
    start = time.monotonic()
    line = user_error("bench", str(link))
    assert "is not a regular file (a device, pipe or folder)" in line
    assert time.monotonic() - start < 30  # refused, not read until memory runs out


def test_bench_refuses_a_batch_whose_input_outgrows_the_memory(seed):
    from morphcli.measure import clock

    before = _digest(seed)
    line = user_error("bench", str(seed), "--batch", "100000000")
    # zoo:cnn at 8x8x1: 100,000,000 x 64 floats x 4 bytes = 23.8 GiB
    assert line.startswith("Error: --batch 100000000 needs 23.8 GiB for the input of ")
    assert f"{clock.MEMORY_SHARE:.0%} of this machine's" in line
    assert _digest(seed) == before
