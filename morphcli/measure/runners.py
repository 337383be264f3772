"""Calls of a model on a batch, for timing and checking: a Keras model inside one
`tf.function`, a SavedModel's serving function, or a .tflite model in TFLite's
interpreter with its threads; and the model files they are read from."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from morphcli.errors import ModelError

RUNTIMES = ("keras", "saved_model", "tflite")
REBUILD_HINT = "rebuild it on a fixed shape with --input-shape H,W,C."
BENCH_HINT = ("export it on a fixed shape first (`morph export MODEL --input-shape H,W,C "
              "-o fixed.tflite`) and bench that file.")
MAX_TFLITE_BYTES = 2**31  # FlatBuffers, and so .tflite files, stop at 2 GiB


def sample(shape: tuple[int, ...], batch: int, seed: int = 0) -> np.ndarray:
    """The seeded random batch exports are checked and benchmarks run on."""
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


def input_shape(model, hint: str = REBUILD_HINT) -> tuple[int, ...]:
    """The fixed shape of `model`'s one input (without the batch).

    Raises:
        ModelError: Several inputs, or a dynamic size.
    """
    if len(model.inputs) != 1:
        raise ModelError(f"Model `{model.name}` has {len(model.inputs)} inputs; export and "
                         "bench handle models with one input.")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ModelError(f"Model `{model.name}` has a dynamic input shape {shape}: exports "
                         "and benchmarks need fixed sizes.", hint=hint)
    return shape


@contextlib.contextmanager
def muted_stderr():
    """File descriptor 2 sent to /dev/null: TFLite's C++ runtime prints "Created
    TensorFlow Lite XNNPACK delegate" there when it first prepares a model
    (MORPH_TF_LOGS=1 keeps it)."""
    if os.environ.get("MORPH_TF_LOGS"):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_interpreter(**kwargs):
    """TFLite's interpreter, tensors allocated, without its chatter."""
    import tensorflow as tf

    with warnings.catch_warnings(), muted_stderr():
        warnings.simplefilter("ignore")  # tf.lite's interpreter warns of its own future move
        interpreter = tf.lite.Interpreter(**kwargs)
        interpreter.allocate_tensors()
        return interpreter


def outputs(y) -> list[np.ndarray]:
    """A model's outputs as a list of arrays: one output, a list of them, or a dict
    (a signature's `output_0`, `output_1`, ... in their number's order)."""
    if isinstance(y, dict):
        def number(key: str):
            tail = key.rsplit("_", 1)[-1]
            return (int(tail) if tail.isdigit() else -1, key)

        return [np.asarray(y[k]) for k in sorted(y, key=number)]
    if isinstance(y, list | tuple):
        return [np.asarray(v) for v in y]
    return [np.asarray(y)]


def keras_runner(model) -> Callable:
    """A call of a Keras model (one input, or a list of them) inside one
    `tf.function`: Python's overhead is not what is timed."""
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def run(x):
        xs = [tf.constant(v) for v in x] if isinstance(x, list) else tf.constant(x)
        return outputs(call(xs))

    return run


