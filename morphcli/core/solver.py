"""Expansion: the one width multiplier that brings a structure to the budget.

MorphNet's third step scales every prunable width by one factor `w` so that
the network's cost lands on the target. Given base widths `base_g` (the
shrunk structure, or the seed's widths), group `g` gets

    width_g(w) = max(min_channels, round_to * round(w * base_g / round_to))

(nearest multiple of `round_to`); frozen groups (the model's input and
output, boundaries) never change. Every resource is monotone in the widths
(all cost terms have positive coefficients; roofline latency is a per-layer
max of two such sums), so `cost(w)` is a non-decreasing step function and
bisection finds the largest `w` whose cost fits. A greedy fix-up then spends
what is left of the budget: one more `round_to` step on single groups, at most
once per group so the relative widths stay those of the base structure. The
fix-up starts from the structure at that `w` and from the few structures just
below it (each one group-step smaller than the one before), and keeps the
closest result. When the model has few prunable groups, every structure
within `WINDOW` of the one at `w` is priced at once (`CostModel.totals`) and
the closest competes too: trading a step of one group for steps of another
reaches costs the one-way fix-up cannot. When all that still misses the target
by more than 0.1% because a few groups move in steps that are coarse next to it
(an attention's key width, 1.5% of the cost per channel), those groups are
held a step either side and the others' multiplier is solved again (`_refit`,
reported as `held`): the widths of the others keep their proportions, at a
multiplier up to 2x from the first one. On up to `REFIT_GROUPS` groups that are
all coarse (a small convnet at 8x8: one channel of the first convolution is 5%
of the cost), holding one group a step off is not enough: every structure with
each width within 2x of its share of the multiplier is then priced, and of
those within 0.1% of the target the one least far from those shares is kept
(`_reshape`, its moved groups reported as `held`).

What is reachable: with `round_to=1` and a handful of groups of tens of
channels, within 1% of the target (tests/test_expand.py); on ResNet50 within
0.001%. With `round_to=8` the widths move in steps of 8 channels and the error
is about the cost of one such step in one group: up to 6% below the target on
toy models of 32-96 channels, about 0.01% on ResNet50
(`benchmarks/expand_solver.py`).

Example:

>>> costs = CostModel(build_graph(model))
>>> expansion = solve_multiplier(costs, "flops", 2 * costs.total("flops"))
>>> expansion.widths            # every prunable group, about 1.41x wider
>>> expansion.error             # (achieved - target) / target, <= 0
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from morphcli.core.costs import check_resource
from morphcli.errors import ModelError, MorphError

MAX_MULTIPLIER = 64.0
MODES = ("below", "nearest")
# Structures the fix-up starts from: the one at the bisected `w` and the ones
# just below it. One start misses 1% on small models; more than 4 gained nothing.
STARTS = 4
# Small problems are searched exactly: every structure whose widths lie within
# WINDOW of the structure at the bisected `w` (at least 2 steps either side), when
# there are at most EXACT_LIMIT of them (e.g. 2 groups of tens of channels: ~100).
WINDOW = 0.1
EXACT_LIMIT = 200_000
# When the best candidate is further than this from the target, the few groups
# whose steps are coarsest are held a step either side while the rest is solved
# again (`_refit`): up to 3 ** REFIT_GROUPS more solves.
REFIT_ERROR = 1e-3
REFIT_GROUPS = 3
REFIT_RANGE = 2.0
# Bisection stops when the bracket on `w` is this small relative to `w`:
# far below the distance between two width changes of any real model.
_TOLERANCE = 1e-12


@dataclass
class Expansion:
    """The result of `solve_multiplier`.

    Attributes:
        multiplier: The width multiplier `w` (before the greedy fix-up).
        widths: New width of every prunable group, by group id.
        target: The absolute target cost.
        achieved: Cost of the chosen widths.
        resource: The resource priced (flops, macs, params, kernel_params, latency).
        base_widths: Width of each prunable group the multiplier scaled.
        held: Groups whose steps were too coarse for the budget, held one step
            from the structure at the first multiplier while the multiplier of
            the others was solved again (`_refit`; empty most of the time).
    """

    multiplier: float
    widths: dict[int, int]
    target: float
    achieved: float
    resource: str
    base_widths: dict[int, int] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)

    @property
    def held_note(self) -> str:
        """`", 2 coarse group(s) held off it"`, or "" when none was held."""
        return f", {len(self.held)} coarse group(s) held off it" if self.held else ""

    @property
    def error(self) -> float:
        """Relative error `(achieved - target) / target` (negative: under budget)."""
        return (self.achieved - self.target) / self.target

    def to_dict(self, graph) -> dict:
        """JSON-ready summary, with each group's layers and widths before and after.

        Args:
            graph: The `ChannelGraph` the group ids refer to.
        """
        groups = [
            {"id": gid, "layers": list(graph.groups[gid].members),
             "width_before": int(self.base_widths.get(gid, graph.groups[gid].width)),
             "width_after": int(width), **({"held": True} if gid in self.held else {})}
            for gid, width in sorted(self.widths.items())
        ]
        return {"multiplier": float(self.multiplier), "resource": self.resource,
                "target": float(self.target), "achieved": float(self.achieved),
                "relative_error": float(self.error), "groups": groups}


@dataclass
class _Problem:
    """Cost of the prunable widths as a vector, everything else held at the seed."""

    costs: object
    resource: str
    target: float
    ids: np.ndarray
    base: np.ndarray
    round_to: int
    min_channels: int
    # Per group: widths move in steps of lcm(round_to, block) and never go below
    # `floor` (min_channels, rounded up to whole blocks).
    step: np.ndarray | None = None
    floor: np.ndarray | None = None
    # Groups held at a width whatever `w` (`_refit`): index -> width.
    pinned: dict[int, float] = field(default_factory=dict)

    def __post_init__(self):
        blocks = np.array([self.costs.graph.groups[int(g)].block for g in self.ids], dtype=int)
        self.step = np.array([math.lcm(self.round_to, b) for b in blocks], dtype=float)
        self.floor = blocks * np.ceil(self.min_channels / blocks)

    def widths(self, w: float) -> np.ndarray:
        steps = np.floor(w * self.base / self.step + 0.5)
        widths = np.maximum(self.floor, steps * self.step)
        for i, width in self.pinned.items():
            widths[i] = width
        return widths

    def cost(self, widths: np.ndarray) -> float:
        vec = self.costs.width_vector()
        vec[self.ids] = widths
        return self.costs.total(self.resource, vec)

    def cost_at(self, w: float) -> float:
        return self.cost(self.widths(w))

    def step_up(self, width: float, i: int) -> float:
        """The next width of group `i` above `width` (multiple of its step)."""
        return (width // self.step[i] + 1) * self.step[i]


def resolve_target(costs, metric: str, quantity) -> float:
    """Absolute target from a `config.Quantity`.

    Args:
        costs: The `CostModel` of the model the fraction refers to.
        metric: Resource name.
        quantity: `Quantity(value, relative)`: a fraction of the model's cost
            when `relative`, else an absolute amount.

    Returns:
        The target in base units (FLOPs, weights, seconds...).
    """
    if quantity.relative:
        return quantity.value * costs.total(metric)
    return float(quantity.value)


def solve_multiplier(costs, resource: str, target: float, *,
                     base_widths: Mapping[int, int] | None = None, round_to: int = 1,
                     mode: str = "below", min_channels: int = 1,
                     received: str | None = None) -> Expansion:
    """Finds the width multiplier (and small per-group fix-ups) that hits `target`.

    Args:
        costs: `CostModel` of the model whose groups to scale.
        resource: flops, macs, params, kernel_params or latency.
        target: Absolute target cost.
        base_widths: Width per prunable group to scale (e.g. a shrunk
            structure); groups not listed use the seed's width.
        round_to: Widths are multiples of this (except at the `min_channels` floor).
        mode: `"below"`: the closest structure not above the target;
            `"nearest"`: the closest structure either side.
        min_channels: Every prunable group keeps at least this many channels.
        received: How the user wrote the target (`--target latency=0.003ms`), for
            the message of an unreachable one; default `target=` and its amount.

    Returns:
        An `Expansion` with the multiplier, every prunable group's width and
        the achieved cost.

    Raises:
        MorphError: For a bad option, a model without prunable groups, or a
            target below the smallest structure or above what `w <= 64` reaches.
    """
    problem = _problem(costs, resource, target, base_widths, round_to, mode, min_channels)
    _check_reachable(problem, received)
    lo, hi = _bisect(problem, *_bracket(problem))
    starts = _starts(problem, lo, STARTS)
    candidates = [(w, _fix_up(problem, s, above=False)) for w, s in starts]
    if mode == "nearest":
        candidates += [(w, _fix_up(problem, s, above=True)) for w, s in starts]
        candidates.append((hi, problem.widths(hi)))
    exact = _exact(problem, problem.widths(lo), above=mode == "nearest")
    if exact is not None:
        candidates.append((lo, exact))

    def gap(candidate) -> float:
        return abs(problem.cost(candidate[1]) - target)

    below = [c for c in candidates if problem.cost(c[1]) <= target]
    if not below or gap(min(below, key=gap)) > REFIT_ERROR * target:
        # Both modes try what "below" would, so "nearest" is never further away.
        candidates += _refit(problem, problem.widths(lo), above=False)
        if mode == "nearest":
            candidates += _refit(problem, problem.widths(lo), above=True)
    below = [c for c in candidates if problem.cost(c[1]) <= target]
    if not below or gap(min(below, key=gap)) > REFIT_ERROR * target:
        candidates += _reshape(problem, problem.widths(lo), lo, above=mode == "nearest")
    # Ties go to the first candidate: the one below the target.
    w, widths, *held = min(candidates, key=gap)
    return Expansion(
        multiplier=float(w),
        widths={int(g): int(x) for g, x in zip(problem.ids, widths, strict=True)},
        target=float(target), achieved=problem.cost(widths), resource=resource,
        base_widths={int(g): int(b) for g, b in zip(problem.ids, problem.base, strict=True)},
        held=[int(problem.ids[i]) for i in (held[0] if held else [])],
    )


def _problem(costs, resource, target, base_widths, round_to, mode, min_channels) -> _Problem:
    check_resource(resource)
    if mode not in MODES:
        raise MorphError(f"Unknown expansion mode. Expected one of {', '.join(MODES)}. "
                         f"Received: mode={mode!r}")
    if round_to < 1 or min_channels < 1:
        raise MorphError("round_to and min_channels must be integers >= 1. "
                         f"Received: round_to={round_to}, min_channels={min_channels}")
    if not target > 0:
        raise MorphError(f"The target must be a positive amount. Received: target={target}")
    groups = costs.graph.prunable_groups()
    if not groups:
        raise ModelError(
            "The model has no channel group that can be resized: every group is frozen "
            f"({'; '.join(costs.graph.frozen_reasons())}). Received: groups={len(costs.graph.groups)}",
            hint="`morph report MODEL` lists the groups and why they are frozen.")
    base_widths = dict(base_widths or {})
    unknown = sorted(set(base_widths) - {g.id for g in groups})
    if unknown:
        raise ModelError("base_widths lists groups that are not prunable groups of this "
                         f"model. Received: base_widths keys={unknown}")
    base = np.array([base_widths.get(g.id, g.width) for g in groups], dtype=float)
    if (base < 1).any():
        raise ModelError(f"Every base width must be >= 1. Received: base_widths={base_widths}")
    ids = np.array([g.id for g in groups], dtype=int)
    return _Problem(costs, resource, float(target), ids, base, int(round_to), int(min_channels))


def uniform_widths(costs, multiplier: float, *, round_to: int = 1,
                   min_channels: int = 1) -> dict[int, int]:
    """Every prunable group's width times `multiplier`, rounded as `solve_multiplier`
    rounds (to the nearest multiple of lcm(round_to, block), at least `min_channels`)."""
    if not multiplier > 0:
        raise MorphError("The width multiplier must be a positive number. "
                         f"Received: multiplier={multiplier!r}")
    problem = _problem(costs, "flops", 1.0, None, round_to, "below", min_channels)
    return {int(g): int(w) for g, w in zip(problem.ids, problem.widths(multiplier), strict=True)}


def check_reachable(costs, resource: str, target: float, min_channels: int = 1,
                    received: str | None = None, smallest: float | None = None) -> None:
    """Refuses a target below the cheapest structure the model allows (every
    prunable group at `min_channels`), before anything is trained or solved.

    Raises:
        MorphError: The target is below that structure's cost.
    """
    groups = costs.graph.prunable_groups()
    if smallest is None:
        smallest = costs.total(resource, {g.id: min(-(-min_channels // g.block) * g.block,
                                                    g.width) for g in groups})
    if target < smallest:
        frozen = costs.total(resource, {g.id: 0 for g in groups})
        raise MorphError(
            f"Impossible target for {resource}: the smallest structure (every prunable "
            f"group at {min_channels} channel(s)) costs {amount(resource, smallest)} (frozen "
            f"layers alone cost {amount(resource, frozen)}). Received: "
            f"{received or f'target={amount(resource, target)}'}",
            hint="raise the target; the model's input, output and boundaries never shrink.")


def amount(resource: str, value: float) -> str:
    """A cost as the CLI shows it: latency in ms, counts with thousands separators."""
    if resource == "latency":
        return f"{value * 1e3:,.6g} ms"
    return f"{value:,.0f}" if value >= 1e6 else f"{value:,.6g}"


def _check_reachable(p: _Problem, received: str | None = None) -> None:
    check_reachable(p.costs, p.resource, p.target, p.min_channels, received=received,
                    smallest=p.cost_at(0.0))
    largest = p.cost_at(MAX_MULTIPLIER)
    if p.target > largest:
        raise MorphError(
            f"Impossible target for {p.resource}: a width multiplier of at most "
            f"{MAX_MULTIPLIER:g} reaches {amount(p.resource, largest)} (the base structure "
            f"costs {amount(p.resource, p.cost(p.base))}). Received: "
            f"{received or f'target={amount(p.resource, p.target)}'}",
            hint="lower the target, or expand a wider structure.")


def _bracket(p: _Problem) -> tuple[float, float]:
    """`lo`, `hi` with cost(lo) <= target < cost(hi), or hi == lo == MAX_MULTIPLIER."""
    lo, hi = 0.0, 1.0
    while p.cost_at(hi) <= p.target:
        lo = hi
        if hi >= MAX_MULTIPLIER:
            return lo, hi
        hi = min(2 * hi, MAX_MULTIPLIER)
    return lo, hi


def _bisect(p: _Problem, lo: float, hi: float) -> tuple[float, float]:
    """Narrows the bracket onto the step where the cost crosses the target."""
    while hi - lo > _TOLERANCE * hi:
        mid = 0.5 * (lo + hi)
        if p.cost_at(mid) <= p.target:
            lo = mid
        else:
            hi = mid
    return lo, hi


def _starts(p: _Problem, lo: float, count: int) -> list[tuple[float, np.ndarray]]:
    """The structure at `lo` and the `count - 1` structures just below it.

    Fixing up each of them, not only the one at `lo`, reaches finer costs: the
    structures differ by one step in one group, all within one step of `w * base`.
    """
    steps = np.floor(lo * p.base / p.step + 0.5)
    # Group g reached its j-th last step at w = (steps_g - 0.5 - j) * step_g / base_g.
    back = steps[:, None] - 0.5 - np.arange(count)
    changes = np.unique((back * p.step[:, None] / p.base[:, None])[back > 0])[::-1]
    bounds = np.append(changes[:count], 0.0)
    ws = [lo, *(0.5 * (bounds[:-1] + bounds[1:]))][:count]
    return [(w, p.widths(w)) for w in ws]


def _exact(p: _Problem, center: np.ndarray, above: bool) -> np.ndarray | None:
    """The best structure among all those within `WINDOW` of `center` (each group
    at most `WINDOW` of its width, and at least 2 steps, away), or None when
    there are more than `EXACT_LIMIT` of them.

    On two groups the greedy fix-up can miss by 1%: its steps are one group at a
    time, while the closest structure trades a step of one group for steps of
    the other (the gallery's MNIST convnet at half its FLOPs: 1.30% below with
    the fix-up, 0.087% below searched exactly).
    """
    reach = np.maximum(2, np.ceil(WINDOW * center / p.step))
    axes = []
    for i, (c, r) in enumerate(zip(center, reach, strict=True)):
        widths = c + p.step[i] * np.arange(-r, r + 1)
        axes.append(np.unique(np.maximum(p.floor[i], widths)))
    if math.prod(len(a) for a in axes) > EXACT_LIMIT:
        return None
    grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    full = np.tile(p.costs.width_vector(), (len(grid), 1))
    full[:, p.ids] = grid
    costs = p.costs.totals(p.resource, full)
    gaps = np.abs(costs - p.target) if above else np.where(
        costs <= p.target, p.target - costs, np.inf)
    best = int(np.argmin(gaps))
    return grid[best] if np.isfinite(gaps[best]) else None


def _refit(p: _Problem, center: np.ndarray, above: bool) -> list[tuple]:
    """Candidates for when a few groups' steps are coarse next to the budget (an
    attention's key width, where each channel is 1.5% of the cost): those
    `REFIT_GROUPS` groups whose one step costs most (and more than `REFIT_ERROR`
    of the target) are held one step down, where they are or one step up, and the
    others' multiplier is bisected again for each such choice, within a factor
    `REFIT_RANGE` of the common one, then fixed up. The held groups move one step
    from the common multiplier; the others keep their relative widths."""
    now = p.cost(center)
    deltas = []
    for i in range(len(center)):
        trial = center.copy()
        trial[i] = p.step_up(trial[i], i)
        deltas.append(p.cost(trial) - now)
    order = np.argsort(deltas)[::-1][:REFIT_GROUPS]
    top = [int(i) for i in order if deltas[i] > REFIT_ERROR * p.target]
    if not top or len(top) == len(center):
        return []  # nothing coarse, or nothing left to refit around it
    w = float(np.median(center / p.base))
    found = []
    for offsets in itertools.product((-1, 0, 1), repeat=len(top)):
        pinned = {i: max(p.floor[i], center[i] + o * p.step[i])
                  for i, o in zip(top, offsets, strict=True)}
        held = dataclasses.replace(p, pinned=pinned)
        lo, hi = w / REFIT_RANGE, w * REFIT_RANGE
        if held.cost_at(lo) > p.target:
            continue
        if held.cost_at(hi) > p.target:
            lo, _ = _bisect(held, lo, hi)
        else:
            lo = hi
        found.append((lo, _fix_up(held, held.widths(lo), above), top))
    return found


def _reshape(p: _Problem, center: np.ndarray, w: float, above: bool) -> list[tuple]:
    """For at most `REFIT_GROUPS` groups, all of them coarse: of the structures with
    every width within a factor `REFIT_RANGE` of `center`'s (at most `EXACT_LIMIT`
    of them), the one least far from `center` (the largest factor between a width
    and its `center` width) among those within `REFIT_ERROR` of the target; the
    groups moved further than the exact search's `WINDOW` are reported as held.
    Empty when there are more groups or no such structure.

    On the 8x8 convnet of issue 25 (32 and 64 channels, at half its FLOPs) the
    structures near the multiplier's miss by 0.63%; (15, 68) for (20, 42) misses
    by 0.02%: a step of the first group costs 5% of the target.
    """
    if len(center) > REFIT_GROUPS:
        return []
    axes = []
    for i, c in enumerate(center):
        first = max(p.floor[i], math.ceil(c / REFIT_RANGE / p.step[i]) * p.step[i])
        axes.append(np.arange(first, c * REFIT_RANGE + 0.5, p.step[i]))
    if math.prod(len(a) for a in axes) > EXACT_LIMIT:
        return []
    grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    full = np.tile(p.costs.width_vector(), (len(grid), 1))
    full[:, p.ids] = grid
    costs = p.costs.totals(p.resource, full)
    close = np.abs(costs - p.target) <= REFIT_ERROR * p.target
    if not above:
        close &= costs <= p.target
    if not close.any():
        return []
    far = np.max(np.abs(np.log(grid / center)), axis=1)
    order = np.lexsort((np.abs(costs - p.target), np.where(close, far, np.inf)))
    widths = grid[order[0]]
    reach = np.maximum(2 * p.step, WINDOW * center)
    return [(w, widths, [i for i in range(len(center)) if abs(widths[i] - center[i]) > reach[i]])]


def _fix_up(p: _Problem, widths: np.ndarray, above: bool) -> np.ndarray:
    """Greedily adds one `round_to` step to single groups (at most one per group),
    each time the step that brings the cost closest to the target; with
    `above=False`, only steps that keep the cost at or below the target."""
    widths = widths.copy()
    gap = abs(p.cost(widths) - p.target)
    open_ = set(range(len(widths)))
    while open_:
        best, best_gap = None, gap
        for i in sorted(open_):
            trial = widths.copy()
            trial[i] = p.step_up(trial[i], i)
            cost = p.cost(trial)
            if cost > p.target and not above:
                open_.discard(i)  # costs only grow from here: it will never fit
                continue
            if abs(cost - p.target) < best_gap:
                best, best_gap = i, abs(cost - p.target)
        if best is None:
            break
        widths[best] = p.step_up(widths[best], best)
        gap = best_gap
        open_.discard(best)
    return widths


