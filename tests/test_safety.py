"""Nothing lost, nothing silently wrong: the CLI under hostile input and faults.

Each test is one case of issue 11 (or a sibling): the exit code, one `Error:`
line, and the bytes of the seed and of unrelated files unchanged.
"""

import errno
import hashlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from test_cli import morph, user_error

from morphcli import files
from morphcli.config import dump_yaml, load_config
from morphcli.core import structure


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def seed(tmp_path):
    from morphcli.models.zoo import load_model

    path = tmp_path / "seed.keras"
    load_model("zoo:cnn").save(path)
    return path


def _config(tmp_path, text: str = "", shrink_epochs: int = 1) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(f"shrink:\n  epochs: {shrink_epochs}\nretrain:\n  epochs: 1\n" + text)
    return str(path)


# --- the seed and the user's files ------------------------------------------------------

@pytest.mark.parametrize("spelling", ["same", "dotdot", "hardlink"])
def test_expand_never_writes_over_its_model(seed, tmp_path, spelling):
    before = _digest(seed)
    out = {"same": seed, "dotdot": tmp_path / "x" / ".." / "seed.keras",
           "hardlink": tmp_path / "link.keras"}[spelling]
    if spelling == "hardlink":
        os.link(seed, out)
    line = user_error("expand", str(seed), "--target", "flops=0.5", "-o", str(out))
    assert "is the input MODEL" in line
    assert _digest(seed) == before


@pytest.mark.parametrize("flag", ["--markdown", "--plot"])
def test_report_never_writes_over_its_model(seed, flag):
    before = _digest(seed)
    assert "is the input MODEL" in user_error("report", str(seed), flag, str(seed))
    assert _digest(seed) == before


def test_overwrite_never_deletes_a_folder_holding_an_input(tmp_path):
    folder = tmp_path / "ow"
    folder.mkdir()
    from morphcli.models.zoo import load_model

    load_model("zoo:cnn").save(folder / "seed.keras")
    (folder / "notes.txt").write_text("mine")
    before = _digest(folder / "seed.keras")
    line = user_error("shrink", str(folder / "seed.keras"), "-c", _config(tmp_path), "-o",
                      str(folder), "--overwrite")
    assert "holds the input MODEL" in line
    assert _digest(folder / "seed.keras") == before
    assert (folder / "notes.txt").read_text() == "mine"


def test_overwrite_removes_only_what_morph_wrote(tmp_path):
    out = tmp_path / "run"
    morph("shrink", "zoo:cnn", "-c", _config(tmp_path), "-o", str(out))
    (out / "notes.txt").write_text("mine")
    assert "seed: 0" in (out / "config.yaml").read_text()
    morph("shrink", "zoo:cnn", "-c", _config(tmp_path, "seed: 1\n"), "-o", str(out),
          "--overwrite")
    assert (out / "notes.txt").read_text() == "mine"
    assert "seed: 1" in (out / "config.yaml").read_text()  # the new run's outputs


def test_overwrite_refuses_a_folder_morph_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert "not a folder morph made" in user_error("shrink", "zoo:cnn", "-o", str(out),
                                                  "--overwrite")
    assert (out / "thesis.tex").read_text() == "years of work"


def test_resume_and_overwrite_together_are_refused(tmp_path):
    assert "contradict" in user_error("run", "-o", str(tmp_path / "r"), "--resume",
                                      "--overwrite")


# --- faults of the machine -----------------------------------------------------------------

@pytest.mark.parametrize("code,text", [(errno.EROFS, "Read-only file system"),
                                       (errno.ENOSPC, "No space left on device")])
def test_write_faults_are_one_line(seed, tmp_path, monkeypatch, code, text):
    def refuse(*args, **kwargs):
        raise OSError(code, text, str(tmp_path / "out.keras"))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    line = user_error("expand", str(seed), "--target", "flops=0.5", "-o",
                      str(tmp_path / "out.keras"))
    assert text in line and "out.keras" in line


