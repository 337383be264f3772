"""`morph search`: choose the structure at the budget by its accuracy, not its price.

MorphNet's structure is what a price-weighted sparsity penalty leaves alive; it
weighs what a channel costs, not what it is worth, and on MobileNetV2 at a tight
FLOPs budget it starves the high-resolution layers (issue 22). The search
judges structures the way MetaPruning, AutoSlim and EagleEye do: by accuracy at
the exact budget on held-out data.

Every candidate is a set of per-group *base* widths scaled by one multiplier to
the exact budget (`solve_multiplier`, the same solver `expand` uses):

- `uniform`: the seed's widths (one width multiplier);
- `morphnet`: the shrink's learned structure;
- `blend-A`: per group `seed ** (1 - A) * learned ** A`, for A in `BLENDS`;
- `local` moves around the best so far: the groups split into `TIERS` tiers by
  what one of their channels costs (high-resolution layers cost most), and one
  tier's base widths scaled by `MOVE` or `1 / MOVE`; the budget is then solved
  again, so the others give way. `rounds` rounds of moves.

A candidate is scored by cutting it from the shrink's trained network (each
group keeps its channels with the largest learned scales), fine-tuning the cut
network for `finetune_epochs` epochs (a plain cut of a trained network at 10%
of its FLOPs scores at chance: issue 22, finding 4), re-estimating its batch
norms, and measuring it on the selection split. Ties go to the lower selection
loss. How a candidate is cut and scored: `morphcli.steps.scoring`.

The best is chosen only if it beats `uniform` by more than chance on the
selection examples (a one-sided sign test, corrected for picking the best of
several, `choose`); otherwise uniform is. No
candidate is ever above the budget (mode `below`), and validation data are never
read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morphcli.config.schema import SEARCH_SCORINGS as SCORINGS
from morphcli.config.schema import SearchConfig
from morphcli.errors import MorphError
from morphcli.steps.context import Priced, RunContext
from morphcli.steps.scoring import Candidate, Scorer, envelope

# One blend (and 10 batches of precise BN, `scoring.RECALIBRATION_BATCHES`): on MobileNetV2
# (32x32, 10% FLOPs, 15-epoch shrink) three blends (within 1.2 points of each other on the
# selection split) and 20 batches put the search at 61% of the shrink's time, before the
# scoring was cut to the envelope; the goal is 50% (issue 22).
BLENDS = (0.5,)
TIERS = 3
MOVE = 1.3
# The defaults of `search` and `morphcli.search` are the config's (`morph run`'s).
FINETUNE_EPOCHS = SearchConfig.finetune_epochs
SCRATCH_EPOCHS = SearchConfig.scratch_epochs


@dataclass
class SearchResult:
    """Every candidate scored, the chosen one, and the chosen structure priced
    (fresh weights: it is retrained from scratch next)."""

    candidates: list[Candidate]
    chosen: Candidate
    structure: Priced
    seconds: float
    record: dict = field(default_factory=dict)


def check_scoring(scoring: str, *, finetune_epochs: float | None = None,
                  scratch_epochs: float | None = None) -> None:
    """Refuses an unknown scoring, and an epochs setting the scoring does not use
    (given on the command line or to `morphcli.search`; `None`: not given)."""
    if scoring not in SCORINGS:
        raise MorphError(f"Unknown search scoring. Expected one of {', '.join(SCORINGS)}. "
                         f"Received: scoring={scoring!r}")
    given = {"finetune_epochs": finetune_epochs, "scratch_epochs": scratch_epochs}
    uses = f"{scoring}_epochs"
    unused = next(name for name in given if name != uses)
    if given[unused] is not None:
        raise MorphError(f"Scoring {scoring} does not use {unused}; it trains each "
                         f"candidate for {uses}. Received: {unused}={given[unused]!r} with "
                         f"scoring={scoring!r}",
                         hint=f"drop {unused}, or set {uses} (or the other scoring).")


def check_searchable(conf, dataset) -> None:
    """Refuses, before any training, a run whose search could not run."""
    _refuse_gates(conf.regularizer.kind)
    if dataset is not None and dataset.select is None:
        raise MorphError(_NO_SELECTION, hint="set data.selection_split (e.g. 0.1) on array data.")


def _refuse_gates(kind: str) -> None:
    """Gates train a gated copy whose values do not rank the seed's channels."""
    from morphcli.training import regularizers

    if regularizers.canonical_kind(kind) == "gates":
        raise MorphError("The search ranks channels by batch-norm scales or weight norms. "
                         "Received: regularizer.kind='gates'",
                         hint="use regularizer.kind gamma or group_lasso with search.")


