"""Benchmark: MorphNet's structure vs the uniform-width baseline at equal FLOPs.

For each model and each FLOPs budget (a fraction of the seed's FLOPs), runs
`morphcli.steps.run.run` (shrink -> expand -> retrain, plus the seed narrowed
uniformly to the same budget and retrained with the same schedule) for
several random seeds, then prints:

- a table per model: budget, method, FLOPs and params reached, validation
  accuracy mean ± std over seeds, and the paired difference morphnet − uniform
  (mean ± std over seeds, wins/ties/losses; a tie is the same number of
  correctly classified validation images);
- per budget, the mean width of every channel group for both methods, and the
  structure the shrink learned before expansion.

The random seed (`seed` in the config) sets the weights, the data order and
the train/validation split, so each seed is a different split; both methods of
one seed share it, which is what makes the comparison paired. The shrink does
not depend on the budget (only the expansion does), so with one round it runs
once per model and seed and is reused by the other budgets (`run` skips a step
whose output exists).

Extra budgets (default 0.1) are printed on rows labelled "extra": the issue
asks for two budgets, the extra one probes whether a tighter budget separates
the methods when the required ones do not.

Usage:
    .venv/bin/python benchmarks/quality.py                       # zoo:cnn, 3 seeds
    .venv/bin/python benchmarks/quality.py --model zoo:cnn,zoo:resnet20
    .venv/bin/python benchmarks/quality.py --quick               # smoke run, ~1 min
    .venv/bin/python benchmarks/quality.py --set regularizer.strength=3 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from morphcli.config import demo_config_path, load_config, parse_override  # noqa: E402
from morphcli.errors import MorphError  # noqa: E402

METHODS = ("morphnet", "uniform")
QUICK = {"seeds": 2, "shrink_epochs": 3, "retrain_epochs": 2}


@dataclass
class Outcome:
    """One method's result for one (model, budget, seed)."""

    accuracy: float
    flops: float
    params: float
    widths: dict[str, int]
    multiplier: float


@dataclass
class Cell:
    """All seeds of one (model, budget): outcomes per method, validation sizes per seed."""

    model: str
    budget: float
    extra: bool
    seed_flops: float = 0.0
    runs: dict[str, list[Outcome]] = field(default_factory=lambda: {m: [] for m in METHODS})
    val_sizes: list[int] = field(default_factory=list)


