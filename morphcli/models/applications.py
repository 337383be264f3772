"""`keras.applications` architectures by name, built with random weights (no download)."""

from __future__ import annotations

from typing import Any

from morphcli.errors import ModelError
from morphcli.models.naming import normalise, shorten, unknown


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
                         f"{shorten(' '.join(str(err).split()))}. "
                         f"Received: input_shape={input_shape}, classes={classes}") from None
