"""`morph expand`: rebuild a model with every prunable width scaled to a budget.

The CLI's `expand` and `morph run` call the same `expand` function: solve the
width multiplier (`morphcli.core.solver`), rebuild the model with fresh
weights (`morphcli.core.surgery.resize`), check that the rebuilt model costs
what the solver predicted, and write the model and its expansion record.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from morphcli.core.solver import Expansion, resolve_target, solve_multiplier
from morphcli.errors import MorphError
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
           record_path: str | Path | None = None, measure: bool = False,
           received: str | None = None) -> ExpandResult:
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
        measure: For a latency target, time candidates on this machine and correct
            the multiplier until the measured latency lands on the target (`_measured`;
            `record["measured"]["met"]` says whether the choice is at or below it).
        received: How the user wrote the target, echoed by an unreachable one's error.

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

    def solve(goal: float, received: str | None = None):
        return solve_multiplier(source.costs, metric, goal, round_to=round_to, mode=mode,
                                base_widths=base_widths, received=received)

    def build(expansion):
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            return resize(source.model, expansion.widths, source.graph)

    expansion = solve(target, received)
    measured = None
    if measure:
        if metric != "latency":
            raise MorphError(f"Measuring checks latency targets; this target is {metric}. "
                             "Received: measure=true", hint="drop --measure.")
        expansion, model, measured = _measured(source, quantity, target, expansion, solve,
                                               build, mode)
    else:
        model = build(expansion)
    expanded = Priced.of(model, source.costs.hardware)
    rebuilt = expanded.costs.total(metric)
    if not math.isclose(rebuilt, expansion.achieved, rel_tol=1e-9):
        raise AssertionError(f"expanded model costs {rebuilt!r}, the solver predicted "
                             f"{expansion.achieved!r}")
    record = expansion.to_dict(source.graph)
    if measured is not None:
        record["measured"] = measured
    if model_path is not None:
        files.save_model(model, model_path)
    if record_path is not None:
        files.write_json(record_path, record)
    return ExpandResult(expanded, expansion, record)


def check_measured(record: dict, mode: str, written: str | Path, hint: str) -> None:
    """Refuses a measured expansion whose target is out of reach on the clock in mode
    `below`, which never goes above it (`morph expand --measure` and `morph run`).

    Args:
        record: The expansion record (`ExpandResult.record`, expand.json).
        mode: The expansion's mode.
        written: Where the model was written, named for inspection.
        hint: How to fix it in the command at hand.

    Raises:
        MorphError: The measured latency of the choice is above the target.
    """
    m = record.get("measured")
    if m and mode == "below" and not m["met"]:
        raise MorphError(
            f"The target is out of reach on this machine's clock: the fastest structure "
            f"tried measured {m['latency_s'] * 1e3:.4g} ms ({m['runtime']}) for target "
            f"{m['target_s'] * 1e3:.4g} ms ({m['error']:+.1%}), and mode `below` never "
            f"goes above it. It was written to {written} with its record for inspection.",
            hint=hint)


MEASURE_ROUNDS = 6  # candidates timed at most
MEASURE_TOLERANCE = 0.02  # a measured latency this close to the target is on it
MEASURE_PASSES = 3  # bench timings of a candidate (beside the source), at least...
MAX_PASSES = 7  # ...and more, up to this many, while they disagree (`_spread`)
FINAL_REPEATS = 150  # rounds of the last timing of each candidate (beside the source)


def _spread(values: list[float]) -> float:
    """The median absolute deviation of `values` as a share of their median: 0 once
    most of them agree, however far one outlier lies."""
    middle = statistics.median(values)
    if middle <= 0:
        return 0.0
    return statistics.median(abs(v - middle) for v in values) / middle


def _measured(source: Priced, quantity, target: float, expansion, solve, build, mode: str):
    """Closes the loop on the clock: builds the solved structure, times it on this
    machine the way `morph bench` times the exported files (`measure.bench`: the
    same conversion, warm-up and rounds, the profile's threads; for a relative
    target beside the source, interleaved call by call, the median of the
    per-round ratios counting, as `morph bench SEED OUT` prints it;
    `MEASURE_PASSES` times, more while the passes disagree), and re-solves for a
    corrected cost-model target, up to `MEASURE_ROUNDS` candidates. In mode `below`
    (a budget) it aims `MEASURE_TOLERANCE` under the target and stops on a candidate
    measured 0 to twice that under it: a candidate accepted on a noisy timing
    measures higher, on average, when timed again. When the
    correction gives a structure already timed, it tries the target halfway between
    the candidates that bracket the goal, or, with all of them on one side, the
    next structure past the nearest one (`_beyond`).

    When there were several candidates, each is timed once more beside the source
    (`FINAL_REPEATS` rounds, one after the other, never three models interleaved:
    a third model in the rounds changes a light model's share), and the choice is
    made on those timings. Keeps the candidate closest to the aim (mode `below`:
    the closest not above the target, else the fastest). The record carries the
    kept candidate's spread: how far its timings disagree (`_spread`), and whether
    that is wider than `MEASURE_TOLERANCE`."""
    from morphcli.measure.bench import MEASURE_REPEATS
    from morphcli.measure.isolated import latencies, release

    hardware = source.costs.hardware
    relative = not isinstance(quantity, int | float) and quantity.relative
    goal = quantity.value if relative else target  # a share of the source, or seconds
    aim = goal * (1 - MEASURE_TOLERANCE) if mode == "below" else goal
    runners: dict = {}  # each model converted once, dropped at the end
    seeds, hows, timed_bytes = [], [], {}
    tried, timings = [], []  # (expansion, model, value); each one's (value, p10, p90)s

    def timed(model, repeats: int) -> tuple[float, float, float]:
        """One `morph bench` timing of `model`: beside the source (its share of it,
        per-round percentiles), or alone (seconds)."""
        lead = [source.model] if relative else []
        found, how = latencies([*lead, model], hardware, repeats, runners=runners)
        hows.append(how)
        timed_bytes.update({id(m): r.sha256 for m, r in zip([*lead, model], found,
                                                             strict=True)})
        if relative:
            seeds.append(found[0].median_s)
            return found[1].ratio, found[1].ratio_p10, found[1].ratio_p90
        return found[0].median_s, found[0].p10_s, found[0].p90_s

    try:
        for _ in range(MEASURE_ROUNDS):
            model = build(expansion)
            found: list[tuple[float, float, float]] = []
            while len(found) < MEASURE_PASSES or (
                    len(found) < MAX_PASSES and _spread([f[0] for f in found]) > MEASURE_TOLERANCE):
                found.append(timed(model, MEASURE_REPEATS))
            timings.append(found)
            tried.append((expansion, model, statistics.median(f[0] for f in found)))
            if abs(tried[-1][2] / aim - 1) <= MEASURE_TOLERANCE:
                break
            try:
                following = solve(_next_goal(tried, aim))
                if _known(following, tried):
                    # The cost model is flat or bent where the clock is not (a staircase
                    # of channel tiles): halve the bracket, or step past the nearest.
                    middle = _midpoint(tried, aim)
                    following = (solve(middle) if middle is not None
                                 else _beyond(tried, aim, solve))
            except MorphError:  # the correction asks for more than the model can reach
                break
            if following is None or _known(following, tried):
                break
            expansion = following
        looped = [t[2] for t in tried]
        passes = [len(found) for found in timings]
        # Shares to seconds: by the source's median time in the loop, and the final
        # timings' own source time for their shares.
        unit = loop_unit = statistics.median(seeds) if relative else 1.0
        if len(tried) > 1:
            final = [timed(m, FINAL_REPEATS) for _, m, _ in tried]
            for found, last in zip(timings, final, strict=True):
                found.append(last)
            tried = [(e, m, last[0]) for (e, m, _), last in zip(tried, final, strict=True)]
            unit = statistics.median(seeds[-len(tried):]) if relative else 1.0
    finally:
        release(runners)  # the timing process ends, its files go
    fits = [t for t in tried if t[2] <= goal] if mode == "below" else tried
    chosen = (min(fits, key=lambda t: abs(t[2] - aim)) if fits
              else min(tried, key=lambda t: t[2]))
    values = timings[next(k for k, t in enumerate(tried) if t[1] is chosen[1])]
    spread = _spread([v[0] for v in values])
    record = {**hows[0], "final_repeats": FINAL_REPEATS if len(tried) > 1 else None,
              "target_s": goal * unit, "aim_s": aim * unit,
              "latency_s": chosen[2] * unit, "error": chosen[2] / goal - 1,
              "met": bool(chosen[2] <= goal),
              "source_s": unit if relative else None,
              "share": chosen[2] if relative else None,
              # The kept candidate's last timing: its rounds' 10th-90th percentiles
              # (of the share, or in seconds), and how far all its timings disagree.
              "rounds_p10": values[-1][1], "rounds_p90": values[-1][2],
              "timings": len(values), "spread": spread, "tolerance": MEASURE_TOLERANCE,
              "spread_wide": spread > MEASURE_TOLERANCE,
              "source_sha256": timed_bytes.get(id(source.model)) if relative else None,
              "candidates": [{"multiplier": e.multiplier, "predicted_s": e.achieved,
                              "measured_s": v * unit, "measured_in_loop_s": alone * loop_unit,
                              "passes": n, "sha256": timed_bytes.get(id(m))}
                             for (e, m, v), alone, n in zip(tried, looped, passes,
                                                            strict=True)]}
    return chosen[0], chosen[1], record


def describe_measured(m: Mapping) -> list[str]:
    """What `expand --measure` prints of its record's `measured`: the kept model's
    latency against the target, how it was timed (as `morph bench` times the
    exported files) with its spread, and a warning when the spread is wider than
    the tolerance."""
    threads = m.get("threads")
    threads = f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    how = f"{m['runtime']}{threads}"
    rounds = m["final_repeats"] or m["repeats"]
    low, high = m.get("rounds_p10"), m.get("rounds_p90")
    if m.get("share") is not None:
        within = "" if low is None else f", 10th-90th percentile {low:.3f}-{high:.3f}x"
        timed = (f"{m['share']:.3f}x the source, timed beside it as `morph bench SOURCE OUT` "
                 f"times ({rounds} rounds{within})")
    else:
        within = ("" if low is None
                  else f", 10th-90th percentile {low * 1e3:.4g}-{high * 1e3:.4g} ms")
        timed = f"timed alone as `morph bench OUT` times ({rounds} calls{within})"
    lines = [f"measured {m['latency_s'] * 1e3:.4g} ms here ({how}) for target "
             f"{m['target_s'] * 1e3:.4g} ms ({m['error']:+.1%}): {timed}; its "
             f"{m['timings']} timings spread ±{m['spread']:.1%}"]
    if m["spread_wide"]:
        lines.append(f"warning: the spread (±{m['spread']:.1%}) is wider than the "
                     f"{m['tolerance']:.0%} tolerance: the machine's load moved the timings, "
                     "and `morph bench` may measure the result that far from this")
    return lines


def _known(expansion, tried) -> bool:
    return any(expansion.widths == t[0].widths for t in tried)


def _bracket(tried, goal: float):
    """(cost-model prediction, measurement) of the nearest candidates measured at
    or below the goal and above it; None for a side without one."""
    below = [(e.achieved, t) for e, _, t in tried if t <= goal]
    above = [(e.achieved, t) for e, _, t in tried if t > goal]
    return (max(below, key=lambda x: x[1]) if below else None,
            min(above, key=lambda x: x[1]) if above else None)


def _midpoint(tried, goal: float) -> float | None:
    """The cost-model target halfway between the nearest candidates measured below
    and above the goal; None without candidates on both sides."""
    low, high = _bracket(tried, goal)
    return None if low is None or high is None else (low[0] + high[0]) / 2


NOTCH = 0.03  # the least step of `_beyond`'s cost-model target...
NOTCHES = 8  # ...taken at most this many times


def _nearest(tried, goal: float) -> tuple[float, float]:
    return min(((e.achieved, t) for e, _, t in tried), key=lambda x: abs(x[1] - goal))


def _beyond(tried, goal: float, solve):
    """With every candidate measured on one side of the goal and the correction
    (the nearest one's cost-model target times goal / measured, `_next_goal`)
    giving a structure already timed: the first structure not yet timed past that
    correction, toward the goal, its target moved on by `NOTCH` at a time, up to
    `NOTCHES` times; None when none is new."""
    predicted, measured = _nearest(tried, goal)
    ratio = goal / measured
    notch = 1 - NOTCH if ratio < 1 else 1 + NOTCH
    for k in range(1, NOTCHES + 1):
        following = solve(predicted * ratio * notch ** k)
        if not _known(following, tried):
            return following
    return None


def _next_goal(tried, goal: float) -> float:
    """The cost-model target of the next candidate: between the nearest candidates
    measured below and above the goal, interpolated (predicted against measured);
    with candidates on one side only, the nearest one's target times goal / measured."""
    low, high = _bracket(tried, goal)
    if low is not None and high is not None and high[1] > low[1]:
        (p0, t0), (p1, t1) = low, high
        return p0 + (goal - t0) * (p1 - p0) / (t1 - t0)
    predicted, measured = _nearest(tried, goal)
    return predicted * goal / measured


def expand_model(model, target_metric: str, quantity, *, hardware=None, round_to: int = 1,
                 mode: str = "below", base_widths: Mapping[int, int] | None = None,
                 measure: bool = False):
    """`expand` for a bare Keras model: returns `(new_model, expansion)`.

    Example:

    >>> new_model, expansion = expand_model(model, "flops", Quantity(0.5, True))
    >>> expansion.multiplier
    """
    from morphcli.core.costs import get_hardware

    result = expand(Priced.of(model, get_hardware(hardware)), target_metric, quantity,
                    round_to=round_to, mode=mode, base_widths=base_widths, measure=measure)
    return result.expanded.model, result.expansion
