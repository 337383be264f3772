"""The conversion of a Keras model to the formats users deploy: a TensorFlow
SavedModel, and TFLite converted from it (`to_tflite`). `morph export` writes
what `to_tflite` returns, and `morph profile`, `morph bench` (of a Keras model
in memory) and `expand --measure` time what it returns: one conversion, so the
bytes timed are the bytes deployed (the same model gives the same bytes)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import tempfile
from pathlib import Path

from morphcli.errors import MorphError, one_line

QUANTIZATIONS = ("none", "float16", "int8")


def write_saved_model(model, path: Path) -> None:
    """`model` as a SavedModel folder at `path` (its serving function `serve`).

    Raises:
        MorphError: The exporter failed (in one line).
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(str(path), format="tf_saved_model", verbose=False)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
        raise MorphError(f"TensorFlow could not export model `{model.name}` as a SavedModel: "
                         f"{one_line(err)}") from None


def saved_model_to_tflite(saved: Path, quantize: str = "none",
                          hint: str = "try --format saved_model.") -> bytes:
    """The SavedModel at `saved` as a TFLite flatbuffer: float32, or float16 or
    dynamic-range int8 weights through the converter's own options.

    Raises:
        MorphError: The converter failed (in one line, with `hint`).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8 weights
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        raise MorphError(f"The TFLite converter failed: {one_line(err)}", hint=hint) from None


MEASURE_HINT = "measure with the keras runtime."


def to_tflite(model, quantize: str = "none", *, work: Path | None = None,
              hint: str = MEASURE_HINT) -> bytes:
    """`model` as the TFLite flatbuffer `morph export` writes: the model exported
    as a SavedModel into `work` (a fresh temporary folder, removed, when None),
    then converted (`saved_model_to_tflite`), without the tools' chatter.

    Raises:
        MorphError: The exporter or the converter failed (in one line, with `hint`).

    Example:

    >>> content = to_tflite(model)  # the bytes of `morph export model -o m.tflite`
    """
    own = work is None
    folder = Path(tempfile.mkdtemp(prefix="morph-convert-")) if own else Path(work)
    try:
        saved = folder / "saved_model"
        write_saved_model(model, saved)
        return saved_model_to_tflite(saved, quantize, hint)
    finally:
        shutil.rmtree(folder if own else folder / "saved_model", ignore_errors=True)


def digest(content: bytes) -> str:
    """The sha256 of a converted model, as `sha256sum` prints it for its file."""
    return hashlib.sha256(content).hexdigest()
