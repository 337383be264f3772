"""`keras.applications` architectures by name, built with random weights (no download)."""

from __future__ import annotations

from typing import Any

from morphcli.errors import ModelError
from morphcli.models.naming import normalise, shorten, unknown

# The size keras.applications models are trained at when their input is dynamic
# (MobileNetV3 builds on (None, None, 3)); FLOPs and latency need a static one.
DEFAULT_SIZE = (224, 224)
# Set on a model built on DEFAULT_SIZE because its input was dynamic; the report
# header says so (morphcli.reporting.build_report).
INPUT_NOTE = "morph_input_note"


def application_names() -> list[str]:
    """Class names of all `keras.applications` architectures, sorted."""
    import keras

    return sorted(name for name in dir(keras.applications)
                  if name[:1].isupper() and callable(getattr(keras.applications, name)))


def _find_application(name: str) -> str:
    choices = {normalise(n): n for n in application_names()}
    if normalise(name) not in choices:
        raise unknown("keras.applications architecture", name, choices)
    return choices[normalise(name)]


def build_application(name: str, *, input_shape: tuple[int, ...] | None = None,
                      classes: int | None = None):
    """Builds a `keras.applications` model with random weights and its top.

    Args:
        name: Class name, case-insensitive (``ResNet50``, ``mobilenet_v2``).
        input_shape: Input shape without batch (default: the architecture's).
        classes: Output classes (default: 1000).

    Returns:
        The functional model (`weights=None`, `include_top=True`). An
        architecture with a dynamic input (MobileNetV3: ``(None, None, 3)``)
        is built on `DEFAULT_SIZE` when no `input_shape` is given, and the
        model's `INPUT_NOTE` attribute says so.

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
        model = getattr(keras.applications, cls)(**options)
        dims = tuple(model.inputs[0].shape[1:])
        if input_shape is None and None in dims:
            model = getattr(keras.applications, cls)(
                **options, input_shape=(*DEFAULT_SIZE, dims[-1] or 3))
            setattr(model, INPUT_NOTE, f"{DEFAULT_SIZE[0]}×{DEFAULT_SIZE[1]} by default: "
                                       "the architecture's input is dynamic")
        return model
    except ValueError as err:
        raise ModelError(f"keras.applications.{cls} cannot be built: "
                         f"{shorten(' '.join(str(err).split()))}. "
                         f"Received: input_shape={input_shape}, classes={classes}") from None
