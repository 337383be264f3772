"""Seed models: model files, built-in small networks and `keras.applications`.

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

Built-in seeds name every layer after its role, so names are stable across
builds: a conv unit ``stage2_block1_conv1`` is followed by
``stage2_block1_conv1_bn`` and ``stage2_block1_conv1_relu``; residual adds
end in ``_add``; the classifier is ``predictions`` (Dense with softmax).
"""

from __future__ import annotations

import dataclasses
import difflib
import operator
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from morphcli.errors import ModelError, MorphError

PREFIXES = ("zoo", "applications")
DEFAULT_CLASSES = 10
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
                                or classes < 1):
        raise ModelError(f"`classes` must be a positive integer. Received: classes={classes!r}")
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


def _unknown(kind: str, name: str, choices: dict[str, str]) -> ModelError:
    """The error for a name not in `choices` (normalised key -> display name)."""
    close = difflib.get_close_matches(_normalise(name), list(choices), n=3, cutoff=0.6)
    listed = list(dict.fromkeys(choices[key] for key in close)) or sorted(set(choices.values()))
    label = "Did you mean" if close else "Expected one of"
    return ModelError(f"Unknown {kind}. {label}: {', '.join(listed)}. Received: name={name!r}")


def _normalise(name: str) -> str:
    """Lower case without separators: ``MobileNet_V2`` and ``mobilenetv2`` match."""
    return re.sub(r"[\s_\-]", "", name.lower())


# --------------------------------------------------------------------------- files

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
                          f"({_shorten(text)}). Received: path={shown!r}")
    return ModelError(f"Keras could not load the model file: {_shorten(text)}. "
                      f"Received: path={shown!r}")


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


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
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        return _built_sequential(model, input_shape)
    if not isinstance(model, Functional):
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
                         f"{_shorten(' '.join(str(err).split()))}. "
                         f"Received: input_shape={input_shape}") from None
    return model


# --------------------------------------------------------------------------- applications


def application_names() -> list[str]:
    """Class names of all `keras.applications` architectures, sorted."""
    import keras

    return sorted(name for name in dir(keras.applications)
                  if name[:1].isupper() and callable(getattr(keras.applications, name)))


def _find_application(name: str) -> str:
    choices = {_normalise(n): n for n in application_names()}
    if _normalise(name) not in choices:
        raise _unknown("keras.applications architecture", name, choices)
    return choices[_normalise(name)]


def build_application(name: str, *, input_shape: tuple[int, ...] | None = None,
                      classes: int | None = None):
    """Builds a `keras.applications` model with random weights and its top.

    Args:
        name: Class name, case-insensitive (``ResNet50``, ``mobilenet_v2``).
        input_shape: Input shape without batch (default: the architecture's).
        classes: Output classes (default: 1000).

    Returns:
        The functional model (`weights=None`, `include_top=True`). Its input
        may be dynamic (MobileNetV3: ``(None, None, 3)``); see
        `has_static_shape`.

    Raises:
        ModelError: Unknown name (close matches listed) or a shape/classes
            the architecture refuses.
    """
    import keras

    cls = _find_application(name)
    options: dict[str, Any] = {"weights": None, "include_top": True}
    if input_shape is not None:
        options["input_shape"] = tuple(input_shape)
    if classes is not None:
        options["classes"] = classes
    try:
        return getattr(keras.applications, cls)(**options)
    except ValueError as err:
        raise ModelError(f"keras.applications.{cls} cannot be built: "
                         f"{_shorten(' '.join(str(err).split()))}. "
                         f"Received: input_shape={input_shape}, classes={classes}") from None


# --------------------------------------------------------------------------- built-in seeds