def tflite_runner(content: bytes, threads: int | None) -> Callable:
    """A timed call of a .tflite model: its first output (what follows an
    interpreter's invoke; every output is computed). Given a list of arrays (a
    model with several inputs), each is set on an input of its shape, in order."""
    interpreter = quiet_interpreter(model_content=content, num_threads=threads)
    details = sorted(interpreter.get_input_details(), key=lambda d: d["index"])
    out = interpreter.get_output_details()[0]
    shape: list = [None]

    def run(x):
        if isinstance(x, list):
            free: dict[tuple, list[int]] = {}
            for d in details:
                free.setdefault(tuple(int(v) for v in d["shape"]), []).append(d["index"])
            for v in x:
                interpreter.set_tensor(free[tuple(v.shape)].pop(0), v)
        else:
            if shape[0] != x.shape:
                with muted_stderr():
                    interpreter.resize_tensor_input(details[0]["index"], x.shape)
                    interpreter.allocate_tensors()
                shape[0] = x.shape
            interpreter.set_tensor(details[0]["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run


def tflite_outputs(content: bytes, x: np.ndarray) -> list[np.ndarray]:
    """Every output of a .tflite model on `x`, through its serving signature, so they
    come in the Keras model's order (`outputs`)."""
    interpreter = quiet_interpreter(model_content=content)
    runner = interpreter.get_signature_runner()
    (name,) = interpreter.get_signature_list()[next(iter(interpreter.get_signature_list()))][
        "inputs"]
    with muted_stderr():
        return outputs(runner(**{name: x}))


def saved_model_runner(path: str | Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A call of a SavedModel's serving function."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    serve = getattr(loaded, "serve", None) or signature(loaded, path)

    def run(x: np.ndarray) -> list[np.ndarray]:
        return outputs(serve(tf.constant(x)))

    run.loaded = loaded  # its variables live as long as the runner
    return run


def signature(loaded, path):
    """The SavedModel's serving function: `serving_default`, or its only signature."""
    signatures = dict(loaded.signatures)
    if "serving_default" in signatures:
        return signatures["serving_default"]
    if len(signatures) == 1:
        return next(iter(signatures.values()))
    raise ModelError(f"The SavedModel has no `serving_default` signature to call, and "
                     f"{len(signatures)} others. Received: path={str(path)!r}, "
                     f"signatures={sorted(signatures)}",
                     hint="save it with a serving_default signature, or export the Keras "
                          "model with `morph export --format saved_model`.")


def runtime_of(path: str | Path) -> str:
    """keras, saved_model or tflite, from what `path` is."""
    path = Path(path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelError(f"The folder is not a SavedModel (no saved_model.pb). "
                             f"Received: path={str(path)!r}")
        return "saved_model"
    if path.suffix == ".tflite":
        return "tflite"
    return "keras"


def file_runner(path, runtime: str, threads: int | None, trust_code: bool):
    """(runner, input shape, the file's bytes for tflite else None) of a model file
    of `runtime`."""
    if runtime == "tflite":
        content = read_tflite(path)
        details = quiet_interpreter(model_content=content).get_input_details()
        if len(details) != 1:
            raise ModelError(f"{path} has {len(details)} inputs; bench handles one.")
        return (tflite_runner(content, threads), tuple(int(d) for d in details[0]["shape"][1:]),
                content)
    if runtime == "saved_model":
        return saved_model_runner(path), saved_model_shape(path), None
    from morphcli.models.zoo import load_model

    model = load_model(path, trust_code=trust_code)
    return keras_runner(model), input_shape(model, BENCH_HINT), None


def read_tflite(path) -> bytes:
    """The bytes of a .tflite file: a regular file (a link to /dev/zero or a pipe
    would be read until memory runs out) of at most `MAX_TFLITE_BYTES`."""
    import stat

    try:
        info = Path(path).stat()
        if not stat.S_ISREG(info.st_mode):
            raise ModelError(f"{path} is not a regular file (a device, pipe or folder): not a "
                             f"TFLite model. Received: path={str(path)!r}")
        if info.st_size > MAX_TFLITE_BYTES:
            raise ModelError(f"{path} is larger than 2 GiB, the most a .tflite file holds. "
                             f"Received: size={info.st_size:,} bytes")
        with open(path, "rb") as f:
            return f.read(MAX_TFLITE_BYTES + 1)
    except OSError as err:
        raise ModelError(f"Could not read {path}: {err.strerror}.") from None


def saved_model_shape(path) -> tuple[int, ...]:
    """The fixed input shape of a SavedModel with one input."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    spec = signature(loaded, path).structured_input_signature[1]
    if len(spec) != 1:
        raise ModelError(f"The SavedModel has {len(spec)} inputs; bench handles one. "
                         f"Received: path={str(path)!r}")
    shape = next(iter(spec.values())).shape[1:]
    if any(d is None for d in shape):
        raise ModelError(f"The SavedModel's input shape {tuple(shape)} is dynamic.")
    return tuple(int(d) for d in shape)
