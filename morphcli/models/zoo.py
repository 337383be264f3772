"""Seed models by spec: model files, built-in small networks and `keras.applications`.

`load_model(spec)` is the one way in. A spec is one of:

- a path to a `.keras` file (or a legacy `.h5` file Keras can read);
- ``zoo:NAME``, a built-in seed built fresh with random weights: `cnn`,
  `cnn_flatten`, `mlp`, `resnet20`, `mobilenet_v2` (see `builtin_names()`);
- ``applications:NAME``, any `keras.applications` architecture by its class
  name (case-insensitive, e.g. ``applications:resnet50``) with random weights.

Every model comes back as a functional (or built Sequential) `keras.Model`.
Files are opened read-only; subclassed models, TensorFlow SavedModels and
files with Python code (Lambda layers) without `trust_code` are refused with a
`ModelError` that says what to do instead.

Where each kind comes from: `files` (model files), `seeds` (built-in),
`applications`.
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections.abc import Sequence
from typing import Any

from morphcli.errors import ModelError, MorphError
from morphcli.models.applications import _find_application, application_names, build_application
from morphcli.models.files import ensure_functional, load_file
from morphcli.models.seeds import DEFAULT_CLASSES, _find_seed, build_seed, builtin_names

PREFIXES = ("zoo", "applications")
# Bounds on what a built-in seed is built with: beyond them the build exhausts memory.
MAX_CLASSES = 100_000
MAX_INPUT_VALUES = 1 << 26  # 64 Mi values per example (e.g. 4096 x 4096 x 4)
__all__ = ["DEFAULT_CLASSES", "PREFIXES", "application_names", "build_application", "build_seed",
           "builtin_names", "describe_spec", "ensure_functional", "has_static_shape", "load_file",
           "load_model", "load_static", "parse_input_shape", "with_input_shape"]
_SHAPE_EXAMPLE = "32,32,3"


# --------------------------------------------------------------------------- input shape


def parse_input_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """Parses an input shape without the batch axis.

    Args:
        text: ``"32,32,3"``, ``"32x32x3"`` (brackets and spaces allowed), a
            sequence (or 1-D numpy array) of integers such as ``[32, 32, 3]``,
            or `None`.

    Returns:
        The shape as a tuple of positive ints, or `None` when `text` is `None`.

    Raises:
        MorphError: `text` is not a list of positive integers.

    Example:

    >>> parse_input_shape("32x32x3")
    (32, 32, 3)
    """
    if text is None:
        return None
    values = text.tolist() if hasattr(text, "tolist") else text  # numpy arrays
    if isinstance(values, str):
        parts = re.split(r"[,xX]", values.strip().strip("()[]"))
        dims = [_positive_int(part.strip()) for part in parts]
    elif isinstance(values, Sequence):
        dims = [_positive_int(value) for value in values]
    else:
        dims = [None]
    if not dims or None in dims:
        raise MorphError(
            "Invalid --input-shape: expected comma-separated positive integers such as "
            f"{_SHAPE_EXAMPLE}. Received: input_shape={text!r}")
    if math.prod(dims) > MAX_INPUT_VALUES:
        raise MorphError(
            f"Input shape {tuple(dims)} has {math.prod(dims):,} values per example, more than "
            f"the {MAX_INPUT_VALUES:,} this tool builds. Received: input_shape={text!r}")
    return tuple(dims)


def _positive_int(value: Any) -> int | None:
    """`value` as a positive int, or None (bools and floats are not dimensions)."""
    if isinstance(value, str):
        return int(value) if value.isdigit() and int(value) > 0 else None
    if isinstance(value, bool):
        return None
    try:
        number = operator.index(value)
    except TypeError:
        return None
    return number if number > 0 else None


def has_static_shape(model) -> bool:
    """True when every input dimension except the batch axis is known.

    FLOPs and latency need static shapes; `keras.applications.MobileNetV3*`
    and other models built without `input_shape` have ``(None, None, 3)``.
    """
    return all(dim is not None for tensor in model.inputs for dim in tensor.shape[1:])


# --------------------------------------------------------------------------- entry points


def load_model(spec: str | os.PathLike, *, input_shape: tuple[int, ...] | None = None,
               classes: int | None = None, trust_code: bool = False):
    """Loads or builds a seed model from a spec.

    For ``zoo:`` and ``applications:`` seeds, `input_shape` and `classes`
    shape the new network (defaults: the seed's own input shape, 10 classes
    for zoo seeds, 1000 for applications). For model files both are ignored,
    with one exception: an unbuilt Sequential model is built on `input_shape`.
    A file model with a dynamic spatial input is returned as it is; re-creating
    it on a static `input_shape` is the caller's job (`morphcli.api.load_model`).

    Args:
        spec: A `.keras`/`.h5` path, ``zoo:NAME`` or ``applications:NAME``.
        input_shape: Input shape without the batch axis, e.g. ``(32, 32, 3)``.
        classes: Number of output classes of built seeds.
        trust_code: Allow Lambda layers (Python code stored in the file).
            Only for files from a source you trust.

    Returns:
        A functional or built Sequential `keras.Model` (uncompiled).

    Raises:
        ModelError: Missing, corrupt or unsupported file, unknown seed name,
            subclassed model, code in the file without `trust_code`, or a
            seed that cannot be built for `input_shape`/`classes`.
    """
    prefix, name = _split_spec(spec)
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int)
                                or not 1 <= classes <= MAX_CLASSES):
        raise ModelError(f"`classes` must be a positive integer, at most {MAX_CLASSES:,} (a "
                         "wider classifier head would not fit in memory). "
                         f"Received: classes={classes!r}")
    if prefix == "zoo":
        return build_seed(name, input_shape=input_shape, classes=classes)
    if prefix == "applications":
        return build_application(name, input_shape=input_shape, classes=classes)
    model = load_file(name, trust_code=trust_code)
    return ensure_functional(model, input_shape=input_shape)


def describe_spec(spec: str | os.PathLike) -> str:
    """A short human label for a spec, e.g. for report titles.

    Example:

    >>> describe_spec("zoo:plain_cnn")
    'zoo:cnn (built-in plain CNN with batch norm, random weights)'
    """
    prefix, name = _split_spec(spec)
    if prefix == "zoo":
        seed = _find_seed(name)
        return f"zoo:{seed.name} (built-in {seed.description}, random weights)"
    if prefix == "applications":
        return f"keras.applications.{_find_application(name)} (random weights)"
    return f"model file {name}"


def _split_spec(spec: str | os.PathLike) -> tuple[str | None, str]:
    """(prefix, rest) for ``zoo:``/``applications:`` specs, (None, path) for files."""
    text = os.fspath(spec)
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in PREFIXES:
        if not rest.strip():
            raise ModelError(f"`{prefix}:` needs a model name after the colon. "
                             f"Received: spec={text!r}", hint=_names_hint(prefix.lower()))
        return prefix.lower(), rest.strip()
    return None, text


def _names_hint(prefix: str) -> str:
    names = builtin_names() if prefix == "zoo" else application_names()
    return f"{prefix}: names are {', '.join(names)}."


def load_static(spec: str, *, input_shape: str | Sequence[int] | None = None,
                classes: int | None = None, trust_code: bool = False):
    """Loads a seed model (file, `zoo:NAME`, `applications:NAME`) with static shapes.

    A model whose input has dynamic dimensions is re-created on a static input
    of `input_shape`, keeping its weights.

    Raises:
        MorphError: Missing or corrupt file, unknown name, bad shape, subclassed
            model, unsafe code without `trust_code`.
    """
    shape = parse_input_shape(input_shape)
    model = load_model(spec, input_shape=shape, classes=classes, trust_code=trust_code)
    dims = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in dims):
        if shape is None:
            raise ModelError(
                f"Model `{model.name}` has a dynamic input shape {dims}: FLOPs and latency "
                f"need a static one. Received: input_shape={dims}",
                hint="pass --input-shape H,W,C (or model.input_shape in the config).",
            )
        model = with_input_shape(model, shape)
    return model


def with_input_shape(model, shape: Sequence[int]):
    """The same model (same weights) re-created on a static input of `shape`."""
    import keras

    if len(model.inputs) != 1:
        raise ModelError("--input-shape works for single-input models only. "
                         f"Received: inputs={len(model.inputs)}")
    try:
        clone = keras.models.clone_model(model, input_tensors=keras.Input(shape=tuple(shape)))
    except ValueError as err:
        raise ModelError(f"Model `{model.name}` does not accept input shape {tuple(shape)}: "
                         f"{' '.join(str(err).split())}") from None
    clone.set_weights(model.get_weights())
    return clone
