"""`morph expand`: rebuild a model with every prunable width scaled to a budget."""

from __future__ import annotations

import math
from collections.abc import Mapping

from morphcli.core.solver import resolve_target, solve_multiplier


def expand_model(model, target_metric: str, quantity, *, hardware=None, round_to: int = 1,
                 mode: str = "below", base_widths: Mapping[int, int] | None = None):
    """Rebuilds `model` with every prunable width scaled to meet a budget.

    Args:
        model: The structure to expand (e.g. the shrunk model), left untouched.
        target_metric: flops, macs, params, kernel_params or latency.
        quantity: `config.Quantity`; a relative value is a fraction of
            `model`'s own cost.
        hardware: Device for latency (name or `costs.Hardware`).
        round_to: Widths are multiples of this.
        mode: `"below"` or `"nearest"` (see `solve_multiplier`).
        base_widths: Widths per group to scale instead of the model's own (e.g. a
            learned structure applied to the seed, `morph expand --structure`).

    Returns:
        `(new_model, expansion)`: a freshly initialised Keras model with the
        expanded widths, and the `Expansion` that chose them.

    Raises:
        MorphError: For an unreachable target or a bad option.
    """
    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph
    from morphcli.core.surgery import resize

    graph = build_graph(model)
    costs = CostModel(graph, hardware)
    target = resolve_target(costs, target_metric, quantity)
    expansion = solve_multiplier(costs, target_metric, target, round_to=round_to, mode=mode,
                                 base_widths=base_widths)
    new_model = resize(model, expansion.widths, graph)
    rebuilt = CostModel(build_graph(new_model), hardware).total(target_metric)
    if not math.isclose(rebuilt, expansion.achieved, rel_tol=1e-9):
        raise AssertionError(f"expanded model costs {rebuilt!r}, the solver predicted "
                             f"{expansion.achieved!r}")
    return new_model, expansion
