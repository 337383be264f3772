"""`morph export` and `morph bench`: exported models predict what the Keras model
predicts (the oracle), files are written whole, bad input is one line and exit 2."""

import hashlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from morphcli.cli import cli
from morphcli.errors import MorphError
from morphcli.measure import bench as mb
from morphcli.measure import clock
from morphcli.measure import runners as run
from morphcli.models.zoo import load_static
from morphcli.steps import export as ex


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = load_static("zoo:cnn", input_shape=(8, 8, 1), classes=10)
    path = tmp_path_factory.mktemp("seed") / "cnn.keras"
    model.save(path)
    return model, path


def _x(n=5):
    return np.random.default_rng(7).normal(size=(n, 8, 8, 1)).astype("float32")


def test_tflite_export_predicts_what_keras_predicts(cnn, tmp_path):
    model, _ = cnn
    result = ex.export(model, tmp_path / "m.tflite")
    assert result.max_abs_delta <= ex.TOLERANCE
    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "m.tflite"))
    inp = interpreter.get_input_details()[0]
    x = _x()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model(x, training=False).numpy(), atol=1e-5)
    assert result.bytes == (tmp_path / "m.tflite").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]  # no temporary left


def test_saved_model_export_predicts_what_keras_predicts(cnn, tmp_path):
    model, _ = cnn
    result = ex.export(model, tmp_path / "sm", "saved_model")
    assert result.max_abs_delta <= ex.TOLERANCE
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    x = _x()
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(),
                               model(x, training=False).numpy(), atol=1e-6)
    ex.export(model, tmp_path / "sm", "saved_model")  # replacing a folder leaves it whole
    assert (tmp_path / "sm" / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]


def test_quantized_exports_are_smaller_and_close(cnn, tmp_path):
    model, _ = cnn
    full = ex.export(model, tmp_path / "f32.tflite")
    half = ex.export(model, tmp_path / "f16.tflite", quantize="float16")
    int8 = ex.export(model, tmp_path / "i8.tflite", quantize="int8")
    # float16 halves the weights, int8 quarters them (the graph itself stays).
    assert half.bytes < 0.6 * full.bytes and int8.bytes < 0.35 * full.bytes
    assert half.max_abs_delta < 1e-3 and int8.max_abs_delta < 0.05  # softmax outputs


def test_bench_times_every_runtime_on_the_same_input(cnn, tmp_path):
    model, path = cnn
    ex.export(model, tmp_path / "m.tflite")
    calls = []
    for target in (path, tmp_path / "m.tflite"):
        result = mb.bench(str(target), repeats=7, warmup=2, progress=calls.append)
        assert result.repeats == 7 and 0 < result.p10_s <= result.median_s <= result.p90_s
    assert len(calls) == 2 * (7 + 2)
    assert run.runtime_of(path) == "keras" and run.runtime_of(tmp_path / "m.tflite") == "tflite"


def test_bench_many_interleaves_call_by_call_and_takes_ratios_per_round(cnn, tmp_path,
                                                                        monkeypatch):
    order = []
    rounds = clock.time_rounds([lambda x: order.append(("a", x)), lambda x: order.append(("b", x))],
                            [1, 2], warmup=1, repeats=3)
    assert order == [("a", 1), ("b", 2)] * 4 and [len(t) for t in rounds] == [3, 3]
    # The ratio is the median of the per-round ratios (2, 1.5, 1, 1.1: 1.3), not the
    # ratio of the medians (3.5 / 3).
    fake = [[1.0, 2.0, 4.0, 10.0], [2.0, 3.0, 4.0, 11.0]]
    monkeypatch.setattr(mb, "time_rounds", lambda *a, **k: fake)
    model, path = cnn
    first, second = mb.bench_many([str(path), str(path)], repeats=4, warmup=0)
    assert first.ratio is None and (first.median_s, second.median_s) == (3.0, 3.5)
    assert second.ratio == pytest.approx(1.3) and second.ratio_p10 <= 1.3 <= second.ratio_p90


