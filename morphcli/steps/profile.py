"""`morph profile`: measure a model's units on this machine, at several widths.

For every distinct unit of the model (`morphcli.core.profile.units`: a layer
and the batch norms and activations that follow it) a one-unit model is built
at each width of a small grid and timed with the runtime the user deploys on
(TFLite's interpreter, or Keras inside one `tf.function`), the way `morph
bench` times a whole model: warm-up calls, then timed calls, the median kept.
Each unit runs after one element-wise op on its input, and what a call costs
with that op alone is removed: what is left is the unit's marginal cost, as
inside a whole model, where the runtime's threads are already awake and the
input was not just copied in (timing a unit alone over-counts those, by 3-9 µs
a call with 2 threads here). The call's own cost is added back once for the
whole model. Identical units (ResNet's repeated blocks)
are measured once.

The grid of a prunable width `W` is `FRACTIONS · W`, on multiples of the
profile's `round_to`, read first from a sweep of one expensive layer's output
width (`step_of`): the largest step `m` of `STEPS` such that, where latency
falls between two multiples of `m`, the widths in between save on average
less than a quarter of that fall (latency falls in steps of `m`, not smoothly).

Finally the whole model is timed end to end, and the profile's prediction
for it (`CostModel(graph, profile).total("latency")`) is stored beside the
measurement, so every profile carries its own check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from morphcli.core import profile as profiles
from morphcli.core.graph import build_graph
from morphcli.errors import MorphError

RUNTIMES = ("tflite", "keras")
FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
SWEEP = 32  # output widths swept above a multiple of SWEEP to find the rounding step
SWEEP_PASSES = 2  # the sweep is timed twice and each width's least median kept
MIN_TIME = 0.05  # seconds of timed calls per measurement, at least
MAX_REPEATS = 2000
STEPS = (32, 16, 8, 4, 2)  # rounding steps tried, largest first
STEP_TOLERANCE = 0.05  # a step must change latency by more than this share
STEP_SHARE = 0.25  # widths inside a step save less than this share of it on average


@dataclass
class Timing:
    median: float
    p10: float
    p90: float

    @property
    def spread(self) -> float:
        return (self.p90 - self.p10) / self.median if self.median > 0 else 0.0


class _Clock:
    """Builds runners for Keras models in one runtime and times them."""

    def __init__(self, runtime: str, batch: int, threads: int | None, warmup: int, repeats: int):
        if runtime not in RUNTIMES:
            raise MorphError(f"Unknown runtime. Expected one of {', '.join(RUNTIMES)}. "
                             f"Received: runtime={runtime!r}")
        self.runtime, self.batch, self.threads = runtime, batch, threads
        self.warmup, self.repeats = warmup, repeats
        self._baseline: dict[tuple, float] = {}

    def runner(self, model) -> Callable:
        from morphcli.steps.export import _keras_runner, _tflite_runner

        if self.runtime == "keras":
            return _keras_runner(model)

        return _tflite_runner(convert(model), self.threads)

    def time(self, model) -> Timing:
        from morphcli.steps.export import sample

        inputs = [sample(tuple(t.shape[1:]), self.batch, seed=k) for k, t in
                  enumerate(model.inputs)]
        from morphcli.steps.export import time_calls

        x = inputs[0] if len(inputs) == 1 else inputs
        call = self.runner(model) if len(inputs) == 1 else self._multi(model)
        # Short calls are repeated for MIN_TIME at least: their median is then as
        # steady as a long call's.
        median, p10, p90, _ = time_calls(call, x, warmup=max(1, self.warmup),
                                         repeats=self.repeats, min_time=MIN_TIME,
                                         max_repeats=MAX_REPEATS)
        return Timing(median, p10, p90)

    def _multi(self, model) -> Callable:
        """A runner for a model with several inputs (a join)."""
        if self.runtime == "keras":
            import tensorflow as tf

            fn = tf.function(lambda xs: model(xs, training=False))
            return lambda xs: [np.asarray(t) for t in tf.nest.flatten(
                fn([tf.constant(x) for x in xs]))]
        import tensorflow as tf

        from morphcli.steps.export import _quiet_interpreter

        content = convert(model)
        interpreter = _quiet_interpreter(model_content=content, num_threads=self.threads)
        interpreter.allocate_tensors()
        details = sorted(interpreter.get_input_details(), key=lambda d: d["index"])
        out = interpreter.get_output_details()[0]
        by_shape: dict[tuple, list[int]] = {}
        for d in details:
            by_shape.setdefault(tuple(int(v) for v in d["shape"]), []).append(d["index"])

        def run(xs):
            free = {k: list(v) for k, v in by_shape.items()}
            for x in xs:
                interpreter.set_tensor(free[tuple(x.shape)].pop(0), x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])

        return run

    def baseline(self, shapes: tuple[tuple[int, ...], ...]) -> float:
        """What a call costs before a unit runs: copying its inputs in and one
        element-wise op on each (`prefix`), which leaves the runtime's threads
        awake as the layers before it do inside a whole model."""
        import keras

        if shapes not in self._baseline:
            inputs = [keras.Input(shape) for shape in shapes]
            outputs = [prefix(x) for x in inputs]
            self._baseline[shapes] = self.time(keras.Model(inputs, outputs)).median
        return self._baseline[shapes]


def prefix(x):
    """The op a measured unit runs after, so that its time is its marginal cost."""
    import keras

    return keras.layers.ReLU()(x)


def convert(model) -> bytes:
    """A Keras model as TFLite float32, without the converter's chatter on stdout.

    Raises:
        MorphError: The converter failed (in one line).
    """
    import contextlib
    import io

    import tensorflow as tf

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return tf.lite.TFLiteConverter.from_keras_model(model).convert()
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        raise MorphError(f"The TFLite converter failed on `{model.name}`: "
                         f"{' '.join(str(err).split())[:200]}",
                         hint="measure with the keras runtime.") from None


def _grid(width: int, step: int) -> list[int]:
    """Widths a prunable axis of seed width `width` is measured at."""
    found = set()
    for f in FRACTIONS:
        w = round(f * width)
        if step > 1 and w >= step:
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
        plan: Called once with the number of measurements to come.
    """
    from morphcli.core.costs import CostModel

    if batch < 1 or repeats < 1 or warmup < 0:
        raise MorphError("batch and repeats must be >= 1 and warmup >= 0. Received: "
                         f"batch={batch}, repeats={repeats}, warmup={warmup}")
    clock = _Clock(runtime, batch, threads, warmup, repeats)
    graph = build_graph(model)
    distinct: dict[str, list[list[int]]] = {}
    for unit in profiles.units(graph):
        distinct.setdefault(profiles.unit_key(graph, unit), []).append(unit)
    sweep = _sweep_unit(graph, distinct) if round_to is None else None
    step = round_to or 1
    # Grids use the rounding step, which the sweep measures first: plan with step 1's
    # grid sizes as an upper bound, then report the real count.
    grids = {key: _grids(graph, found[0], step) for key, found in distinct.items()}
    total = (sum(len(a) * len(b) for a, b in grids.values())
             + (SWEEP + 1) * SWEEP_PASSES * bool(sweep) + 1)
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
    tables = {}
    for key, found in distinct.items():
        unit = found[0]
        tables[key] = _measure_table(clock, graph, unit, key, *grids[key], tick)
        tables[key].layers = [graph.nodes[u[0]].name for u in found]
    overhead = clock.baseline((tuple(model.inputs[0].shape[1:]),))
    whole = clock.time(model)
    tick("whole model")
    result = profiles.Profile("", profiles.machine(), runtime, batch, threads, overhead, tables,
                              step, rounding=rounding)
    raw = CostModel(graph, result).total("latency")
    if raw > overhead and whole.median > overhead:
        result.scale = round((whole.median - overhead) / (raw - overhead), 4)
    result.model = {"name": model.name, "measured_s": whole.median, "p10_s": whole.p10,
                    "p90_s": whole.p90, "unscaled_s": raw,
                    "predicted_s": CostModel(graph, result).total("latency"),
                    "units": sum(map(len, distinct.values())), "distinct_units": len(distinct)}
    return result


