"""Arrays checked and shaped before they become a pipeline (`training.data`):
examples with the axes the model takes, labels as class indices, no NaN or
infinite inputs, matching lengths. Every refusal is one `DataError` line."""

from __future__ import annotations

import numpy as np

from morphcli.errors import DataError


def as_examples(x: np.ndarray, key: str, rank: int | None = None) -> np.ndarray:
    """Shape examples for a model taking inputs of `rank` axes: arrays with one
    axis less get a channel axis of 1 (`(N, H, W)` images, `(N, length)`
    signals); without a rank, only `(N, H, W)` arrays do. Keeps uint8 as is."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"`{key}` must hold numbers. Received: {key} of dtype {x.dtype}")
    check_finite(x, key)
    if x.ndim < 2:
        raise DataError(f"`{key}` must hold one example per row. Received: {key}.shape={x.shape}")
    if rank is None:
        rank = 3 if x.ndim == 3 else x.ndim - 1
    if x.ndim - 1 == rank - 1:
        x = x[..., np.newaxis]
    elif x.ndim - 1 != rank:
        readings = f"(N, {', '.join(_AXES.get(rank, ['d'] * rank))})"
        raise DataError(
            f"`{key}` cannot feed the model: it takes examples of {rank} axes, so the array "
            f"must be {readings}, or have one axis less (a channel axis of 1 is added). "
            f"Received: {key}.shape={x.shape}")
    return x if x.dtype == np.uint8 else x.astype(np.float32)


_AXES = {1: ["features"], 2: ["length", "channels"], 3: ["height", "width", "channels"],
         4: ["depth", "height", "width", "channels"]}


def as_labels(y: np.ndarray, key: str) -> np.ndarray:
    """Class indices from integer labels, `(N, 1)` columns or one-hot rows."""
    expected = f"`{key}` must hold class indices 0..K-1 or one-hot rows"
    if y.dtype.kind not in "biuf":
        raise DataError(f"{expected}, as numbers. Received: {key} of dtype {y.dtype} with "
                        f"values like {_sample(y.ravel())}",
                        hint="map class names to 0..K-1 before saving the arrays.")
    if y.ndim == 0 or len(y) == 0:
        raise DataError(f"{expected}; it holds no labels. Received: {key}.shape={y.shape}")
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(len(y), -1)
    if y.shape[1] != 1:
        raise DataError(f"{expected}. Received: {key}.shape={y.shape}")
    bad = y[~np.isfinite(y) | (y < 0) | (y != np.round(y))] if y.dtype.kind == "f" else y[y < 0]
    if bad.size:
        raise DataError(f"{expected}. Received: {bad.size} bad labels in {key}, e.g. "
                        f"{_sample(bad)}")
    return y[:, 0].astype(np.int32)


def _sample(values: np.ndarray, count: int = 3) -> str:
    return "[" + ", ".join(repr(v.item() if hasattr(v, "item") else v)
                           for v in values[:count]) + (", ...]" if len(values) > count else "]")


def check_finite(x: np.ndarray, key: str) -> None:
    """Non-finite inputs train to NaN losses (and invalid JSON): refused up front."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        count = int(x.size - np.isfinite(x).sum())
        raise DataError(f"`{key}` holds {count:,} values that are NaN or infinite: training on "
                        f"them gives a NaN loss. Received: {key} with values like "
                        f"{_sample(x[~np.isfinite(x)])}",
                        hint="clean or impute the data before saving it.")


def check_lengths(x: np.ndarray, y: np.ndarray, part: str, spec: str) -> None:
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"x_{part} and y_{part} must have the same, non-zero number of "
                        f"examples. Received: len(x_{part})={len(x)}, len(y_{part})={len(y)} "
                        f"in {spec}")
