"""`morph expand`: rebuild a model with every prunable width scaled to a budget.

The CLI's `expand` and `morph run` call the same `expand` function: solve the
width multiplier (`morphcli.core.solver`), rebuild the model with fresh
weights (`morphcli.core.surgery.resize`), check that the rebuilt model costs
what the solver predicted, and write the model and its expansion record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from morphcli.core.solver import Expansion, resolve_target, solve_multiplier
from morphcli.steps.context import Priced


@dataclass
class ExpandResult:
    """The expanded model (priced), the expansion that chose its widths, and its record."""

    expanded: Priced
    expansion: Expansion
    record: dict  # what expand.json holds


def expand(source: Priced, metric: str, quantity, *, round_to: int = 1, mode: str = "below",
           base_widths: Mapping[int, int] | None = None, strategy=None,
           model_path: str | Path | None = None,
           record_path: str | Path | None = None) -> ExpandResult:
    """Scales `source`'s prunable widths by one multiplier to meet a budget.

    Args:
        source: The structure to expand (e.g. the shrunk model), left untouched.
        metric: flops, macs, params, kernel_params or latency.
        quantity: `Quantity` (a relative value is a fraction of `source`'s cost), or
            an absolute target as a number (`RunContext.target`).
        round_to: Widths are multiples of this.
        mode: `"below"` or `"nearest"` (see `solve_multiplier`).
        base_widths: Widths per group to scale instead of the model's own (e.g. a
            learned structure applied to the seed, `morph expand --structure`).
        strategy: Build the new model in this strategy's scope (it trains next).
        model_path: Where to write the expanded `.keras` model, if anywhere.
        record_path: Where to write the expansion record (JSON), if anywhere.

    Returns:
        An `ExpandResult`; the new model has fresh weights.

    Raises:
        MorphError: For an unreachable target or a bad option.
    """
    import contextlib

    from morphcli import files
    from morphcli.core.surgery import resize

    target = (float(quantity) if isinstance(quantity, int | float)
              else resolve_target(source.costs, metric, quantity))
    expansion = solve_multiplier(source.costs, metric, target, round_to=round_to, mode=mode,
                                 base_widths=base_widths)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = resize(source.model, expansion.widths, source.graph)
    expanded = Priced.of(model, source.costs.hardware)
    rebuilt = expanded.costs.total(metric)
    if not math.isclose(rebuilt, expansion.achieved, rel_tol=1e-9):
        raise AssertionError(f"expanded model costs {rebuilt!r}, the solver predicted "
                             f"{expansion.achieved!r}")
    record = expansion.to_dict(source.graph)
    if model_path is not None:
        files.save_model(model, model_path)
    if record_path is not None:
        files.write_json(record_path, record)
    return ExpandResult(expanded, expansion, record)


def expand_model(model, target_metric: str, quantity, *, hardware=None, round_to: int = 1,
                 mode: str = "below", base_widths: Mapping[int, int] | None = None):
    """`expand` for a bare Keras model: returns `(new_model, expansion)`.

    Example:

    >>> new_model, expansion = expand_model(model, "flops", Quantity(0.5, True))
    >>> expansion.multiplier
    """
    from morphcli.core.costs import get_hardware

    result = expand(Priced.of(model, get_hardware(hardware)), target_metric, quantity,
                    round_to=round_to, mode=mode, base_widths=base_widths)
    return result.expanded.model, result.expansion