@dataclasses.dataclass(frozen=True)
class Seed:
    """A built-in seed network.

    Attributes:
        name: The name after ``zoo:``.
        build: ``build(inputs, classes) -> outputs`` on a Keras tensor.
        input_shape: Default input shape (without batch).
        description: A few words for help texts and reports.
        aliases: Other names accepted after ``zoo:``.
    """

    name: str
    build: Callable[[Any, int], Any]
    input_shape: tuple[int, ...]
    description: str
    aliases: tuple[str, ...] = ()


_SEEDS: dict[str, Seed] = {}


def _seed(name: str, input_shape: tuple[int, ...], description: str,
          aliases: tuple[str, ...] = ()):
    """Registers the decorated builder as ``zoo:NAME``."""

    def register(build):
        _SEEDS[name] = Seed(name, build, input_shape, description, aliases)
        return build

    return register


def builtin_names() -> list[str]:
    """Names of the built-in seeds (without aliases), sorted."""
    return sorted(_SEEDS)


def _find_seed(name: str) -> Seed:
    choices = {_normalise(alias): seed.name for seed in _SEEDS.values()
               for alias in (seed.name, *seed.aliases)}
    if _normalise(name) not in choices:
        raise _unknown("built-in seed (zoo:NAME)", name, choices)
    return _SEEDS[choices[_normalise(name)]]


def build_seed(name: str, *, input_shape: tuple[int, ...] | None = None,
               classes: int | None = None):
    """Builds a built-in seed with fresh random weights.

    Args:
        name: A name from `builtin_names()` or an alias (``plain_cnn``).
        input_shape: Input shape without batch (default: the seed's).
        classes: Output classes (default: 10).

    Returns:
        A functional `keras.Model` named after the seed, with an input layer
        named ``input`` and a softmax Dense layer named ``predictions``.

    Raises:
        ModelError: Unknown name, or an input the network cannot take
            (wrong rank, too small for its pooling).
    """
    import keras

    seed = _find_seed(name)
    shape = tuple(input_shape) if input_shape is not None else seed.input_shape
    classes = DEFAULT_CLASSES if classes is None else classes
    try:
        inputs = keras.Input(shape=shape, name="input")
        return keras.Model(inputs, seed.build(inputs, classes), name=seed.name)
    except ValueError as err:
        raise ModelError(f"zoo:{seed.name} cannot be built for this input: "
                         f"{_shorten(' '.join(str(err).split()))}. "
                         f"Received: input_shape={shape}",
                         hint=f"its default is {','.join(map(str, seed.input_shape))}.") from None


def _conv(filters: int, kernel: int, name: str, strides: int = 1):
    """Conv2D without bias (batch norm follows), 'same' padding, He init."""
    from keras import layers

    return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)


def _unit(x, layer, activation: str | None = "relu"):
    """`layer` -> BatchNormalization -> ReLU/ReLU6, named ``{layer}_bn``, ``{layer}_relu``."""
    from keras import layers

    # Momentum 0.9, not Keras's 0.99: the moving statistics must settle within the
    # few hundred steps of a small-data shrink, or validation accuracy sits at chance.
    x = layers.BatchNormalization(scale=True, momentum=0.9, name=f"{layer.name}_bn")(layer(x))
    if activation is None:
        return x
    max_value = {"relu": None, "relu6": 6.0}[activation]
    return layers.ReLU(max_value=max_value, name=f"{layer.name}_{activation}")(x)


def _gap_head(x, classes: int):
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return layers.Dense(classes, activation="softmax", name="predictions")(x)


def _flatten_head(x, hidden: Sequence[int], classes: int):
    """Flatten, then Dense(no bias)-BN-ReLU units ``fc1``, ``fc2``..., then predictions."""
    from keras import layers

    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden, start=1):
        x = _unit(x, layers.Dense(units, use_bias=False, name=f"fc{i}"))
    return layers.Dense(classes, activation="softmax", name="predictions")(x)


