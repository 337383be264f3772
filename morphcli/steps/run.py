"""`morph run`: the whole MorphNet loop in one run folder.

shrink → expand (→ shrink → expand, for `run.rounds` > 1) → retrain, plus,
with `run.baseline`, the seed scaled uniformly to the same budget and
retrained with the same schedule (the comparison MorphNet is judged by); then
a report comparing seed, MorphNet and baseline.

Every step writes its outputs atomically into its own sub-folder, and a step
whose final output exists is not run again: `--resume` continues at the first
unfinished step (and inside it, at the last checkpointed epoch)::

    RUNDIR/config.yaml      the resolved config (a resume must match it, and it whole)
    RUNDIR/profile.sha256   with a `profile:` device: the profile's hash (a resume
                            refuses a profile changed since the run started)
    RUNDIR/shrink/    structure.json, shrunk.keras, summary.json  (shrink2/... for more rounds)

A step is done when its last file exists (summary.json, expand.json,
metrics.json), written after all the others.
    RUNDIR/expand/    expanded.keras, expand.json
    RUNDIR/retrain/   final.keras, metrics.json
    RUNDIR/baseline/  expanded.keras, expand.json, final.keras, metrics.json
    RUNDIR/report.md, RUNDIR/report.json, RUNDIR/widths.png
    RUNDIR/best.keras  with the baseline: the better of final.keras and the
                       baseline's (report.json's "comparison" says which, and why)

One `RunContext` serves every step: the strategy is made once, the data
loaded once, and each model's channel graph built once (a step's result hands
its priced model to the next step; a skipped step's model is loaded once).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from morphcli.errors import MorphError
from morphcli.measure.isolated import latencies
from morphcli.steps.context import Priced, RunContext, make_context, round_to_of
from morphcli.steps.records import check_record, record_folder

Progress = Callable[[str, int], object]  # (title, epochs) -> Keras callback


@dataclass
class RunResult:
    rundir: Path
    final: dict
    baseline: dict | None
    report: dict
    skipped: list[str] = field(default_factory=list)


def _round_dir(rundir: Path, step: str, round_: int) -> Path:
    return rundir / (step if round_ == 1 else f"{step}{round_}")


class _Runner:
    """Runs one step after the other, skipping those already done."""

    def __init__(self, ctx: RunContext, rundir: Path, progress: Progress | None,
                 log: Callable[[str], None]):
        self.ctx, self.rundir, self.log = ctx, rundir, log
        self.progress = progress
        self.skipped: list[str] = []

    def callbacks(self, title: str, epochs: int) -> list:
        return [self.progress(title, epochs)] if self.progress else []

    def done(self, path: Path, step: str) -> bool:
        from morphcli.training import distribute

        # Several workers skip a step only together: their collective ops must match.
        if distribute.on_every_worker(self.ctx.strategy, path.exists()):
            self.skipped.append(step)
            self.log(f"{step}: already done ({path}), skipped")
            return True
        return False

    def shrink(self, ctx: RunContext, round_: int) -> Priced:
        from morphcli.steps.shrink import shrink

        outdir = _round_dir(self.rundir, "shrink", round_)
        # summary.json is the step's last write: only then is the step done.
        if self.done(outdir / "summary.json", f"shrink round {round_}"):
            return self.ctx.load(outdir / "shrunk.keras")
        return shrink(ctx, outdir, callbacks=self.callbacks(
            f"shrink {round_}", ctx.conf.shrink.epochs)).shrunk

    def expand(self, source: Priced, outdir: Path, label: str) -> Priced:
        """Expands `source` into `outdir`; a measured latency out of reach in mode
        `below` stops the run (resumed too: nothing over budget is retrained)."""
        from morphcli.steps.expand import check_measured, expand

        conf, metric, target = self.ctx.conf, self.ctx.metric, self.ctx.target
        model_path, record_path = outdir / "expanded.keras", outdir / "expand.json"
        hint = ("raise target.value, or set expand.mode: nearest to accept the closest; "
                "then start again with --overwrite.")
        if self.done(record_path, label):  # written after expanded.keras
            check_measured(json.loads(record_path.read_text()), conf.expand.mode, model_path,
                           hint)
            return self.ctx.load(model_path)
        result = expand(source, metric, target,
                        round_to=round_to_of(conf.expand.round_to, source.costs.hardware),
                        measure=conf.expand.measure,
                        mode=conf.expand.mode, strategy=self.ctx.strategy,
                        model_path=model_path, record_path=record_path)
        self.log(f"{label}: width multiplier {result.expansion.multiplier:.4f}, {metric} "
                 f"{result.expansion.achieved:,.6g} for target {target:,.6g} "
                 f"({result.expansion.error:+.2%})")
        check_measured(result.record, conf.expand.mode, model_path, hint)
        return result.expanded

    def search(self) -> Priced:
        """The structure the accuracy-aware search chooses at the budget, cut from
        the first round's trained network (`steps.search`)."""
        from morphcli.steps.search import kept_line, search_shrink

        outdir = self.rundir / "search"
        if self.done(outdir / "search.json", "search"):  # written after chosen.keras
            return self.ctx.load(outdir / "chosen.keras")
        shrunk = _round_dir(self.rundir, "shrink", 1)
        done = []

        def scored(name: str) -> None:
            done.append(name)
            self.log(f"search: scoring candidate {len(done)} ({name})")

        result = search_shrink(self.ctx, shrunk, outdir, progress=scored)
        scores = {c.name: c.select_accuracy for c in result.candidates}
        shrink_s = json.loads((shrunk / "summary.json").read_text()).get("train_seconds")
        share = f", {result.seconds / shrink_s:.0%} of the shrink's" if shrink_s else ""
        self.log(f"search: chose {result.chosen.name} of {len(result.candidates)} candidates "
                 f"(selection accuracy {scores[result.chosen.name]:.2%}; uniform "
                 f"{scores.get('uniform', float('nan')):.2%}, morphnet "
                 f"{scores.get('morphnet', float('nan')):.2%}) in {result.seconds:.0f} s"
                 f"{share}{kept_line(result.record)}")
        return result.structure

    def retrain(self, source: Priced, outdir: Path, label: str) -> tuple[dict, Priced]:
        from morphcli.steps.retrain import retrain

        if self.done(outdir / "metrics.json", label):
            return json.loads((outdir / "metrics.json").read_text()), source
        result = retrain(self.ctx, source, outdir, callbacks=self.callbacks(
            label, self.ctx.conf.retrain.epochs))
        return result.metrics, result.trained


