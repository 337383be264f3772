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

from morphcli.errors import ModelError


def load_model(spec: str, *, input_shape: str | Sequence[int] | None = None,
               classes: int | None = None, trust_code: bool = False):
    """Loads a seed model (file, `zoo:NAME`, `applications:NAME`) with static shapes.

    A model whose input has dynamic dimensions is re-created on a static input
    of `input_shape`, keeping its weights.

    Raises:
        MorphError: Missing or corrupt file, unknown name, bad shape, subclassed
            model, unsafe code without `trust_code`.
    """
    from morphcli.models import zoo

    shape = zoo.parse_input_shape(input_shape)
    model = zoo.load_model(spec, input_shape=shape, classes=classes, trust_code=trust_code)
    dims = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in dims):
        if shape is None:
            raise ModelError(
                f"Model `{model.name}` has a dynamic input shape {dims}: FLOPs and latency "
                f"need a static one. Received: input_shape={dims}",
                hint="pass --input-shape H,W,C (or model.input_shape in the config).",
            )
        model = with_input_shape(model, shape)
    return model


def with_input_shape(model, shape: Sequence[int]):
    """The same model (same weights) re-created on a static input of `shape`."""
    import keras

    if len(model.inputs) != 1:
        raise ModelError("--input-shape works for single-input models only. "
                         f"Received: inputs={len(model.inputs)}")
    try:
        clone = keras.models.clone_model(model, input_tensors=keras.Input(shape=tuple(shape)))
    except ValueError as err:
        raise ModelError(f"Model `{model.name}` does not accept input shape {tuple(shape)}: "
                         f"{' '.join(str(err).split())}") from None
    clone.set_weights(model.get_weights())
    return clone


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
