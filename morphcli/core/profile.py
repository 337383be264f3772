"""A measured device: per-layer latency tables and how a channel graph is priced on them.

`morph profile` (`morphcli.steps.profile`) times every distinct *unit* of a
model on this machine, at several input and output widths, and writes a
`Profile` file. A unit is a layer with the batch norms and activations that
directly follow it (what TFLite fuses into one kernel), so that the sum over
units predicts the whole model. Units with the same layer configuration and
spatial shapes share one table (`unit_key`), so a narrower or wider model
built from the profiled one is priced without measuring it again. The key
also names the channel count of every axis the table does not vary (a fixed
width, as the model's input), so a layer fed one input channel and one fed 32
prunable channels never share a table:

    latency(widths) = overhead + curve(sum over units of table_u(w_in, w_out))

where `table_u` interpolates bilinearly between the measured medians (and
grows in proportion to a width past the largest measured one). Tables are made non-decreasing in each width
when they are measured, so the width-multiplier solver can bisect on them.
Their grids sit on multiples of the profile's `round_to`, the channel step
latency falls in, so a structure rounded to it (`round_to: auto`) is priced at
measured widths; a layer that computes output channels in tiles prices any
other output width at the next multiple (`Table.step`).

`curve` maps the sum of a structure's units to what a whole model of that sum
measures: it is interpolated between the profiled model and narrower versions
of it, measured whole (`Profile.curve`), as a line `fixed + scale · sum` on
each segment, so a price is still a sum over units plus a fixed cost, never
negative (`Profile.line`). Without a curve, one line, `Profile.scale` and
`Profile.fixed_s`, prices every width.

The file is JSON, versioned (`FORMAT`, `VERSION`), and records the device it
was measured on; `load` reads it as untrusted input (`morphcli.core.profile_file`:
bounded, every field checked), refuses another format or version, and
`warnings()` names every difference from the machine reading it (CPU,
TensorFlow version).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morphcli.core import profile_file, rules
from morphcli.core.machine import machine
from morphcli.core.profile_file import FORMAT, PREFIX, RUNTIMES, VERSION
from morphcli.errors import MorphError

__all__ = ["FORMAT", "PREFIX", "RUNTIMES", "VERSION", "Profile", "Table", "load"]
# Config keys that do not change what a layer computes at inference. The keys a rule
# writes widths to (`filters`, `units`, `key_dim`: `rules.width_keys()`) are left out
# of a table's key too: the table varies them.
_INERT_KEYS = {"name", "trainable", "momentum", "dtype"}
_IGNORED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


# ---------------------------------------------------------------------------
# Units of a channel graph.


def _layer_signature(node) -> dict:
    left_out = _INERT_KEYS | rules.width_keys()
    config = {k: v for k, v in sorted(node.config.items())
              if k not in left_out and not k.endswith(_IGNORED_SUFFIXES)}
    return {"class": node.type, "config": config}


def _fuses(node) -> bool:
    """Whether the node runs fused with the one before it (its rule's `fuses`)."""
    return node.rule is not None and node.rule.fuses


def transparent(node) -> bool:
    """A layer the tool inserts and removes again (a channel gate): not part of a
    unit's identity, and not rebuilt when the unit is measured."""
    return node.rule is not None and node.rule.gate


def units(graph) -> list[list[int]]:
    """Node indices of every unit, in graph order: a leader and the followers
    (layers whose rule `fuses`) that take its output, one after the other."""
    result: list[list[int]] = []
    nodes = graph.nodes
    for i, node in enumerate(nodes):
        prev = nodes[i - 1] if i else None
        if (result and _fuses(node) and len(node.inputs) == 1 and prev is not None
                and node.inputs[0] == prev.outputs[0]
                and node.in_shapes[0] == prev.out_shapes[0]):
            result[-1].append(i)
        else:
            result.append([i])
    return result


def unit_key(graph, unit: Sequence[int]) -> str:
    """The identity of a unit for measurement: its layers' configurations
    without their widths, and the shapes of its inputs and output, each with its
    channel count where that is fixed and "*" where it varies (the table's axis,
    or a join's input measured in proportion): everything a time depends on that
    the table does not vary."""
    nodes = [graph.nodes[i] for i in unit]
    lead, last = nodes[0], nodes[-1]
    parts = [_layer_signature(n) for n in nodes if not transparent(n)]

    def shape(s, space) -> list:
        return [*s[:-1], "*" if _varies(graph, space) else s[-1]] if s else []

    def spaces(shapes, found) -> list:  # a shape without a space is taken as fixed
        return [shape(s, found[k] if k < len(found) else None) for k, s in enumerate(shapes)]

    shapes = {"in": spaces(lead.in_shapes, lead.inputs),
              "out": spaces(last.out_shapes, last.outputs)}
    return json.dumps({"layers": parts, "shapes": shapes}, sort_keys=True, default=str)


def _varies(graph, space) -> bool:
    """Whether a channel space's width can change (a prunable group in it)."""
    return space is not None and any(graph.groups[g].prunable for g in space.groups)


def unit_axes(graph, unit: Sequence[int]):
    """(space of the input width or None, space of the output width or None):
    None where the width cannot change (frozen groups) or is the same as the
    other axis (a per-channel layer, whose table has one axis)."""
    lead, last = graph.nodes[unit[0]], graph.nodes[unit[-1]]
    out = last.outputs[0] if last.outputs else None
    inp = lead.inputs[0] if lead.inputs else None
    out = out if _varies(graph, out) else None
    inp = inp if _varies(graph, inp) and inp != out else None
    return inp, out


# ---------------------------------------------------------------------------
# Tables.


FAR = 1e9  # where padded tables put their unused grid points


def _cell(grid: np.ndarray, x: np.ndarray):
    """(segment index, fraction inside it) of `x`, clipped into the grid."""
    if len(grid) == 1:
        return np.zeros(x.shape, int), np.zeros(x.shape)
    xc = np.clip(x, grid[0], grid[-1])
    i = np.clip(np.searchsorted(grid, xc, side="right") - 1, 0, len(grid) - 2)
    return i, (xc - grid[i]) / (grid[i + 1] - grid[i])


@dataclass
class Table:
    """Median latency (seconds, per-call overhead removed) of one unit, measured at
    every pair of `widths_in` x `widths_out`; a fixed axis has one width.

    Between measured widths it is interpolated bilinearly; below the smallest it
    stays at its value there; past the largest it grows in proportion to the
    width (as a layer's work does), so it is never negative and never falls
    when a width grows. A unit whose kernels compute output channels in tiles
    (`Rule.tiled`) has the profile's rounding step as `step`: an output width is
    priced at the next multiple of it, as the device charges for the whole tile,
    or at the next measured width when that one comes first (a layer narrower
    than the step is measured at widths inside one tile)."""

    key: str
    widths_in: list[int]
    widths_out: list[int]
    seconds: list[list[float]]
    spread: float = 0.0  # largest (p90 - p10) / median over the table's points
    layers: list[str] = field(default_factory=list)  # where it was measured
    # Widths of the lead layer's inner spaces when measured (an attention's key and
    # value widths), which the table does not vary: see `CostModel._inner_ratio`.
    inner: list[int] = field(default_factory=list)
    step: int = 1  # output widths cost what the next multiple of it costs

    def at(self, width_in, width_out) -> np.ndarray:
        """The latency at arrays of widths (broadcast together)."""
        x, y = np.broadcast_arrays(np.asarray(width_in, float), np.asarray(width_out, float))
        gin, gout = np.asarray(self.widths_in, float), np.asarray(self.widths_out, float)
        t = np.asarray(self.seconds, float)
        if len(gin) == 1:
            t = np.concatenate([t, t], 0)
        if len(gout) == 1:
            t = np.concatenate([t, t], 1)
        last = gout[-1]  # the width past which a table grows in proportion
        if self.step > 1 and len(gout) > 1:
            # Inside the grid a width costs what the next measured width costs when
            # that one is in its tile (a narrow layer is measured below the step);
            # past the grid it grows from the tile the widest point is in.
            tiles = np.ceil(y / self.step) * self.step
            last = np.ceil(gout[-1] / self.step) * self.step
            above = gout[np.minimum(np.searchsorted(gout, y), len(gout) - 1)]
            y = np.where(y <= gout[-1], np.minimum(tiles, above), tiles)
        i, u = _cell(gin, x)
        j, v = _cell(gout, y)
        inside = (t[i, j] * (1 - u) * (1 - v) + t[i + 1, j] * u * (1 - v)
                  + t[i, j + 1] * (1 - u) * v + t[i + 1, j + 1] * u * v)
        grow_in = np.maximum(1.0, x / gin[-1]) if len(gin) > 1 else 1.0
        grow_out = np.maximum(1.0, y / last) if len(gout) > 1 else 1.0
        return inside * grow_in * grow_out

    def padded(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """(widths_in, widths_out, seconds, last in, last out) with `size` points per
        axis, for the regularizer's batched lookup: unused points sit at `FAR`
        and repeat the last value; a fixed axis is one segment of zero slope."""

        def extend(grid, values, axis):
            grid = list(map(float, grid))
            values = np.asarray(values, float)
            while len(grid) < size:
                grid.append(FAR * (len(grid) + 1))
                values = np.concatenate([values, np.take(values, [-1], axis)], axis)
            return np.asarray(grid), values

        gin, values = extend(self.widths_in, self.seconds, 0)
        gout, values = extend(self.widths_out, values, 1)
        return gin, gout, values, len(self.widths_in), len(self.widths_out)


@dataclass
class Profile:
    """A device as measured by `morph profile`. See the module docstring."""

    path: str
    device: dict
    runtime: str
    batch: int
    threads: int | None
    overhead_s: float
    tables: dict[str, Table]
    round_to: int = 1
    # What units measured one at a time miss of a whole model (caches, fusion across
    # layers, the runtime's threads meeting at every op), fitted on two whole models,
    # the profiled one and a narrower one timed interleaved with it: their times
    # (the call overhead aside) are `fixed + scale · (sum of their units)`. `fixed`
    # is what every call of a whole model pays whatever its widths; it is 0 (and
    # `scale` the seed's ratio alone) when the two points do not give a positive fit.
    scale: float = 1.0
    model: dict = field(default_factory=dict)  # the profiled model: name, measured, predicted
    rounding: dict = field(default_factory=dict)  # the width sweep round_to was read from
    fixed_s: float = 0.0  # see `scale`
    # (sum of the units, measured time), both without the call overhead, of the
    # profiled model and narrower versions of it timed whole, interleaved: sorted
    # by the sum, each time at most the next one's (the load only adds time). The
    # sum of isolated units does not scale as a whole model does: on ResNet-20 a
    # model at 75% of the FLOPs sums to 84% of the seed's units and measures 98%
    # of its time, one at 8% sums to 22% and measures 33%. One line through two
    # of them mis-priced the others by up to 39%.
    curve: list = field(default_factory=list)

    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(points, slopes, fixed): the curve's lines `fixed + slope · units`, one more
        than its points (the sums of units it was measured at): line 0 below the first
        point, line k between points k - 1 and k, the last past the last point (see
        `line`). Without a curve, no points and one line, `scale` and `fixed_s`. A sum
        takes the line `searchsorted(points, sum, side="right")` (the lines meet at
        the points); the latency regularizer looks its line up the same way."""
        if len(self.curve) < 2:
            return np.zeros(0), np.array([self.scale]), np.array([self.fixed_s])
        x, y = (np.asarray(v, float) for v in zip(*self.curve, strict=True))
        slopes = np.diff(y) / np.diff(x)
        fixed = y[:-1] - slopes * x[:-1]
        below = (slopes[0], fixed[0]) if fixed[0] >= 0 else (y[0] / x[0], 0.0)
        rise = (y[-1] - y[0]) / (x[-1] - x[0])
        above = (rise, y[-1] - rise * x[-1]) if y[-1] >= rise * x[-1] else (y[-1] / x[-1], 0.0)
        return (x, np.concatenate([[below[0]], slopes, [above[0]]]),
                np.concatenate([[below[1]], fixed, [above[1]]]))

    def line(self, units) -> tuple[np.ndarray, np.ndarray]:
        """(scale, fixed) of the price `fixed + scale · units` at sums of units
        (an array): the curve's segment the sum falls in; below the curve its
        first segment, or proportion to its first point if that segment has a
        negative fixed cost; above it, the slope from its first point to its last,
        or proportion to the last point (`segments`). Without a curve, `scale` and
        `fixed_s`.

        `fixed` is never negative: on a segment steeper than proportion (its line
        crosses zero at a positive sum) the price there is taken in proportion,
        `(fixed + scale · units) / units` per unit of the sum and no fixed part.
        The price is the same, and each unit's share of it (its table times the
        scale, the fixed part on the first unit) stays at least 0: a negative fixed
        part put on the first layer priced it below zero."""
        units = np.asarray(units, float)
        points, slopes, fixed = self.segments()
        k = np.searchsorted(points, units, side="right")
        slope, fixed = slopes[k], fixed[k]
        # A negative fixed part only occurs between points (k >= 1), where the sum is
        # at least the first point's, above 0.
        steep = fixed < 0
        slope = np.where(steep, slope + fixed / np.where(steep, units, 1.0), slope)
        return slope, np.where(steep, 0.0, fixed)

    @property
    def name(self) -> str:
        return PREFIX + self.path

    @property
    def label(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        return f"measured, {self.runtime}{threads}, batch {self.batch}, {Path(self.path).name}"

    def warnings(self) -> list[str]:
        """How the machine reading the profile differs from the one that measured it."""
        here, there = machine(), self.device
        notes = []
        if str(there.get("tensorflow")) != here["tensorflow"]:
            notes.append(f"profile {self.path} was measured with TensorFlow "
                         f"{there.get('tensorflow')}, this is {here['tensorflow']}: kernels "
                         "and their speed may differ")
        if (there.get("cpu"), there.get("cores")) != (here["cpu"], here["cores"]):
            notes.append(f"profile {self.path} was measured on {there.get('cpu')} "
                         f"({there.get('cores')} cores), not this machine "
                         f"({here['cpu']}, {here['cores']} cores): latencies are that device's")
        return notes

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "device": self.device,
                "runtime": self.runtime, "batch": self.batch, "threads": self.threads,
                "overhead_s": self.overhead_s, "round_to": self.round_to, "scale": self.scale,
                "fixed_s": self.fixed_s, "curve": self.curve,
                "rounding": self.rounding, "model": self.model,
                "tables": [vars(t) for t in self.tables.values()]}


_WARNED: set[str] = set()


def load(path: str | Path, warn: bool = False) -> Profile:
    """Reads and checks a profile file (`morphcli.core.profile_file`); with `warn`,
    logs (once per file) how this machine differs from the one that measured it.

    Raises:
        MorphError: No path, a missing, unreadable, non-regular or too large
            file, another format or version, or a damaged field (named).
    """
    where = str(path)
    fields = profile_file.check(profile_file.read(where), where)
    tables = {}
    for raw in fields.pop("tables"):
        table = Table(**raw)
        tables[table.key] = table
    profile = Profile(where, tables=tables, **fields)
    if warn and where not in _WARNED:
        _WARNED.add(where)
        for note in profile.warnings():
            logging.getLogger("morphcli").warning(note)
    return profile


def is_profile_name(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


# ---------------------------------------------------------------------------
# Pricing a graph on a profile.


@dataclass
class PricedUnit:
    """One unit of a graph bound to its table: `space_in` / `space_out` are
    indices into the cost model's compiled spaces (-1: the width is fixed)."""

    nodes: list[int]
    table: Table
    space_in: int
    space_out: int
    def seconds(self, sw: np.ndarray) -> np.ndarray:
        """Latency at space widths `sw` (..., spaces + 1)."""
        width_in, width_out = sw[..., self.space_in], sw[..., self.space_out]
        return self.table.at(width_in, width_out)


def bind(graph, profile: Profile, space_index) -> list[PricedUnit]:
    """Finds every unit's table; `space_index(space)` gives a space's index.

    Raises:
        MorphError: A unit the profile has no table for.
    """
    bound, missing = [], []
    for unit in units(graph):
        key = unit_key(graph, unit)
        table = profile.tables.get(key)
        if table is None:
            missing.append(graph.nodes[unit[0]])
            continue
        lead, last = graph.nodes[unit[0]], graph.nodes[unit[-1]]
        inp = lead.inputs[0] if lead.inputs and len(table.widths_in) > 1 else None
        out = last.outputs[0] if last.outputs and len(table.widths_out) > 1 else None
        bound.append(PricedUnit(unit, table, space_index(inp) if inp else -1,
                                space_index(out) if out else -1))
    if missing:
        first = missing[0]
        raise MorphError(
            f"Profile {profile.path} has no measurement for {len(missing)} layer(s) of model "
            f"`{graph.model.name}`, e.g. `{first.name}` ({first.type}, input "
            f"{first.in_shapes[0] if first.in_shapes else ()}); it was measured on model "
            f"`{profile.model.get('name', '?')}`.",
            hint="profile this model: `morph profile MODEL -o profile.json` (a profile "
                 "prices the model it was made on and every narrower or wider version of it).")
    return bound