def test_a_full_disk_mid_shrink_resumes_to_the_same_outputs(tmp_path, monkeypatch):
    """The disk fills while epoch 2's checkpoint is written: one line, exit 2; with
    space again, --resume ends exactly like an uninterrupted shrink."""
    config = _config(tmp_path, shrink_epochs=3)
    whole = tmp_path / "whole"
    morph("shrink", "zoo:cnn", "-c", config, "-o", str(whole))
    save, calls = keras.Model.save_weights, []

    def full_disk(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            open(path, "wb").write(b"\x89HDF")  # a few bytes, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save(self, path, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    assert "No space left on device" in user_error("shrink", "zoo:cnn", "-c", config, "-o",
                                                   str(out))
    monkeypatch.setattr(keras.Model, "save_weights", save)
    morph("shrink", "zoo:cnn", "-c", config, "-o", str(out), "--resume")
    assert (json.loads((out / "structure.json").read_text())
            == json.loads((whole / "structure.json").read_text()))
    summary, uninterrupted = (json.loads((d / "summary.json").read_text()) for d in (out, whole))
    assert summary["history"] == uninterrupted["history"]
    assert len(summary["history"]["loss"]) == 3


def test_a_damaged_checkpoint_metadata_is_one_line(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    files.write_text(out / ".morph-run", "")
    config = _config(tmp_path)
    files.write_text(out / "config.yaml", dump_yaml(load_config(config)))  # recorded, whole
    (out / "checkpoints" / "training_metadata.json").write_text("{damaged")
    line = user_error("shrink", "zoo:cnn", "-c", config, "-o", str(out), "--resume")
    assert line.startswith(f"Error: The training checkpoint in {out / 'checkpoints'} is "
                           "damaged: training_metadata.json is unreadable")


def test_a_folder_in_use_is_refused_with_the_owners_pid(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    files.write_text(out / ".morph-run", "")
    files.write_text(out / "config.yaml", dump_yaml(load_config(None)))  # a run's, whole
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from morphcli import files; "
         "held = files.lock_folder(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = user_error("run", "-o", str(out), "--resume")
        assert f"already in use by PID {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()


# --- bad input refused, not trained on -----------------------------------------------------

def _npz(tmp_path, **arrays) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case,phrase", [
    ("string labels", "as numbers"),
    ("no examples", "no labels"),
    ("empty file", "empty or cut short"),
    ("inf pixels", "NaN or infinite"),
    ("negative labels", "bad labels in y_train, e.g. [-1"),
])
def test_bad_npz_data_is_refused_before_training(tmp_path, case, phrase):
    rng = np.random.default_rng(0)
    x = rng.random((20, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 20)
    if case == "string labels":
        path = _npz(tmp_path, x_train=x, y_train=np.array(["cat"] * 20))
    elif case == "no examples":
        path = _npz(tmp_path, x_train=x[:0], y_train=y[:0])
    elif case == "empty file":
        path = str(tmp_path / "d.npz")
        open(path, "wb").close()
    elif case == "inf pixels":
        x[3, 2, 2, 0] = np.inf
        path = _npz(tmp_path, x_train=x, y_train=y)
    else:
        y[5] = -1
        path = _npz(tmp_path, x_train=x, y_train=y)
    out = tmp_path / "out"
    assert phrase in user_error("run", "-o", str(out), "--set", f"data.source=npz:{path}")
    assert not (out / "shrink").exists()  # refused before anything trained


def test_huge_builds_and_reads_are_bounded(tmp_path):
    assert "at most 100,000" in user_error("report", "zoo:cnn", "--classes", "1000000000")
    assert "larger than 1024 KiB" in user_error("config", "show", "/dev/zero")


def test_a_device_the_machine_lacks_is_refused(tmp_path):
    line = user_error("run", "-o", str(tmp_path / "r"), "--set", "distribute.strategy=mirrored",
                      "--set", "distribute.devices=[/gpu:7]")
    assert "no device /gpu:7" in line


def test_an_impossible_run_target_is_refused_before_training(tmp_path):
    out = tmp_path / "r"
    assert "Impossible target" in user_error("run", "-o", str(out), "--set", "target.value=10")
    assert not (out / "shrink").exists()


def _structure(tmp_path) -> tuple:
    out = tmp_path / "s"
    morph("shrink", "zoo:cnn", "-c", _config(tmp_path), "-o", str(out))
    return out / "structure.json", json.loads((out / "structure.json").read_text())


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    return _structure(tmp_path_factory.mktemp("learned"))


TAMPERING = {
    "duplicate index": (lambda g: g[1].update(alive_indices=[0, 0, 1], alive=3),
                        "lists a channel twice"),
    "index -1": (lambda g: g[1].update(alive_indices=[-1, 2], alive=2), "outside 0.."),
    "alive disagrees": (lambda g: g[1].update(alive=g[1]["alive"] + 1), "says alive="),
    "alive 0": (lambda g: g[1].update(alive_indices=[], alive=0), "keeps no channel"),
    "frozen emptied": (lambda g: g[-1].update(alive_indices=[0], alive=1), "which is frozen"),
    "group deleted": (lambda g: g.pop(2), "lists no group"),
    "string index": (lambda g: g[1].update(alive_indices=["1", "2"], alive=2),
                     "not a list of integers"),
    "float index": (lambda g: g[1].update(alive_indices=[1.0, 2.5], alive=2),
                    "not a list of integers"),
    "listed twice": (lambda g: g.append(dict(g[1])), "listed twice"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_structure_file_is_refused(learned, tmp_path, case):
    _, data = learned
    data = json.loads(json.dumps(data))
    groups = data["groups"]
    # The input, conv1, ..., the 10 logits (frozen: the model's output).
    assert groups[1]["prunable"] and (groups[-1]["prunable"], groups[-1]["width"]) == (False, 10)
    tamper, phrase = TAMPERING[case]
    tamper(groups)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(data))
    assert phrase in user_error("report", "zoo:cnn", "--structure", str(path))
    assert phrase in user_error("expand", "zoo:cnn", "--structure", str(path), "--target",
                                "flops=0.5", "-o", str(tmp_path / "x.keras"))


def test_the_untampered_structure_file_is_read(learned):
    path, data = learned
    alive = structure.load(path).alive
    assert {k: int(v.sum()) for k, v in alive.items()} == {g["key"]: g["alive"]
                                                             for g in data["groups"]}


def test_json_outputs_are_valid_json_even_with_nan(tmp_path):
    files.write_json(tmp_path / "m.json", {"val_loss": float("nan"), "x": [1.0, float("inf")],
                                           "n": np.float32(2.5)})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"val_loss": None, "x": [1.0, None], "n": 2.5}
    assert "NaN" not in text


# --- resume ends like an uninterrupted run ------------------------------------------------

def test_resume_with_a_changed_config_is_refused_and_says_which_keys(tmp_path):
    out = tmp_path / "r"
    morph("shrink", "zoo:cnn", "-c", _config(tmp_path), "-o", str(out))
    before = _digest(out / "structure.json")
    line = user_error("shrink", "zoo:cnn", "-c", _config(tmp_path, "target:\n  value: 0.25\n"),
                      "-o", str(out), "--resume")
    assert "another config" in line and "target.value: 0.5 -> 0.25" in line
    assert _digest(out / "structure.json") == before


@pytest.mark.slow
def test_a_run_killed_after_structure_json_resumes_to_the_same_outputs(tmp_path, monkeypatch):
    """Killed between structure.json and summary.json (the shrink's marker): the resumed
    run redoes the shrink from its last checkpoint and ends like an uninterrupted one."""
    from morphcli.training import engine

    args = ["--set", "shrink.epochs=2", "--set", "retrain.epochs=1"]
    whole = tmp_path / "whole"
    morph("run", "-o", str(whole), *args)
    write_json = files.write_json

    def killed(path, data):
        if str(path).endswith("summary.json"):
            raise KeyboardInterrupt  # as a SIGKILL right before the marker
        write_json(path, data)

    out = tmp_path / "out"
    monkeypatch.setattr(files, "write_json", killed)
    monkeypatch.setattr(engine, "finish", lambda workdir: None)
    morph("run", "-o", str(out), *args, code=130)
    assert (out / "shrink" / "structure.json").exists()
    monkeypatch.undo()
    result = morph("run", "-o", str(out), "--resume")
    assert "shrink round 1: already done" not in result.stderr
    for name in ("shrink/structure.json", "shrink/summary.json", "report.json"):
        a, b = (json.loads((d / name).read_text()) for d in (out, whole))
        for volatile in ("train_seconds", "epochs_resumed_from"):
            a.pop(volatile, None), b.pop(volatile, None)
        for row in [*a.get("models", {}).values(), *b.get("models", {}).values()]:
            assert row.pop("measured_latency_s") > 0  # timed afresh by every run
        assert a == b, name


# --- smaller ----------------------------------------------------------------------------------

def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        files.write_text(tmp_path / "b.txt", "x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_expands_into_one_folder_keep_their_own_records(tmp_path):
    for name, target in (("half", "flops=0.5"), ("quarter", "flops=0.25")):
        morph("expand", "zoo:cnn", "--target", target, "-o", str(tmp_path / f"{name}.keras"))
    half, quarter = (json.loads((tmp_path / f"{n}.expand.json").read_text())
                     for n in ("half", "quarter"))
    assert half["target"] == pytest.approx(2 * quarter["target"])
