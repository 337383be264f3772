"""The channel rule of `MultiHeadAttention`: its per-head widths are channels too.

A `MultiHeadAttention(num_heads=H, key_dim=dk, value_dim=dv)` call holds two
channel spaces on no tensor, its *inner* spaces (`LayerNode.inner`):

- `query_key` (dk wide): the columns of the query and key projections, pruned
  together (a score is the dot product of a query and a key row, so a key width
  dropped in one must go in the other), the same index in every head;
- `value` (dv wide): the columns of the value projection (and of the gate, with
  `use_gate`) and the rows of the output projection that read them.

The query, value and key inputs are read like a dense layer's input, and the
output projection creates the layer's output channels (`Kind.SOURCE`). Heads
are not pruned: a cost is bilinear in the widths of two channel spaces, and
H · dk is a product of two choices; pruning dk in every head removes the same
work in finer steps.

FLOPs follow TensorFlow's profiler on the layer's inference graph
(tests/test_attention.py checks them against it): per projection 2 flops per
multiply-add (a BatchMatMulV2) and one per bias, one Mul per score (the scores
scaled by 1/sqrt(dk)) and 5 per score for the softmax. The scores and the
weighted sum are `Einsum` ops, for which the profiler has no flops: their
multiply-adds (dk, dv per score) are in `macs`, as are the projections'.
"""

from __future__ import annotations

import math

import numpy as np

from morphcli.core.terms import OUT, Term, inner_role, input_role

# Where each argument of `MultiHeadAttention.call` arrives: positional or keyword.
_ARGUMENTS = {"0": "query", "query": "query", "1": "value", "value": "value",
              "2": "key", "key": "key"}
INNER = ("query_key", "value")  # the names of the two inner spaces, in order


def _part(weight) -> tuple[str, str]:
    """("query", "kernel") for the weight `.../query/kernel`: which projection, which
    weight of it."""
    sub, kind = weight.path.split("/")[-2:]
    return sub, kind


def _query_factor(node, key_dim: int) -> float:
    """What the query projection is multiplied by when `key_dim` of the seed's key
    widths are left: the scores are divided by sqrt(key_dim)."""
    return math.sqrt(key_dim / int(node.config.get("key_dim")))


def _inputs(node) -> dict[str, int]:
    """Index in `node.inputs` of the query, value and key (the value when no key)."""
    names = node.arguments or [str(i) for i in range(len(node.inputs))]
    found = {_ARGUMENTS[n]: i for i, n in enumerate(names) if n in _ARGUMENTS}
    found.setdefault("key", found.get("value"))
    return found


def check(node) -> str | None:
    """Why this call is a boundary, or None when the rule holds."""
    if node.arguments is None:
        return "MultiHeadAttention called with nested arguments"
    found = _inputs(node)
    if "query" not in found or "value" not in found:
        return "MultiHeadAttention call without a query and a value tensor"
    if len(node.out_shapes) != 1:
        return "MultiHeadAttention returning its attention scores"
    out = node.config.get("output_shape")
    if out is not None and not isinstance(out, int) and len(tuple(out)) != 1:
        return f"MultiHeadAttention with a {len(tuple(out))}-D output_shape"
    if any(len(node.in_shapes[i]) != 2 for i in found.values()):
        return "MultiHeadAttention on inputs other than (sequence, features)"
    return None


def _fused(node) -> bool:
    """Whether Keras computes the attention with `ops.dot_product_attention` (no
    dropout), which TensorFlow runs as two `Einsum`s; else as explicit matmuls."""
    return not node.config.get("dropout", 0.0)


def inner(node) -> list[tuple[str, int]]:
    key_dim = int(node.config.get("key_dim"))
    return list(zip(INNER, (key_dim, int(node.config.get("value_dim") or key_dim)), strict=True))


def _shapes(node):
    found = _inputs(node)
    heads = int(node.config.get("num_heads"))
    q_shape, k_shape = node.in_shapes[found["query"]], node.in_shapes[found["key"]]
    scores = heads * q_shape[0] * k_shape[0]  # (sequence, features) inputs: `check`
    return found, heads, q_shape[0], k_shape[0], scores


def _spaces(node):
    found = _inputs(node)
    return (node.inputs[found["query"]], node.inputs[found["key"]],
            node.inputs[found["value"]], node.inner[0], node.inner[1], node.outputs[0])


