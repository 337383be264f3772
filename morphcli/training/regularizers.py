"""Resource-weighted sparsifying regularizers on per-channel scales.

A regularizer owns, for every prunable channel group, a *regularization
vector* (one non-negative value per channel, differentiable in the model's
weights) and turns those vectors into:

- `alive_masks()`: a channel is alive when its value exceeds the threshold;
- `cost()`: the resource cost of the alive structure (same `CostModel` as
  reports, so the number optimised is the number shown); `priced()` is the
  same number as a tensor, differentiable in the widths (on a measured device,
  `morphcli.training.measured`: the profile's tables, tiles and curve);
- `term()`: the cost made differentiable (MorphNet, Gordon et al. 2018):
  for each monomial `c · |in| · |out|` of the cost, `c · (A · Σ r_out + B · Σ r_in)`
  with `A`, `B` the alive widths held constant, and `c · Σ r` for linear ones.

Kinds:

- `gamma`: |batch-norm gamma| of the channel (element-wise max over the
  layers of a tied group). Groups without a batch norm are kept whole.
- `group_lasso`: root-mean-square of the kernel slice that produces the
  channel, for models without batch norm.
- `gates`: keep-probability of the `ChannelGate`s that `morphcli.training.gates`
  inserts (FiGS); a tied group's is 1 - prod(1 - p) over its gates.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from morphcli.core.costs import CostModel
from morphcli.core.graph import ChannelGraph
from morphcli.core.rules import OUT, Kind
from morphcli.core.terms import is_inner
from morphcli.errors import MorphError
from morphcli.training.measured import MeasuredPrice

KIND_NAMES = ("gamma", "group_lasso", "gates")
KINDS = {"gamma": "gamma", "batch_norm": "gamma", "bn": "gamma",
         "group_lasso": "group_lasso", "grouplasso": "group_lasso",
         "gates": "gates", "gate": "gates", "gating": "gates"}
DEFAULT_THRESHOLD = {"gamma": 1e-2, "group_lasso": 1e-2, "gates": 0.1}


def canonical_kind(kind: str) -> str:
    """'GroupLasso', 'group-lasso' -> 'group_lasso'."""
    key = "".join(ch for ch in kind.lower() if ch.isalnum() or ch == "_").replace("-", "_")
    key = {"grouplasso": "group_lasso", "batchnorm": "batch_norm"}.get(key, key)
    if key not in KINDS:
        close = difflib.get_close_matches(key, list(KINDS), n=1)
        raise MorphError(
            "Unknown regularizer kind. Expected gamma, group_lasso or gates. "
            f"Received: kind={kind!r}",
            hint=f"did you mean `{KINDS[close[0]]}`?" if close else None,
        )
    return KINDS[key]


@dataclass
class _Source:
    """Where one group's channels get their regularization values: a weight
    variable and, for each of the group's channels, its index on `axis`."""

    variable: object
    axis: int
    index: np.ndarray  # position in the weight of each channel of the group
    reduce: bool = False  # group lasso: RMS over every other axis
    transform: Callable | None = None  # gates: stored scores -> keep-probabilities


