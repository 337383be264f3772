"""Cost model: FLOPs, MACs, parameters and roofline latency of a channel graph.

Every layer's cost is a sum of monomials (`rules.Term`) in the widths of its
channel spaces, so one `CostModel` prices the seed model and any narrower or
wider structure given as a width per group, without rebuilding a model. The
same compiled terms serve the numbers in reports, the width-multiplier solver
and the differentiable regularizer: what we show is what we optimise.

Resources (all per example, batch 1):

- `flops`: every float operation TensorFlow's profiler counts on the frozen
  inference graph: 2 per multiply-add plus element-wise work (batch norm,
  bias adds, residual adds, pooling...).
- `macs`: multiply-adds of conv / dense / depthwise kernels only.
- `params`: every weight Keras counts (`model.count_params()`), biases and
  batch-norm statistics included.
- `kernel_params`: conv / dense kernel weights only (no biases, no BN).
- `latency`: seconds on a device. On a named device, a roofline estimate:
  per layer `max(flops / peak, bytes / bandwidth)`, bytes being float32
  activations read and written plus the weights. On a measured device
  (`profile:PATH`, see `morphcli.core.profile`), each unit's measured table
  interpolated at its widths, plus the per-call overhead (carried by the first
  layer).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from morphcli.core import profile as profiles
from morphcli.core.graph import ChannelGraph
from morphcli.core.layers import Space
from morphcli.core.rules import Term, positions
from morphcli.errors import MorphError

RESOURCES = ("flops", "macs", "params", "kernel_params", "latency")
BYTES_PER_VALUE = 4  # float32 activations and weights


@dataclass(frozen=True)
class Hardware:
    """A device for the roofline latency model.

    Attributes:
        name: Table key.
        peak_gflops: Peak compute, GFLOP/s.
        bandwidth_gbs: Memory bandwidth, GB/s.
        source: Where the numbers come from.
    """

    name: str
    peak_gflops: float
    bandwidth_gbs: float
    source: str = ""

    @property
    def peak(self) -> float:
        return self.peak_gflops * 1e9

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_gbs * 1e9

    @property
    def label(self) -> str:
        return f"roofline, {self.name}"


# The first six are the devices of the MorphNet reference implementation
# (google-research/morph-net, network_regularizers/resource_function.py),
# which mixes FP32 peaks (K80, P4, T4, P100) with tensor-core peaks (V100, TPUv2).
# The newer entries use the vendors' datasheets, dense BF16/FP16 tensor peaks.
HARDWARE: dict[str, Hardware] = {
    h.name: h
    for h in [
        Hardware("K80", 8740, 480, "MorphNet reference table"),
        Hardware("P4", 5500, 192, "MorphNet reference table"),
        Hardware("T4", 8100, 300, "MorphNet reference table"),
        Hardware("P100", 9300, 732, "MorphNet reference table"),
        Hardware("V100", 125000, 900, "MorphNet reference table"),
        Hardware("TPUv2", 22500, 300, "MorphNet reference table"),
        Hardware("A100", 312000, 2039, "NVIDIA A100 80GB SXM datasheet: BF16 dense, HBM2e"),
        Hardware("H100", 989000, 3350, "NVIDIA H100 SXM datasheet: BF16 dense, HBM3"),
        Hardware("H200", 989000, 4800, "NVIDIA H200 SXM datasheet: BF16 dense, HBM3e"),
        Hardware("cpu", 100, 20, "generic: a few AVX2 cores, one DDR4 channel; override it"),
    ]
}


def get_hardware(name: str | Hardware | profiles.Profile | None, spec: Mapping | None = None
                 ) -> Hardware | profiles.Profile:
    """Looks up a device by name (case-insensitive), builds a custom one, or reads
    a measured one (`profile:PATH`).

    Args:
        name: Table key, `profile:PATH`, a `Hardware` or `Profile`, or None for
            the generic CPU.
        spec: Optional `{"peak_gflops": ..., "bandwidth_gbs": ...}` that
            overrides (or defines) the device.

    Raises:
        MorphError: For an unknown name without a spec.
    """
    if isinstance(name, Hardware | profiles.Profile):
        return name
    if profiles.is_profile_name(name):
        return profiles.load(name[len(profiles.PREFIX):], warn=True)
    name = name or "cpu"
    known = {k.lower(): h for k, h in HARDWARE.items()}
    base = known.get(name.lower())
    if spec:
        return Hardware(
            name,
            float(spec.get("peak_gflops", base.peak_gflops if base else 0)),
            float(spec.get("bandwidth_gbs", base.bandwidth_gbs if base else 0)),
            "user config",
        )
    if base is None:
        close = difflib.get_close_matches(name, list(HARDWARE), n=1, cutoff=0.5)
        hint = f"did you mean `{close[0]}`?" if close else (
            "measure it (`morph profile MODEL -o profile.json`, then profile:profile.json) "
            "or define it: target.hardware_spec: {peak_gflops: .., bandwidth_gbs: ..}")
        raise MorphError(
            f"Unknown hardware. Expected one of {', '.join(HARDWARE)}. Received: hardware={name!r}",
            hint=hint,
        )
    return base


def check_resource(resource: str) -> str:
    if resource not in RESOURCES:
        raise MorphError(
            f"Unknown resource. Expected one of {', '.join(RESOURCES)}. "
            f"Received: metric={resource!r}"
        )
    return resource


@dataclass
class _Compiled:
    """Terms as arrays: total = sum(coef * sw[a] * sw[b]) with sw[-1] == 1."""

    coef: np.ndarray
    a: np.ndarray
    b: np.ndarray
    node: np.ndarray

    @classmethod
    def of(cls, rows: list[tuple[float, int, int, int]]) -> _Compiled:
        arr = np.array(rows, dtype=float).reshape(-1, 4)
        return cls(arr[:, 0], arr[:, 1].astype(int), arr[:, 2].astype(int), arr[:, 3].astype(int))


class CostModel:
    """Prices a channel graph for any width per group.

    Args:
        graph: The model's `ChannelGraph`.
        hardware: Device for `latency`: a name, `profile:PATH`, a `Hardware` or
            `Profile`, or None for `cpu`.

    Example:

    >>> costs = CostModel(build_graph(model))
    >>> costs.total("flops")                    # the seed model
    >>> costs.total("flops", {3: 16, 7: 32})    # groups 3 and 7 narrowed
    """

    def __init__(self, graph: ChannelGraph, hardware: str | Hardware | None = None):
        self.graph = graph
        self.hardware = get_hardware(hardware)
        self.n_groups = len(graph.groups)
        self.spaces: list[Space] = []
        self._space_index: dict[Space, int] = {}
        rows: dict[str, list] = {"flops": [], "macs": [], "params": [], "kernel_params": [],
                                 "bytes": []}
        for i, node in enumerate(graph.nodes):
            flops = node.rule.flops(node) if node.rule and node.rule.flops else []
            if node.profiled_flops:  # no rule: the profiler's count for the call, fixed
                flops = [Term(node.profiled_flops)]
            params = self._params_terms(node)
            rows["flops"] += [self._row(t, i) for t in flops]
            macs = node.rule.macs(node) if node.rule and node.rule.macs else []
            rows["macs"] += [self._row(t, i) for t in macs]
            rows["params"] += [self._row(t, i) for t in params]
            rows["kernel_params"] += [self._row(t, i) for t in params if t.kernel]
            rows["bytes"] += [self._row(t, i) for t in self._bytes_terms(node, params)]
        self._terms = {k: _Compiled.of(v) for k, v in rows.items()}
        self.profile = self.hardware if isinstance(self.hardware, profiles.Profile) else None
        self.units = profiles.bind(graph, self.profile, self._index) if self.profile else []
        self._matrix = self._space_matrix()

    # -- compilation ------------------------------------------------------------
    def _index(self, space: Space) -> int:
        if space not in self._space_index:
            self._space_index[space] = len(self.spaces)
            self.spaces.append(space)
        return self._space_index[space]

    def _row(self, term: Term, node: int) -> tuple[float, int, int, int]:
        idx = [self._index(s) for s in term.spaces] + [-1, -1]
        return (term.coef, idx[0], idx[1], node)

    @staticmethod
    def _params_terms(node) -> list[Term]:
        if node.rule and node.rule.params:
            return node.rule.params(node)
        count = sum(int(np.prod(w.shape)) for w in getattr(node.layer, "weights", []))
        return [Term(count)] if count else []  # unknown layer: its weights, fixed

    @staticmethod
    def _bytes_terms(node, params: list[Term]) -> list[Term]:
        if node.rule is not None and not node.rule.moves_memory:
            return []
        terms = [Term(BYTES_PER_VALUE * positions(shape), (space,))
                 for shape, space in zip(node.in_shapes + node.out_shapes,
                                         node.inputs + node.outputs, strict=True)]
        return terms + [Term(BYTES_PER_VALUE * t.coef, t.spaces) for t in params]

    def _space_matrix(self) -> np.ndarray:
        """S[i, g] = how many times group g's width counts in space i."""
        mat = np.zeros((len(self.spaces), self.n_groups))
        for i, space in enumerate(self.spaces):
            for gid in space.groups:
                mat[i, gid] += space.repeat
        return mat

    # -- evaluation ---------------------------------------------------------------
    def width_vector(self, widths: Mapping[int, float] | Sequence[float] | None = None
                     ) -> np.ndarray:
        """Per-group widths as a vector; groups not given keep the seed's width."""
        vec = np.array([self.graph.groups[g].width for g in range(self.n_groups)], dtype=float)
        if widths is None:
            return vec
        if isinstance(widths, Mapping):
            for gid, w in widths.items():
                vec[gid] = w
            return vec
        return np.asarray(widths, dtype=float)

    def space_widths(self, widths=None) -> np.ndarray:
        """Widths of every compiled space, with a trailing 1 for "no space"."""
        return np.append(self._matrix @ self.width_vector(widths), 1.0)

    def _per_node(self, kind: str, widths=None) -> np.ndarray:
        t = self._terms[kind]
        sw = self.space_widths(widths)
        out = np.zeros(len(self.graph.nodes))
        np.add.at(out, t.node, t.coef * sw[t.a] * sw[t.b])
        return out

    def per_layer(self, resource: str, widths=None) -> np.ndarray:
        """Cost of every node (in `graph.nodes` order) for one resource."""
        check_resource(resource)
        if resource == "latency" and self.profile:
            return self._measured(self.space_widths(widths))
        if resource == "latency":
            return np.maximum(self._per_node("flops", widths) / self.hardware.peak,
                              self._per_node("bytes", widths) / self.hardware.bandwidth)
        return self._per_node(resource, widths)

    def total(self, resource: str, widths=None) -> float:
        """Network cost for one resource at the given widths (default: the seed)."""
        return float(self.per_layer(resource, widths).sum())

    def totals(self, resource: str, widths: np.ndarray) -> np.ndarray:
        """Network cost of many structures at once, one per row of `widths`
        (a `(count, n_groups)` array of per-group widths)."""
        check_resource(resource)
        sw = np.asarray(widths, dtype=float) @ self._matrix.T
        sw = np.concatenate([sw, np.ones((len(sw), 1))], axis=1)

        def per_node(kind: str) -> np.ndarray:
            t = self._terms[kind]
            out = np.zeros((len(self.graph.nodes), len(sw)))
            np.add.at(out, t.node, (t.coef * sw[:, t.a] * sw[:, t.b]).T)
            return out

        if resource == "latency" and self.profile:
            return self._measured(sw).sum(axis=-1)
        if resource == "latency":
            return np.maximum(per_node("flops") / self.hardware.peak,
                              per_node("bytes") / self.hardware.bandwidth).sum(axis=0)
        t = self._terms[resource]
        return (sw[:, t.a] * sw[:, t.b]) @ t.coef

    def _measured(self, sw: np.ndarray) -> np.ndarray:
        """Profile latency per node, for space widths `sw` (..., spaces + 1): each
        unit's table, times the scale of the profile's curve at their sum
        (`Profile.line`), on its leader; the per-call overhead and the curve's
        fixed cost there on the first node."""
        out = np.zeros(sw.shape[:-1] + (len(self.graph.nodes),))
        for unit in self.units:
            out[..., unit.nodes[0]] = unit.seconds(sw) * self._inner_ratio(unit, sw)
        scale, fixed = self.profile.line(out.sum(-1))
        out *= scale[..., None]
        out[..., 0] += self.profile.overhead_s + fixed
        return out

    def _inner_ratio(self, unit, sw: np.ndarray):
        """A layer with inner spaces (an attention's key and value widths) was measured
        at the inner widths its table records: the table is scaled by the layer's FLOPs
        at `sw` over its FLOPs with the inner spaces at those widths (1 for others)."""
        node = unit.nodes[0]
        inner = self.graph.nodes[node].inner
        if not inner:
            return 1.0
        t = self._terms["flops"]
        rows = t.node == node
        coef, a, b = t.coef[rows], t.a[rows], t.b[rows]
        seed = sw.copy()
        measured = unit.table.inner or [self.graph.width(s) for s in inner]
        for space, width in zip(inner, measured, strict=True):
            seed[..., self._space_index[space]] = width
        now = (coef * sw[..., a] * sw[..., b]).sum(-1)
        then = (coef * seed[..., a] * seed[..., b]).sum(-1)
        return np.where(then > 0, now / np.maximum(then, 1e-30), 1.0)

    def space_matrix(self) -> np.ndarray:
        return self._matrix

    def terms(self, kind: str) -> _Compiled:
        """Compiled terms of `flops`, `macs`, `params`, `kernel_params` or `bytes`."""
        return self._terms[kind]
