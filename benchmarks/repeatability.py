"""Benchmark: how repeatable is a model's measured share of its seed on this host?

A latency target is checked by timing the exported model interleaved with its
seed and reading the median per-round ratio (its *share*). This script asks how
far that share moves between timings of the same two files, one after another:
the least error any landing on a latency target can be checked to.

For each model (random weights, no download): the seed and its half-FLOPs
version (one width multiplier) are exported to TFLite and timed as `morph
bench` times them, interleaved call by call, `--repeats` rounds a timing,
`--timings` timings, alternating two ways (A, B, A, B): with the interpreters
kept from one timing to the next, and with new ones built for each timing
(what two separate `morph bench` runs do).

Printed per model and way: the median share, its lowest and highest over the
timings, and that range as a share of the median; then the seed's median time
over all timings, lowest to highest (the host's drift). The conclusions printed last are computed from
this run.

Usage: .venv/bin/python benchmarks/repeatability.py [--models resnet20,mobilenetv2]
       [--threads 2] [--repeats 300] [--timings 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from morphcli.api import load_model  # noqa: E402
from morphcli.core.quantities import Quantity  # noqa: E402
from morphcli.measure.bench import bench_many  # noqa: E402
from morphcli.steps.expand import expand_model  # noqa: E402
from morphcli.steps.export import export  # noqa: E402

MODELS = {"resnet50": "applications:ResNet50", "mobilenetv2": "applications:MobileNetV2",
          "resnet20": "zoo:resnet20"}
GOAL = 0.05  # the latency benchmark's landing tolerance


def measure(name: str, args, work: Path) -> dict:
    seed = load_model(MODELS[name])
    half = expand_model(seed, "flops", Quantity(0.5, True))[0]
    files = [str(work / f"{name}-seed.tflite"), str(work / f"{name}-half.tflite")]
    export(seed, files[0])
    export(half, files[1])
    kept: dict = {}
    shares: dict[str, list[float]] = {"kept": [], "new": []}
    seeds: list[float] = []
    for _ in range(args.timings):
        for way in ("kept", "new"):
            found = bench_many(files, threads=args.threads, warmup=10, repeats=args.repeats,
                               runtime="tflite", runners=kept if way == "kept" else None)
            shares[way].append(found[1].ratio)
            seeds.append(found[0].median_s)
    return {"name": name, "shares": shares, "seeds": seeds}


def positive(text: str) -> int:
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--timings", type=positive, default=8)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results.append(measure(name, args, Path(tmp)))
    print(f"\nTFLite float32, {args.threads} threads, batch 1; the seed and its half-FLOPs "
          f"version timed interleaved, {args.repeats} rounds a timing, {args.timings} timings "
          "each way, the two ways alternating\n")
    print("| model | interpreters | share: median | lowest-highest | range / median "
          "| seed ms: lowest-highest |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    widest = {}
    for r in results:
        ms = [s * 1e3 for s in r["seeds"]]
        for way, values in r["shares"].items():
            middle, low, high = statistics.median(values), min(values), max(values)
            widest[r["name"], way] = (high - low) / middle
            print(f"| {r['name']} | {way} | {middle:.3f} | {low:.3f}-{high:.3f} "
                  f"| {(high - low) / middle:.1%} | {min(ms):.3f}-{max(ms):.3f} |")
    print("\nConclusions (from this run):")
    for (name, way), spread in widest.items():
        verdict = "wider" if spread / 2 > GOAL else "narrower"
        print(f"- {name}, {way} interpreters: the same files' share moved {spread:.1%} of "
              f"its median between timings, so ±{spread / 2:.1%}: {verdict} than the "
              f"±{GOAL:.0%} a latency landing is checked to")


if __name__ == "__main__":
    main()
