"""Training on several devices and machines with TensorFlow's own `tf.distribute`.

`make_strategy(conf.distribute)` turns the config's `distribute` section into
a `tf.distribute.Strategy`; `shrink`, `retrain` and `run` build the model and
optimizer in its scope and let Keras's `model.fit` do the rest (gradient
all-reduce, per-replica batches, cross-worker metrics). This module only
configures TensorFlow and keeps the file system in order:

- **One process, several devices** (`mirrored`, `one_device`): the chief is
  the only process, it writes everything.
- **Several processes** (`multi_worker`, `MultiWorkerMirroredStrategy`): every
  worker runs the same command. The chief (task 0, or the `chief` job) writes
  to the output folder; every other worker writes the same files to its own
  scratch folder ``OUTDIR/workertemp_<task>`` and deletes it when the command
  succeeds (TensorFlow's recommended pattern: all workers run the same code,
  so collective ops stay in step, but only the chief's files are kept). A
  worker's scratch folder also holds its training checkpoints, so a killed
  worker resumes from its own copy; on a shared file system the folders do
  not collide.
- **TPU** (`tpu`): one client process drives the TPU workers; it is the chief.

Start-up and peer failures are bounded by `distribute.timeout_seconds`: a
worker that cannot reach the others fails with a `MorphError` instead of
waiting forever, and a worker that dies mid-run makes the others stop with a
`TrainingError` that says how to resume.

Batch semantics: `data.batch_size` is the *global* batch; each step splits it
over the `num_replicas_in_sync` replicas (per-replica batch =
batch_size / replicas), so a run sees the same batches whatever the number of
replicas. `distribute.scale_learning_rate` multiplies learning rates by the
number of replicas (the linear scaling rule), for users who grow the global
batch with the replica count.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from morphcli.errors import MorphError, TrainingError
from morphcli.errors import tf_first_line as _first_line

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
COMMUNICATIONS = ("auto", "ring", "nccl")  # multi_worker all-reduce implementations
SCRATCH_PREFIX = "workertemp_"  # TensorFlow's name for a non-chief worker's scratch folder

_strategies: dict[Any, Any] = {}  # one strategy per process and config (see make_strategy)
_gatherers: dict[Any, Any] = {}  # strategy -> its traced `_gather` function


def make_strategy(conf) -> Any:
    """The `tf.distribute.Strategy` a config's `distribute` section asks for.

    Call it before TensorFlow runs anything: logical CPU devices and the
    multi-worker runtime can only be set up before TensorFlow initialises.
    The strategy is made once per process and config, and returned again on
    later calls (TensorFlow allows one multi-worker runtime per process).

    Args:
        conf: A `config.DistributeConfig`.

    Returns:
        The strategy: the default one, `OneDeviceStrategy`,
        `MirroredStrategy`, `MultiWorkerMirroredStrategy` or `TPUStrategy`.

    Raises:
        MorphError: Unknown strategy or device, no cluster description for
            `multi_worker`, peers unreachable within `timeout_seconds`, TPU
            not found.

    Example:

    >>> conf = load_config(None, {"distribute.strategy": "mirrored",
    ...                              "distribute.devices": ["/cpu:0", "/cpu:1"]})
    >>> make_strategy(conf.distribute).num_replicas_in_sync
    2
    """
    from morphcli.training.strategies import BUILDERS

    if conf.strategy not in BUILDERS:
        raise MorphError(f"Unknown distribution strategy. Expected one of "
                         f"{', '.join(STRATEGIES)}. Received: strategy={conf.strategy!r}")
    if conf not in _strategies:
        _strategies[conf] = BUILDERS[conf.strategy](conf)
    return _strategies[conf]


def is_chief(strategy) -> bool:
    """Whether this process writes the outputs.

    Args:
        strategy: The process's strategy.

    Returns:
        True, except on the workers of a multi-worker cluster other than its
        chief (the `chief` task if the cluster has one, else worker 0).
    """
    resolver = _multi_worker_resolver(strategy)
    if resolver is None:
        return True
    jobs = resolver.cluster_spec().jobs
    if "chief" in jobs:
        return resolver.task_type == "chief"
    return resolver.task_type in (None, "worker") and not resolver.task_id


def is_multi_worker(strategy) -> bool:
    """Whether `strategy`'s replicas span several processes (so every step, and
    every `on_every_worker` check, is a collective operation across workers)."""
    return (_multi_worker_resolver(strategy) is not None
            and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices))


def fit_options(conf, strategy) -> dict[str, Any]:
    """The distribution keywords of `train.fit` for a `distribute` config section.

    Args:
        conf: A `config.DistributeConfig`.
        strategy: `make_strategy(conf)`.

    Returns:
        `strategy`, `lr_scale` (the number of replicas with
        `scale_learning_rate`, else 1) and `sync_batch_norm`.
    """
    return {"strategy": strategy, "sync_batch_norm": conf.sync_batch_norm,
            "lr_scale": float(strategy.num_replicas_in_sync) if conf.scale_learning_rate else 1.0}


def write_dir(path: str | os.PathLike, strategy) -> Path:
    """Where this process writes what the command would write to `path`.

    Args:
        path: The command's output folder.
        strategy: The process's strategy.

    Returns:
        `path` on the chief; ``path/workertemp_<task>`` on another worker
        (kept across restarts, so its checkpoints survive; see
        `remove_write_dir`). A path already inside this worker's scratch
        folder is returned as is, so `run` can hand its sub-folders to
        `shrink` and `retrain`.
    """
    path = Path(path)
    if is_chief(strategy) or _scratch_name(strategy) in path.parts:
        return path
    return path / _scratch_name(strategy)


def remove_write_dir(path: str | os.PathLike, strategy) -> None:
    """Deletes a worker's scratch folder made by `write_dir` (never the chief's outputs).

    Args:
        path: A `write_dir` result; only the scratch folder itself is removed,
            not a sub-folder of it (those belong to an enclosing `run`).
        strategy: The process's strategy.
    """
    path = Path(path)
    if not is_chief(strategy) and path.name == _scratch_name(strategy):
        shutil.rmtree(path, ignore_errors=True)


def _scratch_name(strategy) -> str:
    return f"{SCRATCH_PREFIX}{_multi_worker_resolver(strategy).task_id}"


def shard_by_data(dataset):
    """`dataset` with DATA auto-sharding, for `multi_worker`.

    Every worker builds the whole pipeline and keeps its share of each global
    batch. Our datasets live in memory (or are decoded per example), so
    sharding by file would leave workers with unequal, differently composed
    batches; DATA keeps the batches identical to a single-device run and
    costs each worker only the cheap slicing of the others' examples.
    Strategies within one process ignore the option.

    Args:
        dataset: A `tf.data.Dataset`, or None (returned as is).

    Returns:
        The dataset with the sharding option set.
    """
    import tensorflow as tf

    if dataset is None:
        return None
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def into_scope(model, strategy):
    """`model` if its variables belong to `strategy`, else a copy built in its scope.

    Keras trains a model with a strategy only if its variables were created in
    the strategy's scope; models loaded or rebuilt outside it are cloned in,
    weights copied.

    Args:
        model: A Keras model.
        strategy: The strategy it will train with.

    Returns:
        `model` itself, or its clone with the same weights.
    """
    import keras

    if all(strategy.extended.variable_created_in_scope(_tf_variable(v)) for v in model.variables):
        return model
    with strategy.scope():
        clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _tf_variable(variable):
    return getattr(variable, "value", variable)  # a Keras variable wraps a tf.Variable


@contextlib.contextmanager
def global_batch_norm(model, strategy, enabled: bool = True) -> Iterator[None]:
    """While inside, `model`'s batch norms use the global batch's statistics.

    Per-replica statistics would make training (and the gammas the shrink
    reads) depend on the number of replicas; Keras's `synchronized` option
    all-reduces them instead, one small all-reduce per layer and step. The
    layers' own setting is restored on exit, so saved models are unchanged.

    Args:
        model: The Keras model being trained.
        strategy: Its strategy; nothing changes with a single replica.
        enabled: `distribute.sync_batch_norm`.
    """
    from morphcli.core import rules

    layers = []
    if enabled and strategy.num_replicas_in_sync > 1:  # the batch norms that can synchronize
        layers = [layer for layer in _all_layers(model)
                  if rules.moving_statistics(layer) and hasattr(layer, "synchronized")]
    saved = [layer.synchronized for layer in layers]
    for layer in layers:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.synchronized = value


def _all_layers(model) -> list:
    """Every layer of `model`, nested models' included."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found += _all_layers(layer)
    return found


