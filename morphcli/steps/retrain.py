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

from morphcli.steps.context import Priced, RunContext


@dataclass
class RetrainResult:
    """The trained model, priced (same architecture, so the source's graph and
    costs), and its metrics."""

    trained: Priced
    metrics: dict

    @property
    def model(self):
        return self.trained.model


def reinitialize(model):
    """The same architecture with fresh weights (every layer rebuilt from its config)."""
    import keras

    return keras.models.clone_model(model)


def retrain(ctx: RunContext, source: Priced, outdir: str | Path, *, callbacks: Sequence = (),
            keep_weights: bool | None = None) -> RetrainResult:
    """Trains `source`'s architecture (fresh weights unless `keep_weights`) and evaluates it.

    Args:
        ctx: The command's context (uses `data`, `retrain`, `seed` of its config,
            its strategy and dataset).
        source: The model to train, priced; its Keras model is not modified.
        outdir: Output folder; checkpoints found there are resumed.
        callbacks: Extra Keras callbacks (progress display).
        keep_weights: Fine-tune instead of training from scratch
            (default: `retrain.keep_weights`).

    Returns:
        A `RetrainResult` with the trained model and its metrics.
    """
    from morphcli import files
    from morphcli.training import data, distribute, engine

    conf, strategy = ctx.conf, ctx.strategy
    outdir = distribute.write_dir(outdir, strategy)  # other workers than the chief: scratch
    engine.set_seed(conf.seed)
    data.check_fits(ctx.dataset, source.model)
    keep = conf.retrain.keep_weights if keep_weights is None else keep_weights
    with strategy.scope():  # Keras trains a model with the strategy its variables were made in
        trainee = reinitialize(source.model)
    if keep:
        trainee.set_weights(source.model.get_weights())
    fit = engine.fit(trainee, ctx.dataset, engine.TrainSpec.of(conf.retrain), workdir=outdir,
                     callbacks=callbacks, **distribute.fit_options(conf.distribute, strategy))
    trained = Priced(trainee, source.graph, source.costs)  # a clone: same widths, same costs
    train_accuracy = (fit.history.get("accuracy") or [None])[-1]
    metrics = {
        "val_accuracy": fit.val.get("accuracy"), "val_loss": fit.val.get("loss"),
        "train_accuracy": train_accuracy, "chance": fit.val.get("chance"),
        "usable": not engine.near_chance(fit.val.get("accuracy"), train_accuracy,
                                         fit.val.get("chance")),
        "precise_batch_norm": conf.retrain.precise_batch_norm,
        "select_accuracy": engine.evaluate(trainee, ctx.dataset.select).get("accuracy"),
        "select_size": ctx.dataset.select_size,
        **trained.report().totals, "hardware": conf.target.hardware,
        "train_seconds": fit.seconds, "epochs": conf.retrain.epochs, "keep_weights": keep,
        "epochs_resumed_from": fit.resumed_from_epoch, "history": fit.history,
    }
    files.save_model(trainee, outdir / "final.keras")
    files.write_json(outdir / "metrics.json", metrics)  # the step's last write
    engine.finish(outdir)
    distribute.remove_write_dir(outdir, strategy)
    return RetrainResult(trained, metrics)
