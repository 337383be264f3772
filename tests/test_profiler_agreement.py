"""FLOPs agree with TensorFlow's own profiler; MACs with an independent count.

The profiler (tests/tf_profiler.py) is an independent counter: it prices the
TF ops of the traced inference graph, knowing nothing of morphcli's rules.
Small inputs keep the suite fast; the 224x224 check of FACTS.md is marked slow.
"""

import keras
import pytest
from tf_profiler import profiler_flops

from morphcli.core.costs import CostModel
from morphcli.core.graph import build_graph

# Architecture, input side. InceptionV3 needs >= 75, Xception >= 71.
APPLICATIONS = [
    ("ResNet50", 64), ("MobileNetV2", 64), ("DenseNet121", 64), ("InceptionV3", 75),
    ("EfficientNetB0", 64), ("Xception", 71), ("VGG16", 64), ("MobileNetV3Small", 64),
    ("ConvNeXtTiny", 64), ("NASNetMobile", 64), ("InceptionResNetV2", 75),
    ("MobileNetV3Large", 64), ("EfficientNetV2B0", 64), ("ResNet50V2", 64),
]


def build(name, side):
    return getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3))


def independent_macs(model) -> int:
    """Conv/dense multiply-adds from layer shapes alone (no morphcli code)."""
    total = 0
    for layer in _layers(model):
        cls = type(layer).__name__
        if cls not in ("Conv2D", "Dense", "DepthwiseConv2D", "SeparableConv2D"):
            continue
        out = layer.output.shape
        positions = 1
        for d in out[1:-1]:
            positions *= d
        cin = layer.input.shape[-1]
        if cls == "Dense":
            total += positions * cin * out[-1]
            continue
        kh, kw = layer.kernel_size
        if cls == "Conv2D":
            total += positions * kh * kw * cin // layer.groups * out[-1]
        elif cls == "DepthwiseConv2D":
            total += positions * kh * kw * out[-1]
        else:  # separable: depthwise then pointwise
            total += positions * (kh * kw * cin + cin * out[-1])
    return total


def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _layers(layer)
        else:
            yield layer


@pytest.mark.parametrize("name, side", APPLICATIONS)
def test_flops_agree_with_tensorflow_profiler(name, side):
    model = build(name, side)
    ours = CostModel(build_graph(model)).total("flops")
    theirs = profiler_flops(model, freeze=False)
    # The contract is 0.5%; the rule table is in fact exact on every one of these.
    assert ours == pytest.approx(theirs, rel=5e-3)
    assert ours == theirs


@pytest.mark.parametrize("name, side", APPLICATIONS)
def test_macs_and_params_from_layer_shapes(name, side):
    model = build(name, side)
    costs = CostModel(build_graph(model))
    assert costs.total("macs") == independent_macs(model)
    assert costs.total("params") == model.count_params()


def test_resnet50_matches_the_reference_numbers_at_224():
    # FACTS.md: ResNet50 at 224 = 7.755 GFLOPs (profiler), 3.86 G conv/dense MACs.
    model = build("ResNet50", 224)
    costs = CostModel(build_graph(model))
    assert costs.total("flops") == 7_755_299_312
    assert costs.total("macs") == 3_857_973_248
    assert costs.total("params") == 25_636_712


@pytest.mark.slow
@pytest.mark.parametrize("name, flops", [("MobileNetV2", 615e6), ("VGG16", 30.96e9)])
def test_frozen_graph_at_224_matches_facts(name, flops):
    model = build(name, 224)
    ours = CostModel(build_graph(model)).total("flops")
    assert ours == profiler_flops(model)  # the frozen-graph method of FACTS.md
    assert ours == pytest.approx(flops, rel=2e-3)
