"""`morph bench`'s protocol: end-to-end latency of models or model files on this
machine, several of them interleaved call by call, each relative to the first.
`expand --measure` times its candidates with it, on their exported files in a
process of its own (`isolated.latencies`), so what it prints is what `morph
bench` run on those files measures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from morphcli.core import machine
from morphcli.errors import ModelError, one_line
from morphcli.measure import runners as run
from morphcli.measure.clock import check_counts, quantiles, time_rounds

WARMUP = 10  # untimed rounds, `morph bench`'s default
REPEATS = 50  # timed rounds, `morph bench`'s default
MEASURE_REPEATS = REPEATS  # timed calls per model when a step measures latency


@dataclass
class BenchResult:
    path: str
    runtime: str
    batch: int
    threads: int | None
    repeats: int
    median_s: float
    p10_s: float
    p90_s: float
    # For a target benched beside others (`bench_many`): the median of its per-round
    # ratios to the first target, and their 10th and 90th percentiles.
    ratio: float | None = None
    ratio_p10: float | None = None
    ratio_p90: float | None = None
    # The sha256 of the TFLite bytes timed (a .tflite file's, or a Keras model's as
    # `morph export` writes it); None for the other runtimes.
    sha256: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def bench(target, *, batch: int = 1, threads: int | None = None, warmup: int = WARMUP,
          repeats: int = REPEATS, progress: Callable[[int], None] | None = None,
          trust_code: bool = False, runtime: str = "keras") -> BenchResult:
    """Median end-to-end latency of one call on a batch of `batch` random examples.

    Args:
        target: A Keras model, or the path of a .keras file, SavedModel folder or
            .tflite file.
        batch: Examples per call.
        threads: TFLite interpreter threads (None: its default); for Keras and
            SavedModel, TensorFlow's own thread pools.
        warmup: Untimed calls first.
        repeats: Timed calls.
        progress: Called with 1 after every call (warm-up included).
        runtime: For a Keras model in memory: keras, or tflite (converted first, as
            `morph export` converts).
    """
    return bench_many([target], batch=batch, threads=threads, warmup=warmup, repeats=repeats,
                      progress=progress, trust_code=trust_code, runtime=runtime)[0]


def bench_many(targets: list, *, batch: int = 1, threads: int | None = None,
               warmup: int = WARMUP, repeats: int = REPEATS,
               progress: Callable[[int], None] | None = None, trust_code: bool = False,
               runtime: str = "keras", runners: dict | None = None) -> list[BenchResult]:
    """`bench` for several targets at once, interleaved call by call (A, B, A, B):
    neighbouring calls meet the same load, so the ratio of each target to the
    first is steadier than two separate runs. Each result after the first carries
    the median of its per-round ratios to the first and their 10th-90th
    percentiles. `progress(1)` after every call; `runners`, a dict the caller
    keeps with the models alive, keeps each model's runner across calls."""
    check_counts(batch, repeats, warmup)
    made = []
    for t in targets:  # a target listed twice gets two runners, unless `runners` has it
        key = (str(t) if isinstance(t, str | Path) else id(t), batch, threads, runtime)
        if runners is None or key not in runners:
            made.append(_runner(t, batch, threads, trust_code, runtime))
            if runners is not None:  # the target is kept too: its id stays its own
                runners[key] = (t, made[-1])
        else:
            made.append(runners[key][1])
    rounds = time_rounds([r[2] for r in made], [r[3] for r in made], warmup=warmup,
                         repeats=repeats, progress=progress)
    results = []
    for (label, kind, _, _, sha), times in zip(made, rounds, strict=True):
        median, p10, p90 = quantiles(times)
        result = BenchResult(label, kind, batch, threads, repeats, median, p10, p90, sha256=sha)
        if results:
            result.ratio, result.ratio_p10, result.ratio_p90 = quantiles(
                [a / b for a, b in zip(times, rounds[0], strict=True)])
        results.append(result)
    return results


def _runner(target, batch: int, threads: int | None, trust_code: bool, runtime: str):
    """(label, runtime, runner, input batch, sha256 of the TFLite bytes or None) of
    a model or model file. A Keras model for TFLite is converted as `morph
    export` converts it (`to_tflite`): the bytes timed are the bytes it writes."""
    from morphcli.measure import convert

    if isinstance(target, str | Path):
        runtime = run.runtime_of(target)
        try:
            runner, shape, content = run.file_runner(target, runtime, threads, trust_code)
        except (ValueError, OSError, RuntimeError) as err:  # not a model of that kind
            raise ModelError(f"Could not load {target} as a {runtime} model: "
                             f"{one_line(err, 160)}") from None
        machine.check_input_batch(str(target), shape, batch)
        sha = convert.digest(content) if content is not None else None
        return str(target), runtime, runner, run.sample(shape, batch), sha
    shape = run.input_shape(target)
    if runtime == "tflite":
        content = convert.to_tflite(target)
        return ("model", "tflite", run.tflite_runner(content, threads),
                run.sample(shape, batch), convert.digest(content))
    return "model", "keras", run.keras_runner(target), run.sample(shape, batch), None
