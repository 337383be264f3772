"""The public Python API: what the CLI calls, and what a notebook user calls too.

Example:

>>> import morphcli
>>> model = morphcli.load_model("zoo:resnet20")
>>> morphcli.cost(model, "flops")
>>> morphcli.report(model, hardware="T4")["totals"]["latency_s"]
>>> half = morphcli.expand(model, "flops=0.5")
>>> shrinker = morphcli.Shrinker(model, "flops=25%")  # see morphcli.shrinker
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from morphcli.steps.expand import ExpandResult
    from morphcli.steps.search import SearchResult


def load_model(spec: str, *, input_shape: str | Sequence[int] | None = None,
               classes: int | None = None, trust_code: bool = False) -> Any:
    """A seed model (file, `zoo:NAME`, `applications:NAME`) with static shapes
    (`morphcli.models.zoo.load_static`)."""
    from morphcli.models.zoo import load_static

    return load_static(spec, input_shape=input_shape, classes=classes, trust_code=trust_code)


def with_input_shape(model: Any, shape: Sequence[int]) -> Any:
    """The same model (same weights) re-created on a static input of `shape`."""
    from morphcli.models import zoo

    return zoo.with_input_shape(model, shape)


def analyze(model: Any, *, hardware: str | None = "cpu", structure: str | None = None,
            widths: Mapping[int, int] | None = None, name: str | None = None) -> Any:
    """Prices a model per layer and in total (see `morphcli.reporting.Report`).

    Args:
        model: A functional Keras model with static shapes.
        hardware: Device name for the latency estimate.
        structure: Optional path of a structure.json whose widths to price.
        widths: Optional width per group id (instead of `structure`).
        name: Label for the report (default: the model's name).
    """
    from morphcli import reporting as rep

    return rep.analyze(model, hardware=hardware, structure=structure, widths=widths, name=name)


def cost(model: Any, resource: str = "flops", hardware: str | None = None) -> float:
    """Total cost of `model` for one resource, as `morph report` prices it.

    Args:
        model: A functional Keras model with static shapes.
        resource: flops, macs, params, kernel_params or latency (seconds).
        hardware: Device for latency: a name or ``"profile:PATH"``; None: cpu.

    Returns:
        The cost in base units (FLOPs, multiply-adds, weights, seconds).

    Example:

    >>> morphcli.cost(morphcli.load_model("zoo:resnet20"), "flops")
    """
    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph

    resource = "latency" if resource == "latency_s" else resource
    return CostModel(build_graph(model), hardware).total(resource)


def report(model: Any, *, hardware: str | None = "cpu", structure: str | None = None,
           compare: Any = None) -> dict[str, Any]:
    """What `morph report MODEL --json` prints, as a dict (the CLI prints this one).

    Args:
        model: A functional Keras model with static shapes.
        hardware: Device for latency (as `--hardware`): a name or ``"profile:PATH"``.
        structure: A structure.json whose widths to price (as `--structure`).
        compare: A second model, priced on the same hardware (as `--compare`).

    Returns:
        `name`, `input_shape`, `hardware`, `totals` (flops, macs, params,
        kernel_params, latency_s), `layers`, `groups`, `notes`, `latency_label`;
        with `compare`: ``{"before": ..., "after": ..., "ratio": ...}``.

    Example:

    >>> morphcli.report(model, hardware="T4")["totals"]["latency_s"]
    """
    from morphcli import reporting

    before = analyze(model, hardware=hardware, structure=structure)
    after = None if compare is None else analyze(compare, hardware=hardware)
    data: dict[str, Any] = reporting.to_json(before, after)
    return data


def expand(model: Any, target: str, *, hardware: str | None = None, round_to: int | str = 1,
           mode: str = "below", structure: str | None = None) -> Any:
    """`morph expand`: `model` with every prunable width scaled by one multiplier,
    solved so that its cost lands on `target`; fresh weights (retrain it).

    Args:
        model: A functional Keras model with static shapes (not modified).
        target: As `--target`: ``"flops=0.5"`` and ``"flops=50%"`` are half of
            `model`'s FLOPs, ``"flops=2x"`` twice, ``"flops=25M"`` absolute,
            ``"latency=1.5ms"``, ``"params=300k"``.
        hardware: Device for latency targets: a name or ``"profile:PATH"``.
        round_to: Widths multiples of this (``"auto"``: a profile's step).
        mode: ``"below"`` (never above the target) or ``"nearest"``.
        structure: A structure.json learned on `model` whose widths to scale
            instead of `model`'s (as `--structure`).

    Returns:
        The new Keras model.

    Raises:
        MorphError: A bad target, an unreachable one.

    Example:

    >>> wide = morphcli.expand(narrow, "latency=50%", hardware="profile:p.json")
    """
    return expansion(model, target, hardware=hardware, round_to=round_to, mode=mode,
                     structure=structure).expanded.model


def expansion(model: Any, target: str | tuple[str, Any], *, hardware: Any = None,
              round_to: int | str = 1, mode: str = "below",
              structure: str | Path | None = None, measure: bool = False,
              model_path: str | Path | None = None, record_path: str | Path | None = None,
              received: str | None = None) -> ExpandResult:
    """`expand` with everything it decided: what `morph expand` calls.

    Args:
        model: As `expand`, or a `steps.context.Priced` (its graph and cost model
            built already, on its own device: `hardware` is then not read).
        round_to, mode, structure: As `expand`.
        target: A target string, or `(metric, Quantity)` already parsed (a config's).
        hardware: As `expand`, or a device object (`get_hardware`'s).
        measure: Latency: time candidates here and correct until the clock agrees.
        model_path: Also write the new model there (`.keras`).
        record_path: Also write the expansion record (JSON) there.
        received: How the user wrote the target, for the error of an unreachable one.

    Returns:
        An `ExpandResult`: `.expanded` (the model, priced), `.expansion` (the
        multiplier, achieved cost and error) and `.record` (expand.json).
    """
    from morphcli.config import parse_target
    from morphcli.core import structure as struct
    from morphcli.core.costs import get_hardware
    from morphcli.steps.context import Priced, round_to_of
    from morphcli.steps.expand import expand as expand_step

    if isinstance(target, str):
        received = received or f"target={target!r}"
        metric, quantity = parse_target(target)
    else:
        metric, quantity = target
    device: Any = get_hardware(hardware)  # a named device or a measured profile
    source = model if isinstance(model, Priced) else Priced.of(model, device)
    base = struct.load(structure).widths_for(source.graph) if structure else None
    result: ExpandResult = expand_step(
        source, metric, quantity, mode=mode, base_widths=base,
        round_to=round_to_of(round_to, source.costs.hardware), model_path=model_path,
        record_path=record_path, measure=measure, received=received)
    return result


def scale_width(model: Any, multiplier: float, *, round_to: int = 1,
                min_channels: int = 1) -> Any:
    """`model` with every prunable group's width times `multiplier` (one uniform
    width multiplier, rounded as `expand` rounds); fresh weights.

    Example:

    >>> half = morphcli.scale_width(model, 0.5)
    """
    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph
    from morphcli.core.solver import uniform_widths
    from morphcli.core.surgery import resize
    from morphcli.errors import MorphError

    if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
        raise MorphError(f"Expected a positive number. Received: multiplier={multiplier!r}")
    graph = build_graph(model)
    widths = uniform_widths(CostModel(graph), float(multiplier), round_to=round_to,
                            min_channels=min_channels)
    return resize(model, widths, graph)


def search(trained: Any, learned: str | Path | Mapping[str, Any], target: str, *,
           data: Any, select: Any, hardware: str | None = None, kind: str = "gamma",
           round_to: int | str = 1, rounds: int = 1, finetune_epochs: float | None = None,
           learning_rate: float = 1e-3, batch_size: int = 64, seed: int = 0,
           outdir: str | Path | None = None, scoring: str = "finetune",
           scratch_epochs: float | None = None) -> SearchResult:
    """`morph run`'s search: the structure at the budget chosen by its accuracy.

    Candidates (the seed's widths, the learned structure, blends of the two and
    local moves) are each scaled to `target`, cut from `trained`, fine-tuned on
    `data` and scored on `select`; none is above the budget.

    Args:
        trained: The shrink's trained network at the seed's widths: the model
            given to a `Shrinker` (kind gamma or group_lasso), which fitting
            `shrinker.model` trained in place; not modified.
        learned: Its learned structure: a structure.json path or the dict
            `Shrinker.structure()` returns.
        target: As `--target`: ``"flops=0.5"`` (half of `trained`'s FLOPs),
            ``"flops=25M"``, ``"latency=1.5ms"``.
        data: Training data for the fine-tunes: a `tf.data.Dataset` of `(x, y)`
            batches, or arrays `(x, y)` (batched by `batch_size`, shuffled).
        select: Held-out data the candidates are chosen on (never trained on),
            in the same forms; not your validation data.
        hardware: Device for latency targets: a name or ``"profile:PATH"``.
        kind: The regularizer kind the shrink used (its values rank channels).
        round_to: Widths multiples of this (``"auto"``: a profile's step).
        rounds: Rounds of local moves around the best candidate.
        finetune_epochs: Training of each cut candidate before it is scored, in
            epochs of `data` (default 0.5, as `morph run`); scoring finetune only.
        learning_rate: Adam's learning rate for those fine-tunes.
        batch_size: Batch size for arrays.
        seed: Seed of the fine-tunes and of the shuffle of arrays.
        outdir: Also write `search.json` and `chosen.keras` there.
        scoring: ``"finetune"`` (as above) or ``"scratch"``: each candidate
            trained from fresh weights for `scratch_epochs` epochs (Adam at
            `learning_rate`, constant) on `data`, then scored on `select`.
        scratch_epochs: That training, in epochs of `data` (default 2); scoring
            scratch only.

    Returns:
        A `SearchResult`: `.structure.model` the chosen structure (fresh
        weights: train it next), `.chosen` (name, widths, cost, selection
        accuracy), `.candidates` and `.record` (what search.json holds).

    Raises:
        MorphError: A bad target or data, a gated shrink, an unreachable target,
            an unknown scoring or an epochs setting it does not use.

    Example:

    >>> result = morphcli.search(model, shrinker.structure(), "flops=0.5",
    ...                          data=train, select=(x_select, y_select))
    >>> result.structure.model.fit(train, epochs=30)
    """
    from morphcli.config import load_config, parse_target
    from morphcli.core import structure as struct
    from morphcli.core.costs import get_hardware
    from morphcli.core.solver import check_reachable, resolve_target
    from morphcli.steps.context import Priced, RunContext, round_to_of
    from morphcli.steps.search import FINETUNE_EPOCHS, SCRATCH_EPOCHS, check_scoring
    from morphcli.steps.search import search as search_step
    from morphcli.training import distribute

    check_scoring(scoring, finetune_epochs=finetune_epochs, scratch_epochs=scratch_epochs)
    metric, quantity = parse_target(target)
    conf = load_config(None, {"seed": seed, "target.metric": metric,  # scratch scoring's training:
                              "retrain.optimizer": "adam", "retrain.schedule": "constant",
                              "retrain.learning_rate": learning_rate})
    device: Any = get_hardware(hardware)
    priced = Priced.of(trained, device)  # the seed architecture: what candidates are cut from
    budget = resolve_target(priced.costs, metric, quantity)
    check_reachable(priced.costs, metric, budget, 1, received=f"target={target!r}")
    found = (struct.load(learned) if isinstance(learned, str | Path)
             else struct.from_dict(dict(learned)))
    ctx = RunContext(conf, distribute.make_strategy(conf.distribute), device,
                     _search_data(trained, data, select, batch_size, seed), priced, metric,
                     budget)
    result: SearchResult = search_step(
        ctx, priced, found.widths_for(priced.graph), kind=kind,
        round_to=round_to_of(round_to, priced.costs.hardware), rounds=rounds,
        finetune_epochs=FINETUNE_EPOCHS if finetune_epochs is None else finetune_epochs,
        learning_rate=learning_rate, outdir=outdir, scoring=scoring,
        scratch_epochs=SCRATCH_EPOCHS if scratch_epochs is None else scratch_epochs)
    return result


def _search_data(model: Any, data: Any, select: Any, batch_size: int, seed: int) -> Any:
    """The user's training and selection data as the `Dataset` the search reads."""
    from morphcli.training.data import Dataset

    train, steps, first = _batches(model, data, "data", batch_size, seed)
    chosen, _, _ = _batches(model, select, "select", batch_size, None)
    select_size = sum(int(x.shape[0]) for x, _ in chosen)
    return Dataset(train=train, val=None, input_shape=tuple(model.inputs[0].shape[1:]),
                   num_classes=int(model.outputs[0].shape[-1]), train_size=steps * first,
                   val_size=0, name="python", batch_size=first, select=chosen,
                   select_size=select_size)


def _batches(model: Any, data: Any, name: str, batch_size: int,
             seed: int | None) -> tuple[Any, int, int]:
    """`(dataset, batches per epoch, examples in the first batch)` of a `tf.data`
    dataset of `(x, y)` batches or of arrays `(x, y)` (batched here)."""
    import tensorflow as tf

    from morphcli.errors import MorphError

    if isinstance(data, tuple | list) and len(data) == 2:
        data = tf.data.Dataset.from_tensor_slices((data[0], data[1]))
        if seed is not None:
            data = data.shuffle(len(data), seed=seed)
        data = data.batch(batch_size)
    if not isinstance(data, tf.data.Dataset):
        raise MorphError(f"Expected a tf.data.Dataset of (x, y) batches or arrays (x, y). "
                         f"Received: {name}={type(data).__name__}")
    expected = tuple(model.inputs[0].shape)
    spec = data.element_spec
    shape = tuple(spec[0].shape) if isinstance(spec, tuple) and len(spec) == 2 else None
    if shape is None or len(shape) != len(expected) or any(
            e is not None and g is not None and e != g
            for e, g in zip(expected[1:], shape[1:], strict=True)):
        raise MorphError(f"Expected (x, y) batches of x shaped like the model's input "
                         f"{expected}. Received: {name} elements {spec}",
                         hint="batch a dataset of single examples with .batch(64).")
    steps = int(data.cardinality())
    if steps == tf.data.INFINITE_CARDINALITY:
        raise MorphError(f"Expected one epoch of batches. Received: {name} is infinite "
                         "(.repeat())", hint="pass the dataset without .repeat().")
    if steps < 0:  # unknown: count once
        steps = sum(1 for _ in data)
    if steps == 0:
        raise MorphError(f"Expected at least one batch. Received: {name} is empty")
    first = int(next(iter(data))[0].shape[0])
    return data, steps, first