@dataclass
class Regularizer:
    """A resource-weighted regularizer over a model's channel groups.

    Build it with `make_regularizer`. Attributes `groups` lists the ids of
    regularized groups; `kept_whole` maps groups that cannot be regularized
    to the reason.
    """

    graph: ChannelGraph
    costs: CostModel
    kind: str
    resource: str
    threshold: float
    min_channels: int = 1
    cost_exponent: float = 1.0
    sources: dict[int, list[_Source]] = field(default_factory=dict)
    kept_whole: dict[int, str] = field(default_factory=dict)
    # (strength variable, largest weight at strength 1): `term` clips every channel
    # weight at `largest / strength` (see `limit_step`); None: no clipping.
    step_limit: tuple | None = None

    @property
    def groups(self) -> list[int]:
        return sorted(self.sources)

    # -- values ---------------------------------------------------------------------
    def vectors(self) -> dict:
        """Regularization vector (tf tensor) per regularized group."""
        import tensorflow as tf

        result = {}
        for gid, sources in self.sources.items():
            parts = [self._values(src) for src in sources]
            result[gid] = parts[0] if len(parts) == 1 else self._combine(tf.stack(parts))
        return result

    def _combine(self, stacked):
        """A tied group's vector from its members': the max, or for gates the
        probability that at least one member keeps the channel."""
        import tensorflow as tf

        if self.kind == "gates":
            return 1.0 - tf.reduce_prod(1.0 - stacked, 0)
        return tf.reduce_max(stacked, 0)

    @staticmethod
    def _values(src: _Source):
        import tensorflow as tf

        w = tf.convert_to_tensor(src.variable)
        w = tf.gather(w, src.index, axis=src.axis)
        if src.transform is not None:
            return src.transform(w)
        if not src.reduce:
            return tf.abs(w)
        w = tf.experimental.numpy.moveaxis(w, src.axis, -1)
        w = tf.reshape(w, (-1, w.shape[-1]))
        return tf.sqrt(tf.reduce_mean(tf.square(w), axis=0))

    def numpy_vectors(self) -> dict[int, np.ndarray]:
        return {gid: np.asarray(v) for gid, v in self.vectors().items()}

    # -- structure ----------------------------------------------------------------------
    def alive_masks(self, threshold: float | None = None) -> dict[int, np.ndarray]:
        """Boolean mask per regularized group: value > threshold (default: the
        regularizer's), keeping at least `min_channels` (the largest values) in every
        group."""
        threshold = self.threshold if threshold is None else threshold
        masks = {}
        for gid, values in self.numpy_vectors().items():
            # A group read in blocks (group norm) keeps a block when any channel lives.
            block = self.graph.groups[gid].block
            blocks = values.reshape(-1, block).max(axis=1)
            keep = blocks > threshold
            need = -(-min(self.min_channels, values.size) // block)
            if keep.sum() < need:
                keep[np.argsort(-blocks, kind="stable")[:need]] = True
            masks[gid] = np.repeat(keep, block)
        return masks

    def alive_widths(self, threshold: float | None = None) -> dict[int, int]:
        return {gid: int(m.sum()) for gid, m in self.alive_masks(threshold).items()}

    def cost(self, threshold: float | None = None) -> float:
        """Resource cost of the structure that is alive now."""
        return self.costs.total(self.resource, self.alive_widths(threshold))

    # -- the differentiable term ----------------------------------------------------------
    def term(self):
        """The cost made differentiable at the current alive widths (a scalar tensor).

        With `cost_exponent` p != 1, group g's sum is weighted by w_g^p · mean(w)^(1-p)
        instead of its per-channel cost w_g (`channel_weights`): p < 1 narrows the gap
        between cheap and expensive channels, p = 0 penalises every channel alike."""
        import tensorflow as tf

        widths, sums = self._widths_and_sums()
        if self.cost_exponent == 1.0 and self.step_limit is None:
            return self._term_of(widths, sums)
        weights = self._weights_at(widths)
        if self.step_limit is not None:
            strength, largest = self.step_limit
            weights = tf.minimum(weights, largest / tf.cast(strength, tf.float32))
        return tf.reduce_sum(tf.stop_gradient(weights) * tf.stack(sums))

    def limit_step(self, strength, learning_rate: float, largest_step: float) -> None:
        """Clips each channel's weight in `term` so that one plain-SGD step of the
        penalty alone, `learning_rate · strength · weight`, moves no value by more
        than `largest_step`: channels above the clip are all pushed at that rate,
        cheaper ones in proportion to their cost. `strength` is the variable the
        term is multiplied by (read at every step)."""
        self.step_limit = (strength, float(largest_step) / float(learning_rate))

    def _widths_and_sums(self):
        import tensorflow as tf

        seed = self.costs.width_vector()
        widths = [tf.constant(w, tf.float32) for w in seed]  # frozen groups: full width
        sums = [tf.constant(0.0)] * self.costs.n_groups  # frozen groups: not regularized
        for gid, vec in self.vectors().items():
            alive = tf.reduce_sum(tf.cast(vec > self.threshold, tf.float32))
            widths[gid] = tf.maximum(alive, float(min(self.min_channels, seed[gid])))
            sums[gid] = tf.reduce_sum(vec)
        return tf.stop_gradient(tf.stack(widths)), sums

    def _term_of(self, width_t, sums):
        import tensorflow as tf

        matrix = tf.constant(self.costs.space_matrix(), tf.float32)
        space_w = tf.concat([tf.linalg.matvec(matrix, width_t), [1.0]], 0)
        space_r = tf.concat([tf.linalg.matvec(matrix, tf.stack(sums)), [0.0]], 0)
        coef, a, b = self._coefficients(space_w)
        products = (tf.gather(space_w, a) * tf.gather(space_r, b)
                    + tf.gather(space_w, b) * tf.gather(space_r, a))
        return tf.reduce_sum(coef * products)

    def _weights_at(self, width_t):
        """d term / d (sum of group g's values) at `width_t` (a tensor, one entry per
        group; 0 for groups not regularized), reweighted by `cost_exponent` (see `term`).
        The term is linear in the sums, so this is exact and needs no tape."""
        import tensorflow as tf

        matrix = tf.constant(self.costs.space_matrix(), tf.float32)
        rows = tf.concat([matrix, tf.zeros((1, self.costs.n_groups))], 0)  # "no space": 0
        space_w = tf.concat([tf.linalg.matvec(matrix, width_t), [1.0]], 0)
        coef, a, b = self._coefficients(space_w)
        raw = (tf.linalg.matvec(tf.gather(rows, b), coef * tf.gather(space_w, a), transpose_a=True)
               + tf.linalg.matvec(tf.gather(rows, a), coef * tf.gather(space_w, b),
                                  transpose_a=True))
        mask = np.zeros(self.costs.n_groups, dtype=bool)
        mask[self.groups] = True
        raw = tf.where(mask, tf.maximum(raw, 0.0), 0.0)
        if self.cost_exponent == 1.0:
            return raw
        mean = tf.reduce_sum(raw) / float(mask.sum())
        live = tf.logical_and(mask, raw > 0)
        safe = tf.where(live, raw, 1.0)
        return tf.where(live, safe ** self.cost_exponent * mean ** (1 - self.cost_exponent), 0.0)

    def priced(self, widths=None):
        """The cost `term` linearises, as a scalar tensor at per-group `widths`
        (default: the alive widths now): what `costs.total` gives there, the report's
        number (on a measured device, the profile's tables, tiles and curve:
        `MeasuredPrice.price`), differentiable in the widths. `term`'s weights are its
        slopes."""
        import tensorflow as tf

        if widths is None:
            width_t, _ = self._widths_and_sums()
        else:
            width_t = tf.constant(self.costs.width_vector(widths), tf.float32)
        matrix = tf.constant(self.costs.space_matrix(), tf.float32)
        space_w = tf.concat([tf.linalg.matvec(matrix, width_t), [1.0]], 0)
        if self.resource == "latency" and self.costs.profile is not None:
            return self._measured().price(space_w)
        coef, a, b = self._coefficients(space_w)
        return tf.reduce_sum(coef * tf.gather(space_w, a) * tf.gather(space_w, b))

    def _measured(self) -> MeasuredPrice:
        if not hasattr(self, "_measured_price"):
            self._measured_price = MeasuredPrice(self.costs)
        return self._measured_price

    def channel_weights(self) -> np.ndarray:
        """What one unit of a channel's value adds to the term now, per group
        (index = group id; 0 for groups not regularized)."""
        widths, _ = self._widths_and_sums()
        return self._weights_at(widths).numpy().astype(np.float64)

    def _coefficients(self, space_w):
        """(coef, a, b) of the cost's monomials; index -1 ("no space") becomes the
        appended last entry. For latency, each layer keeps the terms of its dominant
        roofline side (compute or memory) at the current alive widths, chosen in
        TensorFlow so that it works inside a compiled train step."""
        import tensorflow as tf

        n = len(self.costs.spaces)

        def compiled(kind):
            t = self.costs.terms(kind)
            a, b = (tf.constant(np.where(i < 0, n, i)) for i in (t.a, t.b))
            return tf.constant(t.coef, tf.float32), a, b, tf.constant(t.node)

        if self.resource != "latency":
            coef, a, b, _ = compiled(self.resource)
            return coef, a, b
        if self.costs.profile is not None:
            return self._measured().coefficients(space_w)
        hw, n_nodes = self.costs.hardware, len(self.graph.nodes)
        sides = [(*compiled("flops"), 1 / hw.peak), (*compiled("bytes"), 1 / hw.bandwidth)]
        per_node = [tf.math.unsorted_segment_sum(
            c * tf.gather(space_w, a) * tf.gather(space_w, b), node, n_nodes) * scale
            for c, a, b, node, scale in sides]
        compute_bound = per_node[0] >= per_node[1]
        on = [compute_bound, tf.logical_not(compute_bound)]
        coef = tf.concat([c * scale * tf.cast(tf.gather(mask, node), tf.float32)
                          for (c, _, _, node, scale), mask in zip(sides, on, strict=True)], 0)
        return coef, tf.concat([s[1] for s in sides], 0), tf.concat([s[2] for s in sides], 0)


def make_regularizer(graph: ChannelGraph, costs: CostModel, kind: str = "gamma",
                     resource: str = "flops", threshold: float | None = None,
                     min_channels: int = 1, cost_exponent: float = 1.0) -> Regularizer:
    """Builds a regularizer for a model's channel graph.

    Args:
        graph: `build_graph(model)`; the regularizer reads the model's live
            weight variables, so training the model moves its values.
        costs: `CostModel(graph, hardware)`.
        kind: `gamma`, `group_lasso` or `gates` (aliases accepted); `gates`
            needs a model made by `morphcli.training.gates.insert`.
        resource: flops, macs, params, kernel_params or latency.
        threshold: Alive threshold (default 1e-2; 0.1 for gates).
        min_channels: Channels every group keeps at least.
        cost_exponent: Exponent on each group's per-channel cost weight (see `term`).

    Raises:
        MorphError: Unknown kind; `gamma` on a model whose batch norms have
            `scale=False` or with no batch norm in any prunable group; `gates`
            on a model without gates, or gates closing at another threshold.
    """
    kind = canonical_kind(kind)
    reg = Regularizer(graph, costs, kind, resource,
                      DEFAULT_THRESHOLD[kind] if threshold is None else float(threshold),
                      int(min_channels), float(cost_exponent))
    collector = _COLLECTORS[kind]
    for node in graph.nodes:
        collector.collect(reg, node)
    layers = {n.name for n in graph.nodes}
    for group in graph.prunable_groups():
        if group.id not in reg.sources:
            inner = group.sources and group.sources[0] not in layers  # `layer:query_key`
            reg.kept_whole[group.id] = (
                "a width inside a layer (an attention's key or value width): only "
                "group_lasso regularizes it" if inner and kind != "group_lasso"
                else collector.kept_whole)
    if not reg.sources:
        raise MorphError(
            f"Nothing to regularize with kind={kind}: no prunable channel group has "
            f"{collector.needs}.", hint=collector.hint)
    return reg


def _segments(graph: ChannelGraph, space):
    """(group id, positions on the channel axis) for each group of a space."""
    offset = 0
    for gid in space.groups:
        width = graph.groups[gid].width
        yield gid, np.arange(offset, offset + width)
        offset += width


def _gamma_sources(reg: Regularizer, node) -> None:
    if node.rule is None or not node.rule.normalizes or node.kind != Kind.PASS:
        return
    space = node.inputs[0]
    if getattr(node.layer, node.rule.scale, None) is None:  # BatchNormalization(scale=False)
        prunable = [g for g in space.groups if reg.graph.groups[g].prunable]
        if prunable:
            raise MorphError(
                f"Batch norm `{node.name}` has scale=False, so it has no gamma to "
                "regularize. Received: scale=False",
                hint="use `regularizer.kind: group_lasso`, or rebuild the model with "
                     "BatchNormalization(scale=True).",
            )
        return
    for gid, index in _segments(reg.graph, space):
        if reg.graph.groups[gid].prunable and space.repeat == 1:
            scale = getattr(node.layer, node.rule.scale)
            reg.sources.setdefault(gid, []).append(_Source(scale, -1, index))


def _lasso_sources(reg: Regularizer, node) -> None:
    if node.kind != Kind.SOURCE or node.rule is None or node.rule.weights is None:
        return
    # The kernel that produces the output channels: the first multi-axis weight
    # with an output axis (a separable conv's pointwise kernel, not its depthwise one).
    # Its output may hold several groups (a conv tied to a concatenation).
    specs = list(zip(node.layer.weights, node.rule.weights(node), strict=True))
    for variable, spec in specs:
        if OUT in spec.values() and len(variable.shape) > 1:
            axis = next(ax for ax, role in spec.items() if role == OUT)
            for gid, index in _segments(reg.graph, node.outputs[0]):
                if reg.graph.groups[gid].prunable:
                    reg.sources.setdefault(gid, []).append(
                        _Source(variable, axis, index, reduce=True))
            break
    # An inner space (an attention's key width): every kernel (a weight with another
    # role beside it) that indexes it.
    for variable, spec in specs:
        for axis, role in spec.items():
            if is_inner(role) and len(spec) > 1:
                gid = node.space(role).groups[0]
                if reg.graph.groups[gid].prunable:
                    reg.sources.setdefault(gid, []).append(_Source(
                        variable, axis, np.arange(reg.graph.groups[gid].width), reduce=True))


def _gate_sources(reg: Regularizer, node) -> None:
    if node.rule is None or not node.rule.gate or node.kind != Kind.PASS:
        return
    if node.layer.threshold != reg.threshold:
        raise MorphError(
            f"Gate `{node.name}` closes at keep-probability {node.layer.threshold} but the "
            f"regularizer's threshold is {reg.threshold}: the exported model would differ "
            f"from the gated one. Received: threshold={reg.threshold}",
            hint="insert the gates with the regularizer's threshold.")
    space = node.inputs[0]
    for gid, index in _segments(reg.graph, space):
        sources = reg.sources.get(gid, [])
        # A shared gate (after a shared conv) is one gate, however many calls it has.
        if (reg.graph.groups[gid].prunable and space.repeat == 1
                and all(s.variable is not node.layer.score for s in sources)):
            gate = _Source(node.layer.score, -1, index, transform=node.layer.probability_of)
            reg.sources[gid] = [*sources, gate]


@dataclass(frozen=True)
class _Collector:
    """How one kind finds its values, and what it says when a group has none."""

    collect: Callable
    kept_whole: str  # why a prunable group without values is kept whole
    needs: str  # what a group needs, for the "nothing to regularize" error
    hint: str


_COLLECTORS = {
    "gamma": _Collector(
        _gamma_sources, "no batch-norm gamma to regularize (use regularizer.kind: group_lasso)",
        "a batch norm", "use `regularizer.kind: group_lasso` for models without batch norm."),
    "group_lasso": _Collector(_lasso_sources, "no kernel produces it", "a conv/dense kernel",
                              "check `morph report MODEL` for frozen groups."),
    "gates": _Collector(
        _gate_sources, "no gate on it (inside a nested model, or no layer can absorb one)",
        "a ChannelGate", "insert the gates first: `morphcli.training.gates.insert(model)`."),
}


def strength_scale(reg: Regularizer) -> float:
    """The regularization term at the current (initial) weights.

    `lambda = strength / strength_scale(reg)` makes `strength` mean "the
    regularization loss starts at `strength`", whatever the kind, resource and
    model size: about 1 / (2 · seed cost) for gammas initialised at 1, which is
    MorphNet's suggested starting point, and automatically ~100x larger for
    group lasso, whose values are ~100x smaller.
    """
    value = float(reg.term())
    return value if value > 0 else 1.0