def _grids(graph, unit, step) -> tuple[list[int], list[int]]:
    width_in, width_out = _axes(graph, unit)
    lead, last = graph.nodes[unit[0]], graph.nodes[unit[-1]]
    return (_grid(width_in, step) if width_in else [int(lead.in_shapes[0][-1])],
            _grid(width_out, step) if width_out else [int(last.out_shapes[0][-1])])


def _measure_table(clock, graph, unit, key, widths_in, widths_out, tick) -> profiles.Table:
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
                          inner=[int(graph.width(s)) for s in lead.inner])


def _sweep_unit(graph, distinct) -> tuple[list[int], int] | None:
    """The unit whose output width is swept for the rounding step: the one with
    the most FLOPs per call among those whose output width is prunable."""
    from morphcli.core.costs import CostModel

    per_node = CostModel(graph).per_layer("flops")
    best, best_flops = None, -1.0
    for found in distinct.values():
        unit = found[0]
        if _axes(graph, unit)[1] is None or graph.nodes[unit[0]].rule is None:
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
    widths = list(range(base, base + SWEEP + 1))
    models = [unit_model(graph, unit, None, w) for w in widths]

    def timed(model) -> float:
        median = clock.time(model).median
        tick("rounding sweep")
        return median

    # SWEEP_PASSES passes, each width's least median kept.
    runs = [[timed(m) for m in models] for _ in range(SWEEP_PASSES)]
    seconds = np.min(runs, axis=0).tolist()
    step = step_of(widths, seconds)
    return step, {"layer": graph.nodes[unit[0]].name, "widths": widths,
                  "seconds": [round(s, 9) for s in seconds], "step": step}


def step_of(widths: list[int], seconds: list[float]) -> int:
    """The largest step in `STEPS` in which latency falls: between two multiples
    of the step where it does fall (by more than `STEP_TOLERANCE`), widths cost
    on average less than `STEP_SHARE` of the way from the multiple above down to
    the one below (a smooth cost goes about half of it); 1 if no step does."""
    at = dict(zip(widths, seconds, strict=True))
    for step in STEPS:
        ratios = []
        for down in range(min(widths) - min(widths) % step, max(widths), step):
            up = down + step
            if down not in at or up not in at or at[up] - at[down] <= STEP_TOLERANCE * at[up]:
                continue
            ratios += [(at[up] - at[w]) / (at[up] - at[down]) for w in range(down + 1, up)]
        if ratios and float(np.mean(ratios)) < STEP_SHARE:
            return step
    return 1
