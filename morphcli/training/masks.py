"""Fixed channel masks: many cuts of one trained network, traced once.

The search scores a dozen structures cut from the shrink's trained network.
Rebuilding each cut makes a new network whose training step TensorFlow traces
again: on MobileNetV2 at 32x32 that took about 50 s a candidate here, against
7 s for its fine-tune epoch. `Masked` keeps one copy of the trained network at
full width with a `ChannelMask` after the layer that absorbs each prunable
source's channels (the places `gates.insert` puts its gates); a cut is a change
of mask values, so one traced training step, one traced forward pass and one
optimizer serve every candidate.

A masked channel is 0 after its mask, and the layers between a mask and the
next kernels map 0 to 0 (the gates' rule), so the live channels compute what
the cut network computes, in training and in inference; `Masked.agrees`
checks that on a batch against the real cut before the masks are trusted.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
from keras import ops

from morphcli.core.graph import ChannelGraph
from morphcli.training import gates


@keras.saving.register_keras_serializable(package="morphcli")
class ChannelMask(keras.layers.Layer):
    """Multiplies each channel (last axis) by a fixed 0/1 value (not trained)."""

    def build(self, input_shape):
        self.mask = self.add_weight(name="mask", shape=(input_shape[-1],),
                                    initializer="ones", trainable=False)

    def call(self, inputs):
        return inputs * ops.cast(self.mask, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


class Masked:
    """A masked copy of `model` (weights copied; `model` is left untouched).

    Attributes:
        model: The copy with its `ChannelMask` layers.
        covered: The prunable group ids that some mask multiplies.
    """

    def __init__(self, model, graph: ChannelGraph):
        self.graph = graph
        self.model, inserted = gates.insert_after_sources(
            model, graph, lambda anchor, i, name: ChannelMask(name=name), "mask")
        self.slots = [(layer, graph.node(anchor).outputs[0])
                      for anchor, layer in inserted.items()]
        self.covered = {g for _, space in self.slots for g in space.groups
                        if graph.groups[g].prunable}

    def set(self, alive: Mapping[int, np.ndarray]) -> None:
        """Opens the channels `alive[g]` of each group (groups not given: all)."""
        for layer, space in self.slots:
            parts = [np.asarray(alive[g], "float32") if g in alive
                     else np.ones(self.graph.groups[g].width, "float32")
                     for g in space.groups]
            layer.mask.assign(np.tile(np.concatenate(parts), space.repeat))

    def agrees(self, cut, x, tolerance: float = 1e-4) -> bool:
        """Whether the masked copy (masks as set) predicts what `cut`, the same
        structure rebuilt by surgery from the same weights, predicts on `x`."""
        ours = ops.convert_to_numpy(self.model(x, training=False))
        theirs = ops.convert_to_numpy(cut(x, training=False))
        scale = max(1.0, float(np.abs(theirs).max()))
        return ours.shape == theirs.shape and float(np.abs(ours - theirs).max()) <= tolerance * scale
