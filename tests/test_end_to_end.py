"""Shrink → expand → retrain on real data (scikit-learn's digits), as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from morphcli.api import analyze
from morphcli.cli import cli
from morphcli.config import load_config
from morphcli.core.surgery import apply_structure, zero_dead_channels
from morphcli.steps.context import make_context
from morphcli.steps.shrink import shrink

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    """One real shrink of zoo:cnn on digits, shared by the checks below."""
    outdir = tmp_path_factory.mktemp("shrink")
    conf = load_config(None, {"model.seed": "zoo:cnn", "shrink.epochs": 12,
                              "regularizer.strength": 2.0, "seed": 0})
    setup = make_context(conf)
    result = shrink(setup, outdir)
    structure = json.loads((outdir / "structure.json").read_text())
    return setup, result, structure, outdir


def test_shrink_cuts_flops_and_keeps_accuracy(shrunk):
    _, result, structure, _ = shrunk
    assert result.shrunk_costs["flops"] < 0.8 * result.seed_costs["flops"]
    assert result.shrunk_val["accuracy"] > 0.5  # chance is 0.1 on ten digits
    assert structure["cost"]["after"]["flops"] == result.shrunk_costs["flops"]


def test_dead_channels_are_those_whose_gamma_fell(shrunk):
    setup, result, structure, _ = shrunk
    threshold = structure["regularizer"]["threshold"]
    checked = 0
    for group in structure["groups"]:
        if not group["prunable"]:
            continue
        norms = [layer for layer in group["layers"] if layer.endswith("_bn")]
        gamma = np.max([np.abs(setup.seed.model.get_layer(n).gamma.numpy()) for n in norms], axis=0)
        alive = np.flatnonzero(gamma > threshold)
        if alive.size == 0:  # every channel fell: the strongest one is kept
            alive = np.array([np.argmax(gamma)])
        assert group["alive_indices"] == alive.tolist(), group["key"]
        checked += 1
    assert checked == 3
    assert any(g["alive"] < g["width"] for g in structure["groups"])  # something died


def test_shrunk_model_has_the_structure_and_the_surviving_weights(shrunk):
    setup, result, structure, outdir = shrunk
    model = keras.saving.load_model(outdir / "shrunk.keras")
    for layer in structure["layers"]:
        assert model.get_layer(layer["name"]).output.shape[-1] == layer["channels_out"]
    x, _ = next(iter(setup.dataset.val))
    # The shipped model is the seed's surviving weights with the dead channels'
    # constants folded in (zoo:cnn's padded 3x3 convs make that fold approximate at
    # the borders, and the shrink's exactness report says so) ...
    folded = apply_structure(setup.seed.model, result.masks)
    np.testing.assert_allclose(model(x, training=False), folded(x, training=False), atol=1e-6)
    if result.surgery.get("approximate"):
        assert result.surgery["max_abs_delta"] > 1e-5
    # ... and without the fold, surgery is exact against the seed with both sides of
    # every dead channel zeroed.
    plain = apply_structure(setup.seed.model, result.masks, fold_constants=False)
    masked = keras.models.clone_model(setup.seed.model)
    masked.set_weights(setup.seed.model.get_weights())
    zero_dead_channels(masked, result.masks)
    np.testing.assert_allclose(plain(x, training=False), masked(x, training=False), atol=1e-5)


def test_report_of_the_structure_prices_the_shrunk_model(shrunk):
    setup, result, _, outdir = shrunk
    from_structure = analyze(setup.seed.model, structure=str(outdir / "structure.json")).totals
    rebuilt = analyze(keras.saving.load_model(outdir / "shrunk.keras")).totals
    assert from_structure == rebuilt
    assert rebuilt["flops"] == result.shrunk_costs["flops"]


TINY_RUN = """\
name: tiny
model: {seed: zoo:cnn}
target: {metric: flops, value: 0.5}
shrink: {epochs: %d, learning_rate: 0.01}
retrain: {epochs: 3}
run: {baseline: %s}
"""


def test_morph_run_end_to_end(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_RUN % (6, "true"))
    rundir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(config), "-o", str(rundir), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for path in ["config.yaml", "report.md", "report.json", "widths.png",
                 "shrink/structure.json", "shrink/shrunk.keras", "shrink/summary.json",
                 "expand/expanded.keras", "expand/expand.json", "retrain/final.keras",
                 "retrain/metrics.json", "baseline/final.keras", "baseline/metrics.json"]:
        assert (rundir / path).is_file(), path
    report = json.loads((rundir / "report.json").read_text())
    target = report["target"]["value"]
    assert target == pytest.approx(0.5 * report["models"]["seed"]["flops"])
    for name in ("morphnet", "uniform baseline"):
        flops = report["models"][name]["flops"]
        assert flops <= target and flops > 0.99 * target, name
        assert report["models"][name]["val_accuracy"] > 0.5, name
    printed = json.loads(result.stdout)
    assert printed == {k: report[k] for k in ("target", "models", "measured", "comparison")}
    # Every model is also timed on this machine (Keras: no profile named a runtime, so
    # in this process), beside the roofline estimate the table already had.
    assert report["measured"] == {"runtime": "keras", "threads": None, "batch": 1,
                                  "repeats": 50, "interleaved": True, "process": "this",
                                  "estimate": "roofline, cpu"}
    assert all(0 < m["measured_latency_s"] < 1 for m in report["models"].values())
    assert "measured: median of 50 calls on this machine, keras" in (
        rundir / "report.md").read_text()
    # The better of the two trained models is handed over as best.keras.
    comparison = report["comparison"]
    accs = {n: report["models"][n]["val_accuracy"] for n in ("morphnet", "uniform baseline")}
    n = comparison["val_size"]
    assert n == 359  # 20% of 1,797 digits
    images = round(accs["morphnet"] * n) - round(accs["uniform baseline"] * n)
    assert comparison["images"] == images
    # The choice is made on the selection split (10% of the 1,438 training digits,
    # class by class: 145), never on the validation accuracy reported.
    picks = {k: report["models"][k]["select_accuracy"] for k in accs}
    assert (comparison["chosen_on"], comparison["chosen_size"]) == ("selection", 145)
    chosen = round(picks["morphnet"] * 145) - round(picks["uniform baseline"] * 145)
    assert comparison["chosen_images"] == chosen
    if chosen:
        assert comparison["best"] == max(picks, key=picks.get)
    assert comparison["close"] == (abs(chosen) < 3)
    winner = rundir / ("retrain" if comparison["best"] == "morphnet" else "baseline")
    assert (rundir / "best.keras").read_bytes() == (winner / "final.keras").read_bytes()
    assert f"best: {comparison['best']}" in (rundir / "report.md").read_text()
    final = keras.saving.load_model(rundir / "retrain" / "final.keras")
    assert analyze(final).totals["flops"] == report["models"]["morphnet"]["flops"]
    assert (rundir / "widths.png").read_bytes()[:4] == b"\x89PNG"


def _morph(*args, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "morphcli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def _wait_for_epoch(metadata, epoch: int, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(metadata.read_text())["epoch"] >= epoch:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epoch}: {proc.stderr.read().decode()}")


def test_sigkill_then_resume_gives_the_same_outputs(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_RUN % (10, "false"))
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    proc = _morph("run", str(config), "-o", str(killed))
    _wait_for_epoch(killed / "shrink" / "checkpoints" / "training_metadata.json", 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "shrink" / "structure.json").exists()
    # Nothing half-written: no temporary file left behind outside the checkpoints.
    leftovers = [p for p in killed.rglob(".*") if "checkpoints" not in p.parts
                 and p.name not in (".morph-run", ".morph-lock")]  # the folder's marker, lock
    assert leftovers == []

    resumed = _morph("run", str(config), "-o", str(killed), "--resume")
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    reference = _morph("run", str(config), "-o", str(clean))
    assert reference.wait() == 0, reference.stderr.read().decode()

    summary = json.loads((killed / "shrink" / "summary.json").read_text())
    assert summary["epochs_resumed_from"] >= 3
    for path in ("shrink/structure.json", "expand/expand.json"):
        assert json.loads((killed / path).read_text()) == json.loads((clean / path).read_text())
    metrics = [json.loads((d / "retrain" / "metrics.json").read_text()) for d in (killed, clean)]
    assert metrics[0]["val_accuracy"] == metrics[1]["val_accuracy"]
    assert metrics[0]["history"] == metrics[1]["history"]
