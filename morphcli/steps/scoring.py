"""How the search scores a candidate structure: cut from the shrink's trained
network, fine-tuned briefly, its batch norms re-estimated, measured on the
selection split (`Scorer`); or trained from fresh weights for the retrain's
first epochs (scoring ``scratch``).

Every candidate is a cut of one masked network: the trained network cut to the
*envelope* (`envelope`), as wide as any candidate of the first round can be in
each group. A candidate keeps the same channels within it as within the trained
network (`top_masks`: each group's strongest), so it scores what its full-width
cut scores; on MobileNetV2 at 5% of its FLOPs the envelope costs 15% of the full
network's FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from morphcli.config.schema import SearchConfig
from morphcli.errors import MorphError
from morphcli.steps.context import Priced, RunContext

RECALIBRATION_BATCHES = 10  # batches of precise batch norm per candidate


@dataclass
class Candidate:
    """One structure at the budget and its score."""

    name: str
    widths: dict[int, int]
    cost: float
    select_accuracy: float | None = None
    select_loss: float | None = None
    # The most frequent label's share of the selection split.
    select_chance: float | None = None
    # Per selection example, whether the candidate got it right (data order).
    correct: np.ndarray | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple:
        """Sort key, best first: more accuracy, then less loss."""
        if self.select_accuracy is None:
            return (math.inf, math.inf)
        return (-round(self.select_accuracy, 6), self.select_loss)


def top_masks(values: Mapping[int, np.ndarray], widths: Mapping[int, int],
              blocks: Mapping[int, int]) -> dict[int, np.ndarray]:
    """Boolean masks keeping `widths[g]` channels of each group: its strongest
    blocks by their largest value (ties: the lower index)."""
    masks = {}
    for gid, width in widths.items():
        value = np.asarray(values[gid])
        block = blocks.get(gid, 1)
        if width > value.size:
            raise MorphError(f"A candidate is wider than the trained network in group {gid}. "
                             f"Received: width={width}, trained={value.size}")
        strength = np.abs(value).reshape(-1, block).max(axis=1)
        keep = np.zeros(strength.size, bool)
        keep[np.argsort(-strength, kind="stable")[:width // block]] = True
        masks[gid] = np.repeat(keep, block)
    return masks


def envelope(solved: list[Mapping[int, int]], full: Mapping[int, int], grow: float,
             round_to: int = 1) -> dict[int, int]:
    """Per group, the widest a first-round candidate of the search can be, from the
    bases' widths at the budget alone (`solved`): a move scales one tier by `grow`
    or `1 / grow` and the budget is solved again, so no group ends wider than
    `grow` times its base's width (the multiplier cannot grow by more than `grow`),
    give or take the solver's rounding (`round_to` more). `grow` 1: the bases
    only. Solving every move around every base instead took 21 solves, about 50 s
    on MobileNetV2 priced by a latency profile. A candidate wider than this after
    all widens the masked network (one more trace)."""
    slack = round_to if grow > 1 else 0
    return {g: min(int(full[g]), max(math.ceil(grow * w[g]) + slack for w in solved))
            for g in full}


class Scorer:
    """Cuts, fine-tunes, recalibrates and scores candidates on the selection split.

    A cut removes its dead channels outright (no constant folded into the
    readers: `surgery.rebuild(fold_constants=False)`), which is what a zero mask
    computes. One masked copy of the trained network serves every candidate
    (`training.masks`: traced once), when its masks reach every prunable group
    and its first cut predicts what the same cut rebuilt by surgery predicts;
    otherwise every candidate is rebuilt (and traced) on its own. Each candidate
    starts from the same trained weights, a fresh optimizer and the same batches.
    """

    def __init__(self, ctx: RunContext, trained: Priced, values, *, finetune_epochs: float,
                 learning_rate: float, progress: Callable[[str], None] | None = None,
                 scoring: str = SearchConfig.scoring,
                 scratch_epochs: float = SearchConfig.scratch_epochs,
                 envelope: Mapping[int, int] | None = None):
        self.ctx, self.trained, self.values = ctx, trained, values
        self.blocks = {g: trained.graph.groups[g].block for g in values or {}}
        # The widths the masked network holds: every candidate is a cut of it.
        self.full = {g: int(trained.graph.groups[g].width) for g in values or {}}
        self.envelope = self._whole(envelope or self.full)
        self.inner_values = values
        self.finetune_epochs, self.learning_rate = finetune_epochs, learning_rate
        self.scoring = scoring
        self.progress = progress or (lambda name: None)
        self.masked = None
        self.checked = False
        epochs = scratch_epochs if scoring == "scratch" else finetune_epochs
        self.steps = max(1, round(epochs * ctx.dataset.steps_per_epoch))
        # The same batches for every candidate, in the same order: the scores are
        # paired. They are the first epochs' batches (epoch-keyed: what the retrain
        # trains on first), whatever the process read before.
        import tensorflow as tf

        epochs_drawn = math.ceil(self.steps / max(1, ctx.dataset.steps_per_epoch))
        self.finetune_data = ctx.dataset.epochs(0, epochs_drawn).take(self.steps).apply(
            tf.data.experimental.assert_cardinality(self.steps)).cache()
        self.recalibration_data = ctx.dataset.epochs(0, 1).take(RECALIBRATION_BATCHES).cache()

    def __call__(self, candidate: Candidate) -> Candidate:
        from morphcli.core import surgery

        self.progress(candidate.name)
        hits: list = []
        if self.scoring == "scratch":
            scores = self._scratch_score(candidate.widths, hits)
        else:
            widths = candidate.widths
            masks = top_masks(self.values, widths, self.blocks)
            if self.masked is not None and any(widths[g] > self.envelope[g] for g in widths):
                # Wider than the masked network somewhere (a later round's move):
                # a wider one, traced again.
                self.envelope = self._whole({g: max(w, widths.get(g, 0))
                                             for g, w in self.envelope.items()})
                self.masked, self.checked = None, False
            cut = None
            if not self.checked:
                self.checked = True
                with self.ctx.strategy.scope():
                    cut = surgery.rebuild(self.trained.model, masks, self.trained.graph,
                                          fold_constants=False)[0]
                self._try_masks(widths, cut)
            if self.masked is not None:
                scores = self._masked_score(top_masks(self.inner_values, widths, self.blocks),
                                            hits)
            else:
                scores = self._rebuilt_score(masks, cut, hits)
        candidate.select_accuracy = scores["accuracy"]
        candidate.select_loss = scores["loss"]
        candidate.select_chance = scores.get("chance")
        candidate.correct = np.concatenate(hits) if hits else None
        return candidate

    def _whole(self, widths: Mapping[int, int]) -> dict[int, int]:
        """`widths` in whole blocks (rounded up), at most the trained widths."""
        return {g: min(full, -(-int(widths.get(g, full)) // self.blocks[g]) * self.blocks[g])
                for g, full in self.full.items()}

    def _try_masks(self, widths: Mapping[int, int], cut) -> None:
        """Builds the masked network: the trained one cut to `self.envelope` (each
        group's strongest channels, in their order, so a candidate's strongest
        channels within it are its strongest in the trained network), with masks.
        Leaves `self.masked` None when the masks cannot stand for the cuts."""
        import tensorflow as tf

        from morphcli.core import surgery
        from morphcli.training import engine
        from morphcli.training.masks import Masked

        outer = top_masks(self.values, self.envelope, self.blocks)
        engine.set_seed(self.ctx.conf.seed)
        with self.ctx.strategy.scope():
            if self.envelope == self.full:
                base, graph = self.trained.model, self.trained.graph
            else:
                base, graph = surgery.rebuild(self.trained.model, outer, self.trained.graph,
                                              fold_constants=False)
            if any(graph.groups[g].width != self.envelope[g] for g in self.values):
                return  # the cut's groups are not the trained network's
            inner = {g: np.asarray(self.values[g])[outer[g]] for g in self.values}
            masked = Masked(base, graph)
            if not set(self.values) <= masked.covered:
                return
            masked.set(top_masks(inner, widths, self.blocks))
            x = next(iter(self.ctx.dataset.select))[0]
            if not masked.agrees(cut, x):
                return
            model = masked.model
            self._compile(model)
            model.optimizer.build(model.trainable_variables)
        self.masked, self.inner_values = masked, inner
        self.start = [v.numpy() for v in model.variables]
        self.optimizer_start = [v.numpy() for v in model.optimizer.variables]
        self.recalibrator = engine.Recalibrator(model)
        self.forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def _masked_score(self, masks, hits: list | None = None) -> dict:
        from morphcli.training import engine

        model = self.masked.model
        for variable, value in zip(model.variables, self.start, strict=True):
            variable.assign(value)
        for variable, value in zip(model.optimizer.variables, self.optimizer_start, strict=True):
            variable.assign(value)
        # No reseeding here: the variables just restored include the layers' random
        # seed states, and seeding TensorFlow clears its kernel cache, which cost
        # 3.4 s a candidate on MobileNetV2 at 32x32 (its 28 fine-tune steps took 3.8 s
        # instead of 1.1 s). The masked network was built after one seeding.
        self.masked.set(masks)
        if self.finetune_epochs > 0:
            model.fit(self.finetune_data, epochs=1, verbose=0, shuffle=False)
        with self.ctx.strategy.scope():
            self.recalibrator(self.recalibration_data, RECALIBRATION_BATCHES)
        return engine.evaluate(model, self.ctx.dataset.select, self.forward, hits)

    def _scratch_score(self, widths: Mapping[int, int], hits: list | None = None) -> dict:
        """The candidate from fresh weights (as the retrain starts it), trained on the
        first `scratch_epochs` of the retrain's own schedule, then scored."""
        from morphcli.core.surgery import resize
        from morphcli.training import engine

        ctx = self.ctx
        spec = engine.TrainSpec.of(ctx.conf.retrain)
        engine.set_seed(ctx.conf.seed)
        with ctx.strategy.scope():
            model = resize(ctx.seed.model, widths, ctx.seed.graph)
            model.compile(optimizer=engine.make_optimizer(spec, ctx.dataset.steps_per_epoch),
                          loss="sparse_categorical_crossentropy")
            model.fit(self.finetune_data, epochs=1, verbose=0, shuffle=False)
            engine.recalibrate_batch_norm(model, self.recalibration_data, RECALIBRATION_BATCHES)
        return engine.evaluate(model, ctx.dataset.select, correct=hits)

    def _compile(self, model) -> None:
        """The fine-tune's optimizer (a fresh Adam) and loss."""
        import keras

        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                      loss="sparse_categorical_crossentropy")

    def _rebuilt_score(self, masks, cut=None, hits: list | None = None) -> dict:
        from morphcli.core import surgery
        from morphcli.training import engine

        dataset = self.ctx.dataset
        engine.set_seed(self.ctx.conf.seed)
        with self.ctx.strategy.scope():
            model = cut or surgery.rebuild(self.trained.model, masks, self.trained.graph,
                                           fold_constants=False)[0]
            if self.finetune_epochs > 0:
                self._compile(model)
                model.fit(self.finetune_data, epochs=1, verbose=0, shuffle=False)
            engine.recalibrate_batch_norm(model, self.recalibration_data, RECALIBRATION_BATCHES)
        return engine.evaluate(model, dataset.select, correct=hits)
