"""`morph shrink`, `morph expand`, `morph retrain` and `morph run`, the steps of
the loop and the loop itself (`COMMANDS`, registered on the `morph` group by the
package's `__init__`)."""

from __future__ import annotations

import click

from morphcli.cli.common import ROUND_TO as _ROUND_TO
from morphcli.cli.common import consoles as _consoles
from morphcli.cli.common import load as _load
from morphcli.cli.common import model_options as _model_options
from morphcli.cli.common import quiet_tensorflow as _quiet_tensorflow
from morphcli.outputs import beside as _beside
from morphcli.outputs import check_folder as _check_folder
from morphcli.outputs import check_outputs
from morphcli.outputs import dumps as _dumps
from morphcli.outputs import take_folder as _take_folder


def _resolve(config_path, overrides: dict, flags: dict):
    from morphcli import config as cfg

    return cfg.load_config(config_path, overrides, flags=flags)


@click.command()
@click.argument("model", required=False)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config (see configs/); flags override it.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Output folder for structure.json, shrunk.keras, checkpoints and logs.")
@click.option("--epochs", type=int, help="Override shrink.epochs.")
@click.option("--strength", help="Override regularizer.strength: a number or 'auto'.")
@click.option("--kind", help="Override regularizer.kind: gamma or group_lasso.")
@click.option("--round-to", type=_ROUND_TO, help="Override shrink.round_to (N or auto).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete OUTDIR's previous contents first.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def shrink(model, config_path, outdir, epochs, strength, kind, round_to, resume, overwrite,
           as_json):
    """Learn which channels MODEL should keep, and rebuild it narrower.

    Trains MODEL with a resource-weighted sparsifying regularizer (MorphNet),
    thresholds the per-channel scales, and writes OUTDIR/structure.json and
    OUTDIR/shrunk.keras (surviving weights). MODEL overrides model.seed of the
    config; the MODEL file itself is never modified.

    \b
    Examples:
      morph shrink zoo:resnet20 -c configs/demo.yaml -o runs/r20
      morph shrink seed.keras -c my.yaml -o runs/x --strength 3 --epochs 20
      morph shrink -c my.yaml -o runs/x --resume        # after an interruption
    """
    from morphcli.steps.context import make_context
    from morphcli.steps.shrink import shrink as shrink_step

    overrides = {k: v for k, v in {
        "model.seed": model, "shrink.epochs": epochs, "regularizer.kind": kind,
        "shrink.round_to": round_to,
        "regularizer.strength": _number_or_auto(strength) if strength else None,
    }.items() if v is not None}
    conf = _resolve(config_path, overrides, {k: "the command line" for k in overrides})
    strategy, resume, overwrite, chief = _distribution(conf, resume, overwrite)
    _check_folder(conf, outdir, resume, overwrite, config_path)
    out, err = _consoles()
    ctx = make_context(conf, strategy=strategy)  # inputs first: nothing is deleted before
    outdir = _take_folder(outdir, resume, overwrite, chief)
    err.print(f"shrinking {ctx.seed.model.name}: {ctx.metric} target "
              f"{ctx.target:,.4g} (seed {ctx.seed.costs.total(ctx.metric):,.4g})",
              markup=False, highlight=False)
    result = shrink_step(ctx, outdir, callbacks=[_progress(err, "shrink", conf.shrink.epochs)])
    if not chief:
        return _worker_done(err)
    _show_shrink(out, err, ctx, result, as_json)


def _distribution(conf, resume: bool, overwrite: bool):
    """Creates the command's one tf.distribute strategy before TensorFlow runs
    anything (logical devices must be set first). Returns (strategy, resume,
    overwrite, is_chief): workers other than the chief never refuse or delete the
    chief's folder."""
    from morphcli.training import distribute

    _quiet_tensorflow()
    strategy = distribute.make_strategy(conf.distribute)
    chief = distribute.is_chief(strategy)
    return strategy, resume or not chief, overwrite and chief, chief


def _worker_done(err) -> None:
    err.print("this worker is done; the chief wrote the outputs", markup=False)