_NO_SELECTION = ("The search chooses on the selection split, and these data have none. "
                 "Received: data.selection_split=0 or an images:DIR source")


def channel_values(trained: Priced, kind: str, metric: str) -> dict[int, np.ndarray]:
    """Per prunable group, the learned magnitude of each channel (|gamma| or the
    group-lasso norm), by which cuts keep channels."""
    from morphcli.training import regularizers

    _refuse_gates(kind)
    reg = regularizers.make_regularizer(trained.graph, trained.costs, kind, metric)
    return reg.numpy_vectors()


def tiers(costs, metric: str, groups: list[int], count: int = TIERS) -> list[list[int]]:
    """The groups split into `count` tiers by the cost of one more channel at the
    seed's widths, the costliest tier first."""
    base = costs.total(metric)
    marginal = {}
    for gid in groups:
        vec = costs.width_vector()
        vec[gid] += 1
        marginal[gid] = costs.total(metric, vec) - base
    ordered = sorted(groups, key=lambda g: (-marginal[g], g))
    return [list(part) for part in np.array_split(np.array(ordered, int), count) if part.size]


def _blend(seed: Mapping[int, int], learned: Mapping[int, int], alpha: float) -> dict:
    return {g: max(1, round(seed[g] ** (1 - alpha) * max(1, learned[g]) ** alpha))
            for g in seed}


def _moved(base: Mapping[int, int], tier: list[int], factor: float) -> dict[int, int]:
    """`base` with the widths of `tier`'s groups scaled by `factor`."""
    return {g: max(1, round(w * (factor if g in tier else 1.0))) for g, w in base.items()}


SIGNIFICANCE = 0.05
NO_SIGNAL = 0.1  # a best within this share of the way from chance to 100% is no evidence


def choose(candidates: list[Candidate]) -> tuple[Candidate, dict]:
    """The best-scoring candidate if it beats `uniform` on the selection split by
    more than chance, else `uniform`.

    A few hundred selection examples cannot tell candidates a point apart: on
    MobileNetV2 at 10% (401 examples) every candidate scored within 1.6 points,
    and the best, one example ahead of uniform, retrained 4.6 points below it.
    The best must win a one-sided sign test against uniform over the examples
    on which the two disagree, at `SIGNIFICANCE` divided by the number of
    candidates it was picked from (Bonferroni): the best of eight is picked
    for being ahead, so one of eight equal structures beats uniform at p <= 0.05
    far more often than 5% of the time. On MobileNetV2 at 5% (seed 2) the best
    of 8 won 20 examples and lost 9 (p = 0.031) and retrained 1.2 points below
    uniform; of the 19 searches run for the benchmarks here it is the only choice
    the correction changes. A best that scores within
    `NO_SIGNAL` of the way from chance (the most frequent label's share) to 100%
    is no evidence either: on MobileNetV2 at 10% one seed's shrink collapsed,
    every candidate scored 12-15% after its fine-tune (chance 11%), the best won
    26 examples and lost 16 against uniform (p = 0.08), and it retrained to 47%
    where uniform retrained to 94.5%.

    Returns:
        `(chosen, record)`; the record names the best, the examples it gained and
        lost against uniform, the p-value and whether uniform was kept (empty
        when the best is uniform or no per-example results are known).
    """
    best = min(candidates, key=lambda c: c.key)
    uniform = next((c for c in candidates if c.name == "uniform"), None)
    if uniform is None or best is uniform:
        return best, {}
    from morphcli.training.engine import at_chance

    chance = best.select_chance
    if chance is not None and at_chance(best.select_accuracy, chance, NO_SIGNAL):
        # The shrunk network was at chance (its shrink collapsed): no fine-tune of
        # it tells structures apart, however its examples fall.
        return uniform, {"best": best.name, "accuracy": best.select_accuracy,
                         "chance": chance, "at_chance": True, "kept_uniform": True}
    if best.correct is None or uniform.correct is None:
        return best, {}
    gained = int(np.sum(best.correct & ~uniform.correct))
    lost = int(np.sum(~best.correct & uniform.correct))
    p = sign_test(gained, lost)
    rivals = len(candidates) - 1
    keep = p > SIGNIFICANCE / rivals
    return (uniform if keep else best), {"best": best.name, "gained": gained, "lost": lost,
                                         "p": p, "rivals": rivals, "kept_uniform": keep}


