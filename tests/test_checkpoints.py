"""Checkpoints survive crashes: an interrupted fit resumes to the uninterrupted one's
weights and full history; a damaged newest checkpoint falls back to the previous
one with a warning; when none is intact, resuming is refused, never silent."""

import json
import logging

import keras
import numpy as np
import pytest

from morphcli.errors import TrainingError
from morphcli.training import checkpoints, engine
from morphcli.training.data import load_dataset

SPEC = engine.TrainSpec(epochs=3, learning_rate=0.05, optimizer="momentum",
                        schedule="cosine")


class Stop(keras.callbacks.Callback):
    """Interrupts training as a kill would: when `epoch` begins (its predecessors
    are checkpointed)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def digits():
    return load_dataset("builtin:digits", batch_size=128, seed=0)


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def _fit(workdir, dataset, stop=None):
    engine.set_seed(0)
    model = _model()
    callbacks = [Stop(stop)] if stop is not None else []
    try:
        result = engine.fit(model, dataset, SPEC, workdir=workdir, tensorboard=False,
                            callbacks=callbacks)
    except KeyboardInterrupt:
        return None, model
    return result, model


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory):
    result, model = _fit(tmp_path_factory.mktemp("whole"), digits)
    return result, model.get_weights()


def _interrupted(tmp_path, digits, stop=2):
    assert _fit(tmp_path, digits, stop=stop)[0] is None
    directory = tmp_path / "checkpoints"
    assert checkpoints.epoch_of(directory) == stop
    return directory


def test_resumed_fit_ends_like_the_uninterrupted_one_with_its_whole_history(
        tmp_path, digits, uninterrupted):
    _interrupted(tmp_path, digits)
    result, model = _fit(tmp_path, digits)
    whole, weights = uninterrupted
    assert result.resumed_from_epoch == 2
    assert len(result.history["loss"]) == 3
    assert result.history == whole.history
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    # Kept until the step's last write: fitting again only restores the last epoch.
    again, model = _fit(tmp_path, digits)
    assert (again.resumed_from_epoch, again.history) == (3, whole.history)
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    engine.finish(tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(
        tmp_path, digits, uninterrupted, caplog):
    directory = _interrupted(tmp_path, digits)
    weights = directory / "epoch-0002.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a full disk
    with caplog.at_level(logging.WARNING, logger="morphcli"):
        result, model = _fit(tmp_path, digits)
    assert "resuming from the one of epoch 1" in caplog.text
    assert result.resumed_from_epoch == 1
    assert result.history == uninterrupted[0].history
    for a, b in zip(model.get_weights(), uninterrupted[1], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["garbage metadata", "truncated weights"])
def test_no_intact_checkpoint_refuses_to_resume(tmp_path, digits, damage):
    directory = _interrupted(tmp_path, digits)
    (directory / checkpoints.PREVIOUS).unlink()
    if damage == "garbage metadata":
        (directory / checkpoints.STATE).write_text("{not json")
    else:
        weights = directory / "epoch-0002.weights.h5"
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(TrainingError, match="is damaged: .*Nothing was resumed"):
        _fit(tmp_path, digits)


def test_a_commit_names_its_weights_and_their_checksum(tmp_path, digits):
    directory = _interrupted(tmp_path, digits)
    state = json.loads((directory / checkpoints.STATE).read_text())
    previous = json.loads((directory / checkpoints.PREVIOUS).read_text())
    assert (state["epoch"], state["weights"]) == (2, "epoch-0002.weights.h5")
    assert (previous["epoch"], previous["weights"]) == (1, "epoch-0001.weights.h5")
    assert len(state["history"]["loss"]) == 2 and len(previous["history"]["loss"]) == 1
    assert sorted(p.name for p in directory.glob("*.h5")) == [
        "epoch-0001.weights.h5", "epoch-0002.weights.h5"]
