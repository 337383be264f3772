"""The vocabulary of layer rules: how a layer treats the channel axis (`Kind`),
the axis roles of weights (`IN`, `OUT`) and cost monomials (`Term`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    """How a layer maps input channels to output channels."""

    SOURCE = "source"  # produces a new channel space (conv/dense outputs)
    PASS = "pass"  # output channels are the input channels (BN, ReLU, depthwise)
    TIE = "tie"  # element-wise join: all inputs become one channel space
    CONCAT = "concat"  # channel spaces side by side
    FLATTEN = "flatten"  # channels repeated over flattened positions
    RESHAPE = "reshape"  # pass-through when the channel axis is kept, else boundary
    BOUNDARY = "boundary"  # freezes the channel spaces it touches
    INPUT = "input"  # a model input (never pruned)


# Axis roles in `weights` specs: the layer's first input and its output, another
# input (`input_role(1)`: an attention's value) or a channel space inside the layer
# (`inner_role(0)`: an attention's per-head key width), see `LayerNode.space`.
IN, OUT = "in", "out"


def input_role(index: int) -> str:
    return IN if index == 0 else f"in{index}"


def inner_role(index: int) -> str:
    return f"inner{index}"


def is_inner(role: str) -> bool:
    return role.startswith("inner")


@dataclass(frozen=True)
class Term:
    """One monomial of a cost: `coef * prod(width(space) for space in spaces)`.

    `spaces` holds 0, 1 or 2 channel spaces (`layers.Space`). Costs of all
    layers are sums of such terms: bilinear for conv/dense (input × output
    channels), linear for per-channel work (batch norm, depthwise, adds),
    constant for work that no channel choice changes.
    """

    coef: float
    spaces: tuple = ()
    kernel: bool = False  # a kernel-weights term (for `kernel_params`)

