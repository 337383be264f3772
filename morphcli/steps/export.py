"""`morph export` and `morph bench`: the formats users deploy, and their clock.

`export` writes a Keras model as a TensorFlow SavedModel (a folder) or a
TFLite flatbuffer (float32; float16 or dynamic-range int8 weights through the
converter's own options), atomically, then runs the exported model and the
Keras model on one seeded random batch and reports the largest difference of
their outputs: the export is checked against its source every time.

`bench` measures end-to-end latency of a `.keras` file, a SavedModel folder
or a `.tflite` file on this machine: warm-up calls, then timed calls one at a
time, reported as the median with the 10th and 90th percentiles. Keras and
SavedModel calls run inside one `tf.function`, so Python overhead is not what
is timed; TFLite uses its interpreter with the given thread count.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from morphcli.core import machine
from morphcli.errors import ModelError, MorphError, one_line

FORMATS = ("tflite", "saved_model")
QUANTIZATIONS = ("none", "float16", "int8")
CHECK_BATCH = 4  # examples in the random batch an export is checked on
# Largest |exported - keras| accepted for float32 exports (float16 and int8 weights
# change the outputs by design: their difference is reported, not checked).
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: str
    format: str
    quantize: str
    bytes: int
    max_abs_delta: float
    checked_on: int  # examples


@dataclass
class BenchResult:
    path: str
    runtime: str
    batch: int
    threads: int | None
    repeats: int
    median_s: float
    p10_s: float
    p90_s: float
    # For a target benched beside others (`bench_many`): the median of its per-round
    # ratios to the first target, and their 10th and 90th percentiles.
    ratio: float | None = None
    ratio_p10: float | None = None
    ratio_p90: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


REBUILD_HINT = "rebuild it on a fixed shape with --input-shape H,W,C."
BENCH_HINT = ("export it on a fixed shape first (`morph export MODEL --input-shape H,W,C "
              "-o fixed.tflite`) and bench that file.")


def _input_shape(model, hint: str = REBUILD_HINT) -> tuple[int, ...]:
    if len(model.inputs) != 1:
        raise ModelError(f"Model `{model.name}` has {len(model.inputs)} inputs; export and "
                         "bench handle models with one input.")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ModelError(f"Model `{model.name}` has a dynamic input shape {shape}: exports "
                         "and benchmarks need fixed sizes.", hint=hint)
    return shape


def sample(shape: tuple[int, ...], batch: int, seed: int = 0) -> np.ndarray:
    """The seeded random batch exports are checked and benchmarks run on."""
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


@contextlib.contextmanager
def _muted_stderr():
    """File descriptor 2 sent to /dev/null: TFLite's C++ runtime prints "Created
    TensorFlow Lite XNNPACK delegate" there when it first prepares a model."""
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


def _quiet_interpreter(**kwargs):
    import tensorflow as tf

    with warnings.catch_warnings(), _muted_stderr():
        warnings.simplefilter("ignore")  # tf.lite's interpreter warns of its own future move
        interpreter = tf.lite.Interpreter(**kwargs)
        interpreter.allocate_tensors()
        return interpreter


def _outputs(y) -> list[np.ndarray]:
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


