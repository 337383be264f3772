"""The `morph` command line: parse, call one library function, render.

No ML logic lives here. Data (tables, JSON) goes to stdout; progress, warnings
and errors go to stderr. A `MorphError` (a user's mistake) becomes one line
"Error: ..." and exit code 2; Ctrl-C exits 130; anything else is a bug and
keeps its traceback (exit 1) (`morphcli.cli.common.MorphGroup`).

The package is imported one way: this module makes the `morph` group and
registers the `COMMANDS` of each command module (report, pipeline, config,
deploy, search); they import only `common` from the package, never this module
nor each other (tests/test_layering.py).
"""

from __future__ import annotations

import sys

try:  # Ctrl-C during these imports (numpy's among them: the first 0.2 s) is one line too
    import click

    from morphcli.cli import config, deploy, pipeline, report, search
    from morphcli.cli.common import MorphGroup
except KeyboardInterrupt:
    sys.stderr.write("Interrupted.\n")
    raise SystemExit(130) from None  # EXIT_INTERRUPTED, before it could be imported

COMMAND_MODULES = (report, pipeline, config, deploy, search)


@click.group(cls=MorphGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "max_content_width": 100})
@click.version_option(package_name="morphcli")
def cli():
    """Reshape a Keras network to fit a FLOPs, size or latency budget.

    MODEL arguments accept a .keras file, zoo:NAME (built-in seeds: cnn,
    cnn_flatten, mlp, resnet20, mobilenet_v2) or applications:NAME (any
    keras.applications architecture, random weights).

    \b
    Typical session:
      morph report zoo:resnet20                      # what does the seed cost?
      morph run configs/demo.yaml                    # shrink, expand, retrain, report
      morph report zoo:cnn --compare runs/demo/retrain/final.keras
    """
    _library_warnings()


def _library_warnings() -> None:
    """The library's warnings (`logging.getLogger("morphcli")`) as one stderr line each."""
    import logging

    class Echo(logging.Handler):  # writes to the stderr of the moment (tests swap it)
        def emit(self, record):
            click.echo(f"warning: {record.getMessage()}", err=True)

    logger = logging.getLogger("morphcli")
    if not any(isinstance(h, Echo) or type(h).__name__ == "Echo" for h in logger.handlers):
        logger.addHandler(Echo())
        logger.propagate = False


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="morph")


for _module in COMMAND_MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)
