"""`Shrinker`: the shrink of `morph shrink`, inside the user's own training.

`morph shrink` owns its training loop (`morphcli.steps.shrink`); a `Shrinker`
hands the same pieces to the user's: the model whose loss carries the
regularizer (`.model`, for `compile` and `fit`), the callbacks that steer its
strength and log the alive cost (`.callbacks()`), the penalty as a tensor and
the controller's step for a `tf.GradientTape` loop (`.penalty()`, `.step()`),
and at the end the learned structure (`.structure()`) and the narrower model
with the surviving weights (`.apply()`). The regularizer, the strength's
normaliser, the loss wrapper, the controller and the landing of the masks are
the very functions `morph shrink` calls, so on the same model, data, seed and
schedule both learn the same structure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from morphcli.errors import MorphError


class Shrinker:
    """Learns which channels of `model` to keep while the user trains it.

    Args:
        model: A functional Keras model with static shapes; it is trained in
            place (through `.model`) and left at its widths.
        target: The budget, as on the command line: ``"flops=25%"``,
            ``"params=0.5"``, ``"flops=25M"``, ``"latency=1.5ms"``.
        hardware: Device for latency: a name (``"T4"``, ``"cpu"``) or
            ``"profile:PATH"`` (measured by `morph profile`); None: cpu.
        kind: ``"gamma"`` (batch-norm scales), ``"group_lasso"`` or ``"gates"``.
        strength: ``"auto"`` (lambda steered so that the alive cost lands on the
            target) or a positive number (the regularization loss starts at it).
        epochs: Epochs of the training (needed by `.step` in a custom loop;
            `fit` tells the callbacks itself).
        steps_per_epoch: Batches per epoch (the same: `.step` only).
        learning_rate: The optimizer's learning rate, which bounds the steered
            lambda; None: read from the compiled `.model` when `.callbacks()` is called.
        threshold: A channel is alive above it; None: 1e-2 (0.1 for gates).
        min_channels: Channels every group keeps at least.
        round_to: Alive counts rounded up to a multiple of this (``"auto"``: a
            profile's step).

    Attributes:
        model: What to `compile` and `fit`: `model` with `lambda * penalty` added
            to its training loss (its layers are `model`'s own; for kind
            ``"gates"`` a gated copy's, and `model` itself is left as it was).

    Raises:
        MorphError: A bad target or option, a model with nothing to prune, a
            target below the smallest structure.

    Example:

    >>> shrinker = morphcli.Shrinker(model, "flops=50%")
    >>> shrinker.model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
    ...                        loss="sparse_categorical_crossentropy")
    >>> shrinker.model.fit(train, epochs=10, callbacks=shrinker.callbacks())
    >>> narrow = shrinker.apply("structure.json")
    """

    def __init__(self, model: Any, target: str = "flops=25%", hardware: str | None = None,
                 kind: str = "gamma", strength: float | str = "auto", *,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 learning_rate: float | None = None, threshold: float | None = None,
                 min_channels: int = 1, round_to: int | str = 1) -> None:
        from morphcli.config import parse_target
        from morphcli.core.costs import get_hardware
        from morphcli.core.solver import check_reachable, resolve_target
        from morphcli.steps.context import Priced, round_to_of
        from morphcli.steps.shrink import AUTO_STRENGTH
        from morphcli.training import engine, gates, regularizers

        self.metric, quantity = parse_target(target)
        self.steered = _check_strength(strength)
        device: Any = get_hardware(hardware)  # a named device or a measured profile
        self.seed = Priced.of(model, device)
        budget = resolve_target(self.seed.costs, self.metric, quantity)
        check_reachable(self.seed.costs, self.metric, budget, min_channels,
                        received=f"target={target!r}")
        self.round_to = round_to_of(round_to, self.seed.costs.hardware)
        self.gated = regularizers.canonical_kind(kind) == "gates"
        self.trained = self.seed
        if self.gated:  # a gated copy trains; the seed's graph keys masks and reports
            self.trained = Priced.of(gates.insert(model, self.seed.graph,
                                                  threshold=threshold or gates.THRESHOLD),
                                     device)
        self.reg: Any = regularizers.make_regularizer(
            self.trained.graph, self.trained.costs, kind, self.metric, threshold, min_channels)
        self.strength = AUTO_STRENGTH if self.steered else float(strength)
        self.lambda_start = self.strength / regularizers.strength_scale(self.reg)
        self.seed_cost = self.seed.costs.total(self.metric)
        self.full_cost = self.reg.costs.total(self.metric)  # the trained graph's own units
        self.aim = budget * self.full_cost / self.seed_cost
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.learning_rate = learning_rate
        self._loop_controller: Any = None
        penalized: Any = engine._penalized_model_class  # the class `morph shrink` trains
        self.model: Any = penalized()(
            self.trained.model, self.reg.term, self.lambda_start, None, False)

    def callbacks(self) -> list[Any]:
        """Keras callbacks for `self.model.fit`: the strength's controller (strength
        ``"auto"``) and a logger adding `task_loss`, `alive_cost` and
        `alive_fraction` to each epoch's logs.

        Raises:
            MorphError: Strength ``"auto"``, no `learning_rate` given and
                `self.model` not compiled yet.
        """
        from morphcli.steps.shrink import _structure_logger

        found = [_structure_logger(self.reg, self.seed_cost)]
        if self.steered:
            found.insert(0, self._controller())
        return found

    def penalty(self) -> Any:
        """`lambda * term` as a scalar tensor, to add to the loss of a custom
        training loop (inside its `tf.GradientTape`)."""
        import tensorflow as tf

        return tf.cast(self.model.strength, tf.float32) * self.reg.term()

    def step(self, epoch: int, batch: int) -> float:
        """Steers lambda in a custom loop, as the callback does in `fit`: call it after
        each training step, `batch` counted from 0 within `epoch`. Needs `epochs`
        and `steps_per_epoch`. A fixed numeric strength needs no steering.

        Returns:
            The lambda the next `penalty()` applies.
        """
        if self.steered:
            if self._loop_controller is None:
                if not (self.epochs and self.steps_per_epoch):
                    raise MorphError(
                        "Steering lambda in a custom loop needs the schedule. Received: "
                        f"epochs={self.epochs}, steps_per_epoch={self.steps_per_epoch}",
                        hint="pass epochs= and steps_per_epoch= to Shrinker, or a numeric "
                             "strength.")
                self._loop_controller = self._controller()
                self._loop_controller.set_model(self.model)
                self._loop_controller.set_params({"epochs": self.epochs,
                                                  "steps": self.steps_per_epoch})
            self._loop_controller.on_epoch_begin(epoch)
            self._loop_controller.on_train_batch_end(batch)
        return float(self.model.strength.numpy())

    def _controller(self) -> Any:
        from morphcli.training import controller

        return controller.callback(self.reg, seed_cost=self.full_cost, final_cost=self.aim,
                                   lam0=self.lambda_start, learning_rate=self._rate())

    def _rate(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise MorphError(
                "Strength auto bounds lambda by the learning rate, and the model has no "
                "optimizer yet. Received: learning_rate=None",
                hint="compile shrinker.model before calling callbacks(), or pass "
                     "learning_rate= to Shrinker.")
        import keras

        # Before training a schedule's value is its first one.
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    def _land(self) -> tuple[float, Any, Any, dict[int, Any]]:
        from morphcli.steps.shrink import land

        landed: tuple[float, Any, Any, dict[int, Any]] = land(
            self.reg, self.aim if self.steered else None, self.trained.graph,
            self.seed.graph, self.round_to)
        return landed

    def structure(self) -> dict[str, Any]:
        """The learned structure as `morph shrink` writes it to structure.json: per
        group its width, alive count and alive channel indices; per layer its
        channels; the regularizer; `cost.before` and `cost.after` (the seed's
        totals, and at the alive widths)."""
        from morphcli.core import structure
        from morphcli.steps.shrink import regularizer_record

        landing, _, _, masks = self._land()
        widths = {g: int(m.sum()) for g, m in masks.items()}
        return structure.to_dict(
            self.seed.graph, masks, model=self.seed.model.name, resource=self.metric,
            regularizer=regularizer_record(self.reg, self.strength,
                                           float(self.model.strength.numpy()),
                                           self.lambda_start, self.steered, landing),
            cost={"before": self.seed.report().totals,
                  "after": self.seed.report(widths=widths).totals})

    def apply(self, path: str | Path | None = None, *, recalibrate: Any = None,
              batches: int = 100) -> Any:
        """The narrower model: dead channels removed, the surviving weights kept
        (gates folded away for kind ``"gates"``).

        Args:
            path: Also write the structure (`structure()`) to this JSON file.
            recalibrate: A `tf.data.Dataset` of `(x, y)` training batches: first
                re-estimate the trained model's batch-norm moving statistics on it,
                in place ("precise batch norm", as `morph shrink` does): a shrink
                at a high learning rate leaves them far behind the weights.
            batches: Batches of `recalibrate` to use.

        Returns:
            A new functional Keras model.
        """
        from morphcli import files
        from morphcli.core import surgery
        from morphcli.training import engine, gates

        if recalibrate is not None:
            engine.recalibrate_batch_norm(self.trained.model, recalibrate, batches)
        masks = self._land()[3]
        if self.gated:
            narrow = gates.export(self.trained.model, masks, self.seed.graph)
        else:
            narrow, _ = surgery.rebuild(self.seed.model, masks, self.seed.graph)
        if path is not None:
            files.write_json(path, self.structure())
        return narrow


def _check_strength(strength: Any) -> bool:
    """True for ``"auto"``; a positive number passes; anything else is refused."""
    if strength == "auto":
        return True
    if (isinstance(strength, bool) or not isinstance(strength, int | float)
            or not strength > 0):
        raise MorphError("Expected strength 'auto' or a positive number. "
                         f"Received: strength={strength!r}")
    return False
