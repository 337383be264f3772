"""Latencies of Keras models as `morph bench` measures their exported files, in a
process that has done nothing else.

Why: a process that had converted models with TensorFlow seemed to time the
same TFLite bytes differently from a fresh one. MobileNetV2 at 32x32x3, 2 threads, an otherwise
idle machine, a candidate of half the seed's latency, interleaved with the seed:
0.45-0.52x the seed in 9 timings after conversions in the timing process,
0.42-0.46x in 5 timings in fresh processes (`morph bench` on the files among
them). `expand --measure` printed the first and users measured the second
(issue 23). So the TFLite bytes are written to files and timed by a worker,
`python -m morphcli.measure.isolated`, with `morph bench`'s protocol
(`bench.bench_many` on the files): one JSON request per line on its stdin, one
JSON answer per line on its stdout. The worker lives as long as the caller's
`runners` (`release` ends it); Keras models (the `cpu` hardware) are still
timed here, as before.

A fresh process is not the end of it: the same two files, timed 4 times in each
of 6 fresh processes, read 0.43-0.44x in five of them and 0.48-0.53x in the
sixth. So every timing is made in `PROCESSES` workers, one after another, and
each figure is the median of theirs: one unlucky process moves it little.

Later measurements (docs/latency.md) qualify both readings: at 2 threads on a
2-vCPU machine the clock itself reads a light model at one of two shares (0.49
or 0.62 of the same seed) from one minute to the next, in every process at
once, so part of those differences may have been the machine's mode. At 1
thread the loop and `morph bench --processes 3` agreed within 0.8% in 6 of 6
runs. Timing the exported bytes in a process that does nothing else remains
the protocol `morph bench` uses, which is the point.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from morphcli.errors import ModelError, one_line
from morphcli.measure.bench import MEASURE_REPEATS, WARMUP, BenchResult, bench_many

# Tests of the measuring loop set this False to fake the clock in this process.
IN_WORKER = True
PROCESSES = 3  # worker processes; each timing is the median of theirs
_WORKER = "workers"  # the `runners` key of the worker processes
_FOLDER = "folder"  # ... and of the folder its files are written to


def latencies(models: list, hardware, repeats: int = MEASURE_REPEATS,
              runners: dict | None = None) -> tuple[list[BenchResult], dict]:
    """Each model's end-to-end latency on this machine, timed interleaved call by
    call (`bench_many`: each result after the first carries its per-round ratio to
    the first), with the runtime a measured device (`profile:`) names, else Keras;
    and how it was measured. TFLite is timed in `PROCESSES` worker processes, on
    the bytes `morph export` writes, each figure the median of theirs. `runners`
    (a dict the caller keeps, with the models alive, and ends with `release`)
    keeps each model's conversion, and the workers, across calls; without it,
    both last one call."""
    runtime = getattr(hardware, "runtime", "keras")
    threads = getattr(hardware, "threads", None) if runtime == "tflite" else None
    batch = getattr(hardware, "batch", 1)
    how = {"runtime": runtime, "threads": threads, "batch": batch, "repeats": repeats,
           "interleaved": True}
    if runtime != "tflite" or not IN_WORKER:
        found = bench_many(models, batch=batch, threads=threads, warmup=WARMUP,
                           repeats=repeats, runtime=runtime, runners=runners)
        return found, {**how, "process": "this"}
    kept = {} if runners is None else runners
    try:
        files = [_file(model, kept) for model in models]
        if _WORKER not in kept:
            kept[_WORKER] = Workers(PROCESSES)
        found = kept[_WORKER].time([path for path, _ in files], batch=batch, threads=threads,
                                   warmup=WARMUP, repeats=repeats)
    finally:
        if runners is None:
            release(kept)
    for result, (path, sha) in zip(found, files, strict=True):
        if result.sha256 != sha:
            raise ModelError(f"The timing process timed other bytes than {path}'s.")
        result.path = "model"
    return found, {**how, "process": "fresh", "processes": PROCESSES}


def median_results(timings: list[list[BenchResult]]) -> list[BenchResult]:
    """Per target, the median over several processes' timings of each figure.

    Raises:
        ModelError: The processes timed different bytes.
    """
    import statistics

    merged = []
    for results in zip(*timings, strict=True):
        if len({r.sha256 for r in results}) > 1:
            raise ModelError(f"The timing processes timed different bytes for {results[0].path}.")
        values = {}
        for name in ("median_s", "p10_s", "p90_s", "ratio", "ratio_p10", "ratio_p90"):
            got = [getattr(r, name) for r in results]
            values[name] = None if got[0] is None else statistics.median(got)
        merged.append(dataclasses.replace(results[0], **values))
    return merged


def start_workers(count: int) -> list[Worker]:
    """`count` workers, started together and each ready (TensorFlow imported)
    before any of them times: an import beside a timing would load the machine."""
    workers = [Worker() for _ in range(count)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        for worker in workers:
            worker.close()
        raise
    return workers


class Workers:
    """`count` timing processes (`start_workers`). A timing is made in each of them,
    one after another, and each figure is the median of theirs. Use it in a `with`
    block, or `close` it."""

    def __init__(self, count: int) -> None:
        self.workers = start_workers(count)

    def time(self, paths: list[str], *, batch: int, threads: int | None, warmup: int,
             repeats: int, trust_code: bool = False,
             progress: Callable[[], None] | None = None) -> list[BenchResult]:
        """`bench_many` of the files in every worker; `progress()` after each one."""
        timings = []
        for worker in self.workers:
            timings.append(worker.time(list(paths), batch=batch, threads=threads,
                                       warmup=warmup, repeats=repeats, trust_code=trust_code))
            if progress is not None:
                progress()
        return median_results(timings)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def time_files(paths: list[str], processes: int, *, batch: int, threads: int | None,
               warmup: int, repeats: int, trust_code: bool = False,
               progress: Callable[[], None] | None = None) -> list[BenchResult]:
    """`morph bench --processes N`: the files timed in `processes` fresh workers,
    one after another, each figure the median of theirs. `progress()` once the
    workers are ready and after each one's timing."""
    with Workers(processes) as workers:
        if progress is not None:
            progress()
        return workers.time(paths, batch=batch, threads=threads, warmup=warmup,
                            repeats=repeats, trust_code=trust_code, progress=progress)