def run(ctx: RunContext, rundir: str | Path | None = None, *, progress: Progress | None = None,
        log: Callable[[str], None] = lambda message: None) -> RunResult:
    """Runs shrink → expand → retrain (and the baseline) into `rundir`.

    Args:
        ctx: The command's context (`steps.context.make_context(conf)`), or a
            config to make one from.
        rundir: The run folder (default: `conf.output_dir`).
        progress: Factory of progress callbacks `(title, epochs) -> callback`.
        log: Receives one line per finished or skipped step.

    Returns:
        A `RunResult` with the final and baseline metrics and the report data.
    """
    from morphcli.training import distribute

    if not isinstance(ctx, RunContext):
        ctx = make_context(ctx)
    conf = ctx.conf
    if conf.search.enabled:  # refused before any training, not after the shrink
        from morphcli.steps.search import check_searchable

        check_searchable(conf, ctx.dataset)
    rundir = distribute.write_dir(rundir or conf.output_dir, ctx.strategy)  # non-chief: scratch
    record_folder(conf, rundir, started=_started(rundir))  # a resume: the same, whole
    runner = _Runner(ctx, rundir, progress, log)
    current = ctx
    for round_ in range(1, conf.run.rounds + 1):
        shrunk = runner.shrink(current, round_)
        expanded = runner.expand(shrunk, _round_dir(rundir, "expand", round_),
                                 f"expand round {round_}")
        current = ctx.with_seed(expanded)
    name = "morphnet"
    if conf.search.enabled:
        expanded, name = runner.search(), "search"
    final, final_model = runner.retrain(expanded, rundir / "retrain", "retrain")
    baseline = uniform = None
    same = False
    if conf.run.baseline:
        uniform = runner.expand(ctx.seed, rundir / "baseline", "baseline expand")
        same = uniform.model.get_config() == final_model.model.get_config()
        if same:  # one structure, one seed, one schedule: its retrain is the baseline's
            log(f"baseline retrain: the {name} structure is the uniform one; its retrain "
                "is the baseline's")
            baseline, uniform = final, final_model
        else:
            baseline, uniform = runner.retrain(uniform, rundir / "baseline", "baseline retrain")
    report = write_report(ctx, rundir, final_model, final, uniform, baseline, name, same=same)
    distribute.remove_write_dir(rundir, ctx.strategy)
    return RunResult(rundir, final, baseline, report, runner.skipped)