def _number_or_auto(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _progress(console, title: str, epochs: int):
    from morphcli.progress import epoch_progress

    return epoch_progress(console, title, epochs)


def _show_shrink(out, err, ctx, result, as_json: bool) -> None:
    from morphcli import reporting as rep

    if as_json:
        click.echo(_dumps({"seed": result.seed_costs, "shrunk": result.shrunk_costs,
                           "lambda": result.strength, "val_shrunk": result.shrunk_val,
                           "outdir": str(result.outdir)}))
        return
    out.print(rep.compare_table(ctx.seed.report(), result.shrunk.report(name="shrunk")))
    for gid, why in result.kept_whole.items():
        err.print(f"note: group {gid} kept whole: {why}", markup=False)
    for gid in result.floor_groups:
        err.print(f"note: every channel of group {gid} fell below the threshold; kept the "
                  "strongest (regularizer.min_channels)", markup=False)
    if result.surgery:
        delta, approximate = result.surgery["max_abs_delta"], result.surgery["approximate"]
        state = "approximate" if approximate else "exact"
        err.print(f"surgery {state}: the shrunk model differs from the seed with its dead "
                  f"channels zeroed by at most {delta:.2g} on a random batch", markup=False)
        for gid, why in approximate.items():
            err.print(f"note: group {gid} is approximate: {why} (retraining absorbs it)",
                      markup=False)
    acc = result.shrunk_val.get("accuracy")
    if acc is not None:
        err.print(f"shrunk model validation accuracy {acc:.2%} (before retraining)",
                  markup=False)
    err.print(f"wrote {result.outdir}/structure.json and {result.outdir}/shrunk.keras",
              markup=False)


@click.command()
@click.argument("model")
@click.option("--target", "target", metavar="METRIC=VALUE",
              help="Budget, e.g. flops=25M, params=0.5 (half the model's), latency=2ms.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="Take target, hardware and expand settings from a config instead.")
@click.option("-o", "--output", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the expanded .keras model (OUT.expand.json goes beside it).")
@click.option("--hardware", help="Device for latency targets (see `morph report --help`).")
@click.option("--round-to", type=_ROUND_TO, help="Widths multiples of N; auto: a profile's.")
@click.option("--mode", type=click.Choice(["below", "nearest"]),
              help="below: never above the target (default); nearest: closest either side.")
@click.option("--structure", "structure_path", type=click.Path(dir_okay=False),
              help="Scale a structure.json learned on MODEL (the seed), not MODEL's widths.")
@click.option("--measure", is_flag=True, default=None,
              help="Latency: time candidates here and correct until the clock agrees.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output and its record.")
@click.option("--json", "as_json", is_flag=True, help="Print the expansion record on stdout.")
@_model_options
def expand(model, target, config_path, out_path, hardware, round_to, mode, structure_path,
           measure, overwrite, as_json, input_shape, classes, trust_code):
    """Scale every prunable width of MODEL by one multiplier to land on a budget.

    Solves for the width multiplier w so that the cost of MODEL with every
    prunable channel group scaled by w meets the target (w < 1 shrinks
    uniformly). Writes the model with fresh weights: its structure is what
    matters; retrain it next. A fractional target (0.5, 50%) is relative to
    MODEL's own cost.

    \b
    Examples:
      morph expand runs/x/shrunk.keras --target flops=25M -o expanded.keras
      morph expand zoo:resnet20 --target params=0.5 --round-to 8 -o half.keras
      morph expand shrunk.keras --target latency=2ms --hardware T4 -o fast.keras
      morph expand seed.keras --structure runs/x/structure.json --target flops=0.5 -o y.keras
    """
    from morphcli import api
    from morphcli import config as cfg
    from morphcli.errors import MorphError
    from morphcli.steps.context import Priced, hardware_of
    from morphcli.steps.expand import check_measured

    out, err = _consoles()
    conf = _resolve(config_path, {k: v for k, v in {
        "target.hardware": hardware, "expand.round_to": round_to, "expand.mode": mode,
        "expand.measure": measure}.items() if v is not None}, {})
    if target:
        metric, quantity = cfg.parse_target(target)
    elif config_path:
        metric, quantity = conf.target.metric, conf.target.value
    else:
        raise MorphError("No target given.", hint="pass --target flops=25M (or params=, "
                                                  "latency=) or -c CONFIG.")
    record_path = _beside(out_path)
    check_outputs({"MODEL": model, "--structure": structure_path, "--config": config_path,
                   "--hardware": conf.target.hardware},
                  {"-o": out_path, "its record": record_path}, overwrite=overwrite)
    seed = Priced.of(_load(model, input_shape, classes, trust_code), hardware_of(conf))
    result = api.expansion(  # what `morphcli.expand` returns the model of
        seed, (metric, quantity), round_to=conf.expand.round_to, mode=conf.expand.mode,
        structure=structure_path, measure=conf.expand.measure, model_path=out_path,
        record_path=record_path, received=f"--target {target}" if target else None)
    if as_json:
        click.echo(_dumps(result.record))
    else:
        _show_expansion(out, err, seed, result, metric, out_path)
    check_measured(result.record, conf.expand.mode, out_path,
                   hint="raise the target, or pass --mode nearest to accept the closest.")


def _show_expansion(out, err, seed, result, metric: str, out_path: str) -> None:
    from morphcli.core.solver import amount
    from morphcli.reporting import compare_table

    out.print(compare_table(seed.report(), result.expanded.report(name="expanded")))
    expansion = result.expansion
    err.print(f"width multiplier {expansion.multiplier:.4f}{expansion.held_note}: {metric} "
              f"{amount(metric, expansion.achieved)} for target "
              f"{amount(metric, expansion.target)} ({expansion.error:+.2%}); wrote {out_path}",
              markup=False, highlight=False)
    if m := result.record.get("measured"):
        from morphcli.steps.expand import describe_measured

        for line in describe_measured(m):
            err.print(line, markup=False, highlight=False)


@click.command()
@click.argument("model")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config: its data and retrain sections are used.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Output folder for final.keras, metrics.json, checkpoints and logs.")
@click.option("--epochs", type=int, help="Override retrain.epochs.")
@click.option("--keep-weights", is_flag=True, default=None,
              help="Fine-tune MODEL's weights instead of training from scratch.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete OUTDIR's previous contents first.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json on stdout.")
@_model_options
def retrain(model, config_path, outdir, epochs, keep_weights, resume, overwrite, as_json,
            input_shape, classes, trust_code):
    """Train MODEL from scratch (no regularizer) and evaluate it.

    \b
    Examples:
      morph retrain runs/x/expanded.keras -c configs/demo.yaml -o runs/x/retrain
      morph retrain shrunk.keras -c my.yaml -o ft --keep-weights --epochs 3
    """
    from morphcli.steps.context import make_context
    from morphcli.steps.retrain import retrain as retrain_step

    overrides = {k: v for k, v in {"retrain.epochs": epochs}.items() if v is not None}
    conf = _resolve(config_path, overrides, {k: "the command line" for k in overrides})
    strategy, resume, overwrite, chief = _distribution(conf, resume, overwrite)
    _check_folder(conf, outdir, resume, overwrite, config_path, model=model)
    out, err = _consoles()
    ctx = make_context(conf, strategy=strategy, budget=False,
                       model=_load(model, input_shape, classes, trust_code))
    outdir = _take_folder(outdir, resume, overwrite, chief)
    result = retrain_step(ctx, ctx.seed, outdir, keep_weights=keep_weights,
                          callbacks=[_progress(err, "retrain", conf.retrain.epochs)])
    if not chief:
        return _worker_done(err)
    metrics = {k: v for k, v in result.metrics.items() if k != "history"}
    if as_json:
        click.echo(_dumps(metrics))
        return
    from morphcli.reporting import results_table

    out.print(results_table({"retrained": metrics}))
    err.print(f"wrote {outdir}/final.keras and {outdir}/metrics.json", markup=False)


@click.command()
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "rundir", type=click.Path(file_okay=False),
              help="Run folder (default: output_dir of the config, runs/<name>).")
@click.option("--rounds", type=int, help="Override run.rounds (shrink/expand rounds).")
@click.option("--baseline/--no-baseline", default=None,
              help="Also train the uniform-width baseline at the same budget.")
@click.option("--resume", is_flag=True, help="Continue at the first unfinished step.")
@click.option("--overwrite", is_flag=True, help="Delete the run folder's contents first.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any config value, e.g. --set shrink.epochs=3 (repeatable).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the results on stdout as JSON: target, models and, with the "
                   "baseline, the comparison (who won).")
def run(config_path, rundir, rounds, baseline, resume, overwrite, sets, as_json):
    """Shrink → expand → retrain in one run folder, then report.

    CONFIG defaults to the built-in demo (a small CNN on scikit-learn's
    digits, half its FLOPs), so `morph run` alone shows the whole loop.

    \b
    Examples:
      morph run configs/demo.yaml
      morph run configs/params.yaml -o runs/p --baseline
      morph run configs/demo.yaml --resume           # after an interruption
    """
    from morphcli import config as cfg
    from morphcli.reporting import comparison_line, measured_note, results_table
    from morphcli.steps.context import make_context
    from morphcli.steps.run import recorded_config
    from morphcli.steps.run import run as run_steps

    overrides = dict(cfg.parse_override(p) for p in sets)
    overrides.update({k: v for k, v in {"run.rounds": rounds, "run.baseline": baseline}.items()
                      if v is not None})
    recorded = None
    if config_path is None and resume and rundir and not overwrite:  # the run's own, whole
        config_path = recorded = recorded_config(rundir)
    conf = _resolve(config_path or cfg.demo_config_path(), overrides,
                    {k: "the command line" for k in overrides})
    strategy, resume, overwrite, chief = _distribution(conf, resume, overwrite)
    rundir = rundir or conf.output_dir
    _check_folder(conf, rundir, resume, overwrite, None if recorded else config_path)
    out, err = _consoles()
    ctx = make_context(conf, strategy=strategy)
    rundir = _take_folder(rundir, resume, overwrite, chief)
    result = run_steps(ctx, rundir,
                       progress=lambda title, epochs: _progress(err, title, epochs),
                       log=lambda line: err.print(line, markup=False, highlight=False))
    if not chief:
        return _worker_done(err)
    if as_json:
        keys = ("target", "models", "measured", "comparison")
        click.echo(_dumps({k: result.report[k] for k in keys if k in result.report}))
        return
    comparison = result.report.get("comparison")
    out.print(results_table(result.report["models"], (comparison or {}).get("best"),
                            measured_note(result.report)))
    if comparison:
        out.print(comparison_line(comparison), markup=False, highlight=False)
    made = "report.md, report.json, widths.png" + (" and best.keras (the better model)"
                                                   if (comparison or {}).get("file") else "")
    err.print(f"wrote {rundir}/{made}", markup=False)


COMMANDS = (shrink, expand, retrain, run)
