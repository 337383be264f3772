"""The channel graph: which channels of a functional Keras model live or die together.

`build_graph(model)` walks the functional graph (nested functional and
`Sequential` sub-models included) and gives every tensor a *channel space*:
the groups its channel axis is made of, side by side. A *group* is a set of
channels that must be pruned together: a conv/dense output and everything
per-channel after it, the inputs of an element-wise join, a depthwise conv's
input and output. How each layer class behaves is looked up in the one table
in `morphcli.core.rules`; an unknown layer is a boundary that freezes what it touches.

Example:

>>> graph = build_graph(model)
>>> for group in graph.prunable_groups():
...     print(group.describe())
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from morphcli.core import keras_adapter, rules
from morphcli.core.layers import LayerNode, Space
from morphcli.core.terms import Kind
from morphcli.errors import ModelError


@dataclass
class Group:
    """Channels that live or die together.

    Attributes:
        id: Stable id, used as the key of alive masks and widths.
        width: Number of channels in the seed model.
        sources: Layers whose outputs create these channels (conv, dense).
        members: Every layer whose output carries these channels.
        frozen: Why the group may not be pruned (empty when prunable).
        block: Channels are kept or removed in whole blocks of this many
            adjacent channels (1 for most groups; a group normalization's
            group size when one reads the group).
    """

    id: int
    width: int
    sources: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    block: int = 1
    # Which slice of a wider group this one was split from, e.g. "[0:96]" (see
    # `_Builder.align`), so that every group has its own `key`.
    part: str = ""

    @property
    def prunable(self) -> bool:
        return not self.frozen

    @property
    def key(self) -> str:
        """A name for the group that stays the same for the same architecture
        (its first source layer, or first member, and the part)."""
        return (self.sources or self.members)[0] + self.part

    def describe(self) -> str:
        """One line: width, prunable or frozen (and why), and the coupled layers."""
        state = "prunable" if self.prunable else "frozen: " + "; ".join(self.frozen)
        if self.block > 1 and self.prunable:
            state += f" in blocks of {self.block}"
        tied = f", tied from {len(self.sources)} sources" if len(self.sources) > 1 else ""
        return f"group {self.id} ({self.width} ch, {state}{tied}): " + ", ".join(self.members)


class ChannelGraph:
    """The result of `build_graph`: nodes in topological order and their groups."""

    def __init__(self, model, nodes: list[LayerNode], groups: dict[int, Group],
                 submodels: dict[int, list[Space]] | None = None):
        self.model = model
        self.nodes = nodes
        self.groups = groups
        # Input spaces of nested models, by id of the nested model.
        self.submodels = submodels or {}
        self._by_name = {n.name: n for n in nodes}

    def node(self, name: str) -> LayerNode:
        return self._by_name[name]

    def source_space(self, source: str) -> Space:
        """The space a group's source creates: a layer's output, or for a source
        named `layer:inner` the layer's inner space of that name.

        Raises:
            KeyError: No such layer or inner space.
        """
        if source in self._by_name:
            return self._by_name[source].outputs[0]
        name, _, inner = str(source).rpartition(":")
        node = self._by_name[name]
        if inner not in node.inner_names:
            raise KeyError(source)
        return node.inner[node.inner_names.index(inner)]

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if g.prunable]

    def widths(self) -> dict[int, int]:
        """The seed's width of every group."""
        return {gid: g.width for gid, g in self.groups.items()}

    def width(self, space: Space, widths: Mapping[int, float] | None = None) -> float:
        """Width of a channel space, given per-group widths (default: the seed's)."""
        widths = widths or {}
        return space.repeat * sum(widths.get(g, self.groups[g].width) for g in space.groups)

    def indices(self, space: Space, alive: Mapping[int, np.ndarray]) -> np.ndarray:
        """Indices along a tensor's channel axis that survive under `alive` masks.

        Args:
            space: The tensor's channel space.
            alive: Boolean mask per group id; groups not in it keep all channels.

        Returns:
            Sorted int array of kept positions on the channel axis.
        """
        kept, offset = [], 0
        for gid in space.groups:
            width = self.groups[gid].width
            mask = alive.get(gid)
            idx = np.arange(width) if mask is None else np.flatnonzero(mask)
            kept.append(idx + offset)
            offset += width
        base = np.concatenate(kept) if kept else np.zeros(0, dtype=int)
        return np.concatenate([base + r * offset for r in range(space.repeat)])

    def frozen_reasons(self) -> list[str]:
        return sorted({r for g in self.groups.values() for r in g.frozen})