def release(runners: dict) -> None:
    """Ends the workers and removes the files a `runners` dict keeps; clears it."""
    if _WORKER in runners:
        runners[_WORKER].close()
    folder = runners.get(_FOLDER)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    runners.clear()


def _file(model, runners: dict) -> tuple[str, str]:
    """The .tflite file of `model` as `morph export` writes it, and the sha256 of
    its bytes; written once per model (kept alive with its file in `runners`)."""
    from morphcli.measure import convert

    key = ("tflite-file", id(model))
    if key not in runners:
        if _FOLDER not in runners:
            runners[_FOLDER] = tempfile.mkdtemp(prefix="morph-measure-")
        content = convert.to_tflite(model)
        count = sum(isinstance(k, tuple) for k in runners)
        path = str(Path(runners[_FOLDER]) / f"model-{count}.tflite")
        Path(path).write_bytes(content)
        runners[key] = (model, path, convert.digest(content))
    return runners[key][1:]


class Worker:
    """The timing process, started at the first request and kept for the next."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._errors = None
        self.pid: int | None = None

    def time(self, paths: list[str], *, batch: int, threads: int | None, warmup: int,
             repeats: int, trust_code: bool = False) -> list[BenchResult]:
        """`bench_many` of the files in the worker.

        Raises:
            ModelError: The worker refused the request (its one-line reason) or ended.
        """
        if self._process is None:
            self.start()
            self.wait_ready()
        request = {"paths": paths, "batch": batch, "threads": threads, "warmup": warmup,
                   "repeats": repeats, "trust_code": trust_code}
        assert self._process is not None and self._process.stdin and self._process.stdout
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        except OSError:
            line = ""
        if not line:
            raise ModelError(f"The timing process ended: {self._last_error()}")
        answer = json.loads(line)
        if "error" in answer:
            raise ModelError(answer["error"])
        self.pid = answer["pid"]
        return [BenchResult(**r) for r in answer["results"]]

    def wait_ready(self) -> None:
        """Waits for the worker's first line, which it writes once it has imported
        what it times with."""
        assert self._process is not None and self._process.stdout
        if self._process.stdout.readline().strip() != "ready":
            raise ModelError(f"The timing process ended: {self._last_error()}")

    def start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # where morphcli is imported from
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path,
               "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
        self._errors = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "morphcli.measure.isolated"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._errors, env=env, text=True)

    def _last_error(self) -> str:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        text = b""
        if self._errors is not None:
            self._errors.seek(0)
            text = self._errors.read()
        lines = [s for s in text.decode(errors="replace").splitlines() if s.strip()]
        return lines[-1].strip() if lines else "no reason given"

    def close(self) -> None:
        """Ends the worker (it stops at the end of its input)."""
        if self._process is not None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.close()
                self._process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._errors is not None:
            self._errors.close()
            self._errors = None


def _serve(requests, answers) -> None:
    """The worker's loop: a request per line in, an answer per line out."""
    from morphcli.errors import MorphError

    for line in requests:
        request = json.loads(line)
        try:
            results = bench_many(request["paths"], batch=request["batch"],
                                 threads=request["threads"], warmup=request["warmup"],
                                 repeats=request["repeats"],
                                 trust_code=request.get("trust_code", False))
            answer = {"results": [r.to_dict() for r in results], "pid": os.getpid()}
        except MorphError as err:
            answer = {"error": str(err)}
        except Exception as err:  # noqa: BLE001 - the parent prints it in one line
            answer = {"error": f"Timing failed: {one_line(err)}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    answers = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the answers' channel
    import tensorflow  # noqa: F401 - imported before the first timing, not during it

    answers.write("ready\n")
    answers.flush()
    _serve(sys.stdin, answers)
