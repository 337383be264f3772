"""A layer call as the rule table sees it: `LayerNode` (one call of one layer,
its shapes, config and channel `Space`s) and `Rule` (what morphcli knows about
the layer's class), with the signatures of the functions a rule holds.

It sits below the pricers (`pricing.py`), the table (`rules.py`) and the graph
builder (`graph.py`), which all import it, so that none of them imports another
to name a node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from morphcli.core.terms import OUT, Kind, Term, is_inner

# The functions a rule holds, each called with the layer's `LayerNode`.
Pricer = Callable[["LayerNode"], list[Term]]
WeightSpec = Callable[["LayerNode"], list[dict[int, str]]]
# (config, width_in, width_out, node) -> config; `node` is the layer's seed call.
Resizer = Callable[..., dict]


# The setting keys of Keras's convolutions (`Rule.activation` ... `Rule.kernel_size`).
CONV_KEYS = {"activation": "activation", "bias": "use_bias", "padding": "padding",
             "kernel_size": "kernel_size"}


@dataclass(frozen=True)
class Space:
    """The channel axis of one tensor.

    Attributes:
        groups: Group ids whose channels sit side by side on the axis
            (one id, or several after a channel-axis `Concatenate`).
        repeat: How many times the channels repeat along the axis; greater than
            one after `Flatten`, where feature `p * C + c` is channel `c` at
            position `p`.
    """

    groups: tuple[int, ...]
    repeat: int = 1



@dataclass(frozen=True)
class Rule:
    """What morphcli knows about one layer class (see `morphcli.core.rules`, the table)."""

    kind: Kind
    flops: Pricer | None = None
    params: Pricer | None = None
    weights: WeightSpec | None = None
    resize: Resizer | None = None
    # Real multiply-adds of the kernels (`flops` follows the profiler, which
    # prices dilated and transposed convs by what TF runs, not by the math).
    macs: Pricer | None = None
    # The weight that multiplies each output channel (a norm's or LayerScale's
    # `gamma`, a depthwise `kernel`): a 0/1 gate folds into it (morphcli.training.gates).
    scale: str | None = None
    # Whether `scale` is a batch norm's gamma, what `regularizer.kind: gamma` reads.
    normalizes: bool = False
    # Whether the layer is a channel gate the tool inserted: its keep-probabilities
    # are what `regularizer.kind: gates` reads.
    gate: bool = False
    # How many adjacent input channels must live or die together (a group
    # normalization's group size): the channel group is pruned in whole blocks.
    granularity: Callable[[LayerNode], int] | None = None
    # Whether the layer's output mixes statistics over all its channels (layer norm):
    # removing channels then changes the survivors, and surgery is approximate.
    mixes_channels: bool = False
    # Whether running the layer reads and writes activations (roofline latency);
    # False for views such as Flatten, Reshape, Dropout at inference.
    moves_memory: bool = True
    # Channel spaces inside the layer, on no tensor: (name, seed width) of each; they
    # become groups of their own (an attention's per-head key and value widths), and
    # `weights` names them `inner_role(i)`, `resize` gets their widths as `inner`.
    inner: Callable[[LayerNode], list[tuple[str, int]]] | None = None
    # After surgery copied the surviving weights: `(node, new layer, width of each
    # inner space)` corrects what depends on a width (an attention's 1/sqrt(key_dim)).
    rescale: Callable[..., None] | None = None
    # Folds a constant that dead channels carry into the layer: `(node, new layer,
    # which input, the constant on every channel of it (0 where alive), kept indices
    # of each inner space)`. Without it a single-input kernel's response is folded
    # into its bias (surgery._fold_constants).
    fold: Callable[..., None] | None = None
    # Whether the layer runs fused with the layer before it (or as its cheap epilogue),
    # as TFLite runs a batch norm or an activation: a latency profile times the two
    # as one unit (morphcli.core.profile.units).
    fuses: bool = False
    # Whether the layer computes its output channels in tiles of the runtime's vector
    # kernels (a convolution, a dense or depthwise layer): on a measured device its
    # latency falls in steps of the profile's `round_to` (morphcli.core.profile.Table).
    tiled: bool = False
    # Why the channels that pass through the layer may not be pruned (a softmax over
    # them): the channels stay the same channels, frozen, instead of a boundary.
    couples: str | None = None
    # The config keys of the layer's settings that surgery and the gates read, None
    # where the layer has no such setting (`CONV_KEYS` for a conv): its fused
    # activation, the switch of its bias, its padding mode, its kernel's spatial size.
    activation: str | None = None
    bias: str | None = None
    padding: str | None = None
    kernel_size: str | None = None
    # The names of the layer's moving mean and variance weights (a batch norm's), None
    # without moving statistics. A layer with them updates them in training as
    # `m = momentum * m + (1 - momentum) * batch` by its `momentum` attribute, which
    # precise batch norm sets (morphcli.training.engine); `weights` slices them, and
    # surgery folds a constant into the mean (morphcli.core.surgery).
    moving: tuple[str, str] | None = None
    # The config keys `resize` writes widths to (`filters`, `units`, `key_dim`):
    # a latency table varies them, so they are not part of its key (core/profile.py).
    widths: tuple[str, ...] = ()
    # A closer look at one layer's config: returns None (the rule holds), a
    # reason why the layer is a boundary here, or another rule to use instead.
    check: Callable[[LayerNode], str | Rule | None] | None = field(default=None)



@dataclass
class LayerNode:
    """One call of one layer, with its static shapes and channel spaces.

    Shapes exclude the batch axis. `kind` is the rule's kind, or `BOUNDARY`
    when the layer is unknown or its configuration couples channels (`note`
    says why).
    """

    name: str
    layer: object
    rule: Rule | None
    kind: Kind
    config: dict
    in_shapes: list[tuple[int, ...]]
    out_shapes: list[tuple[int, ...]]
    inputs: list[Space] = field(default_factory=list)
    outputs: list[Space] = field(default_factory=list)
    note: str | None = None
    # FLOPs of a layer without a rule, as TensorFlow's profiler counts its call alone.
    profiled_flops: int | None = None
    # Channel spaces inside the layer, on no tensor (an attention's per-head key and
    # value widths), named by `inner_names`; see `rules.Rule.inner`.
    inner: list[Space] = field(default_factory=list)
    inner_names: list[str] = field(default_factory=list)
    # The argument each input was passed as ("0", "1", "key"...), None if unknown.
    arguments: list[str] | None = None
    options: dict = field(default_factory=dict)  # plain keyword options of the call

    @property
    def type(self) -> str:
        return type(self.layer).__name__

    def setting(self, name: str, default=None):
        """The config value of a setting the rule names the key of (`"activation"`,
        `"bias"`, `"padding"`, `"kernel_size"`), or `default` when the rule names
        none or the config lacks it.

        Example:

        >>> node.setting("activation")  # a Conv2D(..., activation="relu")
        'relu'
        """
        key = getattr(self.rule, name) if self.rule is not None else None
        return self.config.get(key, default) if key else default

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of the first input."""
        return self.in_shapes[0]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape of the first output."""
        return self.out_shapes[0]

    def space(self, role: str) -> Space:
        """The channel space a weight axis role (`rules.IN`, `OUT`, `input_role(i)`,
        `inner_role(i)`) stands for."""
        if role == OUT:
            return self.outputs[0]
        if is_inner(role):
            return self.inner[int(role[len("inner"):])]
        return self.inputs[int(role[2:] or 0)]
