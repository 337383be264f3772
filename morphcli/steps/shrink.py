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
    OUTDIR/summary.json     seed vs shrunk costs, accuracy, lambda, timing
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morphcli.errors import MorphError

AUTO_STRENGTH = 1.0  # the regularization loss starts at this value (see strength_scale)


@dataclass
class Setup:
    """Everything loaded and validated before training starts."""

    model: object
    dataset: object
    graph: object
    costs: object
    target: float
    metric: str


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
    shrunk_model: object = None


def prepare(conf) -> Setup:
    """Loads the seed and the data, checks they fit, and resolves the target.

    Raises:
        MorphError: Bad model, bad data, mismatched shapes, impossible target.
    """
    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph
    from morphcli.training import data, distribute
    from morphcli.training import engine as train

    # First: multi-worker runtimes and logical devices are set up before TF runs anything.
    strategy = distribute.make_strategy(conf.distribute)
    train.set_seed(conf.seed)  # before the seed model's weights are drawn
    dataset = data.load_dataset(
        conf.data.source, batch_size=conf.data.batch_size,
        validation_split=conf.data.validation_split, seed=conf.seed,
        image_size=conf.data.image_size, augment=conf.data.augment)
    with strategy.scope():  # Keras trains a model with the strategy its variables were made in
        model = load_seed(conf, dataset)
    data.check_fits(dataset, model)
    graph = build_graph(model)
    if not graph.prunable_groups():
        raise MorphError(
            f"Model `{model.name}` has no channel group that can be pruned: every group "
            f"is frozen ({'; '.join(graph.frozen_reasons())}).",
            hint="`morph report MODEL` lists the groups and why they are frozen.")
    costs = CostModel(graph, hardware_of(conf))
    metric = conf.target.metric
    target = resolve_target(costs, metric, conf.target.value, conf.regularizer.min_channels)
    return Setup(model, dataset, graph, costs, target, metric)


def load_seed(conf, dataset=None):
    """The config's seed model. Built-in seeds (zoo:, applications:) without an
    explicit input shape or class count are built for the data's."""
    from morphcli import api

    shape, classes = conf.model.input_shape, conf.model.classes
    if dataset is not None and conf.model.seed.startswith(("zoo:", "applications:")):
        shape = shape or dataset.input_shape
        classes = classes or dataset.num_classes
    return api.load_model(conf.model.seed, input_shape=shape, classes=classes,
                          trust_code=conf.model.trust_code)


def hardware_of(conf):
    from morphcli.core.costs import get_hardware

    spec = conf.target.hardware_spec
    spec = None if spec is None else {"peak_gflops": spec.peak_gflops,
                                      "bandwidth_gbs": spec.bandwidth_gbs}
    return get_hardware(conf.target.hardware, spec)


def resolve_target(costs, metric: str, quantity, min_channels: int = 1) -> float:
    """Absolute target from a `config.Quantity`; refuses targets no structure can meet.

    Raises:
        MorphError: The target is below the cost of the smallest legal structure.
    """
    from morphcli.core.solver import resolve_target as absolute

    seed = costs.total(metric)
    target = absolute(costs, metric, quantity)
    smallest = costs.total(metric, {g.id: min(min_channels, g.width)
                                    for g in costs.graph.prunable_groups()})
    if target < smallest:
        raise MorphError(
            f"Impossible target: {metric} = {target:,.6g}, but the smallest structure this "
            f"model allows (every prunable group at {min_channels} channel(s)) costs "
            f"{smallest:,.6g}, and the seed costs {seed:,.6g}. Received: target.value="
            f"{quantity.value}",
            hint="raise target.value; frozen layers (input, output, boundaries) never shrink.")
    return target


def round_masks(masks: dict[int, np.ndarray], values: dict[int, np.ndarray],
                round_to: int) -> dict[int, np.ndarray]:
    """Rounds alive counts up to a multiple of `round_to`, reviving the strongest
    dead channels first (never above the group's width)."""
    if round_to <= 1:
        return masks
    rounded = {}
    for gid, mask in masks.items():
        want = min(mask.size, int(math.ceil(mask.sum() / round_to) * round_to))
        keep = np.zeros_like(mask)
        keep[np.argsort(-np.where(mask, np.inf, values[gid]), kind="stable")[:want]] = True
        rounded[gid] = keep
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


