"""Model files: `.keras` (and legacy `.h5`) archives opened read-only with Keras's
safe mode on, and turned into a functional (or built Sequential) model."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from morphcli.core import keras_adapter
from morphcli.errors import ModelError
from morphcli.models.naming import shorten


def _is_hdf5(path: Path) -> bool:
    import h5py

    return h5py.is_hdf5(path)


# Suffix -> (what the file must be, check). A check that fails means the file
# is something else, or was cut short (a .keras zip loses its index at the end).
_FORMATS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    ".keras": ("a .keras zip archive", zipfile.is_zipfile),
    ".h5": ("an HDF5 file", _is_hdf5),
    ".hdf5": ("an HDF5 file", _is_hdf5),
}
_SAVEDMODEL_HINT = (
    "re-save the model as .keras from the code that built it (model.save('seed.keras')); "
    "keras.layers.TFSMLayer can load a SavedModel for inference only, so it cannot be reshaped.")


def load_file(path: str | os.PathLike, *, trust_code: bool = False):
    """Loads a Keras model file read-only, translating Keras's errors.

    Args:
        path: A `.keras` file, or a legacy `.h5`/`.hdf5` file.
        trust_code: Turn off Keras's safe mode (allows Lambda layers).

    Returns:
        The model as Keras loads it (uncompiled; not yet checked by
        `ensure_functional`).

    Raises:
        ModelError: The file is missing, a directory or SavedModel, has an
            unsupported suffix, is not the format its suffix claims, or Keras
            cannot load it.
    """
    path = Path(path)
    _check_file(path)
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=not trust_code, compile=False)
    except Exception as err:  # Keras raises many types for bad files; all are user errors.
        raise _load_error(path, err) from None


def _check_file(path: Path) -> None:
    """Refuses paths that cannot be a model file, before Keras sees them."""
    if not path.exists():
        raise ModelError(f"Model file not found. Received: path={str(path)!r}",
                         hint="pass a .keras file, zoo:NAME or applications:NAME.")
    if path.is_dir() or path.name == "saved_model.pb":
        folder = path if path.is_dir() else path.parent
        if (folder / "saved_model.pb").exists():
            raise ModelError("TensorFlow SavedModel folders cannot be loaded as a functional "
                             f"Keras model in Keras 3. Received: path={str(path)!r}",
                             hint=_SAVEDMODEL_HINT)
        raise ModelError(f"Expected a model file, got a folder. Received: path={str(path)!r}")
    if path.suffix not in _FORMATS:
        raise ModelError("Unsupported model file type: expected a .keras file (or a legacy "
                         f".h5 file). Received: path={str(path)!r}",
                         hint="save the model with model.save('seed.keras').")
    what, is_format = _FORMATS[path.suffix]
    if not is_format(path):
        raise ModelError(f"The model file is not {what}: it is truncated, corrupt or another "
                         f"format. Received: path={str(path)!r}")


def _load_error(path: Path, err: Exception) -> ModelError:
    """A one-line ModelError for an exception raised by `keras.saving.load_model`."""
    text = " ".join(str(err).split())
    shown = str(path)
    if "safe_mode" in text:
        return ModelError(
            "The model file contains Python code (a Lambda layer), which is not loaded by "
            f"default because it could run anything. Received: path={shown!r}",
            hint="if you trust the file, pass --trust-code (trust_code: true under model: "
                 "in a config).")
    missing = re.search(r"Could not (?:locate (?:class|function)|deserialize) '([^']+)'", text)
    if missing:
        return ModelError(
            f"The model file uses a custom object `{missing.group(1)}` that is not "
            f"registered in this Python process. Received: path={shown!r}",
            hint="rebuild the model from standard Keras layers, or call morphcli from Python "
                 "after importing the module that defines it with "
                 "@keras.saving.register_keras_serializable() (plus trust_code=True if "
                 "it runs custom code).")
    if path.name.endswith(".weights.h5") or "No model config found" in text:
        return ModelError("The file holds weights only, not an architecture. "
                          f"Received: path={shown!r}",
                          hint="save the whole model with model.save('seed.keras').")
    if isinstance(err, (zipfile.BadZipFile, KeyError)) or "zip" in text.lower():
        return ModelError("The .keras archive is corrupt or incomplete "
                          f"({shorten(text)}). Received: path={shown!r}")
    return ModelError(f"Keras could not load the model file: {shorten(text)}. "
                      f"Received: path={shown!r}")


def ensure_functional(model, *, input_shape: tuple[int, ...] | None = None):
    """Checks that `model` is a functional or Sequential model with known inputs.

    Args:
        model: A `keras.Model`.
        input_shape: Shape (without batch) to build an unbuilt Sequential on.

    Returns:
        `model` itself, built if it was an unbuilt Sequential.

    Raises:
        ModelError: A subclassed model (its graph is Python code morphcli
            cannot rewire), or a Sequential model without a known input shape.
    """
    import keras
    if isinstance(model, keras.Sequential):
        return _built_sequential(model, input_shape)
    if not keras_adapter.is_functional(model):
        raise ModelError(
            "Subclassed Keras models cannot be reshaped: their graph is Python code, not a "
            f"graph of layers. Received: model class={type(model).__name__}",
            hint="rebuild it with the functional API (keras.Input + layer calls) "
                 "and save it as .keras.")
    return model


def _built_sequential(model, input_shape: tuple[int, ...] | None):
    try:
        if model.inputs:
            return model
    except (AttributeError, ValueError):  # unbuilt: "has no defined inputs yet"
        pass
    if input_shape is None:
        raise ModelError(f"Sequential model `{model.name}` has no input shape yet. "
                         "Received: input_shape=None",
                         hint="pass --input-shape H,W,C, or add keras.Input(shape) as its "
                              "first layer.")
    try:
        model.build((None, *input_shape))
    except ValueError as err:
        raise ModelError(f"Sequential model `{model.name}` cannot be built on this input: "
                         f"{shorten(' '.join(str(err).split()))}. "
                         f"Received: input_shape={input_shape}") from None
    return model
