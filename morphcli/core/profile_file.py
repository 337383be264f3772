"""What a profile file may contain: it is read bounded, and every field checked.

A profile is untrusted input: it is copied between machines and may be edited,
truncated or replaced by anything. `read` takes only a regular file of at most
`MAX_BYTES` and parses its JSON; `check` checks every field's type and range
and returns them as plain values for `morphcli.core.profile.load`. A damaged
file is refused with one `MorphError` that names the field, what it must be and
what it holds, e.g. "The profile p.json is damaged: tables[3].seconds[0][1]
must be a finite number of seconds, from 0 to 3600. Received: -1.0".
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable

from morphcli.errors import MorphError

FORMAT = "morphcli-profile"
# 2: tables may carry a channel step, profiles a fixed cost; 3: a curve; 4: unit
# keys name the channel count of every axis the table does not vary, so a layer
# with one fixed input channel and one with 32 prunable ones get tables of their own.
VERSION = 4
RUNTIMES = ("tflite", "keras")
PREFIX = "profile:"  # how a profile is named where a device is expected

# A profile holds a few numbers per measured width and one configuration per
# distinct layer: one shaped like ResNet50's (33 distinct units, 5 x 5 tables, as
# `morph profile` writes it) is 50 KiB, so a network with a thousand distinct
# layers stays under 2 MiB. The cap leaves ample room above that while the worst
# file stays cheap to refuse: parsing 16 MiB of `1e0,` took 143 MiB of memory and
# 4 s here (64 MiB would take four times that).
MAX_BYTES = 16 << 20
# No layer call takes an hour: a larger time is damage, and with it sums over many
# units stay finite.
MAX_SECONDS = 3600.0
MAX_WIDTH = 1 << 20  # channels of one axis
MAX_THREADS = 1024
MAX_BATCH = 1 << 20
MAX_SCALE = 1e6  # a model's time over the sum of its units (about 1-3 in practice)
_TABLE_FIELDS = {"key", "widths_in", "widths_out", "seconds", "spread", "layers", "inner",
                 "step"}


def read(path: str) -> object:
    """The JSON of a profile file, read only if it is a regular file of at most
    `MAX_BYTES` (a link to /dev/zero or a FIFO is refused without reading).

    Raises:
        MorphError: No path, a missing, unreadable, non-regular or too large
            file, or one that is not JSON (or nested too deeply to parse).
    """
    if not path:
        raise MorphError(f"A profile device needs a path: {PREFIX}PATH. Received: "
                         f"hardware={PREFIX!r}", hint="e.g. profile:resnet20.profile.json, "
                         "made by `morph profile MODEL -o resnet20.profile.json`.")
    try:
        info = os.stat(path)  # follows links: what would be read
        if not stat.S_ISREG(info.st_mode):
            raise MorphError(f"The profile {path} is not a regular file (a folder, device or "
                             "pipe). Received: " + PREFIX + path)
        if info.st_size > MAX_BYTES:
            raise _too_large(path)
        with open(path, "rb") as f:  # bounded too: the file may grow after the stat
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise MorphError(f"The profile does not exist. Received: {PREFIX}{path}",
                         hint="make one with `morph profile MODEL -o profile.json`.") from None
    except OSError as err:
        raise MorphError(f"Could not read the profile {path}: {err.strerror or err}.") from None
    if len(raw) > MAX_BYTES:
        raise _too_large(path)
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise _damaged(path, "nested too deeply to be a profile") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise _damaged(path, f"not JSON ({' '.join(str(err).split())[:120]})") from None


def _too_large(path: str) -> MorphError:
    return MorphError(f"The profile {path} is larger than {MAX_BYTES >> 20} MiB: not a "
                      f"profile. Received: {PREFIX}{path}")


def _damaged(path: str, what: str) -> MorphError:
    return MorphError(f"The profile {path} is damaged: {what}",
                      hint="make it again with `morph profile MODEL -o PATH`.")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Fields:
    """Checks the fields of one profile's JSON, raising `_damaged` on the first bad one."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, name: str, expected: str, value) -> MorphError:
        """`name` must `expected` (a verb phrase: "be a mapping", "rise")."""
        return _damaged(self.path, f"{name} must {expected}. Received: {_shown(value)}")

    def get(self, data: dict, name: str, default=None, *, where: str = ""):
        if name in data:
            return data[name]
        if default is None:
            raise _damaged(self.path, f"{where}{name} is missing. Received: no {name}")
        return default

    def number(self, value, name: str, low: float = 0.0, high: float = MAX_SECONDS,
               positive: bool = False) -> float:
        """A finite number in [low, high] (above `low` when `positive`)."""
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        try:
            ok = ok and math.isfinite(value) and low <= value <= high
        except OverflowError:  # an integer too large for a float
            ok = False
        if not ok or (positive and value <= low):
            if high == MAX_SECONDS and not positive:
                expected = f"be a finite number of seconds, from {low:g} to {high:g}"
            else:
                expected = (f"be a finite number above {low:g}, at most {high:g}" if positive
                            else f"be a finite number from {low:g} to {high:g}")
            raise self.fail(name, expected, value)
        return float(value)

    def integer(self, value, name: str, high: int, low: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(name, f"be an integer from {low} to {high}", value)
        return value

    def listed(self, value, name: str, check: Callable, what: str) -> list:
        if not isinstance(value, list):
            raise self.fail(name, f"be a list of {what}", value)
        return [check(v, f"{name}[{k}]") for k, v in enumerate(value)]

    def mapping(self, value, name: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(name, "be a mapping", value)
        return value

    def text(self, value, name: str) -> str:
        if not isinstance(value, str):
            raise self.fail(name, "be a string", value)
        return value

    def rising(self, values: list, name: str, strictly: bool = True) -> None:
        for k in range(1, len(values)):
            if values[k] < values[k - 1] or (strictly and values[k] == values[k - 1]):
                raise self.fail(name, "rise", values)

    def table(self, raw, name: str) -> dict:
        raw = self.mapping(raw, name)
        unknown = sorted(set(raw) - _TABLE_FIELDS)
        if unknown:
            raise _damaged(self.path, f"{name} has an unknown field `{unknown[0]}`. Received: "
                                      f"{unknown[0]}={_shown(raw[unknown[0]])}")
        width = lambda v, n: self.integer(v, n, MAX_WIDTH)  # noqa: E731
        t = {"key": self.text(self.get(raw, "key", where=f"{name}."), f"{name}.key")}
        for axis in ("widths_in", "widths_out"):
            t[axis] = self.listed(self.get(raw, axis, where=f"{name}."), f"{name}.{axis}",
                                  width, "channel counts")
            if not t[axis]:
                raise self.fail(f"{name}.{axis}", "be a list of at least one width", t[axis])
            self.rising(t[axis], f"{name}.{axis}")
        seconds = self.get(raw, "seconds", where=f"{name}.")
        t["seconds"] = self.listed(
            seconds, f"{name}.seconds",
            lambda row, n: self.listed(row, n, self.number, "seconds"), "rows of seconds")
        shape = (len(t["widths_in"]), len(t["widths_out"]))
        if len(t["seconds"]) != shape[0] or any(len(r) != shape[1] for r in t["seconds"]):
            raise self.fail(f"{name}.seconds", f"be {shape[0]} rows of {shape[1]} seconds "
                                               "(one per pair of widths)", seconds)
        # Tables are made non-decreasing when measured: the solver bisects on them.
        rows, cols = t["seconds"], list(zip(*t["seconds"], strict=True))
        if any(b < a for line in [*rows, *cols] for a, b in zip(line, line[1:], strict=False)):
            raise self.fail(f"{name}.seconds", "not fall as a width grows", seconds)
        t["spread"] = self.number(raw.get("spread", 0.0), f"{name}.spread", high=MAX_SCALE)
        t["layers"] = self.listed(raw.get("layers", []), f"{name}.layers", self.text, "names")
        t["inner"] = self.listed(raw.get("inner", []), f"{name}.inner", width, "widths")
        t["step"] = self.integer(raw.get("step", 1), f"{name}.step", MAX_WIDTH)
        return t

    def curve_point(self, value, name: str) -> list[float]:
        if not isinstance(value, list) or len(value) != 2:
            raise self.fail(name, "be a pair [sum of units, seconds]", value)
        return [self.number(v, f"{name}[{k}]") for k, v in enumerate(value)]


def check(data, path: str) -> dict:
    """The fields of a profile's JSON, checked (see the module docstring), as the
    keyword arguments of `Profile` (without `path`); tables as dicts of `Table`'s.

    Raises:
        MorphError: Another format or version, or a damaged field.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MorphError(f"{path} is not a morphcli profile (no \"format\": \"{FORMAT}\").")
    f = _Fields(path)
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise f.fail("version", "be an integer", version)
    if version in (1, 2, 3):
        raise MorphError(f"Profile {path} has format version {version}, whose layer keys could "
                         f"give two different layers one table; this morphcli reads version "
                         f"{VERSION}.", hint="measure it again: `morph profile MODEL -o PATH`.")
    if version != VERSION:
        raise MorphError(f"Profile {path} has format version {version}; this morphcli reads "
                         f"version {VERSION}.", hint="measure it again with this version's "
                                                     "`morph profile MODEL -o PATH`.")
    runtime = f.get(data, "runtime")
    if runtime not in RUNTIMES:
        raise f.fail("runtime", f"be one of {', '.join(RUNTIMES)}", runtime)
    threads = data.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_THREADS):
        raise f.fail("threads", f"be null or an integer from 1 to {MAX_THREADS}", threads)
    curve = f.listed(data.get("curve", []), "curve", f.curve_point, "[sum, seconds] pairs")
    for k in range(1, len(curve)):
        if curve[k][0] <= curve[k - 1][0]:
            raise f.fail("curve", f"rise: curve[{k}] sums no more units than "
                                  f"curve[{k - 1}]", curve)
        if curve[k][1] < curve[k - 1][1]:
            raise f.fail("curve", f"rise: curve[{k}] takes less time than curve[{k - 1}]",
                         curve)
    if curve and min(curve[0]) <= 0:
        raise f.fail("curve", "be above 0 in its sums and times", curve)
    tables = f.listed(f.get(data, "tables"), "tables", f.table, "tables")
    keys: dict[str, int] = {}
    for k, t in enumerate(tables):
        if t["key"] in keys:
            raise f.fail(f"tables[{k}].key", f"be its own (tables[{keys[t['key']]}] has it)",
                         t["key"])
        keys[t["key"]] = k
    return {
        "device": f.mapping(f.get(data, "device"), "device"), "runtime": runtime,
        "batch": f.integer(f.get(data, "batch"), "batch", MAX_BATCH), "threads": threads,
        "overhead_s": f.number(f.get(data, "overhead_s"), "overhead_s"), "tables": tables,
        "round_to": f.integer(data.get("round_to", 1), "round_to", MAX_WIDTH),
        "scale": f.number(data.get("scale", 1.0), "scale", high=MAX_SCALE, positive=True),
        "model": f.mapping(data.get("model", {}), "model"),
        "rounding": f.mapping(data.get("rounding", {}), "rounding"),
        "fixed_s": f.number(data.get("fixed_s", 0.0), "fixed_s"), "curve": curve}