def shrink(conf, outdir: str | Path, *, callbacks: Sequence = (), setup: Setup | None = None
           ) -> ShrinkResult:
    """Runs the shrink step of MorphNet and writes its outputs to `outdir`.

    Args:
        conf: A resolved `morphcli.config.Config`.
        outdir: Output folder (created). Checkpoints found there are resumed.
        callbacks: Extra Keras callbacks (progress display).
        setup: A `prepare(conf)` result, if already made.

    Returns:
        A `ShrinkResult`.

    Raises:
        MorphError: Bad input, impossible target, NaN loss (`TrainingError`).
    """
    from morphcli import files
    from morphcli.config import dump_yaml
    from morphcli.core import structure, surgery
    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph
    from morphcli.report import build_report
    from morphcli.training import distribute, gates, regularizers
    from morphcli.training import engine as train

    strategy = distribute.make_strategy(conf.distribute)
    outdir = distribute.write_dir(outdir, strategy)  # other workers than the chief: scratch
    setup = _in_scope(setup or prepare(conf), strategy)
    train.set_seed(conf.seed)  # the same training randomness however setup was made
    reg_conf = conf.regularizer
    threshold = None if reg_conf.threshold == "auto" else reg_conf.threshold
    model, graph, costs = setup.model, setup.graph, setup.costs
    gated = regularizers.canonical_kind(reg_conf.kind) == "gates"
    if gated:  # train a gated copy; the seed's graph keeps keying masks and reports
        with strategy.scope():
            model = gates.insert(setup.model, threshold=threshold or gates.THRESHOLD)
        graph = build_graph(model)
        costs = CostModel(graph, setup.costs.hardware)
    reg = regularizers.make_regularizer(graph, costs, reg_conf.kind, setup.metric, threshold,
                                        reg_conf.min_channels)
    strength = AUTO_STRENGTH if reg_conf.strength == "auto" else float(reg_conf.strength)
    lam = strength / regularizers.strength_scale(reg)
    files.write_text(outdir / "config.yaml", dump_yaml(conf))

    seed_cost = setup.costs.total(setup.metric)
    fit = train.fit(model, setup.dataset, train.TrainSpec.of(conf.shrink), workdir=outdir,
                    penalty=reg.term, strength=lam,
                    callbacks=[_structure_logger(reg, seed_cost), *callbacks],
                    **distribute.fit_options(conf.distribute, strategy))

    raw = gates.rekey(reg.alive_masks(), graph, setup.graph)
    values = gates.rekey(reg.numpy_vectors(), graph, setup.graph)
    floor = [g for g, m in raw.items() if not (values[g] > reg.threshold).any()]
    masks = round_masks(raw, values, conf.shrink.round_to)
    widths = {g: int(m.sum()) for g, m in masks.items()}
    shrunk = (gates.export(model, masks, setup.graph) if gated
              else surgery.apply_structure(setup.model, masks, setup.graph))
    before = build_report(setup.graph, setup.costs).totals
    after = build_report(setup.graph, setup.costs, widths).totals
    files.write_json(outdir / "structure.json", structure.to_dict(
        setup.graph, masks, model=setup.model.name, resource=setup.metric,
        regularizer={"kind": reg.kind, "threshold": reg.threshold, "strength": strength,
                     "lambda": lam},
        cost={"before": before, "after": after}))
    files.save_model(shrunk, outdir / "shrunk.keras")
    shrunk_val = train.evaluate(shrunk, setup.dataset.val)
    result = ShrinkResult(masks, before, after, lam, fit.val, shrunk_val, fit.seconds,
                          gates.rekey(reg.kept_whole, graph, setup.graph), floor, outdir,
                          shrunk)
    files.write_json(outdir / "summary.json", summary_dict(result, fit))
    distribute.remove_write_dir(outdir, strategy)
    return result


def _in_scope(setup: Setup, strategy) -> Setup:
    """`setup` with a model whose variables `strategy` made (a `run` round after the
    first starts from a model rebuilt outside the scope); graph and costs follow it."""
    from dataclasses import replace

    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph
    from morphcli.training import distribute

    model = distribute.into_scope(setup.model, strategy)
    if model is setup.model:
        return setup
    graph = build_graph(model)
    return replace(setup, model=model, graph=graph, costs=CostModel(graph, setup.costs.hardware))


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
    }
