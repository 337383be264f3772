"""Tests for morphcli.models.zoo: input shapes, built-in seeds, applications, model files."""

from __future__ import annotations

import collections
import hashlib
import os
import stat
import zipfile

import keras
import numpy as np
import pytest

from morphcli.errors import ModelError, MorphError
from morphcli.models import zoo


def layer_counts(model) -> collections.Counter:
    return collections.Counter(type(layer).__name__ for layer in model.layers)


def bn(channels: int) -> int:
    """Batch-norm parameters: gamma, beta, moving mean, moving variance."""
    return 4 * channels


def conv(kernel: int, cin: int, cout: int) -> int:
    """Conv2D parameters without bias."""
    return kernel * kernel * cin * cout


def dense(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def tiny_functional(name: str = "tiny") -> keras.Model:
    inputs = keras.Input((4,), name="input")
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(inputs), name=name)


def lambda_model() -> keras.Model:
    inputs = keras.Input((4,), name="input")
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def rewrite_config(src, dst, old: str, new: str) -> None:
    """Copies a .keras archive, replacing `old` by `new` in its config.json."""
    with zipfile.ZipFile(src) as archive:
        items = {name: archive.read(name) for name in archive.namelist()}
    config = items["config.json"].decode()
    assert old in config
    items["config.json"] = config.replace(old, new).encode()
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in items.items():
            archive.writestr(name, data)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small saved functional model and its path."""
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    model = tiny_functional()
    model.save(path)
    return path


# --- parse_input_shape --------------------------------------------------------------


@pytest.mark.parametrize("text, shape", [
    ("32,32,3", (32, 32, 3)),
    ("32x32x3", (32, 32, 3)),
    (" 8 , 8 , 1 ", (8, 8, 1)),
    ("[28, 28, 1]", (28, 28, 1)),
    ("(64X64X3)", (64, 64, 3)),
    ("784", (784,)),
    ([32, 32, 3], (32, 32, 3)),
    ((8, 8, 1), (8, 8, 1)),
    (np.array([8, 8, 1]), (8, 8, 1)),
    (None, None),
])
def test_parse_input_shape(text, shape):
    assert zoo.parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["32,a", "", "32,,3", "32,0,3", "-1,8", "8.5,8", "32;32;3",
                                  [32, 0], [8.0, 8], [True, 8], [], 32])
def test_parse_input_shape_refuses(text):
    with pytest.raises(MorphError) as info:
        zoo.parse_input_shape(text)
    assert str(info.value) == (
        "Invalid --input-shape: expected comma-separated positive integers such as 32,32,3. "
        f"Received: input_shape={text!r}")


# --- built-in seeds: parameter counts by hand ---------------------------------------

CNN_8x8x1 = (conv(3, 1, 32) + bn(32)          # conv1: 288 + 128
             + conv(3, 32, 64) + bn(64)       # conv2: 18,432 + 256
             + conv(3, 64, 128) + bn(128)     # conv3 (after 2x2 pool): 73,728 + 512
             + dense(128, 10))                # predictions after GAP: 1,290
CNN_FLATTEN_8x8x1 = (conv(3, 1, 16) + bn(16)  # conv1: 144 + 64
                     + conv(3, 16, 32) + bn(32)  # conv2: 4,608 + 128
                     + dense(4 * 4 * 32, 64, bias=False) + bn(64)  # fc1 on the pooled 4x4x32
                     + dense(64, 10))
MLP_8x8x1 = (dense(64, 128, bias=False) + bn(128) + dense(128, 64, bias=False) + bn(64)
             + dense(64, 10))
# ResNet-20 at 32x32x3: stem, then per stage its first block (with a 1x1
# projection shortcut + BN where the width changes) and two identity blocks.
RESNET20_32x32x3 = (
    conv(3, 3, 16) + bn(16)
    + 3 * (2 * conv(3, 16, 16) + 2 * bn(16))
    + conv(3, 16, 32) + conv(3, 32, 32) + 2 * bn(32) + conv(1, 16, 32) + bn(32)
    + 2 * (2 * conv(3, 32, 32) + 2 * bn(32))
    + conv(3, 32, 64) + conv(3, 64, 64) + 2 * bn(64) + conv(1, 32, 64) + bn(64)
    + 2 * (2 * conv(3, 64, 64) + 2 * bn(64))
    + dense(64, 10))


def inverted_residual(cin: int, expansion: int, cout: int) -> int:
    """1x1 expand + BN (absent when expansion is 1), 3x3 depthwise + BN, 1x1 project + BN."""
    hidden = cin * expansion
    expand = conv(1, cin, hidden) + bn(hidden) if expansion != 1 else 0
    return expand + 9 * hidden + bn(hidden) + conv(1, hidden, cout) + bn(cout)


MOBILENET_V2_32x32x3 = (conv(3, 3, 16) + bn(16)
                        + inverted_residual(16, 1, 8) + inverted_residual(8, 6, 16)
                        + inverted_residual(16, 6, 16) + inverted_residual(16, 6, 32)
                        + inverted_residual(32, 6, 32)
                        + conv(1, 32, 128) + bn(128) + dense(128, 10))


@pytest.mark.parametrize("name, shape, params", [
    ("cnn", (8, 8, 1), CNN_8x8x1),
    ("cnn", (32, 32, 3), CNN_8x8x1 + conv(3, 2, 32)),  # only conv1's input depth changes
    ("cnn_flatten", (8, 8, 1), CNN_FLATTEN_8x8x1),
    ("mlp", (8, 8, 1), MLP_8x8x1),
    ("resnet20", (32, 32, 3), RESNET20_32x32x3),
    ("resnet20", (8, 8, 1), RESNET20_32x32x3 - conv(3, 2, 16)),
    ("mobilenet_v2", (32, 32, 3), MOBILENET_V2_32x32x3),
])
def test_seed_parameter_counts(name, shape, params):
    model = zoo.load_model(f"zoo:{name}", input_shape=shape)
    assert model.count_params() == params
    assert tuple(model.inputs[0].shape) == (None, *shape)
    assert tuple(model.outputs[0].shape) == (None, 10)


def test_hand_counts_are_the_numbers_we_quote():
    assert (CNN_8x8x1, CNN_FLATTEN_8x8x1, MLP_8x8x1) == (94_634, 38_618, 17_802)
    assert (RESNET20_32x32x3, MOBILENET_V2_32x32x3) == (274_042, 35_610)


@pytest.mark.parametrize("name, shape", [("cnn", (8, 8, 1)), ("cnn_flatten", (8, 8, 1)),
                                         ("mlp", (8, 8, 1)), ("resnet20", (32, 32, 3)),
                                         ("mobilenet_v2", (32, 32, 3))])
def test_seed_defaults(name, shape):
    model = zoo.load_model(f"zoo:{name}")
    assert tuple(model.inputs[0].shape[1:]) == shape
    assert model.outputs[0].shape[-1] == zoo.DEFAULT_CLASSES == 10
    assert model.name == name


def test_builtin_names():
    assert zoo.builtin_names() == ["cnn", "cnn_flatten", "mlp", "mobilenet_v2", "resnet20"]


@pytest.mark.parametrize("name", zoo.builtin_names())
def test_every_seed_follows_the_house_rules(name):
    model = zoo.load_model(f"zoo:{name}", classes=7)
    layers = {layer.name: layer for layer in model.layers}
    assert model.inputs[0].name.startswith("input") and "input" in layers
    head = layers["predictions"]
    assert head is model.layers[-1] and head.units == 7
    assert head.get_config()["activation"] == "softmax"
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.scale and layer.center for layer in bns)
    convs = [layer for layer in model.layers
             if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)]
    assert all(not layer.use_bias for layer in convs)
    # Every weighted layer except the head is followed by its batch norm.
    for layer in model.layers:
        if layer.weights and layer is not head and not isinstance(
                layer, keras.layers.BatchNormalization):
            assert f"{layer.name}_bn" in layers
    assert len(layers) == len(model.layers)  # names are unique


@pytest.mark.parametrize("name", zoo.builtin_names())
def test_layer_names_are_stable_across_builds(name):
    first = [layer.name for layer in zoo.load_model(f"zoo:{name}").layers]
    second = [layer.name for layer in zoo.load_model(f"zoo:{name}").layers]
    assert first == second


def test_cnn_layers():
    model = zoo.load_model("zoo:cnn")
    assert [layer.name for layer in model.layers] == [
        "input", "conv1", "conv1_bn", "conv1_relu", "conv2", "conv2_bn", "conv2_relu", "pool",
        "conv3", "conv3_bn", "conv3_relu", "avg_pool", "predictions"]
    assert [layer.filters for layer in model.layers if hasattr(layer, "filters")] == [32, 64, 128]


def test_cnn_flatten_layers():
    model = zoo.load_model("zoo:cnn_flatten")
    names = [layer.name for layer in model.layers]
    assert names[names.index("pool"):] == ["pool", "flatten", "fc1", "fc1_bn", "fc1_relu",
                                           "predictions"]
    assert model.get_layer("flatten").output.shape == (None, 4 * 4 * 32)


def test_resnet20_structure():
    model = zoo.load_model("zoo:resnet20")
    counts = layer_counts(model)
    # 1 stem conv + 3 stages x 3 blocks x 2 convs + 2 projection shortcuts
    # (stage2_block1 and stage3_block1, where stride and width change) = 21.
    assert counts["Conv2D"] == 1 + 3 * 3 * 2 + 2 == 21
    assert counts["BatchNormalization"] == 21
    assert counts["Add"] == 9
    # ReLU: stem, the first conv of each block, and after each add.
    assert counts["ReLU"] == 1 + 9 + 9
    assert [layer.name for layer in model.layers if layer.name.endswith("_shortcut")] == [
        "stage2_block1_shortcut", "stage3_block1_shortcut"]
    assert model.get_layer("stage2_block1_conv1").strides == (2, 2)
    assert model.get_layer("stage2_block2_conv1").strides == (1, 1)


def test_resnet20_on_digits_halves_resolution_twice():
    model = zoo.load_model("zoo:resnet20", input_shape=(8, 8, 1))
    shapes = [tuple(model.get_layer(f"stage{s}_block3_relu").output.shape) for s in (1, 2, 3)]
    assert shapes == [(None, 8, 8, 16), (None, 4, 4, 32), (None, 2, 2, 64)]


def test_mobilenet_v2_structure():
    model = zoo.load_model("zoo:mobilenet_v2")
    counts = layer_counts(model)
    assert counts["DepthwiseConv2D"] == 5
    # stem + 4 expands (block1 has none) + 5 projects + head = 11.
    assert counts["Conv2D"] == 1 + 4 + 5 + 1
    assert [layer.name for layer in model.layers if layer.name.endswith("_add")] == [
        "block3_add", "block5_add"]
    relu6 = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert len(relu6) == 11 and all(float(layer.max_value) == 6.0 for layer in relu6)
    assert "block1_expand" not in {layer.name for layer in model.layers}
    assert model.get_layer("block2_expand").filters == 8 * 6
    assert model.get_layer("block5_depthwise").output.shape == (None, 8, 8, 192)


def test_mobilenet_v2_on_digits():
    model = zoo.load_model("zoo:mobilenet_v2", input_shape=(8, 8, 1))
    assert model.get_layer("head_conv_relu6").output.shape == (None, 2, 2, 128)


@pytest.mark.parametrize("spec, name", [("zoo:plain_cnn", "cnn"), ("ZOO:CNN", "cnn"),
                                        ("zoo:mobilenetv2_tiny", "mobilenet_v2"),
                                        ("zoo:MobileNetV2", "mobilenet_v2"),
                                        ("zoo: resnet20", "resnet20")])
def test_seed_aliases(spec, name):
    assert zoo.load_model(spec).name == name


def test_seed_classes():
    model = zoo.load_model("zoo:cnn", classes=3)
    assert model.count_params() == CNN_8x8x1 - dense(128, 10) + dense(128, 3)


def test_seed_predicts_probabilities():
    model = zoo.load_model("zoo:cnn")
    x = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    probabilities = model(x, training=False).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), [1.0, 1.0], rtol=1e-5)


@pytest.mark.parametrize("spec, phrase", [
    ("zoo:resnet", "Unknown built-in seed (zoo:NAME). Did you mean: resnet20. "
                   "Received: name='resnet'"),
    ("zoo:foo", "Expected one of: cnn, cnn_flatten, mlp, mobilenet_v2, resnet20."),
    ("zoo:", "`zoo:` needs a model name after the colon."),
])
def test_unknown_seed(spec, phrase):
    with pytest.raises(ModelError) as info:
        zoo.load_model(spec)
    assert phrase in str(info.value)


@pytest.mark.parametrize("shape, phrase", [((8, 8), "zoo:cnn cannot be built for this input"),
                                           ((1, 1, 1), "zoo:cnn cannot be built")])
def test_seed_refuses_unusable_shapes(shape, phrase):
    with pytest.raises(ModelError) as info:
        zoo.load_model("zoo:cnn", input_shape=shape)
    assert phrase in str(info.value) and "its default is 8,8,1" in str(info.value)


@pytest.mark.parametrize("classes", [0, -3, 2.5, True])
def test_classes_must_be_positive(classes):
    with pytest.raises(ModelError, match="`classes` must be a positive integer"):
        zoo.load_model("zoo:cnn", classes=classes)


def test_describe_spec(saved):
    assert zoo.describe_spec("zoo:plain_cnn") == (
        "zoo:cnn (built-in plain CNN with batch norm, random weights)")
    assert zoo.describe_spec("applications:resnet50") == (
        "keras.applications.ResNet50 (random weights)")
    assert zoo.describe_spec(saved) == f"model file {saved}"


# --- keras.applications -------------------------------------------------------------


def test_resnet50_parameter_count():
    model = zoo.load_model("applications:ResNet50", input_shape=(64, 64, 3))
    assert model.count_params() == 25_636_712  # Keras's documented 25.6M, for 1000 classes
    assert tuple(model.inputs[0].shape) == (None, 64, 64, 3)
    assert zoo.has_static_shape(model)


def test_application_name_is_case_insensitive_and_takes_classes():
    model = zoo.load_model("applications:mobilenet_v2", input_shape=(32, 32, 3), classes=5)
    # MobileNetV2 has 3,538,984 parameters with its 1280->1000 head.
    assert model.count_params() == 3_538_984 - dense(1280, 1000) + dense(1280, 5) == 2_264_389
    assert model.outputs[0].shape == (None, 5)


def test_application_names():
    names = zoo.application_names()
    assert len(names) == 40
    assert {"ResNet50", "MobileNetV2", "MobileNetV3Small", "ConvNeXtTiny", "VGG16"} <= set(names)


def test_dynamic_application_input_defaults_to_224():
    model = zoo.load_model("applications:MobileNetV3Small")
    assert tuple(model.inputs[0].shape) == (None, 224, 224, 3)
    assert "224×224 by default" in model.morph_input_note
    # An explicit shape is taken as it is, without a note.
    model = zoo.load_model("applications:MobileNetV3Small", input_shape=(96, 96, 3))
    assert tuple(model.inputs[0].shape) == (None, 96, 96, 3)
    assert not hasattr(model, "morph_input_note")


def test_unknown_application_lists_close_matches():
    with pytest.raises(ModelError) as info:
        zoo.load_model("applications:resnet5")
    assert str(info.value) == ("Unknown keras.applications architecture. Did you mean: "
                               "ResNet50, ResNet152, ResNet50V2. Received: name='resnet5'")


def test_application_refuses_small_input():
    with pytest.raises(ModelError) as info:
        zoo.load_model("applications:ResNet50", input_shape=(8, 8, 3))
    assert "keras.applications.ResNet50 cannot be built: Input size must be at least 32x32" in (
        str(info.value))


# --- model files --------------------------------------------------------------------


def test_keras_round_trip_gives_identical_predictions(tmp_path):
    model = zoo.load_model("zoo:resnet20", input_shape=(8, 8, 1))
    path = tmp_path / "seed.keras"
    model.save(path)
    loaded = zoo.load_model(path)
    x = np.random.default_rng(1).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                  model(x, training=False).numpy())
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert loaded.count_params() == RESNET20_32x32x3 - conv(3, 2, 16)


def test_file_input_shape_and_classes_are_ignored(saved):
    model = zoo.load_model(str(saved), input_shape=(9, 9, 9), classes=2)
    assert tuple(model.inputs[0].shape) == (None, 4) and model.outputs[0].shape == (None, 3)


def test_loading_never_writes_the_file(tmp_path, saved):
    path = tmp_path / "readonly.keras"
    path.write_bytes(saved.read_bytes())
    before = (sha256(path), os.stat(path).st_mtime_ns)
    path.chmod(stat.S_IRUSR)
    try:
        zoo.load_model(path)
        assert (sha256(path), os.stat(path).st_mtime_ns) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["readonly.keras"]
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_legacy_h5_sequential(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="seq")
    path = tmp_path / "seq.h5"
    model.save(path)
    loaded = zoo.load_model(path)
    assert isinstance(loaded, keras.Sequential) and tuple(loaded.inputs[0].shape) == (None, 4)
    assert loaded.count_params() == dense(4, 3)


def test_lambda_needs_trust_code(tmp_path):
    path = tmp_path / "lambda.keras"
    lambda_model().save(path)
    with pytest.raises(ModelError) as info:
        zoo.load_model(path)
    assert "contains Python code (a Lambda layer)" in str(info.value)
    assert "pass --trust-code" in str(info.value)
    model = zoo.load_model(path, trust_code=True)
    np.testing.assert_allclose(model.get_layer("double")(np.ones((1, 4))).numpy(), 2.0)


def test_unknown_custom_class(tmp_path, saved):
    path = tmp_path / "custom.keras"
    rewrite_config(saved, path, '"module": "keras.layers", "class_name": "Dense"',
                   '"module": "mypkg.layers", "class_name": "MyLayer"')
    for trust_code in (False, True):
        with pytest.raises(ModelError) as info:
            zoo.load_model(path, trust_code=trust_code)
        message = str(info.value)
        assert "custom object `MyLayer` that is not registered" in message
        assert "@keras.saving.register_keras_serializable()" in message


def write_text(path, text="hello"):
    path.write_text(text)
    return path


def truncated(path, saved):
    data = saved.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def crc_broken(path, saved):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as archive:
        info = archive.getinfo("config.json")
    data[info.header_offset + 30 + len(info.filename) + 5] ^= 0xFF  # inside the stored JSON
    path.write_bytes(bytes(data))
    return path


def without_config(path, saved):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    return path


def weights_only(path, saved):
    tiny_functional().save_weights(path)
    return path


def saved_model_folder(path, saved):
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"")
    (path / "variables").mkdir()
    return path


@pytest.mark.parametrize("name, make, phrase", [
    ("missing.keras", None, "Model file not found. Received: path="),
    ("text.keras", lambda p, s: write_text(p),
     "The model file is not a .keras zip archive: it is truncated, corrupt or another format"),
    ("half.keras", truncated, "The model file is not a .keras zip archive"),
    ("crc.keras", crc_broken, "The .keras archive is corrupt or incomplete (Bad CRC-32"),
    ("empty.keras", without_config, "The .keras archive is corrupt or incomplete"),
    ("text.h5", lambda p, s: write_text(p), "The model file is not an HDF5 file"),
    ("model.onnx", lambda p, s: write_text(p), "Unsupported model file type: expected a .keras"),
    ("seed.weights.h5", weights_only, "The file holds weights only, not an architecture"),
    ("folder", lambda p, s: p.mkdir(), "Expected a model file, got a folder"),
    ("exported", saved_model_folder, "TensorFlow SavedModel folders cannot be loaded"),
])
def test_bad_files(tmp_path, saved, name, make, phrase):
    path = tmp_path / name
    if make is not None:
        make(path, saved)
    with pytest.raises(ModelError) as info:
        zoo.load_model(path)
    message = str(info.value)
    assert phrase in message and f"Received: path={str(path)!r}" in message
    assert "\n" not in message


def test_saved_model_hint(tmp_path, saved):
    path = saved_model_folder(tmp_path / "exported", saved)
    with pytest.raises(ModelError) as info:
        zoo.load_model(path / "saved_model.pb")
    assert "keras.layers.TFSMLayer can load a SavedModel for inference only" in str(info.value)
    assert "re-save the model as .keras" in str(info.value)


# --- ensure_functional --------------------------------------------------------------


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def test_subclassed_model_is_refused():
    model = Subclassed()
    model(np.zeros((1, 4)))
    with pytest.raises(ModelError) as info:
        zoo.ensure_functional(model)
    assert "Subclassed Keras models cannot be reshaped" in str(info.value)
    assert "rebuild it with the functional API (keras.Input + layer calls)" in str(info.value)
    assert "Received: model class=Subclassed" in str(info.value)


def test_functional_and_built_sequential_pass_unchanged():
    functional = tiny_functional()
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert zoo.ensure_functional(functional) is functional
    assert zoo.ensure_functional(sequential) is sequential


def test_unbuilt_sequential_needs_an_input_shape(tmp_path):
    path = tmp_path / "unbuilt.keras"
    with pytest.warns(UserWarning, match="not yet been built"):
        keras.Sequential([keras.layers.Dense(3)], name="unbuilt").save(path)
    with pytest.raises(ModelError) as info:
        zoo.load_model(path)
    assert "Sequential model `unbuilt` has no input shape yet" in str(info.value)
    assert "pass --input-shape" in str(info.value)
    model = zoo.load_model(path, input_shape=(5,))
    assert tuple(model.inputs[0].shape) == (None, 5) and model.count_params() == dense(5, 3)
