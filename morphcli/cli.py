"""The `morph` command line: parse, call one library function, render.

No ML logic lives here. Data (tables, JSON) goes to stdout; progress, warnings
and errors go to stderr. A `MorphError` (a user's mistake) becomes one line
"Error: ..." and exit code 2; Ctrl-C exits 130; anything else is a bug and
keeps its traceback (exit 1).
"""

from __future__ import annotations

import json
import os
import sys

import click

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


def _consoles():
    from rich.console import Console

    return Console(), Console(stderr=True)


class MorphGroup(click.Group):
    """A click group that turns user errors into one line and exit code 2."""

    def invoke(self, ctx: click.Context):
        from morphcli.errors import MorphError

        try:
            return super().invoke(ctx)
        except MorphError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def _model_options(func):
    """--input-shape, --classes and --trust-code, shared by commands taking MODEL."""
    func = click.option("--trust-code", is_flag=True,
                        help="Allow Lambda layers and custom code in model files (unsafe: "
                             "runs code from the file).")(func)
    func = click.option("--classes", type=int, default=None,
                        help="Number of output classes for zoo:/applications: seeds.")(func)
    func = click.option("--input-shape", default=None, metavar="H,W,C",
                        help="Input shape without batch, e.g. 32,32,3. Needed for models "
                             "with a dynamic spatial input.")(func)
    return func


def _load(spec: str, input_shape: str | None, classes: int | None, trust_code: bool):
    from morphcli import api

    return api.load_model(spec, input_shape=input_shape, classes=classes,
                          trust_code=trust_code)


@click.group(cls=MorphGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "max_content_width": 100})
@click.version_option(package_name="morphcli")
def cli():
    """Reshape a Keras network to fit a FLOPs, size or latency budget.

    MODEL arguments accept a .keras file, zoo:NAME (built-in seeds: cnn,
    cnn_flatten, resnet20, mobilenet_v2) or applications:NAME (any
    keras.applications architecture, random weights).

    \b
    Typical session:
      morph report zoo:resnet20                      # what does the seed cost?
      morph run configs/demo.yaml                    # shrink, expand, retrain, report
      morph report runs/demo/retrain/final.keras --compare zoo:cnn
    """


@cli.command()
@click.argument("model")
@_model_options
@click.option("--hardware", default="cpu", show_default=True,
              help="Device for the roofline latency estimate: K80, P4, T4, P100, V100, TPUv2, "
                   "A100, H100, H200 or cpu.")
@click.option("--compare", "other", metavar="OTHER_MODEL", default=None,
              help="A second model (e.g. the shrunk one) to show side by side with ratios.")
@click.option("--structure", "structure_path", type=click.Path(dir_okay=False), default=None,
              help="Price MODEL with the widths in a structure.json, without rebuilding it.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object on stdout (totals, layers, groups) and nothing else.")
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as Markdown to this file.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG bar chart of channels per layer to this file.")
@click.option("--all", "all_layers", is_flag=True, help="List every layer, not the top 25.")
@click.option("--groups/--no-groups", default=True, show_default=True,
              help="Show the table of channel groups.")
def report(model, input_shape, classes, trust_code, hardware, other, structure_path, as_json,
           markdown, plot, all_layers, groups):
    """Per-layer and total FLOPs, MACs, params and latency of MODEL.

    FLOPs are what TensorFlow's profiler counts for the frozen inference graph
    at batch 1 (multiply-adds count 2, plus batch-norm, bias, add and pooling
    arithmetic); MACs count conv/dense multiply-adds only.

    \b
    Examples:
      morph report applications:ResNet50 --json
      morph report zoo:resnet20 --hardware T4 --plot widths.png
      morph report seed.keras --compare runs/x/shrink/shrunk.keras
      morph report seed.keras --structure runs/x/shrink/structure.json
    """
    from morphcli import api
    from morphcli import report as rep

    out, err = _consoles()
    seed = _load(model, input_shape, classes, trust_code)
    before = api.analyze(seed, hardware=hardware, structure=structure_path)
    after = None
    if other:
        after = api.analyze(_load(other, input_shape, classes, trust_code), hardware=hardware)
    if markdown:
        from morphcli.files import write_text

        write_text(markdown, rep.to_markdown(before, after))
    if plot:
        rep.plot_widths(plot, [before] + ([after] if after else []))
    if as_json:
        click.echo(json.dumps(rep.to_json(before, after), indent=2))
        return
    out.print(rep.layer_table(before, None if all_layers else 25))
    if groups:
        out.print(rep.groups_table(before))
    out.print(rep.totals_table(before))
    if after is not None:
        out.print(rep.compare_table(before, after))
    for path in filter(None, (markdown, plot)):
        err.print(f"wrote {path}", markup=False)


