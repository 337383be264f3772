"""`morph export`: the formats users deploy, written atomically and checked.

`export` writes a Keras model as a TensorFlow SavedModel (a folder) or a
TFLite flatbuffer (float32; float16 or dynamic-range int8 weights through the
converter's own options), converted the one way `morphcli.measure.convert`
converts (what `morph profile` and `expand --measure` time), then runs the
exported model and the Keras model on one seeded random batch and reports the
largest difference of their outputs: the export is checked against its source
every time. `morph bench` is `morphcli.measure.bench`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morphcli.errors import ModelError, MorphError
from morphcli.measure import runners as run
from morphcli.measure.convert import QUANTIZATIONS, to_tflite, write_saved_model

FORMATS = ("tflite", "saved_model")
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


def _max_delta(got: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """The largest |got - expected| over every output."""
    if [g.shape for g in got] != [e.shape for e in expected]:
        raise ModelError("The exported model's outputs do not match the Keras model's: "
                         f"shapes {[g.shape for g in got]} for {[e.shape for e in expected]}.")
    return max(float(np.max(np.abs(np.asarray(g, dtype=np.float64) - e)))
               for g, e in zip(got, expected, strict=True))


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
    x = run.sample(run.input_shape(model), CHECK_BATCH)
    expected = run.keras_runner(model)(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.sweep(path.parent)  # what killed exports left (whole SavedModels, say)
    work = Path(tempfile.mkdtemp(prefix=files.temp_prefix(path.name), dir=path.parent))
    try:
        saved = work / "saved_model"
        if fmt == "saved_model":
            write_saved_model(model, saved)
            got = run.saved_model_runner(saved)(x)
            size = sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
            # Marked as morph's: a later --overwrite may replace this folder, no other.
            files.write_text(saved / files.MARKER, "a SavedModel morph exported; --overwrite "
                                                   "replaces it whole\n")
            _move_into_place(saved, path, work)
        else:
            content = to_tflite(model, quantize, work=work, hint="try --format saved_model.")
            got = run.tflite_outputs(content, x)
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


