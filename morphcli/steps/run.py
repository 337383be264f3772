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
from morphcli.measure.bench import latencies
from morphcli.steps.context import Priced, RunContext, make_context, round_to_of

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
        from morphcli.steps.expand import expand

        if self.done(outdir / "expand.json", label):  # written after expanded.keras
            return self.ctx.load(outdir / "expanded.keras")
        conf, metric, target = self.ctx.conf, self.ctx.metric, self.ctx.target
        result = expand(source, metric, target,
                        round_to=round_to_of(conf.expand.round_to, source.costs.hardware),
                        measure=conf.expand.measure,
                        mode=conf.expand.mode, strategy=self.ctx.strategy,
                        model_path=outdir / "expanded.keras",
                        record_path=outdir / "expand.json")
        self.log(f"{label}: width multiplier {result.expansion.multiplier:.4f}, {metric} "
                 f"{result.expansion.achieved:,.6g} for target {target:,.6g} "
                 f"({result.expansion.error:+.2%})")
        return result.expanded

    def search(self) -> Priced:
        """The structure the accuracy-aware search chooses at the budget, cut from
        the first round's trained network (`steps.search`)."""
        from morphcli.core import structure
        from morphcli.steps.search import search

        conf, outdir = self.ctx.conf, self.rundir / "search"
        if self.done(outdir / "search.json", "search"):  # written after chosen.keras
            return self.ctx.load(outdir / "chosen.keras")
        shrunk = _round_dir(self.rundir, "shrink", 1)
        trained = self.ctx.load(shrunk / "trained.keras")
        learned = structure.load(shrunk / "structure.json").widths_for(self.ctx.seed.graph)
        done = []

        def scored(name: str) -> None:
            done.append(name)
            self.log(f"search: scoring candidate {len(done)} ({name})")

        result = search(self.ctx, trained, learned, kind=conf.regularizer.kind,
                        round_to=round_to_of(conf.expand.round_to, self.ctx.hardware),
                        rounds=conf.search.rounds, finetune_epochs=conf.search.finetune_epochs,
                        learning_rate=conf.search.learning_rate, outdir=outdir,
                        progress=scored)
        scores = {c.name: c.select_accuracy for c in result.candidates}
        shrink_s = json.loads((shrunk / "summary.json").read_text()).get("train_seconds")
        share = f", {result.seconds / shrink_s:.0%} of the shrink's" if shrink_s else ""
        self.log(f"search: chose {result.chosen.name} of {len(result.candidates)} candidates "
                 f"(selection accuracy {scores[result.chosen.name]:.2%}; uniform "
                 f"{scores.get('uniform', float('nan')):.2%}, morphnet "
                 f"{scores.get('morphnet', float('nan')):.2%}) in {result.seconds:.0f} s"
                 f"{share}")
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
    from morphcli.config import record
    from morphcli.training import distribute

    if not isinstance(ctx, RunContext):
        ctx = make_context(ctx)
    conf = ctx.conf
    if conf.search.enabled:  # refused before any training, not after the shrink
        from morphcli.steps.search import check_searchable

        check_searchable(conf, ctx.dataset)
    rundir = distribute.write_dir(rundir or conf.output_dir, ctx.strategy)  # non-chief: scratch
    if (rundir / "config.yaml").exists() or _started(rundir):
        check_record(rundir / "config.yaml")  # whole, and there when steps are
    record(conf, rundir / "config.yaml")  # a resumed run must have the same config
    record_profile(conf.target.hardware, rundir)
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
    if conf.run.baseline:
        uniform = runner.expand(ctx.seed, rundir / "baseline", "baseline expand")
        baseline, uniform = runner.retrain(uniform, rundir / "baseline", "baseline retrain")
    report = write_report(ctx, rundir, final_model, final, uniform, baseline, name)
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


def check_record(path: Path) -> None:
    """Refuses a run's recorded config that is missing or damaged: it must read back
    to exactly what `record` wrote (a truncated file would have defaults fill the gaps,
    a 1-epoch run resumed with 20).

    Raises:
        MorphError: The file is missing, unreadable, or not a whole recorded config.
    """
    from morphcli.config import dump_yaml, load_config

    where = f"Received: -o {path.parent}"
    hint = "restore it, or start the run again with --overwrite."
    if not path.is_file():
        raise MorphError(f"{path.parent} holds a run whose recorded config.yaml is missing; "
                         f"resuming without it would run another config. {where}", hint=hint)
    try:
        whole = dump_yaml(load_config(path)) == path.read_text(encoding="utf-8")
    except (MorphError, OSError, UnicodeDecodeError) as err:
        raise MorphError(f"The run's recorded config {path} cannot be read ({err}). {where}",
                         hint=hint) from None
    if not whole:
        raise MorphError(f"The run's recorded config {path} is damaged: it is not the whole "
                         f"config morph wrote (keys missing, cut short or edited). {where}",
                         hint=hint)


PROFILE_RECORD = "profile.sha256"


def record_profile(hardware, rundir: Path) -> None:
    """Records the hash of a `profile:` device's file in `rundir`, or, resuming, refuses a
    profile changed since the run started (its steps were priced on the old one).

    Raises:
        MorphError: The profile's hash differs from the recorded one, or a started
            run has no record of it.
    """
    import hashlib

    from morphcli import files
    from morphcli.core.profile import is_profile_name

    if not is_profile_name(hardware):
        return
    path, digest = hardware.partition(":")[2], hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    record, now = rundir / PROFILE_RECORD, digest.hexdigest()
    if record.is_file():
        then = record.read_text().split(maxsplit=1)[0] if record.read_text().strip() else ""
        if then != now:
            raise MorphError(
                f"The profile {path} changed since this run started (sha256 {then[:12]} "
                f"recorded, {now[:12]} now): its steps were priced on the old one. Received: "
                f"target.hardware={hardware}",
                hint="restore the profile, or start again with --overwrite.")
        return
    if _started(rundir):
        raise MorphError(f"{rundir} holds a run with no record of its profile ({PROFILE_RECORD})"
                         f", so a changed profile cannot be ruled out. Received: "
                         f"target.hardware={hardware}",
                         hint="start again with --overwrite.")
    files.write_text(record, f"{now}  {path}\n")


def write_report(ctx: RunContext, rundir: Path, final_model: Priced, final: dict,
                 uniform: Priced | None, baseline: dict | None,
                 name: str = "morphnet") -> dict:
    """report.json, report.md and widths.png comparing seed, the retrained structure
    (`name`: morphnet, or search when the search chose it) and the baseline."""
    from morphcli import files
    from morphcli import report as rep

    seed = ctx.seed.report(name="seed")
    morph = final_model.report(name=name)
    reports = [seed, morph] + ([uniform.report(name="uniform baseline")] if uniform else [])
    trained = [{}, final, baseline or {}]
    models = [ctx.seed.model, final_model.model] + ([uniform.model] if uniform else [])
    found, how = latencies(models, ctx.hardware)
    measured = [r.median_s for r in found]
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
                                 names=(name, "uniform baseline"))
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
