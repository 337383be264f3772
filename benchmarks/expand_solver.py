"""Benchmark: width-multiplier solve time and accuracy on ResNet50 at 224x224.

Builds `keras.applications.ResNet50(weights=None)` (no download), prices it
once, then times `solve_multiplier` for params and FLOPs targets of 0.5x and
2x the seed, with `round_to` 1 and 8, and prints the achieved relative error.

Usage: .venv/bin/python benchmarks/expand_solver.py
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from morphcli.core.costs import CostModel  # noqa: E402
from morphcli.core.graph import build_graph  # noqa: E402
from morphcli.core.solver import solve_multiplier  # noqa: E402


def main() -> None:
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    start = time.perf_counter()
    graph = build_graph(model)
    costs = CostModel(graph)
    print(f"ResNet50 224x224: {len(graph.prunable_groups())} prunable groups, "
          f"graph + cost model in {time.perf_counter() - start:.2f} s")
    print(f"{'resource':<8} {'factor':>6} {'round_to':>8} {'mode':<8} {'w':>7} "
          f"{'target':>14} {'achieved':>14} {'error':>9} {'time':>9}")
    for resource in ("params", "flops"):
        seed = costs.total(resource)
        for factor in (0.5, 2.0):
            for round_to in (1, 8):
                for mode in ("below", "nearest"):
                    start = time.perf_counter()
                    result = solve_multiplier(costs, resource, factor * seed,
                                              round_to=round_to, mode=mode)
                    elapsed = time.perf_counter() - start
                    print(f"{resource:<8} {factor:>6g} {round_to:>8} {mode:<8} "
                          f"{result.multiplier:>7.4f} {result.target:>14,.0f} "
                          f"{result.achieved:>14,.0f} {result.error:>+9.5%} {elapsed * 1e3:>6.1f} ms")


if __name__ == "__main__":
    main()
