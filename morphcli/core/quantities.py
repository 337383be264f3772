"""Budgets: a fraction of the seed's cost or an absolute amount, parsed from
the text a user writes (``0.5``, ``"50%"``, ``"25M"``, ``"1.5ms"``) and written
back the same way. Pure arithmetic, shared by the config and the width solver."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

TARGET_METRICS = ("flops", "macs", "params", "latency")


class Invalid(Exception):
    """A value's complaint; `expected` completes the sentence "Expected ..."."""

    def __init__(self, expected: str, hint: str | None = None):
        super().__init__(expected)
        self.expected = expected
        self.hint = hint


@dataclass(frozen=True)
class Quantity:
    """A budget: a fraction of the seed's cost, or an absolute amount.

    Attributes:
        value: The fraction (``0 < value <= 1``) when `relative`, else the
            amount in base units (FLOPs, multiply-adds, weights or seconds).
        relative: True when `value` is a fraction of the seed network's cost.
    """

    value: float
    relative: bool


_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(.*)")
_COUNT_UNITS = {"": 0, "k": 3, "K": 3, "M": 6, "G": 9, "T": 12}
_TIME_UNITS = {"s": 0, "ms": -3, "us": -6, "µs": -6, "ns": -9}
_WORDS = {"flops": ("flops", "flop"), "macs": ("macs", "mac"),
          "params": ("parameters", "params", "param", "weights")}


def _expected_quantity(metric: str) -> str:
    amount = ("a time with a unit, e.g. 1.5ms, 200us, 0.002s" if metric == "latency"
              else "an absolute count, e.g. 25M, 1.5G, 300k, 2.5e7")
    return (f"a fraction of the seed's {metric} (0 < x <= 1, 'x%' or a multiple such as "
            f"'2x') or {amount}")


def _unit_exponent(unit: str, metric: str) -> int:
    """Power of ten of a unit suffix, e.g. ``"M"`` -> 6, ``"ms"`` -> -3."""
    if metric == "latency":
        if unit in _TIME_UNITS:
            return _TIME_UNITS[unit]
        raise Invalid(_expected_quantity(metric), hint="latency takes time units: s, ms, us, ns")
    for word in _WORDS[metric]:
        if unit.lower().endswith(word):
            unit = unit[: -len(word)]
            break
    if unit in _COUNT_UNITS:
        return _COUNT_UNITS[unit]
    hint = "use k, M, G or T (M is millions)"
    if unit in _TIME_UNITS:
        hint = "time units need `target.metric: latency`"
    raise Invalid(_expected_quantity(metric), hint=hint)


def quantity(value: Any, metric: str) -> Quantity:
    """Parses a budget; raises `Invalid` (see `morphcli.config.parse_quantity`)."""
    if isinstance(value, Quantity):
        value = format_quantity(value, metric)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid(_expected_quantity(metric))
    text = repr(value) if isinstance(value, float) else str(value).strip()
    match = _NUMBER.fullmatch(text)
    if not match:
        raise Invalid(_expected_quantity(metric))
    # Decimal arithmetic then one rounding: "0.3ms" is exactly the float 0.0003.
    number, unit = Decimal(match[1]), "".join(match[2].split())
    if number <= 0:
        raise Invalid(_expected_quantity(metric), hint="a budget must be positive")
    if unit == "%":  # above 100% only makes sense for `morph expand` (wider than the model)
        return Quantity(float(number.scaleb(-2)), True)
    if unit == "x":
        return Quantity(float(number), True)
    if not unit and number <= 1:
        return Quantity(float(number), True)
    if not unit and metric == "latency":
        raise Invalid(_expected_quantity(metric), hint=f"give a unit, e.g. {text}ms")
    amount = number.scaleb(_unit_exponent(unit, metric))
    if metric != "latency" and amount <= 1:
        raise Invalid(_expected_quantity(metric), hint="an absolute budget must be more than 1")
    return Quantity(float(amount), False)


def _decimal_text(number: Decimal) -> str:
    text = format(number, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_quantity(quantity: Quantity, metric: str) -> str:
    """Writes a budget the way a user would, e.g. ``"50%"``, ``"25M"``, ``"1.5ms"``.

    The text parses back (`morphcli.config.parse_quantity`) to exactly the same `Quantity`.

    Args:
        quantity: The budget.
        metric: One of `TARGET_METRICS`; latency is written with a time unit.

    Returns:
        The budget as text.
    """
    exact = Decimal(repr(float(quantity.value)))  # shortest text of the float
    if quantity.relative:
        return _decimal_text(exact.scaleb(2)) + "%"
    if metric == "latency":
        units = ((0, "s"), (-3, "ms"), (-6, "us"), (-9, "ns"))
    else:
        units = ((12, "T"), (9, "G"), (6, "M"), (3, "k"), (0, ""))
    exponent, unit = next(((e, u) for e, u in units if exact >= Decimal(10) ** e), units[-1])
    return _decimal_text(exact.scaleb(-exponent)) + unit
