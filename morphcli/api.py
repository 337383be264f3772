"""The public Python API: what the CLI calls, and what a notebook user calls too.

Example:

>>> import morphcli
>>> model = morphcli.load_model("zoo:resnet20")
>>> morphcli.cost(model, "flops")
>>> report = morphcli.analyze(model, hardware="T4")
>>> report.totals["latency_s"]
"""

from __future__ import annotations

from collections.abc import Sequence


def load_model(spec: str, *, input_shape: str | Sequence[int] | None = None,
               classes: int | None = None, trust_code: bool = False):
    """A seed model (file, `zoo:NAME`, `applications:NAME`) with static shapes
    (`morphcli.models.zoo.load_static`)."""
    from morphcli.models.zoo import load_static

    return load_static(spec, input_shape=input_shape, classes=classes, trust_code=trust_code)


def with_input_shape(model, shape: Sequence[int]):
    """The same model (same weights) re-created on a static input of `shape`."""
    from morphcli.models import zoo

    return zoo.with_input_shape(model, shape)


def analyze(model, *, hardware: str | None = "cpu", structure: str | None = None,
            widths=None, name: str | None = None):
    """Prices a model per layer and in total (see `morphcli.report.Report`).

    Args:
        model: A functional Keras model with static shapes.
        hardware: Device name for the latency estimate.
        structure: Optional path of a structure.json whose widths to price.
        widths: Optional width per group id (instead of `structure`).
        name: Label for the report (default: the model's name).
    """
    from morphcli.core import structure as struct
    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph
    from morphcli.report import build_report

    graph = build_graph(model)
    costs = CostModel(graph, hardware)
    if structure is not None:
        widths = struct.load(structure).widths_for(graph)
        name = name or f"{model.name} (structure)"
    return build_report(graph, costs, widths, name=name)


def cost(model, resource: str = "flops", hardware: str | None = None) -> float:
    """Total cost of `model` for one resource: flops, macs, params, kernel_params, latency."""
    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph

    return CostModel(build_graph(model), hardware).total(resource)