def flops(node) -> list[Term]:
    _, heads, pq, pk, scores = _shapes(node)
    query, key, value, qk, v, out = _spaces(node)
    bias = int(bool(node.config.get("use_bias", True)))
    terms = [
        Term(2 * pq * heads, (query, qk)), Term(bias * pq * heads, (qk,)),
        Term(2 * pk * heads, (key, qk)), Term(bias * pk * heads, (qk,)),
        Term(2 * pk * heads, (value, v)), Term(bias * pk * heads, (v,)),
        Term(2 * pq * heads, (v, out)), Term(bias * pq, (out,)), Term(5 * scores),  # softmax
    ]
    if _fused(node):  # scores scaled by 1/sqrt(dk); the two Einsums count 0
        terms.append(Term(scores))
    else:  # the query scaled; scores and weighted sum as BatchMatMulV2
        terms += [Term(pq * heads, (qk,)), Term(2 * scores, (qk,)), Term(2 * scores, (v,))]
        if node.options.get("use_causal_mask"):  # the mask built once (GreaterEqual)
            terms.append(Term(pq * pk))
    if node.config.get("sliding_window") is not None:  # its mask: a Sub and a Less per score
        terms.append(Term(2 * pq * pk))
    if node.config.get("use_gate", False):  # sigmoid(gate(query)) * attention, before the output
        terms += [Term(2 * pq * heads, (query, v)), Term((bias + 1) * pq * heads, (v,))]
    return [t for t in terms if t.coef]


def macs(node) -> list[Term]:
    _, heads, pq, pk, scores = _shapes(node)
    query, key, value, qk, v, out = _spaces(node)
    terms = [Term(pq * heads, (query, qk)), Term(pk * heads, (key, qk)),
             Term(pk * heads, (value, v)), Term(scores, (qk,)), Term(scores, (v,)),
             Term(pq * heads, (v, out))]
    if node.config.get("use_gate", False):
        terms.append(Term(pq * heads, (query, v)))
    return terms


def params(node) -> list[Term]:
    heads = int(node.config.get("num_heads"))
    query, key, value, qk, v, out = _spaces(node)
    bias = bool(node.config.get("use_bias", True))
    kernels = [(query, qk), (key, qk), (value, v), (v, out)]
    if node.config.get("use_gate", False):
        kernels.append((query, v))
    terms = [Term(heads, pair, kernel=True) for pair in kernels]
    if bias:
        terms += [Term(heads, (pair[1],)) for pair in kernels[:3] + kernels[4:]]
        terms.append(Term(1, (out,)))
    return terms


def weights(node) -> list[dict[int, str]]:
    """Axis roles of each weight, found by the sub-layer it belongs to
    (`.../query/kernel` of shape (D, H, dk), `.../attention_output/kernel` of shape
    (H, dv, D_out), biases without the input axis)."""
    found = _inputs(node)
    reads = {"query": input_role(found["query"]), "key": input_role(found["key"]),
             "value": input_role(found["value"]), "gate": input_role(found["query"])}
    inner_of = {"query": inner_role(0), "key": inner_role(0), "value": inner_role(1),
                "gate": inner_role(1)}
    specs = []
    for weight in node.layer.weights:
        sub, kind = _part(weight)
        if sub == "attention_output":
            specs.append({1: inner_role(1), 2: OUT} if kind == "kernel" else {0: OUT})
        elif kind == "kernel":
            specs.append({0: reads[sub], 2: inner_of[sub]})
        else:
            specs.append({1: inner_of[sub]})
    return specs


def rescale(node, layer, key_dim: int, value_dim: int) -> None:
    """After surgery left `key_dim` of the seed's key widths in `layer` (and
    `value_dim` value widths, which change no scale): the scores are scaled by
    1/sqrt(key_dim), so the query projection is scaled by `_query_factor` to keep
    every score what it was."""
    factor = _query_factor(node, key_dim)
    if factor == 1.0:
        return
    for weight in layer.weights:
        if _part(weight)[0] == "query":
            weight.assign(weight.numpy() * factor)


def fold(node, layer, index: int, constant, kept) -> None:
    """Dead channels of input `index` carry `constant`: every projection reading that
    input (query, key, value, gate) is linear, so the constant adds
    `constant @ kernel` to its output, which goes into its bias (scaled like the
    query's own weights when `rescale` scaled them)."""
    found = _inputs(node)
    space = node.inputs[index]  # self-attention: the same tensor is all three inputs
    readers = [sub for sub, arg in (("query", "query"), ("key", "key"), ("value", "value"),
                                    ("gate", "query")) if node.inputs[found[arg]] == space]
    kernels = {_part(w)[0]: w for w in node.layer.weights if _part(w)[1] == "kernel"}
    biases = {_part(w)[0]: w for w in layer.weights if _part(w)[1] == "bias"}
    factor = _query_factor(node, len(kept[0]))
    for sub in readers:
        kernel = kernels.get(sub)
        if kernel is None or sub not in biases:
            continue  # no such projection, or no bias to fold into
        shift = np.einsum("d,dhk->hk", constant, np.asarray(kernel.numpy()))
        shift = shift[:, kept[0] if sub in ("query", "key") else kept[1]]
        if sub == "query":
            shift = shift * factor
        biases[sub].assign(np.asarray(biases[sub].numpy()) + shift)


def resize(config, width_in, width_out, node=None, inner=None) -> dict:
    """New key and value widths (`inner`, when given) and output width; the output
    width is written out, since a `None` would follow the query's."""
    config = {**config, "output_shape": int(width_out)}
    if inner is not None:
        config.update(key_dim=int(inner[0]), value_dim=int(inner[1]))
    return config