def _resolve(config_path, overrides: dict, flags: dict):
    from morphcli import config as cfg

    return cfg.load_config(config_path, overrides, flags=flags)


def _prepare_outdir(outdir, resume: bool, overwrite: bool, marker: str):
    """Refuses to clobber a finished step unless told to (LightningCLI's habit)."""
    import shutil
    from pathlib import Path

    from morphcli.errors import MorphError

    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()) and not resume:
        if not overwrite:
            raise MorphError(
                f"Output folder {outdir} already holds a run. Received: -o {outdir}",
                hint="pass --resume to continue it, --overwrite to start again, or "
                     "choose another folder.")
        shutil.rmtree(outdir)
    if resume and (outdir / marker).exists():
        return outdir, True
    return outdir, False


@cli.command()
@click.argument("model", required=False)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config (see configs/); flags override it.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Output folder for structure.json, shrunk.keras, checkpoints and logs.")
@click.option("--epochs", type=int, help="Override shrink.epochs.")
@click.option("--strength", help="Override regularizer.strength: a number or 'auto'.")
@click.option("--kind", help="Override regularizer.kind: gamma or group_lasso.")
@click.option("--round-to", type=int, help="Override shrink.round_to (alive counts rounded up).")
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
    from morphcli import shrink as shrinking

    overrides = {k: v for k, v in {
        "model.seed": model, "shrink.epochs": epochs, "regularizer.kind": kind,
        "shrink.round_to": round_to,
        "regularizer.strength": _number_or_auto(strength) if strength else None,
    }.items() if v is not None}
    conf = _resolve(config_path, overrides, {k: "the command line" for k in overrides})
    outdir, _ = _prepare_outdir(outdir, resume, overwrite, "shrunk.keras")
    out, err = _consoles()
    setup = shrinking.prepare(conf)
    err.print(f"shrinking {setup.model.name}: {setup.metric} target "
              f"{setup.target:,.4g} (seed {setup.costs.total(setup.metric):,.4g})",
              markup=False, highlight=False)
    result = shrinking.shrink(conf, outdir, setup=setup, callbacks=[
        _progress(err, "shrink", conf.shrink.epochs)])
    _show_shrink(out, err, setup, result, as_json)


def _number_or_auto(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _progress(console, title: str, epochs: int):
    from morphcli.progress import epoch_progress

    return epoch_progress(console, title, epochs)


def _show_shrink(out, err, setup, result, as_json: bool) -> None:
    from morphcli import report as rep
    from morphcli.api import analyze

    if as_json:
        click.echo(json.dumps({"seed": result.seed_costs, "shrunk": result.shrunk_costs,
                               "lambda": result.strength, "val_shrunk": result.shrunk_val,
                               "outdir": str(result.outdir)}, indent=2))
        return
    before = rep.build_report(setup.graph, setup.costs)
    after = analyze(result.shrunk_model, hardware=setup.costs.hardware, name="shrunk")
    out.print(rep.compare_table(before, after))
    for gid, why in result.kept_whole.items():
        err.print(f"note: group {gid} kept whole: {why}", markup=False)
    for gid in result.floor_groups:
        err.print(f"note: every channel of group {gid} fell below the threshold; kept the "
                  "strongest (regularizer.min_channels)", markup=False)
    acc = result.shrunk_val.get("accuracy")
    if acc is not None:
        err.print(f"shrunk model validation accuracy {acc:.2%} (before retraining)",
                  markup=False)
    err.print(f"wrote {result.outdir}/structure.json and {result.outdir}/shrunk.keras",
              markup=False)


@cli.group()
def config():
    """Inspect configuration files."""


@config.command("show")
@click.argument("path", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a value, e.g. --set shrink.epochs=3 (repeatable).")
def config_show(path, overrides):
    """Print the resolved config (defaults filled in) as YAML, without running.

    \b
    Examples:
      morph config show configs/demo.yaml
      morph config show --set target.value=25M
    """
    from morphcli import config as cfg

    parsed = dict(cfg.parse_override(p) for p in overrides)
    conf = cfg.load_config(path, parsed, flags={k: "--set" for k in parsed})
    click.echo(cfg.dump_yaml(conf, comments=True), nl=False)


@config.command("schema")
def config_schema():
    """Print every config key with its default and meaning (a valid config itself)."""
    from morphcli import config as cfg

    click.echo(cfg.describe_schema(), nl=False)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="morph")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
