"""The clock: calls timed in interleaved rounds, their quantiles, and `Clock`,
which builds the runners of Keras models in one runtime and keeps those timed
more than once; and the bounds on what a measurement may ask of this machine.

`check_threads`, `check_counts` and `check_batch` refuse, before anything is
built or allocated, a thread count far past this machine's cores, a count of
calls out of range, and a batch whose tensors would not fit in its memory.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from morphcli.core.machine import FLOAT_BYTES, MEMORY_SHARE, memory_bytes
from morphcli.core.profile import RUNTIMES  # what may run a measured Keras model
from morphcli.errors import MorphError

MIN_TIME = 0.05  # seconds of timed calls per measurement, at least
MAX_REPEATS = 2000
# More threads than cores only wait for each other: a measurement with 10,000
# threads on 2 cores ran 10 times slower. The CLI's --threads has the same bound
# (a profile for a device with more cores, measured here, is wrong: measure it there).
THREADS_PER_CORE = 1


def check_threads(threads) -> int | None:
    """`threads` as a count, checked against this machine (None: the runtime's default).

    Raises:
        MorphError: Not a whole number from 1 to `THREADS_PER_CORE` x the cores.
    """
    cores = os.cpu_count() or 1
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise MorphError("threads must be a whole number from 1. "
                         f"Received: threads={threads!r}")
    if threads > THREADS_PER_CORE * cores:
        raise MorphError(f"--threads {threads} is more than this machine's {cores} CPU "
                         "core(s): the threads would wait for each other and "
                         f"every time would be slower. Received: threads={threads}",
                         hint="measure with the threads the device you deploy to runs, on it.")
    return threads


def check_counts(batch, repeats, warmup) -> None:
    """Refuses a batch or a number of timed calls below 1, or of warm-up calls below 0.

    Raises:
        MorphError: One of them is not a whole number in range.
    """
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (batch, repeats, warmup)) \
            or batch < 1 or repeats < 1 or warmup < 0:
        raise MorphError("batch and repeats must be whole numbers >= 1 and warmup >= 0. "
                         f"Received: batch={batch!r}, repeats={repeats!r}, warmup={warmup!r}")


def check_batch(graph, batch: int) -> None:
    """Refuses a batch whose largest tensor in `graph` (a model's input, or a
    layer's output) would take more than `MEMORY_SHARE` of this machine's memory.

    Raises:
        MorphError: The batch is too large, in one line, before anything is allocated.
    """
    largest, where = 0, ""
    for node in graph.nodes:
        for shape in [*node.in_shapes, *node.out_shapes]:
            size = math.prod(int(d) for d in shape)
            if size > largest:
                largest, where = size, "x".join(map(str, shape)) or "1"
    need, have = batch * largest * FLOAT_BYTES, memory_bytes()
    if need > MEMORY_SHARE * have:
        raise MorphError(
            f"--batch {batch} needs {need / 2**30:.1f} GiB for one tensor of "
            f"`{graph.model.name}` (its largest, {where} floats per example), more than "
            f"{MEMORY_SHARE:.0%} of this machine's {have / 2**30:.1f} GiB of memory. "
            f"Received: batch={batch}",
            hint=f"use --batch {max(1, int(MEMORY_SHARE * have // (largest * FLOAT_BYTES)))} "
                 "or less.")


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """Median, 10th and 90th percentiles."""
    q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return statistics.median(values), q[0], q[-1]


def time_rounds(calls: list[Callable], xs: list, *, warmup: int, repeats: int,
                progress: Callable[[int], None] | None = None) -> list[list[float]]:
    """Times `calls[k](xs[k])` interleaved: `warmup` untimed rounds, then `repeats`
    rounds of one timed call of each. Returns each call's times (seconds)."""
    times: list[list[float]] = [[] for _ in calls]
    for r in range(warmup + repeats):
        for call, x, found in zip(calls, xs, times, strict=True):
            start = time.perf_counter()
            call(x)
            if r >= warmup:
                found.append(time.perf_counter() - start)
            if progress:
                progress(1)
    return times


def time_calls(call: Callable, x, *, warmup: int, repeats: int, min_time: float = 0.0,
               max_repeats: int | None = None, progress: Callable[[int], None] | None = None
               ) -> tuple[float, float, float, int]:
    """Times `call(x)`: `warmup` untimed calls, then `repeats` timed ones, or more
    when `min_time` asks for that many seconds of timed calls (at most
    `max_repeats`). `progress(1)` after every call. Returns the median, the 10th
    and 90th percentiles (seconds) and the number of timed calls."""
    start = time.perf_counter()
    for _ in range(warmup):
        call(x)
        if progress:
            progress(1)
    each = (time.perf_counter() - start) / warmup if warmup else 0.0
    repeats = repeats_for(each, repeats, min_time, max_repeats)
    times = time_rounds([call], [x], warmup=0, repeats=repeats, progress=progress)[0]
    return (*quantiles(times), len(times))


def repeats_for(each: float, repeats: int, min_time: float, max_repeats: int | None) -> int:
    """Timed calls (or rounds) of `each` seconds: `repeats`, or more to fill
    `min_time` seconds, at most `max_repeats`."""
    if min_time > 0 and each > 0:
        repeats = max(repeats, int(min_time / each))
    return min(repeats, max_repeats) if max_repeats else repeats


@dataclass
class Timing:
    median: float
    p10: float
    p90: float

    @property
    def spread(self) -> float:
        return (self.p90 - self.p10) / self.median if self.median > 0 else 0.0


class Clock:
    """Builds runners for Keras models in one runtime and times them."""

    def __init__(self, runtime: str, batch: int, threads: int | None, warmup: int, repeats: int):
        if runtime not in RUNTIMES:
            raise MorphError(f"Unknown runtime. Expected one of {', '.join(RUNTIMES)}. "
                             f"Received: runtime={runtime!r}")
        self.runtime, self.batch, self.threads = runtime, batch, threads
        self.warmup, self.repeats = warmup, repeats
        self._baseline: dict[tuple, float] = {}
        self._baseline_models: dict[tuple, object] = {}
        # Runners of models timed more than once (the sweep, the whole models), by
        # id, each with its model.
        self._kept: dict[int, tuple] = {}

    def runner(self, model) -> Callable:
        """A call of `model` in this clock's runtime (TFLite: converted as `morph export`
        converts)."""
        from morphcli.measure.convert import to_tflite
        from morphcli.measure.runners import keras_runner, tflite_runner

        if self.runtime == "keras":
            return keras_runner(model)
        return tflite_runner(to_tflite(model), self.threads)

    def _call(self, model, keep: bool = False) -> tuple[Callable, object]:
        """(runner, its input) of a model; with `keep`, converted once and reused."""
        from morphcli.measure.runners import sample

        if keep:  # the model is kept too: its id stays its own until `release`
            if id(model) not in self._kept:
                self._kept[id(model)] = (model, *self._call(model))
            return self._kept[id(model)][1:]
        inputs = [sample(tuple(t.shape[1:]), self.batch, seed=k) for k, t in
                  enumerate(model.inputs)]
        return self.runner(model), inputs[0] if len(inputs) == 1 else inputs

    def release(self) -> None:
        """Drops the kept runners (before their models go)."""
        self._kept.clear()

    def time(self, model, keep: bool = False) -> Timing:
        call, x = self._call(model, keep)
        # Short calls are repeated for MIN_TIME at least: their median is then as
        # steady as a long call's.
        median, p10, p90, _ = time_calls(call, x, warmup=max(1, self.warmup),
                                         repeats=self.repeats, min_time=MIN_TIME,
                                         max_repeats=MAX_REPEATS)
        return Timing(median, p10, p90)

    def time_together(self, models: list, min_time: float = MIN_TIME) -> list[Timing]:
        """Times models interleaved call by call (A, B, A, B), so that they meet the
        machine's load alike: `repeats` rounds at least, and `min_time` seconds of
        rounds at least (a round's time read from the last of at least two warm-up
        rounds, after the first calls' set-up). The runners are kept (`release`)."""
        calls = [self._call(m, keep=True) for m in models]
        last = time_rounds([c for c, _ in calls], [x for _, x in calls],
                           warmup=max(2, self.warmup) - 1, repeats=1)
        repeats = repeats_for(sum(t[0] for t in last), self.repeats, min_time, MAX_REPEATS)
        rounds = time_rounds([c for c, _ in calls], [x for _, x in calls], warmup=0,
                             repeats=repeats)
        return [Timing(*quantiles(times)) for times in rounds]

    def baseline(self, shapes: tuple[tuple[int, ...], ...]) -> float:
        """What a call costs before a unit runs: copying its inputs in and one
        element-wise op on each (`prefix`), which leaves the runtime's threads
        awake as the layers before it do inside a whole model."""
        if shapes not in self._baseline:
            self._baseline[shapes] = self.time(self.baseline_model(shapes)).median
        return self._baseline[shapes]

    def baseline_model(self, shapes: tuple[tuple[int, ...], ...]):
        """The model `baseline` times (one per input shapes, kept): to time beside
        others, so that its time meets their load."""
        import keras

        if shapes not in self._baseline_models:
            inputs = [keras.Input(shape) for shape in shapes]
            self._baseline_models[shapes] = keras.Model(inputs, [prefix(x) for x in inputs])
        return self._baseline_models[shapes]


def prefix(x):
    """The op a measured unit runs after, so that its time is its marginal cost."""
    import keras

    return keras.layers.ReLU()(x)
