"""`morph shrink`: learn which channels a seed network should keep.

Trains the seed with `loss + lambda * regularizer.term()`, thresholds the
per-channel scales, writes `structure.json` and rebuilds the narrower model
(`shrunk.keras`) with the surviving weights. The seed file is never touched:
the model is trained in memory and every output is written atomically.

Output folder::

    OUTDIR/config.yaml      the resolved config
    OUTDIR/checkpoints/     resumable training state (removed when training ends)
    OUTDIR/logs/            TensorBoard scalars: loss, reg_loss, alive_cost...
    OUTDIR/structure.json   alive channels per group, costs before and after
    OUTDIR/shrunk.keras     the narrower model, surviving weights
    OUTDIR/trained.keras    the trained network at the seed's widths (not for gates)
    OUTDIR/summary.json     seed vs shrunk costs, accuracy, lambda, timing
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morphcli.steps.context import Priced, RunContext, make_context, round_to_of
from morphcli.steps.records import record_folder

AUTO_STRENGTH = 1.0  # the regularization loss starts at this value (see strength_scale)
DID_NOTHING = 0.99  # a shrunk structure above this fraction of the seed's cost is warned of
log = logging.getLogger("morphcli")


@dataclass
class ShrinkResult:
    """What `shrink` learned, and what it wrote."""

    masks: dict[int, np.ndarray]
    seed_costs: dict[str, float]
    shrunk_costs: dict[str, float]
    strength: float
    val: dict[str, float]
    shrunk_val: dict[str, float]
    seconds: float
    kept_whole: dict[int, str] = field(default_factory=dict)
    floor_groups: list[int] = field(default_factory=list)
    outdir: Path | None = None
    shrunk: Priced | None = None  # the narrower model, its graph and costs
    # `surgery.check`: max |delta| against the masked seed and the approximate groups.
    surgery: dict = field(default_factory=dict)


def round_masks(masks: dict[int, np.ndarray], values: dict[int, np.ndarray],
                round_to: int, blocks: dict[int, int] | None = None) -> dict[int, np.ndarray]:
    """Rounds alive counts up to a multiple of `round_to` (and of the group's block),
    reviving the strongest dead channels (blocks) first, never above the group's width."""
    rounded = {}
    for gid, mask in masks.items():
        block = (blocks or {}).get(gid, 1)
        step = math.lcm(round_to, block)
        if step <= 1:
            rounded[gid] = mask
            continue
        want = min(mask.size, int(math.ceil(mask.sum() / step) * step)) // block
        alive = mask.reshape(-1, block).any(axis=1)
        strength = values[gid].reshape(-1, block).max(axis=1)
        keep = np.zeros_like(alive)
        keep[np.argsort(-np.where(alive, np.inf, strength), kind="stable")[:want]] = True
        rounded[gid] = np.repeat(keep, block)
    return rounded


def _structure_logger(reg, seed_cost: float):
    import keras

    class StructureLogger(keras.callbacks.Callback):
        """Adds the task loss and the alive structure's cost to each epoch's logs
        (and so to TensorBoard)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                cost = reg.cost()
                logs["task_loss"] = logs["loss"] - logs.get("reg_loss", 0.0)
                logs["alive_cost"] = cost
                logs["alive_fraction"] = cost / seed_cost

    return StructureLogger()


def shrink(ctx: RunContext, outdir: str | Path, *, callbacks: Sequence = ()) -> ShrinkResult:
    """Runs the shrink step of MorphNet on `ctx.seed` and writes its outputs to `outdir`.

    Args:
        ctx: The command's `RunContext` (strategy, data, seed, target), or a
            config to make one from.
        outdir: Output folder (created). Checkpoints found there are resumed.
        callbacks: Extra Keras callbacks (progress display).

    Returns:
        A `ShrinkResult` with the shrunk model priced.

    Raises:
        MorphError: Bad input, NaN loss (`TrainingError`).
    """
    from morphcli import files
    from morphcli.core import structure, surgery
    from morphcli.training import controller, distribute, engine, gates, regularizers

    if not isinstance(ctx, RunContext):
        ctx = make_context(ctx)
    conf, seed, strategy = ctx.conf, ctx.seed, ctx.strategy
    outdir = distribute.write_dir(outdir, strategy)  # other workers than the chief: scratch
    record_folder(conf, outdir, started=_started(outdir))  # a resume: the same, whole
    engine.set_seed(conf.seed)  # the same training randomness however the context was made
    reg_conf = conf.regularizer
    threshold = None if reg_conf.threshold == "auto" else reg_conf.threshold
    trained = seed
    gated = regularizers.canonical_kind(reg_conf.kind) == "gates"
    if gated:  # train a gated copy; the seed's graph keeps keying masks and reports
        with strategy.scope():
            gated_model = gates.insert(seed.model, seed.graph,
                                       threshold=threshold or gates.THRESHOLD)
        trained = Priced.of(gated_model, ctx.hardware)
    reg = regularizers.make_regularizer(trained.graph, trained.costs, reg_conf.kind, ctx.metric,
                                        threshold, reg_conf.min_channels, reg_conf.cost_exponent)
    steered = reg_conf.strength == "auto"
    strength = AUTO_STRENGTH if steered else float(reg_conf.strength)
    lam = strength / regularizers.strength_scale(reg)

    seed_cost = seed.costs.total(ctx.metric)
    steps = [_structure_logger(reg, seed_cost)]
    if steered:  # drive the alive cost to the budget (the trained graph's own units)
        full = reg.costs.total(ctx.metric)
        aim = _shrink_target(ctx) * reg_conf.target_fraction * full / seed_cost
        steps.insert(0, controller.callback(reg, seed_cost=full, final_cost=aim, lam0=lam,
                                            learning_rate=conf.shrink.learning_rate))
    fit = engine.fit(trained.model, ctx.dataset, engine.TrainSpec.of(conf.shrink),
                     workdir=outdir, penalty=reg.term, strength=lam,
                     callbacks=[*steps, *callbacks],
                     **distribute.fit_options(conf.distribute, strategy))

    landing, raw, values, masks = land(reg, aim if steered else None, trained.graph, seed.graph,
                                       round_to_of(conf.shrink.round_to, ctx.hardware))
    floor = [g for g, m in raw.items() if not (values[g] > reg.threshold).any()]
    widths = {g: int(m.sum()) for g, m in masks.items()}
    _warn_if_nothing(raw, reg.cost(landing) / reg.costs.total(ctx.metric), steered)
    with strategy.scope():  # the next step (expand, another round) trains under it too
        if gated:
            model, graph = gates.export(trained.model, masks, seed.graph, with_graph=True)
        else:
            model, graph = surgery.rebuild(seed.model, masks, seed.graph)
    exactness = {} if gated else surgery.check(trained.model, masks, model, seed.graph)
    shrunk = Priced.of(model, ctx.hardware, graph)
    before = seed.report().totals
    after = seed.report(widths=widths).totals
    files.write_json(outdir / "structure.json", structure.to_dict(
        seed.graph, masks, model=seed.model.name, resource=ctx.metric,
        regularizer=regularizer_record(reg, strength, fit.strength, lam, steered, landing),
        cost={"before": before, "after": after}))
    files.save_model(shrunk.model, outdir / "shrunk.keras")
    if not gated:  # the trained network at the seed's widths: the search cuts from it
        files.save_model(trained.model, outdir / "trained.keras")
    shrunk_val = engine.evaluate(shrunk.model, ctx.dataset.val)
    result = ShrinkResult(masks, before, after, fit.strength, fit.val, shrunk_val, fit.seconds,
                          gates.rekey(reg.kept_whole, trained.graph, seed.graph), floor, outdir,
                          shrunk, exactness)
    files.write_json(outdir / "summary.json", summary_dict(result, fit))  # the step's last
    engine.finish(outdir)
    distribute.remove_write_dir(outdir, strategy)
    return result


# What the shrink writes besides its records: a folder holding any has begun.
OUTPUTS = ("checkpoints", "logs", "structure.json", "shrunk.keras", "trained.keras",
           "summary.json")


def _started(outdir: Path) -> bool:
    """Whether a shrink into `outdir` has begun (its outputs are there)."""
    return any((Path(outdir) / name).exists() for name in OUTPUTS)


def land(reg, aim: float | None, trained_graph, seed_graph, round_to: int):
    """The learned structure, keyed by the seed's groups: `(landing threshold, raw
    masks, per-channel values, masks rounded to round_to)`. `aim`: the steered
    shrink's budget (None: fixed strength, the regularizer's threshold).
    `morph shrink` and `morphcli.Shrinker` both call it."""
    from morphcli.training import controller, gates

    landing = reg.threshold if aim is None else controller.landing_threshold(reg, aim)
    raw = gates.rekey(reg.alive_masks(landing), trained_graph, seed_graph)
    values = gates.rekey(reg.numpy_vectors(), trained_graph, seed_graph)
    masks = round_masks(raw, values, round_to, {g: seed_graph.groups[g].block for g in raw})
    return landing, raw, values, masks


def regularizer_record(reg, strength: float, lam: float | None, lam0: float, steered: bool,
                       landing: float) -> dict:
    """The `regularizer` entry of structure.json."""
    return {"kind": reg.kind, "threshold": reg.threshold, "strength": strength,
            "lambda": lam, "lambda_start": lam0, "steered": steered,
            "landing_threshold": landing}


def _shrink_target(ctx: RunContext) -> float:
    """The absolute budget the shrink aims at (the config's, even for a context
    made without one)."""
    if ctx.target is not None:
        return ctx.target
    from morphcli.steps.context import resolve_budget

    return resolve_budget(ctx)


def _warn_if_nothing(masks: dict[int, np.ndarray], alive_fraction: float, steered: bool) -> None:
    """One warning line when the shrink removed nothing worth a rebuild."""
    if all(m.all() for m in masks.values()):
        what = "no channel fell below the threshold"
    elif alive_fraction > DID_NOTHING:
        what = f"the alive structure still costs {alive_fraction:.1%} of the seed"
    else:
        return
    fix = ("train longer (shrink.epochs) or raise shrink.learning_rate" if steered else
           "raise regularizer.strength or shrink.epochs, or set regularizer.strength: auto")
    log.warning("the shrink removed almost nothing: %s; %s", what, fix)


def summary_dict(result: ShrinkResult, fit) -> dict:
    return {
        "seed": result.seed_costs, "shrunk": result.shrunk_costs,
        "ratio": {k: (result.shrunk_costs[k] / v if v else None)
                  for k, v in result.seed_costs.items()},
        "lambda": result.strength, "val_trained_seed": result.val,
        "val_shrunk": result.shrunk_val, "train_seconds": result.seconds,
        "epochs_resumed_from": fit.resumed_from_epoch, "history": fit.history,
        "groups_kept_whole": {str(k): v for k, v in result.kept_whole.items()},
        "groups_at_floor": result.floor_groups,
        "surgery": {"max_abs_delta": result.surgery.get("max_abs_delta"),
                    "approximate_groups": {str(k): v for k, v in
                                           result.surgery.get("approximate", {}).items()}},
    }
