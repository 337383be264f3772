"""Models as users bring them, besides the zoo (issue 10): Sequential files, 1-D
signals, small nets, unknown layers. Each test builds its model; nothing is downloaded."""

from __future__ import annotations

import json

import keras
import numpy as np
from click.testing import CliRunner
from keras import layers

from morphcli.cli import cli
from morphcli.core.graph import alive_from_counts, build_graph
from morphcli.core.surgery import apply_structure, zero_dead_channels


def morph(*args, code=0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"COLUMNS": "120"})
    assert result.exit_code == code, result.output
    return result


def mnist_convnet(input_shape=(8, 8, 1)) -> keras.Model:
    """The Keras gallery's MNIST convnet (examples/vision/mnist_convnet.py)."""
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, activation="relu", padding="same"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu", padding="same"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


# --- 1. a Sequential model saved to .keras ---------------------------------------------


def test_sequential_file_layers_are_named_once(tmp_path):
    path = tmp_path / "seq.keras"
    mnist_convnet().save(path)
    loaded = keras.models.load_model(path)
    # Loading builds the Sequential several times: each layer has dangling calls.
    assert len(loaded.get_layer("conv2d")._inbound_nodes) > 1
    names = [n.name for n in build_graph(loaded).nodes]
    assert names == [layer.name for layer in loaded.layers]
    assert not any("#" in name for name in names)


def test_sequential_file_surgery_is_exact(tmp_path):
    path = tmp_path / "seq.keras"
    seed = mnist_convnet()
    seed.set_weights([np.random.default_rng(i).normal(size=w.shape) * 0.3
                      for i, w in enumerate(seed.get_weights())])
    seed.save(path)
    loaded = keras.models.load_model(path)
    graph = build_graph(loaded)
    conv1, conv2 = (g.id for g in graph.prunable_groups())
    alive = alive_from_counts(graph, {conv1: 5, conv2: 17})
    rebuilt = apply_structure(loaded, alive, graph)
    masked = keras.models.load_model(path)
    zero_dead_channels(masked, alive, build_graph(masked))
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(rebuilt(x).numpy(), masked(x).numpy(), atol=1e-6)
    assert [w.shape for w in rebuilt.weights[:2]] == [(3, 3, 1, 5), (5,)]


def test_sequential_file_shrink_expand_retrain(tmp_path):
    path = tmp_path / "seq.keras"
    mnist_convnet().save(path)
    config = _config(tmp_path, "regularizer:\n  kind: group_lasso\nshrink:\n  epochs: 2\n"
                               "retrain:\n  epochs: 1\n")
    morph("shrink", str(path), "-c", config, "-o", str(tmp_path / "shrink"))
    shrunk = tmp_path / "shrink" / "shrunk.keras"
    info = json.loads(morph("expand", str(shrunk), "--target", "flops=0.5", "-o",
                            str(tmp_path / "e.keras"), "--json").stdout)
    assert -0.01 < info["relative_error"] <= 0
    morph("retrain", str(tmp_path / "e.keras"), "-c", config, "-o", str(tmp_path / "retrain"))
    metrics = json.loads((tmp_path / "retrain" / "metrics.json").read_text())
    assert metrics["flops"] <= 0.5 * json.loads(
        morph("report", str(path), "--json").stdout)["totals"]["flops"]


# --- 7. keras.applications with a dynamic input ------------------------------------------


def test_dynamic_application_is_reported_at_224():
    data = json.loads(morph("report", "applications:MobileNetV3Small", "--json").stdout)
    assert data["input_shape"] == [224, 224, 3]
    assert data["notes"] == ["input 224×224 by default: the architecture's input is dynamic"]
    explicit = json.loads(morph("report", "applications:MobileNetV3Small", "--input-shape",
                                "224,224,3", "--json").stdout)
    assert data["totals"] == explicit["totals"] and explicit["notes"] == []
    table = morph("report", "applications:MobileNetV3Small", "--no-groups").stdout
    assert "224×224 by default" in table
