"""Click parameter types shared by the commands."""

from __future__ import annotations

import click


class RoundTo(click.ParamType):
    """`auto` or an integer >= 1."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"expected auto or an integer >= 1, got {value!r}", param, ctx)


ROUND_TO = RoundTo()
