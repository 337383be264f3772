"""The conversion of a Keras model to the formats users deploy: a TensorFlow
SavedModel, and TFLite converted from it."""

from __future__ import annotations

import contextlib
import io
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


def convert(model) -> bytes:
    """A Keras model as TFLite float32, without the converter's chatter on stdout.

    Raises:
        MorphError: The converter failed (in one line).
    """
    import tensorflow as tf

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return tf.lite.TFLiteConverter.from_keras_model(model).convert()
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        raise MorphError(f"The TFLite converter failed on `{model.name}`: "
                         f"{' '.join(str(err).split())[:200]}",
                         hint="measure with the keras runtime.") from None
