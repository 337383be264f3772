"""`morph run`: the whole MorphNet loop in one run folder.

shrink → expand (→ shrink → expand, for `run.rounds` > 1) → retrain, plus,
with `run.baseline`, the seed scaled uniformly to the same budget and
retrained with the same schedule (the comparison MorphNet is judged by); then
a report comparing seed, MorphNet and baseline.

Every step writes its outputs atomically into its own sub-folder, and a step
whose final output exists is not run again: `--resume` continues at the first
unfinished step (and inside it, at the last checkpointed epoch)::

    RUNDIR/config.yaml
    RUNDIR/shrink/    structure.json, shrunk.keras, summary.json  (shrink2/... for more rounds)
    RUNDIR/expand/    expanded.keras, expand.json
    RUNDIR/retrain/   final.keras, metrics.json
    RUNDIR/baseline/  expanded.keras, expand.json, final.keras, metrics.json
    RUNDIR/report.md, RUNDIR/report.json, RUNDIR/widths.png
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Progress = Callable[[str, int], object]  # (title, epochs) -> Keras callback


@dataclass
class RunResult:
    rundir: Path
    final: dict
    baseline: dict | None
    report: dict
    skipped: list[str] = field(default_factory=list)


def _load(path: Path):
    import keras

    return keras.saving.load_model(path, compile=False)


def _round_dir(rundir: Path, step: str, round_: int) -> Path:
    return rundir / (step if round_ == 1 else f"{step}{round_}")


class _Runner:
    """Runs one step after the other, skipping those already done."""

    def __init__(self, conf, rundir: Path, progress: Progress | None, log: Callable[[str], None]):
        from morphcli.training import distribute

        self.conf, self.rundir, self.log = conf, rundir, log
        self.progress = progress
        self.skipped: list[str] = []
        self.strategy = distribute.make_strategy(conf.distribute)

    def callbacks(self, title: str, epochs: int) -> list:
        return [self.progress(title, epochs)] if self.progress else []

    def done(self, path: Path, step: str) -> bool:
        from morphcli.training import distribute

        # Several workers skip a step only together: their collective ops must match.
        if distribute.on_every_worker(self.strategy, path.exists()):
            self.skipped.append(step)
            self.log(f"{step}: already done ({path}), skipped")
            return True
        return False

    def shrink(self, setup, round_: int):
        from morphcli.steps import shrink

        outdir = _round_dir(self.rundir, "shrink", round_)
        if not self.done(outdir / "shrunk.keras", f"shrink round {round_}"):
            shrink.shrink(self.conf, outdir, setup=setup, callbacks=self.callbacks(
                f"shrink {round_}", self.conf.shrink.epochs))
        return _load(outdir / "shrunk.keras")

    def expand(self, model, outdir: Path, target: float, label: str):
        from morphcli import files
        from morphcli.config import Quantity
        from morphcli.core.graph import build_graph
        from morphcli.steps import expand
        from morphcli.steps.shrink import hardware_of

        if self.done(outdir / "expanded.keras", label):
            return _load(outdir / "expanded.keras")
        metric = self.conf.target.metric
        expanded, result = expand.expand_model(
            model, metric, Quantity(target, False), hardware=hardware_of(self.conf),
            round_to=self.conf.expand.round_to, mode=self.conf.expand.mode)
        files.write_json(outdir / "expand.json", result.to_dict(build_graph(model)))
        files.save_model(expanded, outdir / "expanded.keras")
        self.log(f"{label}: width multiplier {result.multiplier:.4f}, {metric} "
                 f"{result.achieved:,.6g} for target {target:,.6g} ({result.error:+.2%})")
        return expanded

    def retrain(self, model, outdir: Path, dataset, label: str) -> dict:
        import json

        from morphcli.steps import retrain

        if self.done(outdir / "metrics.json", label):
            return json.loads((outdir / "metrics.json").read_text())
        return retrain.retrain(self.conf, model, outdir, dataset=dataset, callbacks=self.callbacks(
            label, self.conf.retrain.epochs)).metrics


def run(conf, rundir: str | Path | None = None, *, progress: Progress | None = None,
        log: Callable[[str], None] = lambda message: None) -> RunResult:
    """Runs shrink → expand → retrain (and the baseline) into `rundir`.

    Args:
        conf: A resolved config.
        rundir: The run folder (default: `conf.output_dir`).
        progress: Factory of progress callbacks `(title, epochs) -> callback`.
        log: Receives one line per finished or skipped step.

    Returns:
        A `RunResult` with the final and baseline metrics and the report data.
    """
    from morphcli import files
    from morphcli.config import dump_yaml
    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph
    from morphcli.steps.shrink import Setup, hardware_of, prepare
    from morphcli.training import distribute

    # First: multi-worker runtimes and logical devices are set up before TF runs anything.
    strategy = distribute.make_strategy(conf.distribute)
    rundir = distribute.write_dir(rundir or conf.output_dir, strategy)  # non-chief: scratch
    files.write_text(rundir / "config.yaml", dump_yaml(conf))
    seed_setup = prepare(conf)
    runner = _Runner(conf, rundir, progress, log)
    setup = seed_setup
    for round_ in range(1, conf.run.rounds + 1):
        shrunk = runner.shrink(setup, round_)
        expanded = runner.expand(shrunk, _round_dir(rundir, "expand", round_),
                                 seed_setup.target, f"expand round {round_}")
        graph = build_graph(expanded)
        setup = Setup(expanded, seed_setup.dataset, graph, CostModel(graph, hardware_of(conf)),
                      seed_setup.target, seed_setup.metric)
    final = runner.retrain(expanded, rundir / "retrain", seed_setup.dataset, "retrain")
    baseline = None
    if conf.run.baseline:
        uniform = runner.expand(seed_setup.model, rundir / "baseline", seed_setup.target,
                                "baseline expand")
        baseline = runner.retrain(uniform, rundir / "baseline", seed_setup.dataset,
                                  "baseline retrain")
    report = write_report(conf, rundir, seed_setup, _load(rundir / "retrain" / "final.keras"),
                          final, baseline)
    distribute.remove_write_dir(rundir, strategy)
    return RunResult(rundir, final, baseline, report, runner.skipped)


def write_report(conf, rundir: Path, seed_setup, final_model, final: dict,
                 baseline: dict | None) -> dict:
    """report.json, report.md and widths.png comparing seed, MorphNet and baseline."""
    from morphcli import files
    from morphcli import report as rep
    from morphcli.api import analyze
    from morphcli.steps.shrink import hardware_of

    hardware = hardware_of(conf)
    seed = rep.build_report(seed_setup.graph, seed_setup.costs, name="seed")
    morph = analyze(final_model, hardware=hardware, name="morphnet")
    reports = [seed, morph]
    if baseline is not None:
        reports.append(analyze(_load(rundir / "baseline" / "final.keras"), hardware=hardware,
                               name="uniform baseline"))
    metric = seed_setup.metric
    data = {
        "target": {"metric": metric, "value": seed_setup.target},
        "models": {r.name: {**r.totals, "val_accuracy": acc}
                   for r, acc in zip(reports, [None, final.get("val_accuracy"),
                                               (baseline or {}).get("val_accuracy")],
                                     strict=False)},
        "seed": rep.to_json(seed), "morphnet": rep.to_json(morph),
    }
    files.write_json(rundir / "report.json", data)
    files.write_text(rundir / "report.md", summary_markdown(data) + "\n" + rep.to_markdown(
        seed, morph))
    rep.plot_widths(rundir / "widths.png", reports)
    return data


def summary_markdown(data: dict) -> str:
    """The comparison table: cost and accuracy of every model of the run."""
    from morphcli.report import human, seconds

    metric, target = data["target"]["metric"], data["target"]["value"]
    target_text = seconds(target) if metric == "latency" else human(target)
    lines = [f"# morph run: {metric} target {target_text}", "",
             "| model | FLOPs | params | latency | val accuracy |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in data["models"].items():
        acc = "—" if row.get("val_accuracy") is None else f"{row['val_accuracy']:.2%}"
        lines.append(f"| {name} | {human(row['flops'])} | {human(row['params'])} | "
                     f"{seconds(row['latency_s'])} | {acc} |")
    return "\n".join(lines) + "\n"

