"""Models as users bring them, besides the zoo (issue 10): Sequential files, 1-D
signals, small nets, unknown layers. Each test builds its model; nothing is downloaded."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from keras import layers
from patterns import alive_from_counts

from morphcli.cli import cli
from morphcli.core.graph import build_graph
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
    assert len(loaded.layers[0]._inbound_nodes) > 1
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
    result = morph("shrink", str(path), "-c", config, "-o", str(tmp_path / "shrink"))
    summary = json.loads((tmp_path / "shrink" / "summary.json").read_text())
    # The shrunk model computes what the trained seed computes with its dead kernels zeroed.
    assert summary["surgery"]["max_abs_delta"] < 1e-5
    assert summary["surgery"]["approximate_groups"] == {}
    assert "surgery exact" in result.stderr
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


# --- 3. 1-D signals from npz ------------------------------------------------------------


def fcn_1d(channels: int = 3) -> keras.Model:
    """The gallery's time-series FCN (examples/timeseries/timeseries_classification_from_scratch)."""
    x = inputs = keras.Input((32, channels))
    for _ in range(2):
        x = layers.ReLU()(layers.BatchNormalization()(layers.Conv1D(16, 3, padding="same")(x)))
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x), name="fcn")


def test_npz_is_shaped_by_the_model_input_rank(tmp_path):
    from morphcli.training.data import load_dataset

    rng = np.random.default_rng(0)
    signals = tmp_path / "signals.npz"
    np.savez(signals, x_train=rng.random((40, 32, 3)), y_train=rng.integers(0, 2, 40))
    mono = tmp_path / "mono.npz"
    np.savez(mono, x_train=rng.random((40, 32)), y_train=rng.integers(0, 2, 40))
    # (N, length, channels) feeds a Conv1D as it is; without a rank it reads as images.
    assert load_dataset(f"npz:{signals}", input_rank=2).input_shape == (32, 3)
    assert load_dataset(f"npz:{signals}").input_shape == (32, 3, 1)
    # (N, length) gets its channel axis for a Conv1D, none for a Dense model.
    assert load_dataset(f"npz:{mono}", input_rank=2).input_shape == (32, 1)
    assert load_dataset(f"npz:{mono}", input_rank=1).input_shape == (32,)
    x, _ = next(iter(load_dataset(f"npz:{mono}", input_rank=2, batch_size=4).train))
    assert tuple(x.shape) == (4, 32, 1)


def test_npz_with_no_reading_for_the_model_is_a_clear_error(tmp_path):
    from morphcli.errors import DataError
    from morphcli.training.data import load_dataset

    path = tmp_path / "images.npz"
    np.savez(path, x_train=np.zeros((10, 8, 8, 1)), y_train=np.zeros(10))
    try:
        load_dataset(f"npz:{path}", input_rank=2)
    except DataError as err:
        assert str(err) == (
            "`x_train` cannot feed the model: it takes examples of 2 axes, so the array must "
            "be (N, length, channels), or have one axis less (a channel axis of 1 is added). "
            "Received: x_train.shape=(10, 8, 8, 1)")
    else:
        raise AssertionError("no error")


def test_conv1d_file_shrinks_on_mono_signals(tmp_path):
    path = tmp_path / "fcn.keras"
    fcn_1d(channels=1).save(path)
    rng = np.random.default_rng(0)
    npz = tmp_path / "mono.npz"
    np.savez(npz, x_train=rng.random((64, 32)).astype("float32"),
             y_train=rng.integers(0, 2, 64))
    config = _config(tmp_path, f"data:\n  source: npz:{npz}\nshrink:\n  epochs: 1\n")
    morph("shrink", str(path), "-c", config, "-o", str(tmp_path / "out"))
    assert (tmp_path / "out" / "shrunk.keras").is_file()


# --- 6. Inception-ResNet's residual trunks ------------------------------------------------


