"""`morph report`: what a model costs, per layer and in total (`COMMANDS`,
registered on the `morph` group by the package's `__init__`)."""

from __future__ import annotations

import click

from morphcli.cli.common import consoles as _consoles
from morphcli.cli.common import load as _load
from morphcli.cli.common import model_options as _model_options
from morphcli.outputs import check_outputs
from morphcli.outputs import dumps as _dumps


@click.command()
@click.argument("model")
@_model_options
@click.option("--hardware", default="cpu", show_default=True,
              help="Device for latency: profile:PATH (measured by `morph profile`), or a "
                   "roofline estimate on K80, P4, T4, P100, V100, TPUv2, A100, H100, H200, cpu.")
@click.option("--compare", "other", metavar="OTHER", help="A second model, side by side.")
@click.option("--structure", "structure_path", type=click.Path(dir_okay=False), default=None,
              help="Price MODEL with the widths in a structure.json, without rebuilding it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout only.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Also write Markdown here.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write a PNG of widths.")
@click.option("--all", "all_layers", is_flag=True, help="List every layer, not the top 25.")
@click.option("--groups/--no-groups", default=True, help="Show the channel groups.")
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
    from morphcli import reporting as rep

    check_outputs({"MODEL": model, "--compare": other, "--structure": structure_path,
                   "--hardware": hardware}, {"--markdown": markdown, "--plot": plot})
    out, err = _consoles()
    seed = _load(model, input_shape, classes, trust_code)
    compared = _load(other, input_shape, classes, trust_code) if other else None
    if markdown or plot or not as_json:
        before = api.analyze(seed, hardware=hardware, structure=structure_path)
        after = None if compared is None else api.analyze(compared, hardware=hardware)
    if markdown:
        from morphcli.files import write_text

        write_text(markdown, rep.to_markdown(before, after))
    if plot:
        rep.plot_widths(plot, [before] + ([after] if after else []))
    if as_json:  # the very dict `morphcli.report` returns
        click.echo(_dumps(api.report(seed, hardware=hardware, structure=structure_path,
                                     compare=compared)))
        return
    out.print(rep.layer_table(before, None if all_layers else 25))
    if groups:
        out.print(rep.groups_table(before))
    out.print(rep.totals_table(before))
    if after is not None:
        out.print(rep.compare_table(before, after))
    for path in filter(None, (markdown, plot)):
        err.print(f"wrote {path}", markup=False)


COMMANDS = (report,)
