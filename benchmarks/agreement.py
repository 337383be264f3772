"""Benchmark: does `morph bench` confirm the share `morph expand --measure` prints?

What a user does, through the CLI, for each model (zoo:resnet20 and MobileNetV2 at
32x32x3; random weights, no download):

1. `morph profile SEED --threads T` once.
2. `--runs` times: `morph expand SEED --target latency=50% --round-to 8
   --hardware profile:P --measure --json`, then `morph export` of the result and
   `morph bench seed.tflite out.tflite --threads T --processes 3 --json` right
   after it (the medians of 3 fresh processes, as `--measure` times).

A run agrees when the share of the seed that `--measure` printed and the share
`morph bench` measured on the exported files are within `--tolerance` (5%) of each
other. Printed: every run's two shares, their ratio, the spread each carried, and
how many runs agreed per model; the conclusions are computed from this run.

Usage: .venv/bin/python benchmarks/agreement.py [--models resnet20,mobilenetv2]
       [--runs 3] [--threads 2] [--tolerance 0.05] [--processes 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = {"resnet20": "zoo:resnet20", "mobilenetv2": "applications:MobileNetV2"}
SHAPE = "32,32,3"


def morph(*args: str) -> str:
    """Runs `morph ARGS` as a user would (a new process); its stdout."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "morphcli", *args], capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"morph {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    return done.stdout


def runs_of(name: str, args, work: Path) -> list[dict]:
    from morphcli.api import load_model

    seed, profile = work / f"{name}.keras", work / f"{name}.profile.json"
    if seed.is_file() and profile.is_file():  # a --keep folder's: the same seed, profiled
        print(f"[{name}] reusing {seed} and {profile}", flush=True)
    else:
        load_model(MODELS[name], input_shape=SHAPE, classes=10).save(seed)
        morph("profile", str(seed), "--threads", str(args.threads), "-o", str(profile))
    seed_tflite = work / f"{name}.tflite"
    morph("export", str(seed), "-o", str(seed_tflite))
    found = []
    for run in range(args.runs):
        out = work / f"{name}-{run}.keras"
        printed = json.loads(morph("expand", str(seed), "--target", "latency=50%",
                                   "--round-to", "8", "--hardware", f"profile:{profile}",
                                   "--measure", "-o", str(out), "--json"))["measured"]
        out_tflite = work / f"{name}-{run}.tflite"
        morph("export", str(out), "-o", str(out_tflite))
        benched = json.loads(morph("bench", str(seed_tflite), str(out_tflite), "--threads",
                                   str(args.threads), "--processes", str(args.processes),
                                   "--json"))[1]
        found.append({"model": name, "run": run + 1, "printed": printed["share"],
                      "printed_p10": printed["rounds_p10"], "printed_p90": printed["rounds_p90"],
                      "spread": printed["spread"], "benched": benched["ratio"],
                      "benched_p10": benched["ratio_p10"], "benched_p90": benched["ratio_p90"]})
        r = found[-1]
        print(f"[{name} run {r['run']}] --measure printed {r['printed']:.3f}, "
              f"morph bench measured {r['benched']:.3f}", flush=True)
    return found


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=positive, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--processes", type=positive, default=3, help="`morph bench "
                        "--processes`: 3, as `expand --measure` times")
    parser.add_argument("--keep", metavar="DIR", help="keep the models, profiles and a "
                        "results.json in DIR; a seed and profile already there are reused")
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; expected some of "
                     f"{', '.join(MODELS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = [r for name in names for r in runs_of(name, args, work)]
        if args.keep:
            (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nTFLite float32, {args.threads} threads, batch 1; target latency=50% of the seed, "
          f"round-to 8; `morph bench seed.tflite out.tflite --processes {args.processes}` "
          "right after each expand\n")
    print("| model | run | --measure printed [10th-90th] | its spread "
          "| morph bench [10th-90th] | printed / benched |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['model']} | {r['run']} | {r['printed']:.3f} [{r['printed_p10']:.3f}-"
              f"{r['printed_p90']:.3f}] | ±{r['spread']:.1%} | {r['benched']:.3f} "
              f"[{r['benched_p10']:.3f}-{r['benched_p90']:.3f}] "
              f"| {r['printed'] / r['benched']:.3f} |")
    print("\nConclusions (from this run):")
    for name in names:
        mine = [r for r in results if r["model"] == name]
        gaps = [abs(r["printed"] / r["benched"] - 1) for r in mine]
        agreed = sum(g <= args.tolerance for g in gaps)
        print(f"- {name}: printed and benched shares agree within {args.tolerance:.0%} in "
              f"{agreed} of {len(mine)} runs (largest gap {max(gaps):.1%})")


if __name__ == "__main__":
    main()