def _fractions(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"budgets are fractions in (0, 1]. Received: {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="random seeds per cell (default 3)")
    parser.add_argument("--budgets", type=_fractions, default=[0.5, 0.25],
                        help="FLOPs budgets, fractions of the seed's (default 0.5,0.25)")
    parser.add_argument("--extra-budgets", type=_fractions, default=[0.1],
                        help="extra, separately labelled budgets (default 0.1; '' for none)")
    parser.add_argument("--model", default="zoo:cnn",
                        help="seed model(s), comma-separated (default zoo:cnn)")
    parser.add_argument("--config", default=str(demo_config_path()),
                        help="base config (default: the packaged demo.yaml)")
    parser.add_argument("--shrink-epochs", type=int, default=None)
    parser.add_argument("--retrain-epochs", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config override, e.g. regularizer.strength=3")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 seeds, 3 shrink epochs, 2 retrain epochs")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.seeds = 3 if args.seeds is None else args.seeds
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1. Received: --seeds={args.seeds}")
    return args


def make_config(args: argparse.Namespace, model: str, budget: float, seed: int):
    """The base config with this cell's model, budget and seed (baseline on)."""
    overrides = dict(parse_override(text) for text in args.set)
    overrides.update({"model.seed": model, "target.metric": "flops", "target.value": budget,
                      "seed": seed, "run.baseline": True})
    if args.shrink_epochs is not None:
        overrides["shrink.epochs"] = args.shrink_epochs
    if args.retrain_epochs is not None:
        overrides["retrain.epochs"] = args.retrain_epochs
    return load_config(args.config, overrides)


def group_name(group: dict) -> str:
    """A group by its first layer, marked when an element-wise join ties several layers
    (a residual stream: Keras names Add layers ``add``, the zoo ``*_add``)."""
    tied = any(name.split("_")[-1] == "add" or name.startswith("add") for name in group["layers"])
    return group["layers"][0] + (" (res.)" if tied else "")


def _outcome(metrics: dict, expand_json: Path) -> Outcome:
    expansion = json.loads(expand_json.read_text())
    widths = {group_name(g): g["width_after"] for g in expansion["groups"]}
    return Outcome(metrics["val_accuracy"], metrics["flops"], metrics["params"], widths,
                   expansion["multiplier"])


@dataclass
class Shrunk:
    """What the shrink of one (model, seed) learned, before expansion."""

    seed_widths: dict[str, int]
    widths: dict[str, int]
    flops_ratio: float
    accuracy: float | None


def _base_widths(expand_json: Path) -> dict[str, int]:
    groups = json.loads(expand_json.read_text())["groups"]
    return {group_name(g): g["width_before"] for g in groups}


def shrunk_of(rundir: Path) -> Shrunk:
    """Widths the shrink kept, by group (named by its first layer), and their cost."""
    summary = json.loads((rundir / "shrink" / "summary.json").read_text())
    return Shrunk(_base_widths(rundir / "baseline" / "expand.json"),
                  _base_widths(rundir / "expand" / "expand.json"), summary["ratio"]["flops"],
                  summary["val_shrunk"].get("accuracy"))


def run_seed(args, model: str, seed: int, cells: list[Cell], workdir: Path, log) -> Shrunk:
    """Runs every budget of one model and seed; returns what the shrink learned."""
    from morphcli.steps.run import run
    from morphcli.training.data import load_dataset

    first: Path | None = None
    for cell in cells:
        conf = make_config(args, model, cell.budget, seed)
        rundir = workdir / f"{model.replace(':', '_')}-b{cell.budget:g}-s{seed}"
        if first is not None and conf.run.rounds == 1:
            shutil.copytree(first / "shrink", rundir / "shrink")  # budget-independent
        start = time.perf_counter()
        result = run(conf, rundir)
        first = first or rundir
        cell.runs["morphnet"].append(_outcome(result.final, rundir / "expand" / "expand.json"))
        cell.runs["uniform"].append(_outcome(result.baseline, rundir / "baseline" / "expand.json"))
        cell.seed_flops = result.report["models"]["seed"]["flops"]
        dataset = load_dataset(conf.data.source, batch_size=conf.data.batch_size,
                               validation_split=conf.data.validation_split, seed=conf.seed)
        cell.val_sizes.append(dataset.val_size)
        accs = " vs ".join(f"{m} {cell.runs[m][-1].accuracy:.2%}" for m in METHODS)
        log(f"{model} budget {cell.budget:g} seed {seed}: {accs} "
            f"({time.perf_counter() - start:.0f} s)")
    return shrunk_of(first)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired(cell: Cell) -> dict:
    """Per-seed differences morphnet − uniform, in accuracy and in images."""
    diffs = [m.accuracy - u.accuracy
             for m, u in zip(cell.runs["morphnet"], cell.runs["uniform"], strict=True)]
    images = [round(d * n) for d, n in zip(diffs, cell.val_sizes, strict=True)]
    mean, std = _mean_std(diffs)
    return {"mean": mean, "std": std, "images": images,
            "wins": sum(i > 0 for i in images), "ties": sum(i == 0 for i in images),
            "losses": sum(i < 0 for i in images)}


def verdict(cell: Cell, p: dict, seeds: int) -> str:
    same = all(m.widths == u.widths
               for m, u in zip(cell.runs["morphnet"], cell.runs["uniform"], strict=True))
    if same:
        return "same structure as uniform on every seed (so same accuracy)"
    if p["ties"] == seeds:
        return "identical accuracy on every seed"
    if p["wins"] == seeds:
        return "morphnet higher on every seed"
    if p["losses"] == seeds:
        return "uniform higher on every seed"
    if p["wins"] > 0 and p["losses"] > 0:
        return "mixed: no consistent difference"
    side = "morphnet" if p["wins"] else "uniform"
    return f"{side} higher or equal on every seed (some ties)"


def print_table(cells: list[Cell], seeds: int) -> None:
    header = (f"{'model':<13} {'budget':<13} {'method':<9} {'FLOPs':>10} {'of seed':>8} "
              f"{'params':>9} {'val acc mean ± std':>19}  {'morphnet − uniform':>19}  "
              f"{'W/T/L':<7} verdict")
    print(header)
    print("-" * len(header))
    for cell in cells:
        p = paired(cell)
        label = f"{cell.budget:g}" + (" (extra)" if cell.extra else "")
        for method in METHODS:
            runs = cell.runs[method]
            flops = statistics.fmean(r.flops for r in runs)
            params = statistics.fmean(r.params for r in runs)
            acc, std = _mean_std([r.accuracy for r in runs])
            line = (f"{cell.model:<13} {label:<13} {method:<9} {flops:>10,.0f} "
                    f"{flops / cell.seed_flops:>8.1%} {params:>9,.0f} "
                    f"{acc:>10.2%} ± {std:>6.2%}")
            if method == "morphnet":
                line += (f"  {p['mean']:>+10.2%} ± {p['std']:>6.2%}  "
                         f"{p['wins']}/{p['ties']}/{p['losses']:<3} {verdict(cell, p, seeds)}")
            print(line)
        print(f"{'':<13} {'':<13} per-seed difference in validation images "
              f"(of {'/'.join(map(str, cell.val_sizes))}): "
              f"{', '.join(f'{i:+d}' for i in p['images'])}")


def _mean_widths(runs: list[Outcome]) -> dict[str, float]:
    return {g: statistics.fmean(r.widths[g] for r in runs) for g in runs[0].widths}


def print_widths(cells: list[Cell], shrinks: dict[str, list[Shrunk]]) -> None:
    """Mean width of every group: learned by the shrink, then per budget and method."""
    for model, learned in shrinks.items():
        seed = learned[0].seed_widths
        columns = [("learned", {g: statistics.fmean(s.widths[g] for s in learned) for g in seed})]
        for cell in (c for c in cells if c.model == model):
            columns += [(f"{m} {cell.budget:g}", _mean_widths(cell.runs[m])) for m in METHODS]
        print(f"\n{model}: mean width per channel group over seeds (group named by its first "
              "layer, (res.) = a residual stream: layers tied by Add; (x.xx) = fraction of the seed's "
              "width)")
        print(f"{'group':<30} {'seed':>5} " + " ".join(f"{name:>15}" for name, _ in columns))
        for g in seed:
            print(f"{g:<30} {seed[g]:>5} " + " ".join(
                f"{col[g]:>8.1f} ({col[g] / seed[g]:.2f})" for _, col in columns))
        ratio = _mean_std([s.flops_ratio for s in learned])
        accs = [s.accuracy for s in learned if s.accuracy is not None]
        print(f"learned = after the shrink, before expansion: {ratio[0]:.1%} ± {ratio[1]:.1%} "
              "of the seed's FLOPs" + (f", val accuracy before retraining "
                                       f"{statistics.fmean(accs):.2%}" if accs else ""))
        multipliers = "; ".join(
            f"{c.budget:g}: " + " / ".join(
                f"{m} {statistics.fmean(r.multiplier for r in c.runs[m]):.3f}" for m in METHODS)
            for c in cells if c.model == model)
        print(f"width multiplier (mean) at budget {multipliers}")


def print_notes(cells: list[Cell], seeds: int) -> None:
    required = [paired(c) for c in cells if not c.extra]
    extra = [paired(c) for c in cells if c.extra]
    best = max(statistics.fmean(r.accuracy for r in c.runs[m]) for c in cells for m in METHODS)
    print("\nNotes:")
    print(f"- {seeds} seed(s) per cell; each seed is also a different train/validation split, "
          "shared by both methods (paired).")
    if best > 0.97:
        print(f"- builtin:digits is an easy task (best mean accuracy {best:.2%}): accuracies "
              "sit near the ceiling, so differences are a few validation images at most.")
    if all(p["wins"] < seeds for p in required):
        print("- MorphNet's claim (higher accuracy at the same FLOPs) is NOT confirmed at the "
              "required budgets: on no budget is it higher on every seed.")
    else:
        print("- MorphNet is higher on every seed on at least one required budget (see table); "
              f"with {seeds} seeds a sign test cannot reach p < 0.05 (its smallest p is "
              f"{2 * 0.5 ** seeds:.2f}).")
    if extra:
        moved = any(p["wins"] == seeds or p["losses"] == seeds for p in extra)
        print(f"- extra budget(s): {'a consistent difference appears' if moved else 'still no consistent difference'}.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="morph-quality-"))
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    cells: list[Cell] = []
    shrinks: dict[str, list[Shrunk]] = {}
    try:
        for model in models:
            mine = [Cell(model, b, False) for b in args.budgets]
            mine += [Cell(model, b, True) for b in args.extra_budgets if b not in args.budgets]
            shrinks[model] = [run_seed(args, model, seed, mine, workdir, log)
                              for seed in range(args.seeds)]
            cells += mine
    except MorphError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    conf = make_config(args, models[0], args.budgets[0], 0)
    print(f"MorphNet vs uniform width at equal FLOPs on {conf.data.source}: "
          f"{args.seeds} seed(s), shrink {conf.shrink.epochs} epochs "
          f"(regularizer {conf.regularizer.kind}, strength {conf.regularizer.strength}), "
          f"retrain {conf.retrain.epochs} epochs, from {args.config}"
          + (f", overrides {' '.join(args.set)}" if args.set else "") + "\n")
    print_table(cells, args.seeds)
    print_widths(cells, shrinks)
    print_notes(cells, args.seeds)
    print(f"\nwall time {time.perf_counter() - start:.0f} s"
          + (f"; run folders kept in {workdir}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
