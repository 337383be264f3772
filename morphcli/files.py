"""Atomic writes: a file is either its old self or complete, never half-written.

Every output of morphcli goes through these helpers: the content is written
to a temporary file in the same folder, flushed, and renamed over the target
(`os.replace` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yields a temporary path next to `path`; renames it over `path` on success.

    Args:
        path: The final file.
        suffix: Suffix of the temporary file (default: that of `path`, which
            Keras needs to pick the `.keras` format).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes `data` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def save_model(model, path: str | os.PathLike) -> None:
    """Saves a Keras model to a `.keras` file atomically."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def prepare_outdir(path: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Creates an output folder, refusing to reuse a non-empty one unless told to.

    Args:
        path: The folder.
        resume: Keep its contents (steps and checkpoints found there continue).
        overwrite: Delete its contents first.

    Raises:
        MorphError: The folder holds files and neither flag was given.
    """
    import shutil

    from morphcli.errors import MorphError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MorphError(f"Output folder {path} is a file. Received: -o {path}")
    if path.exists() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise MorphError(
                f"Output folder {path} already holds a run. Received: -o {path}",
                hint="pass --resume to continue it, --overwrite to start again, or choose "
                     "another folder.")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
