"""`morph profile`: measure a model's units on this machine, at several widths.

For every distinct unit of the model (`morphcli.core.profile.units`: a layer
and the batch norms and activations that follow it) a one-unit model is built
at each width of a small grid and timed with the runtime the user deploys on
(TFLite's interpreter, on the bytes `morph export` would write, or Keras
inside one `tf.function`; `morphcli.measure`), the way `morph bench` times a
whole model: warm-up calls, then timed calls, the median kept.
Each unit runs after one element-wise op on its input, and what a call costs
with that op alone is removed: what is left is the unit's marginal cost, as
inside a whole model, where the runtime's threads are already awake and the
input was not just copied in (timing a unit alone over-counts those, by 3-9 µs
a call with 2 threads here). The call's own cost is added back once for the
whole model. Identical units (ResNet's repeated blocks)
are measured once.

The grid of a prunable width `W` is `FRACTIONS · W`, on multiples of the
profile's `round_to`, read first from a sweep of one expensive layer's output
width over two steps of `SWEEP` (`step_of`: the staircase `a + b·ceil(w/s)·s`
that fits the sweep best; XNNPack's float kernels on this AVX2 machine compute
16 output channels at a time, so 17 cost what 32 cost). Tables of layers that
compute their outputs in such tiles (`Rule.tiled`) price an output width at
its next multiple of the step.

The whole model and versions of it at the `CURVE` shares of its FLOPs (one
width multiplier each) are timed end to end, interleaved call by call,
`WHOLE_PASSES` times spread over the profile. Their median passes, against the
sums of their units, make the profile's `curve` (`_curve`), on which a model
is priced from the sum of its units, so that the profile predicts each of
them; the whole model and the one at `NARROW` also fit `scale` and `fixed_s`
(`_calibrate`), the one line of profiles without a curve and the scale of the
latency regularizer's slopes. The profile's predictions for them
(`CostModel(graph, profile).total("latency")`) are stored beside the
measurements, so every profile carries its own check.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from morphcli.core import profile as profiles
from morphcli.core.graph import build_graph
from morphcli.errors import MorphError
from morphcli.measure.clock import Clock, Timing, check_batch, check_counts, check_threads, prefix

RUNTIMES = profiles.RUNTIMES
FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
SWEEP = 32  # the sweep starts at a multiple of SWEEP and covers two of its steps
SWEEP_PASSES = 3  # the sweep is timed this many times and each width's least median kept
WHOLE_PASSES = 5  # the whole model is timed this many times, spread over the profile
WHOLE_TIME = 2.0  # seconds of rounds per pass of the whole models (at most 2000)
STEPS = (32, 16, 8, 4, 2, 1)  # rounding steps tried, largest first
STEP_TOLERANCE = 0.05  # the sweep must rise by more than this share to read a step
STEP_MARGIN = 0.02  # a larger step wins if its misfit is within this share of the best


def _grid(width: int, step: int) -> list[int]:
    """Widths a prunable axis of seed width `width` is measured at."""
    found = set()
    for f in FRACTIONS:
        w = round(f * width)
        if step > 1 and w >= step and f < 1:  # the seed width itself is always measured
            w = step * round(w / step)
        found.add(int(min(width, max(1, w))))
    return sorted(found)


def _split(total: int, seeds: list[int]) -> list[int]:
    """`total` channels split over inputs in proportion to their seed widths."""
    raw = [total * s / sum(seeds) for s in seeds]
    widths = [max(1, math.floor(r)) for r in raw]
    for k in np.argsort([w - r for w, r in zip(widths, raw, strict=True)]):
        if sum(widths) >= total:
            break
        widths[k] += 1
    return widths


def unit_model(graph, unit: list[int], width_in: int | None, width_out: int | None):
    """A Keras model of one unit at the given widths (None: the seed's), each input
    passing through `prefix` first."""
    import keras

    from morphcli.core import keras_adapter

    nodes = [graph.nodes[i] for i in unit]
    lead, last = nodes[0], nodes[-1]
    seed_out = lead.out_shapes[0][-1]
    out_w = width_out or last.out_shapes[0][-1]
    in_w = width_in or lead.in_shapes[0][-1]
    inp_space, out_space = lead.inputs[0] if lead.inputs else None, lead.outputs[0]
    seeds = [s[-1] for s in lead.in_shapes]
    if len(seeds) > 1 and sum(seeds) == seed_out and inp_space != out_space:
        channels = _split(out_w, seeds)  # a concatenation
    else:
        channels = [out_w if space == out_space else in_w if space == inp_space else s[-1]
                    for space, s in zip(lead.inputs, lead.in_shapes, strict=True)]
    inputs = [keras.Input((*s[:-1], c)) for s, c in zip(lead.in_shapes, channels, strict=True)]
    feeds = [prefix(x) for x in inputs]
    config = lead.layer.get_config()
    if lead.rule is not None and lead.rule.resize is not None:
        config = lead.rule.resize(config, channels[0], out_w, lead)
    config.pop("name", None)
    layer = keras_adapter.from_config_trusted(lead.layer, config)
    if len(feeds) > 1 and lead.arguments is not None:  # separate arguments (an attention)
        args = [f for name, f in zip(lead.arguments, feeds, strict=True) if name.isdigit()]
        kwargs = {name: f for name, f in zip(lead.arguments, feeds, strict=True)
                  if not name.isdigit()}
        x = layer(*args, **kwargs, **lead.options)
    else:
        x = layer(feeds[0] if len(feeds) == 1 else feeds)
    for node in nodes[1:]:
        if profiles.transparent(node):
            continue
        config = node.layer.get_config()
        config.pop("name", None)
        x = keras_adapter.from_config_trusted(node.layer, config)(x)
    return keras.Model(inputs, x)


def _axes(graph, unit) -> tuple[int | None, int | None]:
    """Seed widths of the unit's variable input and output axes (None: fixed)."""
    inp, out = profiles.unit_axes(graph, unit)
    if len(graph.nodes[unit[0]].inputs) > 1:
        inp = None  # a join: its table follows the output width only
    lead, last = graph.nodes[unit[0]], graph.nodes[unit[-1]]
    return (int(lead.in_shapes[0][-1]) if inp is not None else None,
            int(last.out_shapes[0][-1]) if out is not None else None)


def profile(model, *, runtime: str = "tflite", batch: int = 1, threads: int | None = None,
            warmup: int = 3, repeats: int = 15, round_to: int | None = None,
            progress: Callable[[int, str], None] | None = None,
            plan: Callable[[int], None] | None = None) -> profiles.Profile:
    """Measures `model`'s units on this machine (see the module docstring).

    Args:
        model: A Keras model with a static input shape.
        runtime: tflite or keras.
        batch: Examples per call.
        threads: TFLite interpreter threads (None: TFLite's default).
        warmup, repeats: Untimed and timed calls per measurement.
        round_to: The rounding step; None measures it.
        progress: Called with (measurements done, what) after each measurement.
        plan: Called with the number of measurements in all, before the first;
            again after the rounding sweep if the step it read changed the count
            (the first count takes a step of 1), so the last `progress` call
            reaches the last count planned.

    Raises:
        MorphError: A runtime, batch, thread count, repeats or warm-up out of
            range (threads past `THREADS_PER_CORE` x this machine's cores, a
            batch whose tensors would not fit in its memory), before anything
            is measured; a layer that cannot be rebuilt or converted.
    """
    from morphcli.core.costs import CostModel

    threads = check_threads(threads)
    check_counts(batch, repeats, warmup)
    clock = Clock(runtime, batch, threads, warmup, repeats)
    graph = build_graph(model)
    check_batch(graph, batch)
    distinct: dict[str, list[list[int]]] = {}
    for unit in profiles.units(graph):
        distinct.setdefault(profiles.unit_key(graph, unit), []).append(unit)
    sweep = _sweep_unit(graph, distinct) if round_to is None else None
    step = round_to or 1
    # Grids use the rounding step, which the sweep measures first: plan with step 1's
    # grid sizes (an upper bound), then with the real count once the step is known.
    grids = {key: _grids(graph, found[0], step) for key, found in distinct.items()}
    total = (_points(grids) + (2 * SWEEP + 1) * SWEEP_PASSES * bool(sweep) + WHOLE_PASSES)
    if plan:
        plan(total)
    done = [0]

    def tick(what: str) -> None:
        done[0] += 1
        if progress:
            progress(done[0], what)

    rounding: dict = {}
    if sweep is not None:
        step, rounding = _measure_step(clock, graph, sweep, tick)
        grids = {key: _grids(graph, found[0], step) for key, found in distinct.items()}
        if plan and done[0] + _points(grids) + WHOLE_PASSES != total:
            plan(done[0] + _points(grids) + WHOLE_PASSES)
    # The whole model and a narrower version of it are timed together WHOLE_PASSES
    # times, before, between and after the tables, and the median pass counts: one
    # timing would carry the load of its moment into the scale of every unit.
    narrower, seen = {}, {_shapes(model)}
    for share in CURVE:  # a small model's shares can round to one structure
        found = _narrow(model, graph, share)
        if found is not None and _shapes(found) not in seen:
            narrower[share] = found
            seen.add(_shapes(found))
    narrow = narrower.get(NARROW)
    # The per-call overhead is timed in the same passes: timed apart, a load that
    # came and went put it above the whole model's own time.
    wholes = [clock.baseline_model((tuple(model.inputs[0].shape[1:]),)), model,
              *narrower.values()]
    passes: list[list[Timing]] = []
    due = {round(k * len(distinct) / (WHOLE_PASSES - 1)) for k in range(WHOLE_PASSES)}

    def time_whole():
        passes.append(clock.time_together(wholes, WHOLE_TIME))
        tick("whole model")

    tables = {}
    for done_tables, (key, found) in enumerate(distinct.items()):
        if done_tables in due:
            time_whole()
        unit = found[0]
        tiled = step if graph.nodes[unit[0]].rule is not None and \
            graph.nodes[unit[0]].rule.tiled else 1
        tables[key] = _measure_table(clock, graph, unit, key, *grids[key], tick, tiled)
        tables[key].layers = [graph.nodes[u[0]].name for u in found]
    while len(passes) < WHOLE_PASSES:
        time_whole()
    base, whole, *rest = [Timing(*(float(np.median([getattr(p[k], q) for p in passes]))
                                   for q in ("median", "p10", "p90")))
                          for k in range(len(wholes))]
    # Every model timed pays the overhead, so a whole model at or below it is noise
    # (a model that is all per-call cost, on a loaded machine): the layers are then
    # given the part of its time above OVERHEAD_CAP, and the profile still prices
    # the model it measured at its measured time.
    overhead = min(base.median, OVERHEAD_CAP * whole.median)
    result = profiles.Profile("", profiles.machine(), runtime, batch, threads, overhead, tables,
                              step, rounding=rounding)
    graphs = [graph, *(build_graph(m) for m in narrower.values())]
    raws = [CostModel(g, result).total("latency") for g in graphs]
    at = list(narrower).index(NARROW) + 1 if narrow is not None else None
    result.scale, result.fixed_s = _calibrate(
        whole.median - overhead, raws[0] - overhead,
        *((rest[at - 1].median - overhead, raws[at] - overhead) if at else (None, None)))
    result.curve = _curve([(u - overhead, t.median - overhead)
                           for u, t in zip(raws, [whole, *rest], strict=True)])
    result.model = {"name": model.name, "measured_s": whole.median, "p10_s": whole.p10,
                    "overhead_measured_s": base.median,
                    "p90_s": whole.p90, "unscaled_s": raws[0],
                    "predicted_s": CostModel(graph, result).total("latency"),
                    "units": sum(map(len, distinct.values())), "distinct_units": len(distinct),
                    "passes_s": [round(p[1].median, 9) for p in passes],
                    "narrower": [
                        {"flops_share": share, "measured_s": t.median, "unscaled_s": raw,
                         "predicted_s": CostModel(g, result).total("latency"),
                         "passes_s": [round(p[k].median, 9) for p in passes]}
                        for k, (share, t, raw, g) in enumerate(
                            zip(narrower, rest, raws[1:], graphs[1:], strict=True), 2)]}
    return result


CURVE = (0.75, 0.55, 0.4, 0.3, 0.22, 0.15, 0.1, 0.06)  # FLOPs shares of narrower models timed whole
NARROW = 0.3  # the one `scale` and `fixed_s` are fitted on, with the profiled model
MAX_FIXED = 0.5  # largest share of the profiled model's time a fitted fixed cost may take
OVERHEAD_CAP = 0.9  # largest share of the profiled model's time its per-call overhead may take


def _narrow(model, graph, share: float):
    """The profiled model with every prunable width scaled by one multiplier down
    to `share` of its FLOPs (the solver and surgery `morph expand` uses, fresh
    weights), or None if it has no prunable width."""
    from morphcli.core.costs import CostModel
    from morphcli.core.solver import solve_multiplier
    from morphcli.core.surgery import resize

    costs = CostModel(graph)
    try:
        expansion = solve_multiplier(costs, "flops", share * costs.total("flops"))
    except MorphError:
        return None
    return resize(model, expansion.widths, graph)


def _shapes(model) -> tuple:
    return tuple(tuple(w.shape) for w in model.weights)


def _curve(points: list[tuple[float, float]]) -> list[list[float]]:
    """`Profile.curve` from (sum of units, measured time) points, the profiled
    model's first: it is always kept, and of the narrower ones those below it in
    both; sorted by the sum, each time at most every later one's (a time above a
    wider model's is taken for the load), and of points with the same sum the
    least; empty with fewer than two left or a profiled model not positive."""
    points = [(round(a, 12), round(b, 12)) for a, b in points]  # as written to the file
    top = points[0]
    if top[0] <= 0 or top[1] <= 0:
        return []
    below = [p for p in points[1:] if 0 < p[0] < top[0] and 0 < p[1] < top[1]]
    kept: list[list[float]] = []
    for units, seconds in [*sorted(below), top]:
        while kept and kept[-1][1] >= seconds:
            kept.pop()  # the load lifted it above a wider model
        if not kept or units > kept[-1][0]:
            kept.append([units, seconds])
    return kept if len(kept) > 1 else []


def _calibrate(measured: float, units: float, narrow_measured: float | None,
               narrow_units: float | None) -> tuple[float, float]:
    """(scale, fixed) such that `measured = fixed + scale · units` holds for the
    profiled model and its narrower version (see `Profile.scale`); with one model,
    or no fit with a positive scale and a fixed cost of at least 0, `fixed` is 0
    and `scale` the profiled model's ratio alone (6 significant digits); with
    no layer time at all, `scale` 1 and the model's time as the fixed cost."""
    if narrow_units is not None and units > narrow_units > 0:
        scale = round((measured - narrow_measured) / (units - narrow_units), 4)
        fixed = measured - scale * units
        # A noisy pair can put most of the time in the fixed cost: not believed.
        if scale > 0 and 0 <= fixed <= MAX_FIXED * measured:
            return scale, max(0.0, round(fixed, 9))
    if units > 0 and measured > 0:
        return float(f"{measured / units:.6g}"), 0.0
    # No layer measured above its own overhead: the model's time is a fixed cost.
    return 1.0, max(0.0, round(measured, 9))


def _points(grids: dict) -> int:
    """How many measurements the tables of `grids` take."""
    return sum(len(a) * len(b) for a, b in grids.values())


def _grids(graph, unit, step) -> tuple[list[int], list[int]]:
    width_in, width_out = _axes(graph, unit)
    lead, last = graph.nodes[unit[0]], graph.nodes[unit[-1]]
    return (_grid(width_in, step) if width_in else [int(lead.in_shapes[0][-1])],
            _grid(width_out, step) if width_out else [int(last.out_shapes[0][-1])])


def _measure_table(clock, graph, unit, key, widths_in, widths_out, tick,
                   step: int = 1) -> profiles.Table:
    lead = graph.nodes[unit[0]]
    vary_in, vary_out = len(widths_in) > 1, len(widths_out) > 1
    seconds = np.zeros((len(widths_in), len(widths_out)))
    spread = 0.0
    for i, a in enumerate(widths_in):
        for j, b in enumerate(widths_out):
            try:
                model = unit_model(graph, unit, a if vary_in else None, b if vary_out else None)
            except (ValueError, TypeError) as err:
                raise MorphError(f"Could not rebuild layer `{lead.name}` ({lead.type}) at "
                                 f"widths {a} -> {b} to measure it: {err}") from None
            timing = clock.time(model)
            shapes = tuple(tuple(t.shape[1:]) for t in model.inputs)
            seconds[i, j] = max(0.0, timing.median - clock.baseline(shapes))
            spread = max(spread, timing.spread)
            tick(lead.name)
    # Latency does not fall when a width grows; a point slower than a wider one is
    # taken for the machine's other load (which only ever adds time): each point
    # becomes the least of itself and every wider point.
    seconds = np.minimum.accumulate(np.minimum.accumulate(seconds[::-1, ::-1], 0), 1)[::-1, ::-1]
    return profiles.Table(key, list(widths_in), list(widths_out), seconds.tolist(),
                          round(float(spread), 4),
                          inner=[int(graph.width(s)) for s in lead.inner], step=step)


def _sweep_unit(graph, distinct) -> tuple[list[int], int] | None:
    """The unit whose output width is swept for the rounding step: the one with
    the most FLOPs per call among the tiled ones whose output width is prunable."""
    from morphcli.core.costs import CostModel

    per_node = CostModel(graph).per_layer("flops")
    best, best_flops = None, -1.0
    for found in distinct.values():
        unit = found[0]
        rule = graph.nodes[unit[0]].rule
        if _axes(graph, unit)[1] is None or rule is None or not rule.tiled:
            continue
        flops = float(sum(per_node[i] for i in unit))
        if flops > best_flops:
            best, best_flops = unit, flops
    if best is None:
        return None
    width = int(graph.nodes[best[-1]].out_shapes[0][-1])
    return best, SWEEP * max(1, round(width / 2 / SWEEP))


def _measure_step(clock, graph, sweep, tick) -> tuple[int, dict]:
    """The rounding step read from a sweep of one unit's output width."""
    unit, base = sweep
    widths = list(range(base, base + 2 * SWEEP + 1))
    models = [unit_model(graph, unit, None, w) for w in widths]

    def timed(model) -> float:
        median = clock.time(model, keep=True).median
        tick("rounding sweep")
        return median

    # SWEEP_PASSES passes, each width's least median kept: load only adds time.
    runs = [[timed(m) for m in models] for _ in range(SWEEP_PASSES)]
    clock.release()
    seconds = np.min(runs, axis=0).tolist()
    step = step_of(widths, seconds)
    return step, {"layer": graph.nodes[unit[0]].name, "widths": widths,
                  "seconds": [round(s, 9) for s in seconds], "step": step,
                  "misfit": {str(k): round(v, 6) for k, v in misfits(widths, seconds).items()}}


def misfits(widths: list[int], seconds: list[float]) -> dict[int, float]:
    """For each step `s` of `STEPS`, the root-mean-square error of the best fit of
    `a + b * ceil(w / s) * s` to the sweep, as a share of its mean latency."""
    w, t = np.asarray(widths, float), np.asarray(seconds, float)
    found = {}
    for step in STEPS:
        design = np.stack([np.ones_like(w), np.ceil(w / step) * step], 1)
        coef, *_ = np.linalg.lstsq(design, t, rcond=None)
        found[step] = float(np.sqrt(np.mean((design @ coef - t) ** 2)) / np.mean(t))
    return found


def step_of(widths: list[int], seconds: list[float]) -> int:
    """The step latency falls in: of the staircases `a + b * ceil(w / s) * s` for `s`
    in `STEPS` (1 is a straight line), the one that fits the sweep best (`misfits`);
    a larger step wins when it fits within `STEP_MARGIN` of the best. 1 if latency
    hardly changes over the sweep."""
    if max(seconds) - min(seconds) <= STEP_TOLERANCE * max(seconds):
        return 1
    found = misfits(widths, seconds)
    best = min(found.values())
    return next(s for s in STEPS if found[s] <= best * (1 + STEP_MARGIN) + 1e-12)