def kept_line(record: Mapping) -> str:
    """'; the best ... kept uniform' when the sign test kept uniform, else ''."""
    versus = record.get("versus_uniform") or {}
    if not versus.get("kept_uniform"):
        return ""
    if versus.get("at_chance"):
        return (f"; the best, {versus['best']}, scored {versus['accuracy']:.1%} on the selection "
                f"split, near chance ({versus['chance']:.1%}): the shrunk network tells "
                "structures apart no better than chance, so uniform was kept")
    rivals = versus.get("rivals", 1)
    among = (f", the best of {rivals}, so it needed p <= {SIGNIFICANCE / rivals:.3f}"
             if rivals > 1 else "")
    return (f"; the best, {versus['best']}, was right on {versus['gained']} selection examples "
            f"uniform missed and wrong on {versus['lost']} it got (p = {versus['p']:.2f}"
            f"{among}): not better than chance, so uniform was kept")


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: the chance of `wins` or more heads in `wins + losses`
    fair coin flips."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def search(ctx: RunContext, trained: Priced, learned: Mapping[int, int], *,
           kind: str = "gamma", round_to: int = 1, rounds: int = SearchConfig.rounds,
           finetune_epochs: float = FINETUNE_EPOCHS,
           learning_rate: float = SearchConfig.learning_rate,
           outdir: str | Path | None = None,
           progress: Callable[[str], None] | None = None, scoring: str = SearchConfig.scoring,
           scratch_epochs: float = SCRATCH_EPOCHS) -> SearchResult:
    """Scores structures at `ctx.target` on the selection split and returns the best.

    Args:
        ctx: The command's context: its seed (the architecture, priced), metric,
            absolute target and dataset (which needs a selection split).
        trained: The shrink's trained network at the seed's widths (same graph).
        learned: The shrink's learned width per prunable group (seed group ids).
        kind: The regularizer kind whose values rank channels.
        round_to: Widths are multiples of this.
        rounds: Rounds of local moves around the best candidate.
        finetune_epochs: Training of each cut candidate before it is scored.
        learning_rate: Adam's learning rate for that fine-tune.
        outdir: Writes `search.json` and `chosen.keras` (fresh weights) there.
        progress: Called with each candidate's name before it is scored.
        scoring: ``finetune`` (cut from `trained`, fine-tuned, scored) or
            ``scratch`` (fresh weights, the first `scratch_epochs` of the retrain's
            schedule, scored; `trained` only gives the architecture).
        scratch_epochs: Training of each candidate from scratch before it is scored.

    Returns:
        A `SearchResult`.

    Raises:
        MorphError: No selection split, a gated shrink, or an unreachable target.
    """
    from morphcli import files
    from morphcli.core.solver import solve_multiplier
    from morphcli.core.surgery import resize

    dataset = ctx.dataset
    if dataset is None or dataset.select is None:
        raise MorphError(_NO_SELECTION, hint="set data.selection_split (e.g. 0.1) on array data.")
    start = time.perf_counter()
    seed, metric, target = ctx.seed, ctx.metric, ctx.target
    groups = [g.id for g in seed.graph.prunable_groups()]
    full = _widths(seed.graph)
    learned = {g: int(learned.get(g, full[g])) for g in groups}
    check_scoring(scoring)
    tried: dict[tuple, Candidate] = {}
    solved: dict[tuple, tuple] = {}

    def solve(base: Mapping[int, int]):
        """The widths of `base` scaled to the budget and their cost (None: wider
        than the trained network somewhere, so not a cut of it)."""
        key = tuple(int(base[g]) for g in groups)
        if key not in solved:
            expansion = solve_multiplier(seed.costs, metric, target, base_widths=base,
                                         round_to=round_to, mode="below")
            solved[key] = ({g: int(expansion.widths[g]) for g in groups}, expansion.achieved)
        widths, cost = solved[key]
        if any(widths[g] > full[g] for g in groups):
            return None
        return widths, cost

    def at_budget(name: str, base: Mapping[int, int]) -> Candidate | None:
        at = solve(base)
        if at is None:
            return None
        widths, cost = at
        key = tuple(widths[g] for g in groups)
        if key in tried:
            return None
        candidate = scorer(Candidate(name, widths, cost))
        tried[key] = candidate
        return candidate

    bases = {"uniform": full, "morphnet": learned,
             **{f"blend-{a:g}": _blend(full, learned, a) for a in BLENDS}}
    layers = tiers(seed.costs, metric, groups)
    values, bound = None, None
    if scoring == "finetune":
        values = channel_values(trained, kind, metric)
        at = [a[0] for a in map(solve, bases.values()) if a is not None]
        bound = envelope(at, full, MOVE if rounds else 1.0, round_to) if at else None
    scorer = Scorer(ctx, trained, values, finetune_epochs=finetune_epochs,
                    learning_rate=learning_rate, progress=progress, scoring=scoring,
                    scratch_epochs=scratch_epochs, envelope=bound)
    for name, base in bases.items():
        at_budget(name, base)
    best_base = min(((bases[c.name], c) for c in tried.values()), key=lambda bc: bc[1].key)[0]
    for round_ in range(rounds):
        improved = None
        for t, tier in enumerate(layers):
            for factor, sign in ((MOVE, "+"), (1 / MOVE, "-")):
                base = _moved(best_base, tier, factor)
                made = at_budget(f"local-{round_ + 1}:tier{t + 1}{sign}", base)
                if made is not None:
                    bases[made.name] = base
                    if improved is None or made.key < improved.key:
                        improved = made
        current = min(tried.values(), key=lambda c: c.key)
        if improved is None or improved is not current:
            break
        best_base = bases[improved.name]
    candidates = list(tried.values())
    chosen, versus = choose(candidates)
    with ctx.strategy.scope():
        structure = Priced.of(resize(seed.model, chosen.widths, seed.graph), ctx.hardware)
    seconds = time.perf_counter() - start
    record = {
        "metric": metric, "target": float(target), "chosen": chosen.name,
        "chosen_on": "selection", "select_size": int(dataset.select_size),
        "scoring": scoring, "finetune_epochs": finetune_epochs,
        "scratch_epochs": scratch_epochs if scoring == "scratch" else None,
        "seconds": seconds, "versus_uniform": versus,
        "candidates": [{"name": c.name, "cost": float(c.cost),
                        "select_accuracy": c.select_accuracy, "select_loss": c.select_loss,
                        "widths": {str(g): w for g, w in c.widths.items()}}
                       for c in candidates],
    }
    if outdir is not None:
        outdir = Path(outdir)
        files.save_model(structure.model, outdir / "chosen.keras")
        files.write_json(outdir / "search.json", record)  # the step's last write
    return SearchResult(candidates, chosen, structure, seconds, record)