_STEPS = re.compile(r"(shrink|expand)\d*|retrain|baseline")  # the step folders


def _started(rundir: Path) -> bool:
    """Whether a step of the run in `rundir` has begun (its folder exists)."""
    return rundir.is_dir() and any(_STEPS.fullmatch(p.name) for p in rundir.iterdir())


def recorded_config(rundir: str | Path) -> str:
    """The config a run folder recorded, for `morph run --resume -o DIR` without one.

    Raises:
        MorphError: `rundir` is not a run folder (a mistyped path), its config.yaml
            is missing, or it is damaged (`check_record`).
    """
    from morphcli.files import MARKER

    path = Path(rundir)
    if not (path / MARKER).is_file():
        raise MorphError(f"--resume: {rundir} holds no run to continue (no {MARKER} in it). "
                         f"Received: -o {rundir}",
                         hint="check the path, or start a new run without --resume.")
    check_record(path / "config.yaml")
    return str(path / "config.yaml")


def write_report(ctx: RunContext, rundir: Path, final_model: Priced, final: dict,
                 uniform: Priced | None, baseline: dict | None,
                 name: str = "morphnet", same: bool = False) -> dict:
    """report.json, report.md and widths.png comparing seed, the retrained structure
    (`name`: morphnet, or search when the search chose it) and the baseline (`same`:
    the baseline is that structure, retrained once)."""
    from morphcli import files
    from morphcli import reporting as rep

    seed = ctx.seed.report(name="seed")
    morph = final_model.report(name=name)
    reports = [seed, morph] + ([uniform.report(name="uniform baseline")] if uniform else [])
    trained = [{}, final, baseline or {}]
    models = [ctx.seed.model, final_model.model] + ([uniform.model] if uniform and not same
                                                     else [])
    found, how = latencies(models, ctx.hardware)
    measured = [r.median_s for r in found]
    if uniform is not None and same:  # one model, timed once: both rows read the same time
        measured.append(measured[1])
    data = {
        "target": {"metric": ctx.metric, "value": ctx.target},
        "models": {r.name: {**r.totals, "measured_latency_s": m,
                            **{k: t[k] for k in ("val_accuracy", "train_accuracy", "usable",
                                                 "select_accuracy") if k in t}}
                   for r, m, t in zip(reports, measured, trained, strict=False)},
        "measured": {**how, "estimate": seed.latency_label or seed.hardware},
        "seed": rep.to_json(seed), name: rep.to_json(morph),
    }
    if uniform is not None:
        sizes = [getattr(ctx.dataset, f"{split}_size", 0) if ctx.dataset is not None else 0
                 for split in ("val", "select")]
        comparison = rep.compare(data["models"], ctx.metric, *sizes,
                                 names=(name, "uniform baseline"), same=same)
        if comparison["best"] is not None:  # hand the user the better model
            source = "retrain" if comparison["best"] == name else "baseline"
            files.copy_file(rundir / source / "final.keras", rundir / "best.keras")
            comparison["file"] = "best.keras"
        data["comparison"] = comparison
    files.write_json(rundir / "report.json", data)
    files.write_text(rundir / "report.md", rep.results_markdown(data) + "\n" + rep.to_markdown(
        seed, morph))
    rep.plot_widths(rundir / "widths.png", reports)
    return data
