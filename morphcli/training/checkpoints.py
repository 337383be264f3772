"""Resumable training state, written so that a crash can never damage it.

After every finished epoch the trainee's weights (model, optimizer, lambda)
go to a new file `epoch-NNNN.weights.h5`, written atomically; then one atomic
write of `training_metadata.json` commits the epoch: its number, the weights
file, its SHA-256 and the history of every epoch so far. The commit before it
stays as `training_metadata.prev.json` with its weights file. A crash (SIGKILL,
a full disk) at any point leaves the last commit intact.

On resume the newest commit whose weights file is intact is loaded; a damaged
newest commit falls back to the previous one, said in one warning line; when
neither is intact the step refuses to resume rather than start over silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from morphcli import files
from morphcli.errors import TrainingError

STATE, PREVIOUS = "training_metadata.json", "training_metadata.prev.json"
log = logging.getLogger("morphcli")


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _weights_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.weights.h5"


def save(directory: Path, model, epoch: int, history: dict) -> None:
    """Commits the state after `epoch` finished epochs (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / _weights_name(epoch)
    with files.atomic_path(weights, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    state = directory / STATE
    if state.exists():
        files.write_text(directory / PREVIOUS, state.read_text())
    files.write_json(state, {"epoch": epoch, "batch": 0, "weights": weights.name,
                             "sha256": _digest(weights), "history": history})
    keep = {weights.name, *(_referenced(directory / PREVIOUS) or [])}
    for old in directory.glob("epoch-*.weights.h5"):
        if old.name not in keep:
            old.unlink(missing_ok=True)


def _referenced(state: Path) -> list[str] | None:
    try:
        return [json.loads(state.read_text())["weights"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check(directory: Path, name: str) -> tuple[dict | None, str | None]:
    """(state, None) for an intact commit, (None, why not) otherwise."""
    path = directory / name
    try:
        state = json.loads(path.read_text())
        epoch, weights, digest = int(state["epoch"]), state["weights"], state["sha256"]
        history = state.get("history", {})
        if epoch < 1 or not isinstance(history, dict):
            raise ValueError("bad values")
    except FileNotFoundError:
        return None, f"{name} is missing"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"{name} is unreadable ({type(err).__name__})"
    weights_path = directory / str(weights)
    if not weights_path.is_file():
        return None, f"its weights file {weights} is missing"
    if _digest(weights_path) != digest:
        return None, f"its weights file {weights} is damaged (checksum differs)"
    return state, None


def intact(directory: Path) -> dict | None:
    """The newest intact commit in `directory`, or None when there is no checkpoint.

    A damaged newest commit falls back to the previous one, with a warning line.

    Raises:
        TrainingError: Checkpoint files exist but no commit is intact.
    """
    if not (directory / STATE).exists() and not (directory / PREVIOUS).exists():
        return None
    state, why = _check(directory, STATE)
    if state is None:
        state, why_prev = _check(directory, PREVIOUS)
        if state is None:
            raise TrainingError(
                f"The training checkpoint in {directory} is damaged: {why}, and the "
                f"previous one too: {why_prev}. Nothing was resumed.",
                hint=f"delete {directory} to start this step over.")
        log.warning("the newest checkpoint in %s is damaged (%s); resuming from the one of "
                    "epoch %d instead", directory, why, state["epoch"])
    return state


def restore(directory: Path, model, state: dict) -> dict:
    """Loads the commit `state` (from `intact`) into `model` (built, compiled).

    Returns:
        The history of the epochs it holds.

    Raises:
        TrainingError: The weights do not fit the model.
    """
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # its variables are in the file
    try:
        model.load_weights(directory / state["weights"])
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"The training checkpoint in {directory} does not fit this model "
            f"({' '.join(str(err).split())[:160]}).",
            hint=f"was the step's config changed? delete {directory} to start it over.") from None
    return {k: list(v) for k, v in state["history"].items()}


def epoch_of(directory: Path) -> int:
    """The epoch the newest commit file names (0 without one); no integrity check."""
    try:
        return int(json.loads((directory / STATE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