SHRINK_FILES = ("trained.keras", "structure.json")


def search_shrink(ctx: RunContext, shrinkdir: str | Path, outdir: str | Path | None = None,
                  progress: Callable[[str], None] | None = None) -> SearchResult:
    """`search` on a shrink folder: its trained network and learned structure, with
    the settings of `ctx.conf` (`search`, `regularizer.kind`, `expand.round_to`).

    Raises:
        MorphError: The folder lacks what `morph shrink` writes (a gated shrink
            writes no trained.keras), or as `search`.
    """
    from morphcli.core import structure
    from morphcli.steps.context import round_to_of

    shrinkdir, conf = Path(shrinkdir), ctx.conf
    _refuse_gates(conf.regularizer.kind)
    missing = [name for name in SHRINK_FILES if not (shrinkdir / name).is_file()]
    if missing:
        raise MorphError(f"{shrinkdir} is not a finished shrink: {' and '.join(missing)} "
                         f"missing. Received: {shrinkdir}",
                         hint="pass the -o folder of a finished `morph shrink` (gamma or "
                              "group_lasso).")
    trained = ctx.load(shrinkdir / "trained.keras")
    if _widths(trained.graph) != _widths(ctx.seed.graph):
        raise MorphError(f"{shrinkdir}/trained.keras is not the seed's architecture. "
                         f"Received: {shrinkdir}", hint="pass the shrink folder of this seed.")
    learned = structure.load(shrinkdir / "structure.json").widths_for(ctx.seed.graph)
    return search(ctx, trained, learned, kind=conf.regularizer.kind,
                  round_to=round_to_of(conf.expand.round_to, ctx.hardware),
                  rounds=conf.search.rounds, finetune_epochs=conf.search.finetune_epochs,
                  learning_rate=conf.search.learning_rate, outdir=outdir, progress=progress,
                  scoring=conf.search.scoring, scratch_epochs=conf.search.scratch_epochs)


def _widths(graph) -> dict[int, int]:
    return {g.id: int(g.width) for g in graph.prunable_groups()}
