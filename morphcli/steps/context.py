"""One run context per command, and the priced models the steps hand on.

A command makes its `RunContext` once: the tf.distribute strategy, the
hardware for latency, the dataset, the seed model with its channel graph and
cost model, and the absolute target. Every step takes the context and returns
a typed result whose `Priced` model the next step uses, so nothing already in
memory is rebuilt (a graph) or reloaded (a model, the data).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from morphcli.core.costs import CostModel, Hardware, get_hardware
from morphcli.core.graph import ChannelGraph, build_graph
from morphcli.errors import MorphError


@dataclass
class Priced:
    """A model with its channel graph and cost model, built once."""

    model: Any
    graph: ChannelGraph
    costs: CostModel

    @classmethod
    def of(cls, model, hardware: Hardware, graph: ChannelGraph | None = None) -> Priced:
        graph = graph if graph is not None else build_graph(model)
        return cls(model, graph, CostModel(graph, hardware))

    def report(self, name: str | None = None, widths=None):
        """The per-layer and total report (`morphcli.reporting.Report`) of this model."""
        from morphcli.reporting import build_report

        return build_report(self.graph, self.costs, widths, name=name)


@dataclass
class RunContext:
    """What every step of one command shares.

    Attributes:
        conf: The resolved config.
        strategy: The one tf.distribute strategy of the command.
        hardware: Device for latency costs.
        dataset: The loaded data (None for commands that train nothing).
        seed: The model the command starts from, priced (None before loading).
        metric: The target's resource.
        target: The absolute target (None when the command has no budget).
    """

    conf: Any
    strategy: Any
    hardware: Hardware
    dataset: Any = None
    seed: Priced | None = None
    metric: str = "flops"
    target: float | None = None

    def load(self, path: str | Path) -> Priced:
        """A model a step wrote, loaded into the strategy's scope and priced."""
        import keras

        with self.strategy.scope():
            model = keras.saving.load_model(path, compile=False)
        return Priced.of(model, self.hardware)

    def with_seed(self, seed: Priced) -> RunContext:
        """The same context starting from another model (a later shrink round)."""
        return replace(self, seed=seed)


def hardware_of(conf) -> Hardware:
    """The config's device for latency: a named one or `target.hardware_spec`."""
    spec = conf.target.hardware_spec
    spec = None if spec is None else {"peak_gflops": spec.peak_gflops,
                                      "bandwidth_gbs": spec.bandwidth_gbs}
    return get_hardware(conf.target.hardware, spec)


def round_to_of(value: int | str, hardware) -> int:
    """A `round_to` setting as a number: `auto` is a measured device's step (the
    channel multiple its latency falls in, `morph profile`), else 1."""
    if value != "auto":
        return int(value)
    return int(getattr(hardware, "round_to", 1) or 1)


def load_data(conf, input_rank: int | None = None):
    """The config's dataset, its arrays shaped for a model whose examples have
    `input_rank` axes (None: images)."""
    from morphcli.training import data

    return data.load_dataset(
        conf.data.source, batch_size=conf.data.batch_size,
        validation_split=conf.data.validation_split, seed=conf.seed,
        image_size=conf.data.image_size, augment=conf.data.augment, input_rank=input_rank,
        selection_split=conf.data.selection_split)


def _builds_for_data(conf) -> bool:
    """Whether the seed is built for the data's shape (zoo:, applications:), so it
    must wait for the data; a model file comes first and shapes the data."""
    return str(conf.model.seed).lower().startswith(("zoo:", "applications:"))


def _input_rank(conf, model) -> int | None:
    if model is not None:
        return len(model.inputs[0].shape) - 1
    return len(conf.model.input_shape) if conf.model.input_shape else None


def load_seed(conf, dataset=None):
    """The config's seed model. Built-in seeds (zoo:, applications:) without an
    explicit input shape or class count are built for the data's."""
    from morphcli.models.zoo import load_static

    shape, classes = conf.model.input_shape, conf.model.classes
    if dataset is not None and conf.model.seed.startswith(("zoo:", "applications:")):
        shape = shape or dataset.input_shape
        classes = classes or dataset.num_classes
    return load_static(conf.model.seed, input_shape=shape, classes=classes,
                       trust_code=conf.model.trust_code)


def make_context(conf, *, strategy=None, model=None, data: bool = True,
                 budget: bool = True) -> RunContext:
    """Makes a command's context: strategy first, then data, seed and target.

    Args:
        conf: The resolved config.
        strategy: The command's strategy, if it already made it (it must be made
            before TensorFlow runs anything).
        model: The model to start from instead of `conf.model.seed` (a loaded
            Keras model).
        data: Load the dataset (and check it fits the model).
        budget: Resolve the config's target and refuse one no structure meets.

    Raises:
        MorphError: Bad model, bad data, mismatched shapes, a model with
            nothing to prune, an impossible target.
    """
    from morphcli.training import data as datasets
    from morphcli.training import distribute, engine

    strategy = strategy or distribute.make_strategy(conf.distribute)
    engine.set_seed(conf.seed)  # before the seed model's weights are drawn
    with strategy.scope():  # Keras trains a model with the strategy its variables were made in
        if model is not None:
            model = distribute.into_scope(model, strategy)
        elif not (data and _builds_for_data(conf)):
            model = load_seed(conf)
    dataset = load_data(conf, _input_rank(conf, model)) if data else None
    if model is None:
        with strategy.scope():
            model = load_seed(conf, dataset)
    if dataset is not None:
        datasets.check_fits(dataset, model)
    ctx = RunContext(conf, strategy, hardware_of(conf), dataset,
                     Priced.of(model, hardware_of(conf)), conf.target.metric)
    if budget:
        ctx.target = resolve_budget(ctx)
    return ctx


def resolve_budget(ctx: RunContext) -> float:
    """The config's target in absolute units, checked against the seed.

    Raises:
        MorphError: Nothing to prune, or a target below the smallest structure.
    """
    from morphcli.core.solver import check_reachable, resolve_target

    graph, costs = ctx.seed.graph, ctx.seed.costs
    if not graph.prunable_groups():
        raise MorphError(
            f"Model `{ctx.seed.model.name}` has no channel group that can be pruned: every "
            f"group is frozen ({'; '.join(graph.frozen_reasons())}).",
            hint="`morph report MODEL` lists the groups and why they are frozen.")
    quantity = ctx.conf.target.value
    target = resolve_target(costs, ctx.metric, quantity)
    check_reachable(costs, ctx.metric, target, ctx.conf.regularizer.min_channels,
                    received=f"target.value={quantity.value}")
    return target
