"""The training engine shared by `shrink` and `retrain`.

`fit` runs Keras's own `model.fit` inside a `tf.distribute` strategy scope,
with an optional regularization term added to the loss, and with:

- checkpoints every epoch (`keras.callbacks.BackupAndRestore`, model and
  optimizer state), so an interrupted run resumes where it stopped;
- a NaN guard: a non-finite loss stops training with a `TrainingError` and
  leaves the last good checkpoint in place;
- TensorBoard scalars (task loss, regularization loss, alive cost...).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from morphcli.core import keras_adapter, rules
from morphcli.errors import MorphError, TrainingError
from morphcli.training import checkpoints

log = logging.getLogger("morphcli")

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
# A batch norm whose moving statistics still hold more than this share of their
# start when training ends has not converged (see `stale_statistics`).
STALE_SHARE = 0.05
SCHEDULES = ("constant", "cosine", "step")


@dataclass
class TrainSpec:
    """How to train: mirrors the `shrink` / `retrain` config sections."""

    epochs: int = 10
    learning_rate: float = 0.01
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_epochs: int = 0
    steps_per_epoch: int | None = None
    precise_batch_norm: int = 100  # batches; 0: keep the moving statistics training left

    @classmethod
    def of(cls, section: Any) -> TrainSpec:
        """From a config section (dataclass or mapping); unknown fields ignored."""
        get = section.get if isinstance(section, dict) else (
            lambda k, d=None: getattr(section, k, d))
        return cls(**{f: get(f, getattr(cls, f)) for f in cls.__dataclass_fields__
                      if get(f, None) is not None})


@dataclass
class FitResult:
    """What `fit` returns: per-epoch logs, final validation metrics, wall time."""

    history: dict[str, list[float]] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from_epoch: int = 0
    strength: float | None = None  # the penalty's multiplier when training ended


def make_optimizer(spec: TrainSpec, steps_per_epoch: int, scale: float = 1.0):
    """A Keras optimizer with the spec's learning-rate schedule.

    Args:
        spec: The training spec.
        steps_per_epoch: Steps in one epoch, for schedules.
        scale: Learning-rate multiplier (e.g. number of replicas).
    """
    import keras

    lr = spec.learning_rate * scale
    total = max(1, spec.epochs * steps_per_epoch)
    warmup = spec.warmup_epochs * steps_per_epoch
    if spec.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else lr, max(1, total - warmup), alpha=0.0,
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    elif spec.schedule == "step":
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            [int(total * 0.5), int(total * 0.75)], [lr, lr * 0.1, lr * 0.01])
    elif spec.schedule != "constant":
        raise MorphError(f"Unknown schedule. Expected one of {', '.join(SCHEDULES)}. "
                         f"Received: schedule={spec.schedule!r}")
    makers: dict[str, Callable] = {
        "sgd": lambda: keras.optimizers.SGD(lr),
        "momentum": lambda: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
        "adam": lambda: keras.optimizers.Adam(lr),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr),
    }
    if spec.optimizer not in makers:
        raise MorphError(f"Unknown optimizer. Expected one of {', '.join(OPTIMIZERS)}. "
                         f"Received: optimizer={spec.optimizer!r}")
    return makers[spec.optimizer]()


def _penalized_model_class():
    import keras
    import tensorflow as tf

    class Penalized(keras_adapter.spec_built_model_class()):
        """The user's network as Keras trains it: `strength * penalty()` added to
        its loss (when there is a penalty), plus two fixes that let Keras 3's
        `fit` run under MultiWorkerMirroredStrategy (keras-team/keras#20585)."""

        def __init__(self, net, penalty: Callable | None, strength: float, data_spec,
                     multi_worker: bool, **kwargs):
            super().__init__(name=f"{net.name}_penalized", **kwargs)
            self.net = net
            self.penalty = penalty
            # A variable, so that a controller can steer it and checkpoints keep it.
            self.strength = self.strength_base = None
            if penalty is not None:  # `strength_base`: a controller's own state
                self.strength, self.strength_base = (self.add_weight(
                    shape=(), initializer=keras.initializers.Constant(float(strength)),
                    trainable=False, name=name) for name in ("strength", "strength_base"))
            self.reg_tracker = None if penalty is None else keras.metrics.Mean(name="reg_loss")
            self.data_spec = data_spec
            self.multi_worker = multi_worker

        def call(self, x, training=False):
            return self.net(x, training=training)

        def train_step(self, data):
            return self._per_worker(super().train_step(data))

        def test_step(self, data):
            return self._per_worker(super().test_step(data))

        def _per_worker(self, logs):
            # Across workers Keras averages each step's logs along axis 0, which
            # scalars lack: give them one (the reduced logs are scalars again).
            if not self.multi_worker:
                return logs
            return {name: tf.reshape(value, [1]) for name, value in logs.items()}

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                         training=True):
            loss = super().compute_loss(x=x, y=y, y_pred=y_pred,
                                        sample_weight=sample_weight, training=training)
            if not training or self.penalty is None:
                return loss
            penalty = tf.cast(self.strength, tf.float32) * self.penalty()
            self.reg_tracker.update_state(penalty)
            # Keras scales each replica's loss by 1 / replicas before summing
            # gradients; the penalty, computed on every replica, is scaled alike.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            return loss + penalty / replicas

    return Penalized


