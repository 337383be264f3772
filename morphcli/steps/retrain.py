"""`morph retrain`: train a (reshaped) model from scratch and evaluate it.

Uses the same engine as the shrink (checkpoints, resume, NaN guard), without
the regularizer and with the config's `retrain` section. Writes
`final.keras` and `metrics.json` (accuracy, loss, FLOPs, params, latency,
training time) into the output folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RetrainResult:
    model: object
    metrics: dict


def reinitialize(model):
    """The same architecture with fresh weights (every layer rebuilt from its config)."""
    import keras

    return keras.models.clone_model(model)


def retrain(conf, model, outdir: str | Path, *, callbacks: Sequence = (), dataset=None,
            keep_weights: bool | None = None) -> RetrainResult:
    """Trains `model` (fresh weights unless `keep_weights`) and evaluates it.

    Args:
        conf: A resolved config (uses `data`, `retrain`, `target.hardware`, `seed`).
        model: A Keras model (not modified) or a model spec to load.
        outdir: Output folder; checkpoints found there are resumed.
        callbacks: Extra Keras callbacks (progress display).
        dataset: A loaded `morphcli.training.data.Dataset`, if already made.
        keep_weights: Fine-tune instead of training from scratch
            (default: `retrain.keep_weights`).

    Returns:
        A `RetrainResult` with the trained model and its metrics.
    """
    from morphcli import api, files
    from morphcli.steps.shrink import hardware_of
    from morphcli.training import data, distribute
    from morphcli.training import engine as train

    # First: multi-worker runtimes and logical devices are set up before TF runs anything.
    strategy = distribute.make_strategy(conf.distribute)
    outdir = distribute.write_dir(outdir, strategy)  # other workers than the chief: scratch
    train.set_seed(conf.seed)
    if isinstance(model, str):
        model = api.load_model(model, input_shape=conf.model.input_shape,
                               trust_code=conf.model.trust_code)
    dataset = dataset or data.load_dataset(
        conf.data.source, batch_size=conf.data.batch_size,
        validation_split=conf.data.validation_split, seed=conf.seed,
        image_size=conf.data.image_size, augment=conf.data.augment)
    data.check_fits(dataset, model)
    keep = conf.retrain.keep_weights if keep_weights is None else keep_weights
    with strategy.scope():  # Keras trains a model with the strategy its variables were made in
        trainee = reinitialize(model)
    if keep:
        trainee.set_weights(model.get_weights())
    fit = train.fit(trainee, dataset, train.TrainSpec.of(conf.retrain), workdir=outdir,
                    callbacks=callbacks, **distribute.fit_options(conf.distribute, strategy))
    totals = api.analyze(trainee, hardware=hardware_of(conf)).totals
    metrics = {
        "val_accuracy": fit.val.get("accuracy"), "val_loss": fit.val.get("loss"),
        "train_accuracy": (fit.history.get("accuracy") or [None])[-1],
        **totals, "hardware": conf.target.hardware, "train_seconds": fit.seconds,
        "epochs": conf.retrain.epochs, "keep_weights": keep,
        "epochs_resumed_from": fit.resumed_from_epoch, "history": fit.history,
    }
    files.save_model(trainee, outdir / "final.keras")
    files.write_json(outdir / "metrics.json", metrics)
    distribute.remove_write_dir(outdir, strategy)
    return RetrainResult(trainee, metrics)
