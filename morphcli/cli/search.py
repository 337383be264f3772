"""`morph search` (`COMMANDS`, registered on the `morph` group by the package's
`__init__`)."""

from __future__ import annotations

from pathlib import Path

import click

from morphcli.cli.common import consoles as _consoles
from morphcli.config.schema import SEARCH_SCORINGS
from morphcli.outputs import check_folder, take_folder
from morphcli.outputs import dumps as _dumps


@click.command()
@click.argument("shrink_dir", metavar="SHRINK_DIR", type=click.Path(file_okay=False))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Folder for search.json and chosen.keras (made if missing).")
@click.option("--target", metavar="METRIC=VALUE",
              help="Override the recorded target, e.g. flops=10%, params=0.5M.")
@click.option("--rounds", type=click.IntRange(0, 20), help="Override search.rounds.")
@click.option("--finetune-epochs", type=click.FloatRange(0, 100),
              help="Override search.finetune_epochs (scoring finetune).")
@click.option("--scoring", type=click.Choice(SEARCH_SCORINGS),
              help="Override search.scoring: cut from the shrink's network and fine-tuned, "
                   "or trained from scratch for search.scratch_epochs.")
@click.option("--scratch-epochs", type=click.FloatRange(0, 100, min_open=True),
              help="Override search.scratch_epochs (scoring scratch).")
@click.option("--overwrite", is_flag=True, help="Delete OUTDIR's previous contents first.")
@click.option("--json", "as_json", is_flag=True, help="Print search.json on stdout.")
def search(shrink_dir, outdir, target, rounds, finetune_epochs, scoring, scratch_epochs,
           overwrite, as_json):
    """Choose the structure at the budget by accuracy, from a finished shrink.

    Every candidate (uniform width, MorphNet's learned structure, blends of the
    two, local moves around the best) is scaled to the exact budget, cut from
    SHRINK_DIR/trained.keras and fine-tuned briefly (or, with --scoring scratch,
    trained from fresh weights for the retrain's first epochs), and scored on
    the selection split (never on validation). Writes OUTDIR/search.json (every candidate's
    widths, cost and score) and OUTDIR/chosen.keras (the chosen structure, fresh
    weights: retrain it). Settings come from SHRINK_DIR/config.yaml.

    \b
    Examples:
      morph shrink zoo:cnn -c configs/demo.yaml -o runs/s
      morph search runs/s -o runs/s-search --target flops=10%
      morph retrain runs/s-search/chosen.keras -c configs/demo.yaml -o runs/r
    """
    from morphcli import config as cfg
    from morphcli.errors import MorphError
    from morphcli.steps.context import make_context
    from morphcli.steps.records import check_record
    from morphcli.steps.search import check_scoring, check_searchable, kept_line, search_shrink

    recorded = Path(shrink_dir) / "config.yaml"
    if not recorded.is_file():
        raise MorphError(f"{shrink_dir} is not a shrink folder: it has no config.yaml. "
                         f"Received: SHRINK_DIR {shrink_dir}",
                         hint="pass the -o folder of `morph shrink` (or a run's shrink/).")
    check_record(recorded)
    overrides = {k: v for k, v in {"search.rounds": rounds,
                                   "search.finetune_epochs": finetune_epochs,
                                   "search.scoring": scoring,
                                   "search.scratch_epochs": scratch_epochs}.items()
                 if v is not None}
    if target is not None:
        overrides.update(_target(target))
    conf = cfg.load_config(recorded, overrides, flags={k: "the command line" for k in overrides})
    check_scoring(conf.search.scoring, finetune_epochs=finetune_epochs,
                  scratch_epochs=scratch_epochs)
    check_folder(conf, outdir, False, overwrite, str(recorded))
    ctx = make_context(conf)
    check_searchable(conf, ctx.dataset)
    out, err = _consoles()
    outdir = take_folder(outdir, False, overwrite, True)
    err.print(f"searching {ctx.seed.model.name} at {ctx.metric} {ctx.target:,.4g} "
              f"(seed {ctx.seed.costs.total(ctx.metric):,.4g})", markup=False, highlight=False)
    with _bar(err, 5 + 6 * conf.search.rounds) as bar:
        result = search_shrink(ctx, shrink_dir, outdir, progress=bar)
    if as_json:
        out.print(_dumps(result.record), markup=False, highlight=False, soft_wrap=True)
        return
    out.print(_table(result, ctx.metric))
    if kept_line(result.record):
        err.print(f"search: chose uniform{kept_line(result.record)}", markup=False,
                  highlight=False)
    err.print(f"wrote {outdir}/search.json and chosen.keras (fresh weights: retrain it)",
              markup=False)


def _target(text: str) -> dict:
    from morphcli import config as cfg

    metric, _ = cfg.parse_target(text)  # refuses a malformed target in one line
    return {"target.metric": metric, "target.value": text.split("=", 1)[1].strip()}


class _bar:
    """A progress bar of scored candidates; its total is the most the search can
    score, and it ends full when fewer were needed."""

    def __init__(self, err, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("[bold]search"), BarColumn(bar_width=24),
                                 MofNCompleteColumn(), TextColumn("{task.description}"),
                                 console=err, transient=True, disable=not err.is_terminal)
        self.task = self.progress.add_task("", total=total)
        self.count = 0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.update(self.task, total=self.count, completed=self.count)
        return self.progress.__exit__(*exc)

    def __call__(self, name: str) -> None:
        if self.count:
            self.progress.advance(self.task)
        self.count += 1
        self.progress.update(self.task, description=name[:24])


def _table(result, metric: str):
    from rich.table import Table

    table = Table(title=f"Candidates at {metric} {result.record['target']:,.4g}, scored on "
                        f"{result.record['select_size']} selection examples")
    for column in ("candidate", metric, "selection acc.", "loss", ""):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for c in sorted(result.candidates, key=lambda c: c.key):
        table.add_row(c.name, f"{c.cost:,.4g}", f"{c.select_accuracy:.2%}",
                      f"{c.select_loss:.4f}", "chosen" if c is result.chosen else "")
    return table


COMMANDS = (search,)
