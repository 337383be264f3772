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
from typing import Any


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
    from morphcli.config import parse_target
    from morphcli.core import structure as struct
    from morphcli.core.costs import get_hardware
    from morphcli.steps.context import Priced, round_to_of
    from morphcli.steps.expand import expand as expand_step

    metric, quantity = parse_target(target)
    device: Any = get_hardware(hardware)  # a named device or a measured profile
    source = Priced.of(model, device)
    base = struct.load(structure).widths_for(source.graph) if structure else None
    return expand_step(source, metric, quantity, mode=mode, base_widths=base,
                       round_to=round_to_of(round_to, source.costs.hardware)).expanded.model


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
