"""Fixed channel masks (`training.masks`), the search's one traced network: a masked
copy must compute what the cut rebuilt by surgery without folded constants computes
(the oracle), at inference and after the same training steps."""

import keras
import numpy as np
import pytest

from morphcli.core import surgery
from morphcli.core.graph import build_graph
from morphcli.models import zoo
from morphcli.training import engine
from morphcli.training.masks import ChannelMask, Masked


def _random_masks(graph, rng, keep=0.5):
    masks = {}
    for group in graph.prunable_groups():
        blocks = group.width // group.block
        alive = np.zeros(blocks, bool)
        alive[rng.choice(blocks, max(1, round(keep * blocks)), replace=False)] = True
        masks[group.id] = np.repeat(alive, group.block)
    return masks


def _with_trained_statistics(model, rng):
    """Moving statistics and scales away from their defaults, so that a wrong slice shows."""
    for layer in engine.batch_norms(model):
        for variable in (layer.moving_mean, layer.gamma, layer.beta):
            variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape)
                                     .astype("float32"))


@pytest.mark.parametrize("spec,shape", [("zoo:cnn", None), ("zoo:mobilenet_v2", (16, 16, 3)),
                                        ("zoo:resnet20", (16, 16, 3))])
def test_a_masked_copy_predicts_what_the_rebuilt_cut_predicts(spec, shape):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = zoo.load_model(spec, input_shape=shape)
    _with_trained_statistics(model, rng)
    graph = build_graph(model)
    masks = _random_masks(graph, rng)
    masked = Masked(model, graph)
    assert masked.covered == {g.id for g in graph.prunable_groups()}
    masked.set(masks)
    cut = surgery.rebuild(model, masks, graph, fold_constants=False)[0]
    x = rng.normal(size=(4, *model.input_shape[1:])).astype("float32")
    ours = masked.model(x, training=False).numpy()
    np.testing.assert_allclose(ours, cut(x, training=False).numpy(), atol=1e-5)
    assert masked.agrees(cut, x)
    assert len(cut.weights) < len(model.weights) + len(masked.slots)
    # the seed is untouched: all its channels still count
    full = model(x, training=False).numpy()
    assert np.abs(full - ours).max() > 1e-3
    # a wrong mask is caught by the same check
    masked.set({g: ~m for g, m in masks.items()})
    assert not masked.agrees(cut, x)


def test_training_the_masked_copy_trains_the_cut():
    """Three SGD steps on the same batches: the live weights move as the cut's do,
    so both predict the same afterwards (the masked channels get no gradient)."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    model = zoo.load_model("zoo:cnn")
    graph = build_graph(model)
    masks = _random_masks(graph, rng, keep=0.4)
    masked = Masked(model, graph)
    masked.set(masks)
    cut = surgery.rebuild(model, masks, graph, fold_constants=False)[0]
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 16)
    for net in (masked.model, cut):
        net.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        net.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    np.testing.assert_allclose(masked.model(x, training=False).numpy(),
                               cut(x, training=False).numpy(), atol=1e-4)
    masks_layers = [layer for layer in masked.model.layers if isinstance(layer, ChannelMask)]
    assert masks_layers and all(not layer.trainable_weights for layer in masks_layers)