@_seed("cnn", (8, 8, 1), "plain CNN with batch norm", aliases=("plain_cnn",))
def _cnn(x, classes: int):
    """conv1(32)-conv2(64)-maxpool-conv3(128), each conv-BN-ReLU, then GAP and Dense."""
    from keras import layers

    x = _unit(x, _conv(32, 3, "conv1"))
    x = _unit(x, _conv(64, 3, "conv2"))
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = _unit(x, _conv(128, 3, "conv3"))
    return _gap_head(x, classes)


@_seed("cnn_flatten", (8, 8, 1), "CNN with a Flatten-Dense head")
def _cnn_flatten(x, classes: int):
    """conv1(16)-conv2(32)-maxpool, Flatten, fc1(64)-BN-ReLU, Dense.

    The pool keeps the Flatten-Dense kernel small at 32x32 inputs.
    """
    from keras import layers

    x = _unit(x, _conv(16, 3, "conv1"))
    x = _unit(x, _conv(32, 3, "conv2"))
    x = layers.MaxPooling2D(2, name="pool")(x)
    return _flatten_head(x, (64,), classes)


@_seed("mlp", (8, 8, 1), "multilayer perceptron with batch norm")
def _mlp(x, classes: int):
    """Flatten, fc1(128) and fc2(64) as Dense-BN-ReLU, Dense."""
    return _flatten_head(x, (128, 64), classes)


@_seed("resnet20", (32, 32, 3), "CIFAR ResNet-20 (He et al. 2016)")
def _resnet20(x, classes: int):
    """conv1(16), 3 stages x 3 basic blocks of 16/32/64 filters, GAP, Dense.

    Stages 2 and 3 halve the resolution in their first block (32->16->8, or
    8->4->2 on digits), where a 1x1 conv + BN projects the shortcut.
    """
    x = _unit(x, _conv(16, 3, "conv1"))
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, strides, f"stage{stage}_block{block}")
    return _gap_head(x, classes)


def _basic_block(x, filters: int, strides: int, name: str):
    from keras import layers

    y = _unit(x, _conv(filters, 3, f"{name}_conv1", strides))
    y = _unit(y, _conv(filters, 3, f"{name}_conv2"), activation=None)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _unit(x, _conv(filters, 1, f"{name}_shortcut", strides), activation=None)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_relu")(y)


# (expansion, filters, strides) per inverted residual block. Two stride-2
# blocks: 32x32 -> 8x8, 8x8 -> 2x2. Blocks 3 and 5 keep width and resolution,
# so they add their input back.
_MOBILENET_BLOCKS = ((1, 8, 1), (6, 16, 2), (6, 16, 1), (6, 32, 2), (6, 32, 1))


@_seed("mobilenet_v2", (32, 32, 3), "small MobileNetV2 (inverted residuals)",
       aliases=("mobilenetv2_tiny",))
def _mobilenet_v2(x, classes: int):
    """stem_conv(16), five inverted residual blocks, head_conv(128), GAP, Dense."""
    x = _unit(x, _conv(16, 3, "stem_conv"), "relu6")
    for i, (expansion, filters, strides) in enumerate(_MOBILENET_BLOCKS, start=1):
        x = _inverted_residual(x, expansion, filters, strides, f"block{i}")
    x = _unit(x, _conv(128, 1, "head_conv"), "relu6")
    return _gap_head(x, classes)


def _inverted_residual(x, expansion: int, filters: int, strides: int, name: str):
    """[1x1 expand-BN-ReLU6], 3x3 depthwise-BN-ReLU6, 1x1 project-BN, [+ input]."""
    from keras import layers

    y = x
    if expansion != 1:  # as in MobileNetV2, a block without expansion has no expand conv
        y = _unit(y, _conv(expansion * x.shape[-1], 1, f"{name}_expand"), "relu6")
    depthwise = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                       depthwise_initializer="he_normal",
                                       name=f"{name}_depthwise")
    y = _unit(y, depthwise, "relu6")
    y = _unit(y, _conv(filters, 1, f"{name}_project"), activation=None)
    if strides == 1 and x.shape[-1] == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y