def test_bench_many_converts_each_model_once_across_calls_that_share_runners(cnn,
                                                                             monkeypatch):
    model, path = cnn
    made = []
    real = mb._runner

    def counting(target, *args):
        made.append(target)
        return real(target, *args)

    monkeypatch.setattr(mb, "_runner", counting)
    # Alone, a target listed twice gets two runners (the benchmark's noise floor).
    mb.bench_many([model, model], repeats=1, warmup=0, runtime="tflite")
    assert made == [model, model]
    made.clear()
    runners: dict = {}
    for _ in range(3):
        mb.bench_many([model, str(path)], repeats=1, warmup=0, runtime="tflite",
                      runners=runners)
    assert made == [model, str(path)]
    # Each runner is kept with its target, so the target's id cannot be reused.
    assert {v[0] is model or v[0] == str(path) for v in runners.values()} == {True}
    mb.bench_many([model], repeats=1, warmup=0, runtime="keras", runners=runners)
    assert made == [model, str(path), model]  # another runtime: another runner


def test_cli_bench_of_two_models_prints_both_and_the_ratio(cnn, tmp_path):
    model, path = cnn
    ex.export(model, tmp_path / "m.tflite")
    result = CliRunner().invoke(cli, ["bench", str(tmp_path / "m.tflite"), str(path),
                                      "--repeats", "6", "--warmup", "1", "--json"])
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)
    assert (first["runtime"], second["runtime"]) == ("tflite", "keras")
    assert first["ratio"] is None
    assert second["ratio_p10"] <= second["ratio"] <= second["ratio_p90"]
    # The bytes timed, as `sha256sum` prints them: a .tflite file's; none for Keras.
    assert first["sha256"] == hashlib.sha256((tmp_path / "m.tflite").read_bytes()).hexdigest()
    assert second["sha256"] is None
    text = CliRunner().invoke(cli, ["bench", str(tmp_path / "m.tflite"), str(path),
                                    "--repeats", "3", "--warmup", "0"])
    assert text.exit_code == 0 and "x the first" in text.output


def test_dynamic_input_is_refused(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3)(inputs)))
    with pytest.raises(MorphError, match="dynamic input shape"):
        ex.export(model, tmp_path / "m.tflite")


def test_cli_export_json_then_bench_json(cnn, tmp_path):
    _, path = cnn
    out = tmp_path / "m.tflite"
    result = CliRunner().invoke(cli, ["export", str(path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["format"] == "tflite" and record["bytes"] == out.stat().st_size
    result = CliRunner().invoke(cli, ["bench", str(out), "--repeats", "5", "--warmup", "1",
                                      "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    (timing,) = json.loads(result.stdout)  # a list, one object per file
    assert timing["runtime"] == "tflite" and timing["threads"] == 1 and timing["repeats"] == 5


@pytest.mark.parametrize("args, message", [
    (["--format", "saved_model", "--quantize", "int8"], "Quantization is a TFLite option"),
    (["--format", "onnx"], "Invalid value for '--format'"),
])
def test_cli_export_bad_input_is_one_line_and_exit_2(cnn, tmp_path, args, message):
    _, path = cnn
    result = CliRunner().invoke(cli, ["export", str(path), "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_cli_export_never_overwrites_its_input_or_an_existing_file(cnn, tmp_path):
    _, path = cnn
    before = path.read_bytes()
    result = CliRunner().invoke(cli, ["export", str(path), "-o", str(path), "--overwrite"])
    assert result.exit_code == 2 and path.read_bytes() == before
    existing = tmp_path / "x.tflite"
    existing.write_bytes(b"keep")
    result = CliRunner().invoke(cli, ["export", str(path), "-o", str(existing)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert existing.read_bytes() == b"keep"


def test_cli_bench_of_a_file_that_is_no_model_is_one_line_and_exit_2(tmp_path):
    fake = tmp_path / "fake.tflite"
    fake.write_text("not a model")
    folder = tmp_path / "fake_saved_model"
    folder.mkdir()
    (folder / "saved_model.pb").write_text("x")
    for target, runtime in ((fake, "tflite"), (folder, "saved_model")):
        result = CliRunner().invoke(cli, ["bench", str(target)])
        assert result.exit_code == 2, result.output
        assert f"Could not load {target} as a {runtime} model" in result.output
        assert "Traceback" not in result.output


def test_a_model_with_two_inputs_is_refused(tmp_path):
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(MorphError, match="2 inputs"):
        ex.export(model, tmp_path / "m.tflite")


def test_repeats_fill_the_minimum_time_up_to_the_cap():
    assert clock.repeats_for(0.001, 15, 0.05, 2000) == 50  # 50 calls of 1 ms fill 50 ms
    assert clock.repeats_for(1e-6, 15, 0.05, 2000) == 2000  # capped
    assert clock.repeats_for(0.1, 15, 0.05, None) == 15  # one call is longer than 50 ms
    assert clock.repeats_for(0.001, 15, 0.0, None) == 15