def internal_frozen_share(graph) -> float:
    """Share of channels frozen for another reason than being the model's input/output."""
    internal = [g for g in graph.groups.values()
                if not {"model input", "model output"} & set(g.frozen)]
    return sum(g.width for g in internal if g.frozen) / sum(g.width for g in internal)


def test_concatenated_trunk_ties_to_one_conv_in_parts():
    from patterns import inception_residual, randomize

    seed = randomize(inception_residual(), seed=3)
    graph = build_graph(seed)
    up = graph.node("up1").outputs[0]
    a, b = (graph.node(f"conv_{n}").outputs[0].groups[0] for n in "ab")
    # up1's 9 channels are two groups: the 4 of conv_a and the 5 of conv_b.
    assert up.groups == (a, b) == graph.node("up2").outputs[0].groups
    assert graph.groups[a].width == 4 and graph.groups[b].width == 5
    assert graph.groups[a].prunable and graph.groups[b].prunable
    assert graph.groups[a].sources == ["conv_a", "up1", "up2"]
    assert len({g.key for g in graph.groups.values()}) == len(graph.groups)
    assert internal_frozen_share(graph) == 0
    alive = alive_from_counts(graph, {a: 2, b: 3})
    rebuilt = apply_structure(seed, alive, graph, fold_constants=False)  # both sides zeroed
    assert rebuilt.get_layer("up1").kernel.shape == (1, 1, 3, 5)
    masked = keras.models.clone_model(seed)
    masked.set_weights(seed.get_weights())
    zero_dead_channels(masked, alive, build_graph(masked))
    x = np.random.default_rng(0).random((2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(rebuilt(x).numpy(), masked(x).numpy(), atol=1e-5)


def test_inception_resnet_v2_trunks_are_prunable():
    graph = build_graph(keras.applications.InceptionResNetV2(weights=None,
                                                             input_shape=(75, 75, 3)))
    # Was 24.3%: the 320-, 1088- and 2080-wide trunks froze at every CustomScaleLayer.
    assert internal_frozen_share(graph) == 0
    trunk = graph.node("block35_1_conv").outputs[0]
    assert [graph.groups[g].width for g in trunk.groups] == [96, 64, 96, 64]


# --- 2. layers without a rule are priced by the profiler ----------------------------------


def dot_product_attention_net() -> keras.Model:
    """A Conv1D net with a `keras.layers.Attention` (dot-product attention over a
    list of tensors, a layer the rule table does not know) between two convs."""
    x = inputs = keras.Input((24, 3))
    x = layers.Conv1D(8, 3, padding="same", activation="relu")(x)
    x = layers.Attention()([x, x])
    x = layers.Conv1D(16, 1, activation="relu")(x)
    x = layers.Dense(16, activation="relu")(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x), name="attention_net")


def test_layers_without_rule_are_priced_by_the_profiler(tmp_path):
    from tf_profiler import profiler_flops

    model = dot_product_attention_net()
    path = tmp_path / "attention.keras"
    model.save(path)
    data = json.loads(morph("report", str(path), "--json").stdout)
    # Every layer counted: the whole model's profiler count, the Attention included.
    assert data["totals"]["flops"] == profiler_flops(model)
    attention = [r for r in data["layers"] if r["type"] == "Attention"]
    # Scores 2·24·24·8, softmax 5·24·24, weighted sum 2·24·24·8 (the profiler's count).
    assert len(attention) == 1 and attention[0]["priced_by"] == "profiler"
    assert attention[0]["flops"] == profiler_flops(keras.Sequential(
        [keras.Input((24, 8)), layers.Lambda(lambda t: layers.Attention()([t, t]))]))
    assert data["notes"] == ["priced by the profiler, frozen: no channel rule: attention"]
    # The attention is counted, and freezes the conv before it: the smallest structure
    # (the second conv and the dense at one channel) keeps the first conv and the
    # attention, so a target below their share is impossible.
    error = morph("expand", str(path), "--target", "flops=0.2", "-o",
                  str(tmp_path / "small.keras"), code=2).output
    assert "Impossible target for flops" in error
    info = json.loads(morph("expand", str(path), "--target", "flops=0.9", "-o",
                            str(tmp_path / "e.keras"), "--json").stdout)
    assert -0.01 < info["relative_error"] <= 0  # 2 small groups: coarse steps
    table = morph("report", str(path), "--no-groups").stdout
    assert "priced by the profiler, frozen: no channel rule" in table


# --- 5. dead channels that still carry a constant -----------------------------------------


def scale_free_net(kernel: int, padding: str, use_bias: bool) -> keras.Model:
    """conv (6) -> BatchNormalization(scale=False) -> ReLU -> reader conv (5) -> bn -> relu
    -> gap -> dense, batch-norm statistics and betas randomised (InceptionV3's pattern)."""
    keras.utils.set_random_seed(0)
    x = inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(x)
    x = layers.ReLU()(layers.BatchNormalization(scale=False, name="bn1")(x))
    x = layers.Conv2D(5, kernel, padding=padding, use_bias=use_bias, name="reader")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn2")(x))
    model = keras.Model(inputs, layers.Dense(4)(layers.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            for w in layer.weights:
                low = "variance" in w.name or "gamma" in w.name
                w.assign((rng.uniform(0.5, 1.5, w.shape) if low else rng.normal(0, 0.5, w.shape))
                         .astype("float32"))
    return model


def _delta(model, fold: bool) -> float:
    graph = build_graph(model)
    alive = alive_from_counts(graph, {graph.node("c1").outputs[0].groups[0]: 3})
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    # The masked seed as training leaves it: only c1's dead kernels are zero, bn1 still
    # sends relu(beta - mean / sqrt(var + eps)) on the dead channels.
    zero_dead_channels(masked, alive, build_graph(masked), readers=False)
    x = np.random.default_rng(1).random((2, 8, 8, 3)).astype("float32")
    rebuilt = apply_structure(model, alive, graph, fold_constants=fold)
    return float(np.abs(rebuilt(x).numpy() - masked(x).numpy()).max())


def test_constant_of_dead_channels_is_folded_into_the_reader():
    # A 1x1 reader without bias: folded into bn2's moving mean. A valid 3x3 reader
    # with and without bias. Exact, where dropping the channels was off by 0.09-0.27.
    for kernel, padding, bias in [(1, "same", False), (3, "valid", True), (3, "valid", False)]:
        model = scale_free_net(kernel, padding, bias)
        assert _delta(model, fold=False) > 0.05
        assert _delta(model, fold=True) < 1e-5, (kernel, padding, bias)


def test_padded_reader_is_approximate_and_said_so():
    from morphcli.core.surgery import check

    model = scale_free_net(3, "same", True)
    # The fold is exact where the 3x3 kernel lies inside the input; at the borders the
    # constant meets zero padding (0.087 unfolded, 0.079 folded on this net): approximate,
    # and `check` says so with the number.
    after = _delta(model, fold=True)
    graph = build_graph(model)
    gid = graph.node("c1").outputs[0].groups[0]
    alive = alive_from_counts(graph, {gid: 3})
    result = check(model, alive, apply_structure(model, alive, graph), graph)
    assert result["max_abs_delta"] == pytest.approx(after, rel=1e-5)
    assert list(result["approximate"]) == [gid]
    assert "`reader`, whose zero padding" in result["approximate"][gid]


# --- 8. approximate groups are said, with their size ---------------------------------------


def test_layer_norm_groups_are_reported_approximate():
    from morphcli.core.surgery import check

    keras.utils.set_random_seed(0)
    x = inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="ln")(x)  # ConvNeXt's channel norm
    x = layers.Dense(6, activation="gelu", name="pw")(x)
    model = keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    graph = build_graph(model)
    gid = graph.node("conv").outputs[0].groups[0]
    alive = alive_from_counts(graph, {gid: 5})
    result = check(model, alive, apply_structure(model, alive, graph), graph)
    assert result["approximate"] == {gid: "`ln` normalizes over the channel axis: removing "
                                          "channels changes the survivors"}
    assert result["max_abs_delta"] > 1e-3


# --- 2b. EinsumDense as a dense layer on the last axis ----------------------------------


def einsum_net() -> keras.Model:
    """A token MLP as Keras' transformer examples write it: EinsumDense on (tokens, d)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 6))
    x = layers.EinsumDense("abc,cd->abd", output_shape=(5, 12), bias_axes="d",
                           activation="relu", name="up")(inputs)
    x = layers.EinsumDense("abc,cd->abd", output_shape=(5, 6), name="down")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(3, name="head")(x))


def test_einsum_dense_is_a_prunable_dense():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tf_profiler import profiler_flops

    from morphcli.core.costs import CostModel

    model = einsum_net()
    graph = build_graph(model)
    up = graph.node("up").outputs[0].groups[0]
    assert graph.groups[up].prunable and graph.groups[up].width == 12
    costs = CostModel(graph)
    assert costs.total("flops") == profiler_flops(model)  # the oracle: TF's profiler
    assert costs.total("params") == model.count_params()
    alive = alive_from_counts(graph, {up: 7})
    rebuilt = apply_structure(model, alive, graph)
    assert rebuilt.get_layer("up").kernel.shape == (6, 7)
    assert rebuilt.get_layer("down").kernel.shape == (7, 6)
    assert CostModel(build_graph(rebuilt)).total("flops") == profiler_flops(rebuilt)
    masked = einsum_net()
    zero_dead_channels(masked, alive, build_graph(masked))
    x = np.random.default_rng(0).random((4, 5, 6)).astype("float32")
    np.testing.assert_allclose(rebuilt(x).numpy(), masked(x).numpy(), atol=1e-6)


def test_einsum_dense_of_another_shape_is_a_boundary():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 6))
    x = layers.EinsumDense("abc,cde->abde", output_shape=(5, 2, 4), name="heads")(inputs)
    model = keras.Model(inputs, layers.Flatten()(x))
    node = build_graph(model).node("heads")
    assert node.note == "EinsumDense equation abc,cde->abde is not a dense layer on the last axis"


# --- a softmax over the channels keeps them -------------------------------------------


def test_softmax_over_channels_passes_them_on_frozen():
    # MobileNet's classifier is conv (1000) -> reshape -> softmax: the logits are the
    # model's output classes, one frozen group, not internal channels lost to a boundary.
    x = inputs = keras.Input((4, 4, 3))
    x = layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = layers.Softmax(name="mix")(x)  # in the middle: frozen, and read on by `logits`
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(5, name="logits")(x)
    model = keras.Model(inputs, layers.Activation("softmax", name="predictions")(x))
    graph = build_graph(model)
    conv = graph.node("conv").outputs[0]
    assert graph.node("mix").outputs == [conv] == graph.node("gap").inputs
    assert graph.groups[conv.groups[0]].frozen == [
        "touches `mix` (softmax over the channel axis couples channels)"]
    logits = graph.node("logits").outputs[0]
    assert graph.node("predictions").outputs == [logits]
    assert graph.groups[logits.groups[0]].frozen == [
        "touches `predictions` (softmax over the channel axis couples channels)",
        "model output"]
    assert len(graph.groups) == 3  # input, conv, logits
    for app in ("MobileNet", "MobileNetV3Small"):
        seed = getattr(keras.applications, app)(weights=None, input_shape=(96, 96, 3))
        frozen = {"; ".join(g.frozen) for g in build_graph(seed).groups.values() if g.frozen}
        assert frozen == {"model input", "touches `predictions` (softmax over the channel "
                                         "axis couples channels); model output"}
