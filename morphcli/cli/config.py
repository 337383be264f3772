"""`morph config show` and `morph config schema`: the resolved config and every
key's meaning (`COMMANDS`, registered on the `morph` group by the package's
`__init__`)."""

from __future__ import annotations

import click


@click.group()
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


COMMANDS = (config,)