def _static(shape, where: str) -> tuple[int, ...]:
    dims = tuple(shape[1:])
    if any(d is None for d in dims):
        raise ModelError(
            f"Layer `{where}` has a dynamic shape {tuple(shape)}: costs need static "
            f"shapes. Received: shape={tuple(shape)}",
            hint="pass --input-shape H,W,C (or model.input_shape in the config).",
        )
    return dims


class _Builder:
    """Walks a functional graph once, assigning spaces and merging groups."""

    def __init__(self):
        self.groups: dict[int, Group] = {}
        self.parent: dict[int, int] = {}
        # A group split into parts (`align`): root id -> the parts' ids, in order.
        self.split: dict[int, tuple[int, ...]] = {}
        self.nodes: list[LayerNode] = []
        self.submodels: dict[int, list[Space]] = {}
        self.first_call: dict[int, LayerNode] = {}
        # Each layer's calls in the walked graph (keras_adapter.graph_calls).
        self.calls: dict[int, list] = {}

    # -- groups (union-find) --------------------------------------------------
    def new_group(self, width: int, member: str, source: bool = False,
                  frozen: str | None = None) -> Space:
        gid = len(self.groups)
        group = Group(gid, int(width), members=[member])
        if source:
            group.sources.append(member)
        if frozen:
            group.frozen.append(frozen)
        self.groups[gid] = group
        self.parent[gid] = gid
        return Space((gid,))

    def leaves(self, gid: int) -> tuple[int, ...]:
        """The current groups (union-find roots, split into parts) behind `gid`."""
        root = self.find(gid)
        if root not in self.split:
            return (root,)
        return tuple(leaf for part in self.split[root] for leaf in self.leaves(part))

    def expand(self, space: Space) -> Space:
        return Space(tuple(leaf for g in space.groups for leaf in self.leaves(g)), space.repeat)

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ga, gb = self.groups[ra], self.groups[rb]
        if ga.width != gb.width:  # shapes matched, so this is a bug in a rule
            raise AssertionError(f"tying groups of widths {ga.width} and {gb.width}")
        self.parent[rb] = ra
        ga.block = math.lcm(ga.block, gb.block)
        for attr in ("sources", "members", "frozen"):
            getattr(ga, attr).extend(x for x in getattr(gb, attr) if x not in getattr(ga, attr))

    def freeze(self, space: Space, reason: str) -> None:
        for gid in self.expand(space).groups:
            group = self.groups[gid]
            if reason not in group.frozen:
                group.frozen.append(reason)

    def add_member(self, space: Space, name: str) -> None:
        for gid in self.expand(space).groups:
            members = self.groups[gid].members
            if name not in members:
                members.append(name)

    def seg_widths(self, space: Space) -> tuple:
        return tuple(self.groups[g].width for g in self.expand(space).groups), space.repeat

    def align(self, spaces: list[Space]) -> bool:
        """Splits groups so that spaces of the same width have their groups at the
        same offsets: a concatenation tied to one conv's output (Inception-ResNet's
        `x + scale * conv(concat(...))`) splits the conv's group into one part per
        concatenated input. Returns False when the spaces cannot be aligned."""
        if len({s.repeat for s in spaces}) != 1 or len({self.width(s) for s in spaces}) != 1:
            return False
        cuts = set()
        for space in spaces:
            cuts.update(np.cumsum(self.seg_widths(space)[0])[:-1].tolist())
        for space in spaces:
            offset = 0
            for gid in self.expand(space).groups:
                group = self.groups[gid]
                inner = sorted(c - offset for c in cuts if offset < c < offset + group.width)
                if inner and not self._split(gid, inner):
                    return False
                offset += group.width
        return True

    def _split(self, gid: int, cuts: list[int]) -> bool:
        group = self.groups[gid]
        bounds = [0, *cuts, group.width]
        if group.block > 1 and any(b % group.block for b in bounds):
            return False  # parts would cut a normalization group
        parts = []
        for start, stop in zip(bounds[:-1], bounds[1:], strict=False):
            part = self.new_group(stop - start, group.members[0]).groups[0]
            new = self.groups[part]
            new.sources, new.members = list(group.sources), list(group.members)
            new.frozen, new.block = list(group.frozen), group.block
            new.part = f"{group.part}[{start}:{stop}]"
            parts.append(part)
        self.split[gid] = tuple(parts)
        return True

    def width(self, space: Space) -> int:
        return space.repeat * sum(self.groups[self.find(g)].width for g in space.groups)

    # -- walking ----------------------------------------------------------------
    def walk(self, model, spaces: dict[int, Space], prefix: str) -> None:
        for knode in keras_adapter.nodes_in_order(model):
            if knode.is_input or knode.operation is None:
                continue
            ins = [spaces[id(t)] for t in knode.input_tensors]
            op = knode.operation
            if keras_adapter.is_nested_model(op):
                self.submodels.setdefault(id(op), ins)
                inner = keras_adapter.functional_of(op)
                inner_spaces = {id(t): s for t, s in zip(inner.inputs, ins, strict=True)}
                self.walk(inner, inner_spaces, f"{prefix}{op.name}/")
                outs = [inner_spaces[id(t)] for t in inner.outputs]
            else:
                outs = self.apply(op, knode, ins, prefix)
            for tensor, space in zip(knode.output_tensors, outs, strict=True):
                spaces[id(tensor)] = space

    def apply(self, layer, knode, ins: list[Space], prefix: str) -> list[Space]:
        name = prefix + layer.name
        calls = self.calls.get(id(layer), [knode])
        if len(calls) > 1:  # a shared layer: one entry per call in this graph
            name += f"#{calls.index(knode)}"
        rule = rules.get(layer)
        node = LayerNode(
            name=name, layer=layer, rule=rule,
            kind=rule.kind if rule else Kind.BOUNDARY,
            config=_config(layer),
            in_shapes=[_static(t.shape, name) for t in knode.input_tensors],
            out_shapes=[_static(t.shape, name) for t in knode.output_tensors],
            inputs=ins,
            arguments=keras_adapter.argument_names(knode),
            options=keras_adapter.call_options(knode),
        )
        if rule is None:
            node.note = f"no channel rule for {type(layer).__name__}"
            node.profiled_flops = keras_adapter.profiled_flops(layer, knode)
        elif rule.check and (verdict := rule.check(node)):
            if isinstance(verdict, rules.Rule):
                node.rule, node.kind = verdict, verdict.kind
            else:
                node.kind, node.note = Kind.BOUNDARY, verdict
        node.outputs = self.propagate(node)
        if node.rule is not None and node.rule.couples and node.kind != Kind.BOUNDARY:
            self.freeze(node.inputs[0], f"touches `{name}` ({node.rule.couples})")
        if node.rule is not None and node.rule.inner and node.kind != Kind.BOUNDARY:
            for label, width in node.rule.inner(node):
                node.inner.append(self.new_group(width, f"{name}:{label}", source=True))
                node.inner_names.append(label)
        if node.rule is not None and node.rule.granularity and node.kind != Kind.BOUNDARY:
            self.set_block(node, node.rule.granularity(node))
        self.tie_calls(node)
        self.nodes.append(node)
        for space in node.outputs:
            self.add_member(space, name)
        return node.outputs

    def propagate(self, node: LayerNode) -> list[Space]:
        """Output spaces of a node from its kind; falls back to a boundary."""
        out_channels = [s[-1] if s else 1 for s in node.out_shapes]
        handler = {
            Kind.SOURCE: self._source,
            Kind.PASS: self._pass,
            Kind.TIE: self._tie,
            Kind.CONCAT: self._concat,
            Kind.FLATTEN: self._flatten,
            Kind.RESHAPE: self._reshape,
        }.get(node.kind)
        outs = handler(node) if handler else None
        if outs is None or [self.width(s) for s in outs] != out_channels:
            if node.note is None:
                node.note = f"{node.type} does not keep channels apart here"
            node.kind = Kind.BOUNDARY
            return self._boundary(node)
        return outs

    def set_block(self, node: LayerNode, block: int) -> None:
        """The node reads its input channels in blocks of `block` (a group norm's groups)."""
        space = node.inputs[0]
        if block <= 1:
            return
        space = self.expand(space)
        if len(space.groups) != 1 or space.repeat != 1:
            self.freeze(space, f"`{node.name}` normalizes groups of {block} channels that "
                               "span several channel groups")
            return
        group = self.groups[self.find(space.groups[0])]
        group.block = math.lcm(group.block, block)

    def tie_calls(self, node: LayerNode) -> None:
        """Calls of one shared layer share its weights, hence its channels: tie
        each call's spaces to the first call's (freeze them if they differ)."""
        first = self.first_call.setdefault(id(node.layer), node)
        if first is node:
            return
        for a, b in zip(first.inputs + first.outputs + first.inner,
                        node.inputs + node.outputs + node.inner, strict=True):
            if self.seg_widths(a) == self.seg_widths(b):
                for ga, gb in zip(self.expand(a).groups, self.expand(b).groups, strict=True):
                    self.union(ga, gb)
            else:
                reason = f"shared layer `{node.layer.name}` sees different channel layouts"
                self.freeze(a, reason)
                self.freeze(b, reason)

    def _source(self, node: LayerNode) -> list[Space]:
        return [self.new_group(node.out_shapes[0][-1], node.name, source=True)]

    def _pass(self, node: LayerNode) -> list[Space] | None:
        return [node.inputs[0]] if len(node.out_shapes) == 1 else None

    def _tie(self, node: LayerNode) -> list[Space] | None:
        out_channels = node.out_shapes[0][-1]
        # Inputs with one channel broadcast over the others and are not tied.
        tied = [s for s, shape in zip(node.inputs, node.in_shapes, strict=True)
                if shape and shape[-1] == out_channels]
        if not tied:
            return None
        if any(self.seg_widths(s) != self.seg_widths(tied[0]) for s in tied) and not (
                self.align(tied)):
            return None
        tied = [self.expand(s) for s in tied]
        for space in tied[1:]:
            for a, b in zip(tied[0].groups, space.groups, strict=True):
                self.union(a, b)
        return [tied[0]]

    def _concat(self, node: LayerNode) -> list[Space] | None:
        # Along another axis the rule table makes it a TIE (rules._concat_axis).
        if any(s.repeat != 1 for s in node.inputs):
            return None
        return [Space(tuple(g for s in node.inputs for g in s.groups))]

    def _flatten(self, node: LayerNode) -> list[Space] | None:
        space, shape = node.inputs[0], node.in_shapes[0]  # channels last (rules._flatten_layout)
        return [Space(space.groups, space.repeat * math.prod(shape[:-1]))]

    def _reshape(self, node: LayerNode) -> list[Space] | None:
        same_axis = node.in_shapes[0][-1] == node.out_shapes[0][-1]
        return [node.inputs[0]] if same_axis and node.inputs[0].repeat == 1 else None

    def _boundary(self, node: LayerNode) -> list[Space]:
        reason = f"touches `{node.name}` ({node.note})"
        for space in node.inputs:
            self.freeze(space, reason)
        return [self.new_group(shape[-1] if shape else 1, node.name, frozen=reason)
                for shape in node.out_shapes]

    # -- result -----------------------------------------------------------------
    def finish(self, model) -> ChannelGraph:
        roots = {gid: g for gid, g in self.groups.items()
                 if self.find(gid) == gid and gid not in self.split}
        # Renumber roots 0..n-1 in order of appearance, so ids are stable and dense.
        order = {old: new for new, old in enumerate(sorted(roots))}

        def resolve(space: Space) -> Space:
            return Space(tuple(order[g] for g in self.expand(space).groups), space.repeat)

        for node in self.nodes:
            node.inputs = [resolve(s) for s in node.inputs]
            node.outputs = [resolve(s) for s in node.outputs]
            node.inner = [resolve(s) for s in node.inner]
        submodels = {k: [resolve(s) for s in v] for k, v in self.submodels.items()}
        groups = {}
        for old, group in roots.items():
            group.id = order[old]
            groups[group.id] = group
        return ChannelGraph(model, self.nodes, groups, submodels)


def _config(layer) -> dict:
    try:
        return dict(layer.get_config())
    except (NotImplementedError, TypeError):  # custom layers without a config
        return {}


def build_graph(model) -> ChannelGraph:
    """Computes the channel groups of a functional or Sequential Keras model.

    Args:
        model: A built functional or Sequential `keras.Model` with static
            non-batch input shapes.

    Returns:
        A `ChannelGraph` with one `LayerNode` per layer call in topological
        order and the groups of channels that must be pruned together. The
        model's inputs and outputs are frozen.

    Raises:
        ModelError: If the model is not functional or its shapes are dynamic.
    """
    builder = _Builder()
    fn = keras_adapter.functional_of(model)
    builder.calls = keras_adapter.graph_calls(fn)
    spaces: dict[int, Space] = {}
    for tensor in fn.inputs:
        shape = _static(tensor.shape, "input")
        spaces[id(tensor)] = builder.new_group(shape[-1] if shape else 1, "input",
                                               frozen="model input")
    builder.walk(fn, spaces, prefix="")
    for tensor in fn.outputs:
        builder.freeze(spaces[id(tensor)], "model output")
    return builder.finish(model)

