"""Field validators of the config schema.

A validator takes the raw value and the already validated earlier fields of
its section (for checks that depend on a sibling) and returns the clean value,
or raises `Invalid` with what was expected; `apply` turns that into a
`ConfigError` that names the key and where it came from.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from morphcli.core.quantities import TARGET_METRICS, Invalid, quantity
from morphcli.errors import ConfigError

Check = Callable[[Any, Mapping[str, Any]], Any]


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def integer(low: int, high: int | None = None) -> Check:
    def check(value, done):
        if (isinstance(value, bool) or not isinstance(value, int) or value < low
                or (high is not None and value > high)):
            raise Invalid(f"an integer >= {low}" if high is None
                          else f"an integer from {low} to {high:,}")
        return value
    return check


def real(expected: str, ok: Callable[[float], bool]) -> Check:
    def check(value, done):
        # YAML 1.1 reads `1e-3` (no dot) as a string, so numeric text is accepted.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise Invalid(expected) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(expected)
        if not math.isfinite(value) or not ok(value):
            raise Invalid(expected)
        return float(value)
    return check


def boolean(value, done):
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def text(expected: str = "a non-empty string", pattern: str = r".+") -> Check:
    def check(value, done):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not re.fullmatch(pattern, value.strip()):
            raise Invalid(expected)
        return value.strip()
    return check


def _normal(name: str) -> str:
    return re.sub(r"[\s_-]", "", name.lower())


def choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Check:
    table = {_normal(c): c for c in choices}
    table.update({_normal(a): c for a, c in (aliases or {}).items()})

    def check(value, done):
        if isinstance(value, str) and _normal(value) in table:
            return table[_normal(value)]
        close = difflib.get_close_matches(str(value), choices, n=1)
        raise Invalid(f"one of {', '.join(choices)}",
                       hint=f"did you mean `{close[0]}`?" if close else None)
    return check


def optional(check: Check) -> Check:
    def optional(value, done):
        if value is None:
            return None
        try:
            return check(value, done)
        except Invalid as error:
            raise Invalid(f"null or {error.expected}", error.hint) from None
    return optional


def auto(check: Check) -> Check:
    def auto(value, done):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return check(value, done)
        except Invalid as error:
            raise Invalid(f'"auto" or {error.expected}', error.hint) from None
    return auto


def dims(counts: Sequence[int], expected: str) -> Check:
    """A shape: a list of positive ints, or text like ``"32,32,3"``."""
    def check(value, done):
        if isinstance(value, str):
            value = [part.strip() for part in value.replace("x", ",").split(",")]
            value = [int(p) if p.isdigit() else p for p in value]
        if not isinstance(value, (list, tuple)) or len(value) not in counts or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise Invalid(expected)
        return tuple(value)
    return check


def spec(prefixes: Sequence[str], path_ok: bool, expected: str) -> Check:
    """`prefix:rest` with a known prefix, or (if `path_ok`) a file path."""
    def check(value, done):
        value = text(expected)(value, done)
        prefix, sep, rest = value.partition(":")
        if sep and prefix.lower() in prefixes and rest.strip():
            return f"{prefix.lower()}:{rest.strip()}"
        # A colon in a path: a Windows drive ("C:\\m.keras") or inside a folder name.
        if path_ok and (not sep or len(prefix) == 1 or re.search(r"[/\\.]", prefix)):
            return value
        hint = None
        if not sep and not path_ok:
            hint = f"prefix it with its kind, e.g. `{prefixes[1]}:{value}`"
        raise Invalid(expected, hint=hint)
    return check


def strings(value, done):
    """A list of non-empty strings, or one comma-separated string."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise Invalid("a list of device names, e.g. [/cpu:0, /cpu:1]")
    return tuple(v.strip() for v in value)


def addresses(value, done):
    """Worker addresses: a list of ``host:port``, or one comma-separated string."""
    expected = "a list of worker addresses host:port, e.g. [10.0.0.1:12345, 10.0.0.2:12345]"
    try:
        value = strings(value, done)
    except Invalid:
        raise Invalid(expected) from None
    if not all(re.fullmatch(r"[^\s:]+:\d{1,5}", v) for v in value):
        raise Invalid(expected)
    return value


def task_index(value, done):
    """This worker's position in `distribute.cluster` (required with it)."""
    if done.get("cluster") is None:
        return optional(integer(0))(value, done)
    last = len(done["cluster"]) - 1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= last:
        raise Invalid(f"an integer between 0 and {last}: this worker's position in "
                       "distribute.cluster", hint="set it per machine, e.g. "
                       "`--set distribute.task_index=1`, or leave cluster null and use TF_CONFIG")
    return value


def output_dir(value, done):
    if value is None:
        return f"runs/{done['name']}"
    return text("a folder path or null")(value, done)


def target_value(value, done):
    return quantity(value, done["metric"])


def warmup(value, done):
    value = integer(0)(value, done)
    if value > done["epochs"]:
        raise Invalid(f"an integer between 0 and epochs (= {done['epochs']})")
    return value


METRIC = choice(*TARGET_METRICS)
POSITIVE = real("a number > 0", lambda x: x > 0)
_OPTIMIZER = choice("sgd", "momentum", "adam", "rmsprop")


def apply(check: Check, value: Any, done: Mapping, key: str, source: str | None) -> Any:
    """Runs a validator, turning `Invalid` into a `ConfigError` about `key`."""
    try:
        return check(value, done)
    except Invalid as error:
        raise ConfigError(f"Expected {error.expected}. Received: {key}={show(value)}",
                          key=key, source=source, hint=error.hint) from None
