"""The `morph` command line: outputs parsed, numbers checked, user errors exit 2 in one line."""

import json
import zipfile

import keras
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from morphcli.cli import cli


def morph(*args, code=0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"COLUMNS": "120"})
    assert result.exit_code == code, result.output
    return result


def user_error(*args) -> str:
    """Runs a command that must fail with exit 2, ending on one 'Error:' line."""
    result = morph(*args, code=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    return errors[0]


# zoo:cnn at 8x8x1, by hand: conv1 3x3 1->32 on 8x8: 64*9*1*32 = 18,432 MACs;
# conv2 3x3 32->64 on 8x8: 64*9*32*64 = 1,179,648; max-pool to 4x4; conv3 3x3
# 64->128 on 4x4: 16*9*64*128 = 1,179,648; dense 128->10: 1,280. Total 2,379,008.
CNN_MACS = 18_432 + 1_179_648 + 1_179_648 + 1_280


def test_report_json_totals():
    data = json.loads(morph("report", "zoo:cnn", "--json").stdout)
    assert data["totals"]["macs"] == CNN_MACS
    # Kernels 9*32 + 9*32*64 + 9*64*128 + 128*10, BN 4 per channel, dense bias 10.
    assert data["totals"]["params"] == 288 + 18_432 + 73_728 + 1_280 + 4 * (32 + 64 + 128) + 10
    assert data["totals"]["kernel_params"] == 288 + 18_432 + 73_728 + 1_280
    assert {row["name"] for row in data["layers"]} >= {"conv1", "conv2", "conv3", "predictions"}
    prunable = [g for g in data["groups"] if g["prunable"]]
    assert sorted(g["width"] for g in prunable) == [32, 64, 128]


def test_report_flops_match_profiler():
    from tf_profiler import profiler_flops

    from morphcli.models.zoo import load_model

    data = json.loads(morph("report", "zoo:resnet20", "--input-shape", "16,16,3",
                            "--json").stdout)
    model = load_model("zoo:resnet20", input_shape=(16, 16, 3))
    assert data["totals"]["flops"] == profiler_flops(model, freeze=False)


def test_report_latency_on_named_hardware():
    data = json.loads(morph("report", "zoo:cnn", "--hardware", "V100", "--json").stdout)
    t4 = json.loads(morph("report", "zoo:cnn", "--hardware", "T4", "--json").stdout)
    # Every layer of this tiny model is memory-bound, so latency scales with 1/bandwidth.
    assert data["totals"]["latency_s"] / t4["totals"]["latency_s"] == pytest.approx(300 / 900)


def test_report_compare_markdown_plot(tmp_path):
    narrow = tmp_path / "narrow.keras"
    morph("expand", "zoo:cnn", "--target", "flops=0.5", "-o", str(narrow))
    md, png = tmp_path / "r.md", tmp_path / "w.png"
    result = morph("report", "zoo:cnn", "--compare", str(narrow), "--markdown", str(md),
                   "--plot", str(png), "--json")
    data = json.loads(result.stdout)
    assert data["ratio"]["flops"] == pytest.approx(0.5, abs=0.005)
    assert data["ratio"]["flops"] <= 0.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| flops |" in md.read_text()


def test_report_structure_prices_without_rebuilding(tmp_path):
    from morphcli.core import structure
    from morphcli.core.graph import build_graph

    graph = build_graph(_cnn())
    conv2 = next(g for g in graph.groups.values() if "conv2" in g.sources)
    mask = np.zeros(64, bool)
    mask[:16] = True
    path = tmp_path / "structure.json"
    path.write_text(json.dumps(structure.to_dict(graph, {conv2.id: mask})))
    data = json.loads(morph("report", "zoo:cnn", "--structure", str(path), "--json").stdout)
    # conv2 keeps 16 of 64 outputs: conv2 and conv3 MACs fall to a quarter.
    assert data["totals"]["macs"] == 18_432 + 1_179_648 // 4 + 1_179_648 // 4 + 1_280


@pytest.mark.parametrize("groups", ['[{"key": "conv1"}]', '[{"key": "conv1", "width": 2, '
                                    '"alive_indices": [5]}]', '"none"'])
def test_damaged_structure_file(tmp_path, groups):
    path = tmp_path / "structure.json"
    path.write_text(f'{{"format": "morphcli.structure", "version": 1, "groups": {groups}}}')
    assert "damaged" in user_error("report", "zoo:cnn", "--structure", str(path))


def _cnn():
    from morphcli.models.zoo import load_model

    return load_model("zoo:cnn")


def test_expand_json_lands_on_target(tmp_path):
    out = tmp_path / "wide.keras"
    info = json.loads(morph("expand", "zoo:cnn", "--target", "params=2x", "-o", str(out),
                            "--json").stdout)
    assert info["relative_error"] <= 0 and abs(info["relative_error"]) < 0.01
    assert keras.saving.load_model(out).count_params() == info["achieved"]
    assert json.loads((tmp_path / "wide.expand.json").read_text()) == info


def test_config_show_resolves_defaults(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("shrink:\n  epochs: 3\n")
    shown = yaml.safe_load(morph("config", "show", str(config), "--set",
                                 "target.value=25M").stdout)
    assert shown["shrink"]["epochs"] == 3
    assert shown["retrain"]["epochs"] == 20  # a default, filled in
    assert shown["target"]["value"] == "25M"


@pytest.mark.parametrize("command", [[], ["report"], ["shrink"], ["expand"], ["retrain"],
                                     ["run"], ["config", "show"]])
def test_help_has_examples(command):
    text = morph(*command, "--help").stdout
    assert "Usage: " in text
    if command and command != ["config", "show"]:
        assert "Examples:" in text


# -- bad input: one line, exit 2 ---------------------------------------------------


def test_missing_model_file(tmp_path):
    assert "not found" in user_error("report", str(tmp_path / "nope.keras")).lower()


def test_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "text.keras"
    path.write_text("hello")
    user_error("report", str(path))


def test_truncated_keras_file(tmp_path):
    path = tmp_path / "model.keras"
    _cnn().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    user_error("report", str(path))


def test_lambda_model_needs_trust_code(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    assert "--trust-code" in user_error("report", str(path))
    assert zipfile.is_zipfile(path)  # the file was not touched


@pytest.mark.parametrize("args, phrase", [
    (["report", "zoo:resnet2O"], "resnet20"),
    (["report", "applications:ResNet5O"], "ResNet50"),
    (["report", "zoo:cnn", "--input-shape", "8,a"], "input"),
    (["report", "zoo:cnn", "--hardware", "T5"], "T4"),
    (["expand", "zoo:cnn", "--target", "flops=10", "-o", "x.keras"], "Impossible target"),
    (["expand", "zoo:cnn", "--target", "speed=2", "-o", "x.keras"], "speed"),
])
def test_user_errors(args, phrase, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert phrase in user_error(*args)


def test_config_typo_names_key_and_file(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("shrink:\n  epoch: 3\n")
    line = user_error("shrink", "-c", str(config), "-o", str(tmp_path / "out"))
    assert "shrink.epoch" in line and "typo.yaml" in line and "shrink.epochs" in line


def test_impossible_target_before_training(tmp_path):
    line = user_error("shrink", "zoo:cnn", "-o", str(tmp_path / "out"), "-c",
                      _config(tmp_path, "target:\n  value: 1k\n"))
    assert "Impossible target" in line


def test_data_that_does_not_fit_the_model(tmp_path):
    model = tmp_path / "m.keras"
    _cnn().save(model)  # expects 8x8x1
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x_train=rng.random((20, 5, 5, 1)), y_train=rng.integers(0, 10, 20))
    config = _config(tmp_path, f"data:\n  source: npz:{npz}\n")
    assert "does not fit" in user_error("shrink", str(model), "-c", config, "-o",
                                        str(tmp_path / "out"))


def test_nan_loss_is_a_clear_error(tmp_path):
    config = _config(tmp_path, "shrink:\n  epochs: 2\n  learning_rate: 1.0e+30\n"
                               "  optimizer: sgd\n")
    line = user_error("shrink", "zoo:cnn", "-c", config, "-o", str(tmp_path / "out"))
    assert "The loss became nan at epoch 1" in line
    assert "no checkpoint" in line


def test_existing_output_folder_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "--resume" in user_error("shrink", "zoo:cnn", "-o", str(out))
    assert (out / "keep.txt").read_text() == "mine"


def test_model_with_nothing_to_prune(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    path = tmp_path / "linear.keras"
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(path)
    assert "no channel group that can be pruned" in user_error(
        "shrink", str(path), "-o", str(tmp_path / "out"))


def test_expand_a_structure_learned_on_the_seed(tmp_path):
    from morphcli.core import structure
    from morphcli.core.graph import build_graph

    graph = build_graph(_cnn())
    conv3 = next(g for g in graph.groups.values() if "conv3" in g.sources)
    mask = np.zeros(128, bool)
    mask[:32] = True  # keep a quarter of conv3
    path = tmp_path / "structure.json"
    path.write_text(json.dumps(structure.to_dict(graph, {conv3.id: mask})))
    info = json.loads(morph("expand", "zoo:cnn", "--structure", str(path), "--target",
                            "flops=0.5", "-o", str(tmp_path / "e.keras"), "--json").stdout)
    widths = {g["layers"][0]: (g["width_before"], g["width_after"]) for g in info["groups"]}
    w = info["multiplier"]
    assert widths["conv3"][0] == 32  # the structure's width is the base, not the seed's
    for before, after in widths.values():  # within the solver's window (10%, >= 2)
        assert abs(after - w * before) <= max(2, 0.1 * w * before + 1) + 0.5
    assert -0.01 < info["relative_error"] <= 0


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)