def _max_delta(got: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """The largest |got - expected| over every output."""
    if [g.shape for g in got] != [e.shape for e in expected]:
        raise ModelError("The exported model's outputs do not match the Keras model's: "
                         f"shapes {[g.shape for g in got]} for {[e.shape for e in expected]}.")
    return max(float(np.max(np.abs(np.asarray(g, dtype=np.float64) - e)))
               for g, e in zip(got, expected, strict=True))


def _tflite_outputs(content: bytes, x: np.ndarray) -> list[np.ndarray]:
    """Every output of a .tflite model on `x`, through its serving signature, so they
    come in the Keras model's order (`_outputs`)."""
    interpreter = _quiet_interpreter(model_content=content)
    runner = interpreter.get_signature_runner()
    (name,) = interpreter.get_signature_list()[next(iter(interpreter.get_signature_list()))][
        "inputs"]
    with _muted_stderr():
        return _outputs(runner(**{name: x}))


def _tflite_runner(content: bytes, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """A timed call of a .tflite model: its first output (what follows an
    interpreter's invoke; every output is computed)."""
    interpreter = _quiet_interpreter(model_content=content, num_threads=threads)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    shape: list = [None]

    def run(x: np.ndarray) -> np.ndarray:
        if shape[0] != x.shape:
            with _muted_stderr():
                interpreter.resize_tensor_input(inp["index"], x.shape)
                interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run


def _saved_model_runner(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))

    serve = getattr(loaded, "serve", None) or _signature(loaded, path)

    def run(x: np.ndarray) -> list[np.ndarray]:
        return _outputs(serve(tf.constant(x)))

    run.loaded = loaded  # its variables live as long as the runner
    return run


def _signature(loaded, path):
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


def _keras_runner(model) -> Callable[[np.ndarray], list[np.ndarray]]:
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: _outputs(call(tf.constant(x)))


def export(model, path: str | Path, fmt: str = "tflite", quantize: str = "none") -> ExportResult:
    """Writes `model` to `path` as `fmt` and checks it against the Keras model.

    Raises:
        MorphError: Unknown format or quantization, a dynamic input shape, a
            converter failure, or a float32 export that differs from the Keras
            model by more than `TOLERANCE`.
    """
    from morphcli import files

    if fmt not in FORMATS:
        raise MorphError(f"Unknown export format. Expected one of {', '.join(FORMATS)}. "
                         f"Received: format={fmt!r}")
    if quantize not in QUANTIZATIONS:
        raise MorphError(f"Unknown quantization. Expected one of {', '.join(QUANTIZATIONS)}. "
                         f"Received: quantize={quantize!r}")
    if fmt == "saved_model" and quantize != "none":
        raise MorphError("Quantization is a TFLite option. Received: format=saved_model, "
                         f"quantize={quantize}", hint="use --format tflite.")
    path = Path(path)
    x = sample(_input_shape(model), CHECK_BATCH)
    expected = _keras_runner(model)(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.sweep(path.parent)  # what killed exports left (whole SavedModels, say)
    work = Path(tempfile.mkdtemp(prefix=files.temp_prefix(path.name), dir=path.parent))
    try:
        saved = work / "saved_model"
        _write_saved_model(model, saved)
        if fmt == "saved_model":
            got = _saved_model_runner(saved)(x)
            size = sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
            # Marked as morph's: a later --overwrite may replace this folder, no other.
            files.write_text(saved / files.MARKER, "a SavedModel morph exported; --overwrite "
                                                   "replaces it whole\n")
            _move_into_place(saved, path, work)
        else:
            content = _convert(saved, quantize)
            got = _tflite_outputs(content, x)
            files.write_bytes(path, content)
            size = len(content)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    delta = _max_delta(got, expected)
    if quantize == "none" and not delta <= TOLERANCE:
        raise MorphError(f"The exported model differs from the Keras model by {delta:.3g} "
                         f"(more than {TOLERANCE:g}) on a random batch; it was written to "
                         f"{path} for inspection.", hint="report the model's layers.")
    return ExportResult(str(path), fmt, quantize, size, delta, CHECK_BATCH)


def _move_into_place(folder: Path, path: Path, work: Path) -> None:
    """Renames the finished `folder` to `path`: an old `path` is first renamed aside
    (into `work`, removed afterwards), so `path` is always either whole or absent.
    Only a folder morph made (its marker) is replaced; never a device or a pipe."""
    from morphcli import files

    if path.is_dir() and not path.is_symlink():
        if not (path / files.MARKER).is_file():
            raise MorphError(f"{path} is not a folder morph made (no {files.MARKER} in it), "
                             f"so it is not morph's to replace. Received: path={path}")
        os.replace(path, work / "previous")
    elif path.exists() and not path.is_file():
        raise MorphError(f"{path} is not a regular file or a folder morph made: morph never "
                         f"replaces it. Received: path={path}")
    elif path.exists():
        path.unlink()
    os.replace(folder, path)


def _write_saved_model(model, path: Path) -> None:
    try:
        model.export(str(path), format="tf_saved_model", verbose=False)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
        raise MorphError(f"TensorFlow could not export model `{model.name}` as a SavedModel: "
                         f"{one_line(err)}") from None


def _convert(saved: Path, quantize: str) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8 weights
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        raise MorphError("The TFLite converter failed: "
                         f"{one_line(err)}", hint="try --format saved_model.") from None


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


def bench(target, *, batch: int = 1, threads: int | None = None, warmup: int = 10,
          repeats: int = 50, progress: Callable[[int], None] | None = None,
          trust_code: bool = False, runtime: str = "keras") -> BenchResult:
    """Median end-to-end latency of one call on a batch of `batch` random examples.

    Args:
        target: A Keras model, or the path of a .keras file, SavedModel folder or
            .tflite file.
        batch: Examples per call.
        threads: TFLite interpreter threads (None: its default); for Keras and
            SavedModel, TensorFlow's own thread pools.
        warmup: Untimed calls first.
        repeats: Timed calls.
        progress: Called with 1 after every call (warm-up included).
        runtime: For a Keras model in memory: keras, or tflite (converted first, as
            `morph profile` converts).
    """
    return bench_many([target], batch=batch, threads=threads, warmup=warmup, repeats=repeats,
                      progress=progress, trust_code=trust_code, runtime=runtime)[0]


def bench_many(targets: list, *, batch: int = 1, threads: int | None = None,
               warmup: int = 10, repeats: int = 50,
               progress: Callable[[int], None] | None = None, trust_code: bool = False,
               runtime: str = "keras", runners: dict | None = None) -> list[BenchResult]:
    """`bench` for several targets at once, interleaved call by call (A, B, A, B):
    neighbouring calls meet the same load, so the ratio of each target to the
    first is steadier than two separate runs. Each result after the first carries
    the median of its per-round ratios to the first and their 10th-90th
    percentiles. `progress(1)` after every call; `runners` as in `latencies`."""
    if batch < 1 or repeats < 1 or warmup < 0:
        raise MorphError("batch and repeats must be >= 1 and warmup >= 0. Received: "
                         f"batch={batch}, repeats={repeats}, warmup={warmup}")
    made = []
    for t in targets:  # a target listed twice gets two runners, unless `runners` has it
        key = (str(t) if isinstance(t, str | Path) else id(t), batch, threads, runtime)
        if runners is None or key not in runners:
            made.append(_runner(t, batch, threads, trust_code, runtime))
            if runners is not None:  # the target is kept too: its id stays its own
                runners[key] = (t, made[-1])
        else:
            made.append(runners[key][1])
    rounds = time_rounds([r[2] for r in made], [r[3] for r in made], warmup=warmup,
                         repeats=repeats, progress=progress)
    results = []
    for (label, kind, _, _), times in zip(made, rounds, strict=True):
        median, p10, p90 = quantiles(times)
        result = BenchResult(label, kind, batch, threads, repeats, median, p10, p90)
        if results:
            result.ratio, result.ratio_p10, result.ratio_p90 = quantiles(
                [a / b for a, b in zip(times, rounds[0], strict=True)])
        results.append(result)
    return results


def _runner(target, batch: int, threads: int | None, trust_code: bool, runtime: str):
    """(label, runtime, runner, input batch) of a model or model file."""
    if isinstance(target, str | Path):
        runtime = runtime_of(target)
        try:
            runner, shape = _file_runner(target, runtime, threads, trust_code)
        except (ValueError, OSError, RuntimeError) as err:  # not a model of that kind
            raise ModelError(f"Could not load {target} as a {runtime} model: "
                             f"{one_line(err, 160)}") from None
        machine.check_input_batch(str(target), shape, batch)
        return str(target), runtime, runner, sample(shape, batch)
    shape = _input_shape(target)
    if runtime == "tflite":
        return "model", "tflite", _tflite_runner(convert(target), threads), sample(shape, batch)
    return "model", "keras", _keras_runner(target), sample(shape, batch)


def convert(model) -> bytes:
    """A Keras model as TFLite float32, without the converter's chatter on stdout.

    Raises:
        MorphError: The converter failed (in one line).
    """
    import contextlib
    import io

    import tensorflow as tf

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return tf.lite.TFLiteConverter.from_keras_model(model).convert()
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        raise MorphError(f"The TFLite converter failed on `{model.name}`: "
                         f"{' '.join(str(err).split())[:200]}",
                         hint="measure with the keras runtime.") from None


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """Median, 10th and 90th percentiles."""
    q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return statistics.median(values), q[0], q[-1]


def time_rounds(calls: list[Callable], xs: list, *, warmup: int, repeats: int,
                progress: Callable[[int], None] | None = None) -> list[list[float]]:
    """Times `calls[k](xs[k])` interleaved: `warmup` untimed rounds, then `repeats`
    rounds of one timed call of each. Returns each call's times (seconds)."""
    times: list[list[float]] = [[] for _ in calls]
    for r in range(warmup + repeats):
        for call, x, found in zip(calls, xs, times, strict=True):
            start = time.perf_counter()
            call(x)
            if r >= warmup:
                found.append(time.perf_counter() - start)
            if progress:
                progress(1)
    return times


def time_calls(call: Callable, x, *, warmup: int, repeats: int, min_time: float = 0.0,
               max_repeats: int | None = None, progress: Callable[[int], None] | None = None
               ) -> tuple[float, float, float, int]:
    """Times `call(x)`: `warmup` untimed calls, then `repeats` timed ones, or more
    when `min_time` asks for that many seconds of timed calls (at most
    `max_repeats`). `progress(1)` after every call. Returns the median, the 10th
    and 90th percentiles (seconds) and the number of timed calls."""
    start = time.perf_counter()
    for _ in range(warmup):
        call(x)
        if progress:
            progress(1)
    each = (time.perf_counter() - start) / warmup if warmup else 0.0
    repeats = repeats_for(each, repeats, min_time, max_repeats)
    times = time_rounds([call], [x], warmup=0, repeats=repeats, progress=progress)[0]
    return (*quantiles(times), len(times))


def repeats_for(each: float, repeats: int, min_time: float, max_repeats: int | None) -> int:
    """Timed calls (or rounds) of `each` seconds: `repeats`, or more to fill
    `min_time` seconds, at most `max_repeats`."""
    if min_time > 0 and each > 0:
        repeats = max(repeats, int(min_time / each))
    return min(repeats, max_repeats) if max_repeats else repeats


MEASURE_REPEATS = 50  # timed calls per model when a step measures latency


def latencies(models: list, hardware, repeats: int = MEASURE_REPEATS,
              runners: dict | None = None) -> tuple[list[BenchResult], dict]:
    """Each model's end-to-end latency on this machine, timed interleaved call by
    call (`bench_many`: each result after the first carries its per-round ratio to
    the first), with the runtime a measured device (`profile:`) names, else Keras;
    and how it was measured. `runners` (a dict the caller keeps, with the models
    alive) reuses each model's converted runner across calls."""
    runtime = getattr(hardware, "runtime", "keras")
    threads = getattr(hardware, "threads", None) if runtime == "tflite" else None
    batch = getattr(hardware, "batch", 1)
    found = bench_many(models, batch=batch, threads=threads, warmup=10, repeats=repeats,
                       runtime=runtime, runners=runners)
    return found, {"runtime": runtime, "threads": threads, "batch": batch,
                   "repeats": repeats, "interleaved": True}


def _file_runner(path, runtime: str, threads: int | None, trust_code: bool):
    """(runner, input shape) of a model file of `runtime`."""
    if runtime == "tflite":
        content = _read(path)
        details = _quiet_interpreter(model_content=content).get_input_details()
        if len(details) != 1:
            raise ModelError(f"{path} has {len(details)} inputs; bench handles one.")
        return _tflite_runner(content, threads), tuple(int(d) for d in details[0]["shape"][1:])
    if runtime == "saved_model":
        return _saved_model_runner(path), _saved_model_shape(path)
    from morphcli.models.zoo import load_model

    model = load_model(path, trust_code=trust_code)
    return _keras_runner(model), _input_shape(model, BENCH_HINT)


MAX_TFLITE_BYTES = 2**31  # FlatBuffers, and so .tflite files, stop at 2 GiB


def _read(path) -> bytes:
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


def _saved_model_shape(path) -> tuple[int, ...]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    spec = _signature(loaded, path).structured_input_signature[1]
    if len(spec) != 1:
        raise ModelError(f"The SavedModel has {len(spec)} inputs; bench handles one. "
                         f"Received: path={str(path)!r}")
    shape = next(iter(spec.values())).shape[1:]
    if any(d is None for d in shape):
        raise ModelError(f"The SavedModel's input shape {tuple(shape)} is dynamic.")
    return tuple(int(d) for d in shape)