def on_every_worker(strategy, flag: bool) -> bool:
    """True when `flag` is true on every worker (`flag` itself within one process).

    Workers must take the same branches (skip a finished step or not), or
    their collective ops would wait on each other. Every worker must call it.

    Args:
        strategy: The process's strategy.
        flag: This worker's answer.

    Returns:
        Whether every worker answered True.
    """
    if not is_multi_worker(strategy):
        return bool(flag)
    return bool(min(_gather(strategy, float(flag))) > 0)


def check_same_epoch(strategy, epoch: int, checkpoint_dir: Path) -> None:
    """Fails when workers would resume from different epochs (their steps would not match).

    Every worker must call it (within one process it checks nothing).

    Args:
        strategy: The process's strategy.
        epoch: The epoch this worker's checkpoint resumes from (0: none).
        checkpoint_dir: Where that checkpoint is, for the message.

    Raises:
        TrainingError: The workers' checkpoints are of different epochs.
    """
    if not is_multi_worker(strategy):
        return
    epochs = sorted({int(e) for e in _gather(strategy, float(epoch))})
    if len(epochs) > 1:
        raise TrainingError(
            f"The workers' checkpoints are of different epochs ({', '.join(map(str, epochs))}), "
            f"so they cannot resume together. Received: epoch={epoch} in {checkpoint_dir}",
            hint="copy the chief's OUTDIR/checkpoints into every worker's "
                 f"OUTDIR/{SCRATCH_PREFIX}<task>/checkpoints, or delete them all to start over.")


def _gather(strategy, value: float) -> list[float]:
    """Every replica's `value` (a worker's replicas share its value): a collective op."""
    import tensorflow as tf

    if strategy not in _gatherers:  # traced once per strategy, not once per call

        @tf.function
        def gather(local):
            return strategy.gather(strategy.run(tf.identity, args=(local,)), axis=0)

        _gatherers[strategy] = gather
    return [float(v) for v in _gatherers[strategy](tf.constant([value], tf.float32)).numpy()]


@contextlib.contextmanager
def peer_errors(strategy, resume_hint: str) -> Iterator[None]:
    """Turns "a peer is gone" errors of collective ops into a `TrainingError`.

    Args:
        strategy: The strategy training runs under.
        resume_hint: What to do next, e.g. how to resume.
    """
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError) as error:
        if not is_multi_worker(strategy):
            raise
        raise TrainingError(
            f"Lost contact with another worker of the cluster: {_first_line(error)}. "
            f"Received: task={_task(strategy)}", hint=resume_hint) from None


def _task(strategy) -> str:
    resolver = _multi_worker_resolver(strategy)
    return f"{resolver.task_type}:{resolver.task_id}" if resolver is not None else "local"


def _multi_worker_resolver(strategy):
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = strategy.cluster_resolver
    return resolver if resolver is not None and resolver.cluster_spec().jobs else None