class _State:
    """Shared between the NaN guard and the checkpoint callback."""

    def __init__(self):
        self.bad: tuple[int, int, float] | None = None  # (epoch, batch, loss)
        self.epoch = 0


def _callbacks(state: _State, checkpoint_dir: Path, log_dir: Path | None,
               extra: Sequence, history: dict) -> list:
    import keras

    class NanGuard(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            state.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                state.bad = (state.epoch, batch, float(loss))
                self.model.stop_training = True

    class Checkpoint(keras.callbacks.Callback):
        """Commits every finished epoch (`checkpoints.save`), with the whole history;
        never an epoch that hit a NaN: the last good one stays."""

        def on_epoch_end(self, epoch, logs=None):
            if state.bad is not None:
                return
            for key, value in (logs or {}).items():
                history.setdefault(key, []).append(float(value))
            checkpoints.save(checkpoint_dir, self.model, epoch + 1, history)

    callbacks = [NanGuard(), *extra, Checkpoint()]
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(log_dir), write_graph=False,
                                                     profile_batch=0))
    return callbacks


def fit(model, dataset, spec: TrainSpec, *, workdir: str | Path, penalty: Callable | None = None,
        strength: float = 0.0, callbacks: Sequence = (), strategy=None,
        lr_scale: float = 1.0, tensorboard: bool = True,
        sync_batch_norm: bool = True, precise_batch_norm: int | None = None) -> FitResult:
    """Trains `model` in place on `dataset` (a `morphcli.training.data.Dataset`).

    Args:
        model: A functional Keras model (trained in place), built in the scope
            of `strategy` (see `distribute.into_scope`).
        dataset: Train/val pipelines; `train` yields global batches.
        spec: Epochs, optimizer, learning rate and schedule.
        workdir: Folder for `checkpoints/` and `logs/`. Checkpoints left by an
            interrupted run in this folder are resumed from.
        penalty: Zero-argument callable returning the regularization term.
        strength: Multiplier of the penalty (its initial value: a callback may steer
            the trainee's `strength` variable, which checkpoints keep).
        callbacks: Extra Keras callbacks (progress display, structure logging).
        strategy: A `tf.distribute.Strategy` (default: the current one).
        lr_scale: Learning-rate multiplier (e.g. replicas, for linear scaling).
        tensorboard: Write TensorBoard logs under `workdir/logs`.
        sync_batch_norm: With several replicas, batch norms use the global
            batch's statistics (see `distribute.global_batch_norm`).
        precise_batch_norm: After training, re-estimate the batch norms' moving
            statistics on this many training batches (`recalibrate_batch_norm`);
            default: `spec.precise_batch_norm`. A batch norm whose momentum cannot
            converge in the run's steps is named in one warning line.

    Returns:
        A `FitResult`.

    Raises:
        TrainingError: The loss became NaN or infinite, or (several workers)
            another worker was lost.
    """
    import keras
    import tensorflow as tf

    from morphcli.training import distribute

    strategy = strategy or tf.distribute.get_strategy()
    workdir = Path(workdir)
    checkpoint_dir = workdir / "checkpoints"
    saved = checkpoints.intact(checkpoint_dir)  # the newest commit whose weights are intact
    resumed = int(saved["epoch"]) if saved else 0
    distribute.check_same_epoch(strategy, resumed, checkpoint_dir)  # workers resume together
    train_data, steps = dataset.train, spec.steps_per_epoch or _steps(dataset.train)
    if getattr(dataset, "train_epochs", None) is not None and not spec.steps_per_epoch:
        # Epoch-keyed order: resuming at epoch k replays the batches of epoch k.
        train_data = dataset.train_epochs(min(resumed, spec.epochs), spec.epochs)
        steps = dataset.steps_per_epoch
    # Several workers: each keeps its share of every global batch (see shard_by_data).
    train_data = distribute.shard_by_data(train_data)
    val_data = distribute.shard_by_data(dataset.val)
    with strategy.scope():  # `model` itself must have been built in this scope
        trainee = _penalized_model_class()(model, penalty, strength, train_data.element_spec,
                                           distribute.is_multi_worker(strategy))
        trainee.compile(optimizer=make_optimizer(spec, steps, lr_scale),
                        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        trainee(keras.ops.zeros((1, *model.inputs[0].shape[1:])))  # built, for restoring
        history = checkpoints.restore(checkpoint_dir, trainee, saved) if saved else {}
    if precise_batch_norm is None:
        precise_batch_norm = spec.precise_batch_norm
    _warn_stale(model, spec.epochs * steps, min(precise_batch_norm, steps))
    state = _State()
    start = time.perf_counter()
    resume = ("restart every worker with the same command and --resume: they continue "
              "from their last finished epoch.")
    with (distribute.peer_errors(strategy, resume),
          distribute.global_batch_norm(model, strategy, sync_batch_norm)):
        trainee.fit(
            train_data, validation_data=val_data, epochs=spec.epochs,
            initial_epoch=min(resumed, spec.epochs),
            steps_per_epoch=steps, verbose=0, shuffle=False,  # tf.data shuffles
            callbacks=_callbacks(state, checkpoint_dir,
                                 workdir / "logs" if tensorboard else None, callbacks, history),
        )
    seconds = time.perf_counter() - start
    if state.bad is not None:
        epoch, batch, loss = state.bad
        done = checkpoints.epoch_of(checkpoint_dir)
        kept = (f"the checkpoint of epoch {done} is kept in {checkpoint_dir}" if done else
                "no epoch had finished, so there is no checkpoint to resume from")
        raise TrainingError(
            f"The loss became {loss} at epoch {epoch + 1}, step {batch + 1}; training "
            f"stopped and {kept}.",
            hint="lower the learning rate or the regularizer strength, then rerun"
                 + (" with --resume." if done else "."),
        )
    if precise_batch_norm:  # the batches of the epoch after the last: the same on a resume
        with strategy.scope():
            recalibrate_batch_norm(model, dataset.epochs(spec.epochs, spec.epochs + 1),
                                   precise_batch_norm)
    strength_now = None if trainee.strength is None else float(trainee.strength.numpy())
    return FitResult(history, evaluate(model, dataset.val), seconds, resumed, strength_now)


def stale_statistics(model, steps: int) -> tuple[float, float] | None:
    """The slowest batch-norm momentum of `model` and the share of the initial
    moving statistics it still holds after `steps` updates (`momentum ** steps`),
    or None when every batch norm has converged (share <= `STALE_SHARE`).

    keras.applications' MobileNetV2 uses momentum 0.999: after 756 steps
    (12 epochs of 63 batches) 0.47 of the start remains, and in inference mode
    the trained network scores at chance."""
    momenta = [float(layer.momentum) for layer in batch_norms(model)]
    if not momenta:
        return None
    slowest = max(momenta)
    share = slowest ** max(0, int(steps))
    return (slowest, share) if share > STALE_SHARE else None


def _warn_stale(model, steps: int, batches: int) -> None:
    stale = stale_statistics(model, steps)
    if stale is None:
        return
    momentum, share = stale
    done = (f"re-estimating them over {batches} training batches after training "
            "(precise batch norm)" if batches else
            "precise batch norm is off, so validation may score near chance; set "
            "precise_batch_norm > 0")
    log.warning("batch norm momentum %g keeps %.0f%% of its initial statistics after %d "
                "steps; %s", momentum, 100 * share, steps, done)


def batch_norms(model) -> list:
    """Every layer of `model` (nested models included) with moving statistics: a
    batch norm, or any layer whose rule names them (`Rule.moving`)."""
    return [layer for layer in _all_layers(model) if rules.moving_statistics(layer)]


def recalibrate_batch_norm(model, train, batches: int) -> int:
    """Replaces every batch norm's moving mean and variance by their average over
    `batches` training batches, the weights unchanged ("precise BN").

    The shrink trains at a constant, high learning rate while it drives scales to
    zero; the moving averages then lag the network so far behind that it scores
    near chance on validation data, although it fits the training data. Averaging
    the batch statistics of the final weights gives the statistics it really has.

    Returns:
        The number of batches used (0 when the model has no batch norm).
    """
    return Recalibrator(model)(train, batches)


class Recalibrator:
    """Precise batch norm for one model, its forward pass traced once.

    Each batch runs the model in training mode with every momentum at 0, so each
    moving statistic holds that batch's statistic; their mean over the batches is
    assigned at the end. Tracing matters on deep networks: eagerly, one batch of
    MobileNetV2 at 32x32 took about 1 s here, traced a few ms, and the search
    recalibrates every candidate with the same `Recalibrator`.
    """

    def __init__(self, model):
        self.model, self.norms, self._step = model, batch_norms(model), None

    def __call__(self, train, batches: int) -> int:
        import tensorflow as tf

        if not self.norms:
            return 0
        momenta = [layer.momentum for layer in self.norms]
        sums, used = None, 0
        try:
            for layer in self.norms:
                layer.momentum = 0.0  # the moving statistics become the batch's
            if self._step is None:
                self._step = tf.function(lambda x: self.model(x, training=True),
                                         reduce_retracing=True)
            for x, _ in train.take(batches):
                self._step(x)
                stats = [[v.numpy().astype("float64") for v in rules.moving_statistics(layer)]
                         for layer in self.norms]
                sums = stats if sums is None else [
                    [total + value for total, value in zip(old, new, strict=True)]
                    for old, new in zip(sums, stats, strict=True)]
                used += 1
        finally:
            for layer, momentum in zip(self.norms, momenta, strict=True):
                layer.momentum = momentum
        for layer, totals in zip(self.norms, sums or (), strict=False):
            for variable, total in zip(rules.moving_statistics(layer), totals, strict=True):
                variable.assign((total / used).astype(variable.dtype))
        return used


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def evaluate(model, val, forward=None, correct: list | None = None) -> dict[str, float]:
    """Validation loss and accuracy, without compiling `model` (a saved model then
    carries no optimizer of ours), and `chance`: the accuracy of always answering
    the most frequent validation label. Empty when there is no validation set.

    `forward(x)` replaces `model(x, training=False)`: a traced version of it, for
    a caller that scores the same network many times (the search). `correct`, a
    list, receives each batch's per-example hits (bool arrays, in data order)."""
    import keras
    import numpy as np

    if val is None:
        return {}
    forward = forward or (lambda x: model(x, training=False))
    loss, accuracy = keras.metrics.Mean(), keras.metrics.SparseCategoricalAccuracy()
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    counts = np.zeros(0, np.int64)
    for x, y in val:  # eager by default: one pass, no tracing per batch shape
        probs = forward(x)
        loss.update_state(cross_entropy(y, probs))
        accuracy.update_state(y, probs)
        if correct is not None:
            correct.append(np.argmax(np.asarray(probs), -1) == np.asarray(y).reshape(-1))
        seen = np.bincount(np.asarray(y).astype(np.int64).ravel())
        counts = np.pad(counts, (0, max(0, seen.size - counts.size)))
        counts[:seen.size] += seen
    chance = float(counts.max() / counts.sum()) if counts.sum() else None
    return {"loss": float(loss.result()), "accuracy": float(accuracy.result()),
            "chance": chance}


def near_chance(val_accuracy: float | None, train_accuracy: float | None,
                chance: float | None) -> bool:
    """True for a model that is not usable: its validation accuracy is within a
    tenth of the way from chance to perfect, while it fits the training data at
    least half of that way better (typically stale batch-norm statistics, or a
    validation set unlike the training data)."""
    if val_accuracy is None or train_accuracy is None or chance is None:
        return False
    span = 1.0 - chance
    return at_chance(val_accuracy, chance) and train_accuracy - val_accuracy > 0.5 * span


def at_chance(accuracy: float, chance: float, share: float = 0.1) -> bool:
    """True for an accuracy within `share` of the way from chance (the most
    frequent label's share) to 100%."""
    return accuracy < chance + share * (1.0 - chance)


def _steps(ds) -> int:
    import tensorflow as tf

    n = int(ds.cardinality())
    if n in (tf.data.INFINITE_CARDINALITY, tf.data.UNKNOWN_CARDINALITY) or n <= 0:
        raise MorphError("The training data has no known length.",
                         hint="set steps_per_epoch in the config.")
    return n


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow, and makes TF ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def finish(workdir: str | Path) -> None:
    """Removes the checkpoints of a finished step: call it after the step's last write
    (until then a killed step resumes from its last epoch instead of training again)."""
    checkpoints.remove(Path(workdir) / "checkpoints")
