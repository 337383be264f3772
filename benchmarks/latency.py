"""Benchmark: does a latency target on a measured device land where the clock says?

For each model (ResNet50 and MobileNetV2 at 224x224, zoo:resnet20 at 32x32; random
weights, no download):

1. `morph profile` it on this machine (TFLite, `--threads`), timing the profile.
2. Shrink every width by one multiplier (`expand`) three times: to half the
   seed's FLOPs (roofline cost model); to half the seed's latency on the
   profile alone; and to half the seed's latency with `--measure` (candidates
   timed on this machine until the clock agrees), widths rounded to 8.
3. Export the seed and the three models to TFLite with `morph export`'s code and
   time the files with `morph bench`'s code, interleaved (seed, FLOPs, latency,
   measured, seed, ...) for `--rounds` rounds; the median of each file's round
   medians is its latency and the smallest and largest round medians its spread.

Printed per model: the profile's time; the measured speed-up of the FLOPs-50%
model beside its FLOPs speed-up (2x); the latency-50% model's measured latency
as a share of the seed's, from the profile alone and with `--measure` (goal:
0.50 within 5%); and the profile's prediction of each exported model against
its measurement (goal: within 10%). The
conclusions printed last are computed from this run.

Usage: .venv/bin/python benchmarks/latency.py [--models resnet50,mobilenetv2,resnet20]
       [--threads 2] [--rounds 5] [--repeats 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from morphcli.api import load_model  # noqa: E402
from morphcli.core.costs import CostModel  # noqa: E402
from morphcli.core.graph import build_graph  # noqa: E402
from morphcli.core.quantities import Quantity  # noqa: E402
from morphcli.steps.expand import expand_model  # noqa: E402
from morphcli.steps.export import bench, export  # noqa: E402
from morphcli.steps.profile import profile  # noqa: E402

MODELS = {"resnet50": "applications:ResNet50", "mobilenetv2": "applications:MobileNetV2",
          "resnet20": "zoo:resnet20"}
FRACTION = 0.5
GOAL = {"target": 0.05, "prediction": 0.10}


def measure(name: str, spec: str, args, work: Path) -> dict:
    seed = load_model(spec)
    start = time.perf_counter()
    prof = profile(seed, runtime="tflite", threads=args.threads)
    profile_s = time.perf_counter() - start
    prof.path = str(work / f"{name}.profile.json")
    models = {"seed": seed,
              "flops": expand_model(seed, "flops", Quantity(FRACTION, True))[0],
              "latency": expand_model(seed, "latency", Quantity(FRACTION, True),
                                      hardware=prof)[0],
              "measured": expand_model(seed, "latency", Quantity(FRACTION, True),
                                       hardware=prof, measure=True, round_to=8)[0]}
    files, predicted, flops = {}, {}, {}
    for kind, model in models.items():
        files[kind] = work / f"{name}-{kind}.tflite"
        export(model, files[kind])
        costs = CostModel(build_graph(model), prof)
        predicted[kind] = costs.total("latency")
        flops[kind] = CostModel(build_graph(model)).total("flops")
    rounds: dict[str, list[float]] = {kind: [] for kind in files}
    for _ in range(args.rounds):  # interleaved: seed, flops, latency, seed, ...
        for kind, path in files.items():
            rounds[kind].append(bench(str(path), threads=args.threads, warmup=10,
                                      repeats=args.repeats).median_s)
    measured = {k: statistics.median(v) for k, v in rounds.items()}
    spread = {k: (min(v), max(v)) for k, v in rounds.items()}
    return {"name": name, "profile_s": profile_s, "round_to": prof.round_to,
            "scale": prof.scale, "units": prof.model["units"],
            "distinct": prof.model["distinct_units"], "measured": measured, "spread": spread,
            "predicted": predicted, "flops": flops}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results.append(measure(name, MODELS[name], args, Path(tmp)))
            r = results[-1]
            print(f"[{name}] profiled in {r['profile_s'] / 60:.1f} min "
                  f"({r['distinct']} distinct of {r['units']} layers, step {r['round_to']}, "
                  f"scale {r['scale']:.3f})", flush=True)
    print(f"\nTFLite float32, {args.threads} threads, batch 1; medians of {args.rounds} "
          f"interleaved rounds of {args.repeats} calls [min-max of the round medians]\n")
    print("| model | seed ms | FLOPs 50%: ms | measured / FLOPs speed-up | latency 50%, "
          "profile: ms | / seed | latency 50%, --measure: ms | / seed "
          "| predicted / measured (seed, FLOPs, latency, --measure) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    met, ratios, errors = [], [], []
    for r in results:
        m, s, p, f = r["measured"], r["spread"], r["predicted"], r["flops"]
        speedup, flops_speedup = m["seed"] / m["flops"], f["seed"] / f["flops"]
        share, closed = m["latency"] / m["seed"], m["measured"] / m["seed"]
        pred = {k: p[k] / m[k] for k in m}
        met.append((abs(share - FRACTION) / FRACTION <= GOAL["target"],
                    abs(closed - FRACTION) / FRACTION <= GOAL["target"]))
        ratios.append((r["name"], speedup / flops_speedup, m["flops"] / m["seed"]))
        errors += [abs(v - 1) for v in pred.values()]
        print(f"| {r['name']} | {ms(m['seed'])} [{ms(s['seed'][0])}-{ms(s['seed'][1])}] "
              f"| {ms(m['flops'])} [{ms(s['flops'][0])}-{ms(s['flops'][1])}] "
              f"| {speedup:.2f}x / {flops_speedup:.2f}x = {speedup / flops_speedup:.2f} "
              f"| {ms(m['latency'])} [{ms(s['latency'][0])}-{ms(s['latency'][1])}] "
              f"| {share:.3f} "
              f"| {ms(m['measured'])} [{ms(s['measured'][0])}-{ms(s['measured'][1])}] "
              f"| {closed:.3f} | " + ", ".join(f"{pred[k]:.2f}" for k in m) + " |")
    print("\nConclusions (from this run):")
    for k, how in enumerate(("the profile alone", "--measure")):
        print(f"- latency target ({FRACTION:.0%} of the seed's measured latency, within "
              f"{GOAL['target']:.0%}) with {how}: met on {sum(x[k] for x in met)} of "
              f"{len(met)} models" + "".join(
                  f"; {r['name']}: {'met' if x[k] else 'missed'}"
                  for r, x in zip(results, met, strict=True)))
    for name, ratio, kept in ratios:
        print(f"- {name}: half the FLOPs gives {kept:.0%} of the seed's latency "
              f"(measured speed-up / FLOPs speed-up = {ratio:.2f}); the FLOPs target "
              f"{'misses' if abs(kept - FRACTION) / FRACTION > GOAL['target'] else 'meets'} "
              "a 50% latency target")
    worst = max(errors)
    print(f"- the profile's predictions are within {worst:.1%} of the measurements "
          f"(goal {GOAL['prediction']:.0%}: {'met' if worst <= GOAL['prediction'] else 'missed'})")


if __name__ == "__main__":
    main()
