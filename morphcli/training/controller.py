"""The target-aware shrink: a controller that steers lambda towards the budget.

With a fixed regularization strength the shrink lands wherever that strength
takes it (about 38% of the seed's FLOPs on the demo, whatever the budget), and
the width multiplier then has to make up the rest: the structure a user gets
at 10% was learned for 38%. `strength: auto` instead moves lambda during
training so that the cost of the alive structure follows a *goal*:

- the goal falls geometrically from the seed's cost to
  `target · target_fraction` over the first half of the shrink, then holds;
- every 1/8 epoch an integral lambda is multiplied by
  `exp(clip(log(alive / goal), -1, 1) · interval / steps_per_epoch)`: at most
  a factor e per epoch, up when the structure is still too expensive, down
  when it went below the goal; the lambda applied is that one times
  `(alive / goal) ** GAIN`, which eases off at once when the alive cost dips
  below the goal (channels on their way to zero keep falling for a while, so
  an integral term alone overshoots);
- one plain-SGD step of the penalty alone may move a per-channel value by at
  most `STEP_CAP` (0.15) times the alive threshold: above that, dead values
  jump across the threshold and back, and the alive cost never settles. This is
  enforced per channel: the regularizer clips each channel's weight at
  `STEP_CAP · threshold / (learning_rate · lambda)` (`Regularizer.limit_step`),
  so the channels above the clip are all pushed at that largest stable rate
  and the cheaper ones in proportion to their cost;
- both lambdas stay within `[1e-3, 1e4] · lambda0`, and below the lambda at
  which even the cheapest channel is clipped (beyond it lambda changes nothing).

The clip replaced a cap on lambda itself set by the single most expensive
channel. On keras.applications' MobileNetV2 at 32x32 the channel weights
spread ~100x (a channel at 16x16 against one at 1x1), so that cap held lambda
where the median channel fell by ~0.1 per epoch: lambda sat at the cap from
the third epoch on, and after 15 epochs 56% of the FLOPs were alive for a 25%
target. `STEP_CAP` was 0.5 for plain SGD; the shrink's Nesterov momentum 0.9
multiplies a steady push by up to 10. Measured on that MobileNetV2 at a 10%
target (15 epochs): 0.5 landed on 9.9% but the ride swung between 6% and 32%
alive and the shrunk network scored 37% before retraining; 0.05 (plain SGD's
half threshold divided by 10) kept every channel at the clip and still ended at
14.8%; 0.15 landed on 10.0% and scored 86.5% (at 25%: 25.0%, 91.6%).

Both lambdas are variables of the trainee, so they are checkpointed with the
weights and a resumed shrink continues with the lambdas it had; every decision depends
only on the step number and the model's state, so resuming changes nothing.
"""

from __future__ import annotations

import math

import numpy as np

UPDATES_PER_EPOCH = 8
MAX_LOG_STEP = 1.0  # |log(alive / goal)| counted per update, at most
LAMBDA_RANGE = (1e-3, 1e4)  # times the initial lambda
STEP_CAP = 0.15  # lr · lambda · channel weight is clipped at STEP_CAP · threshold
DESCENT = 0.5  # fraction of the shrink over which the goal falls to the target
GAIN = 3.0  # the applied lambda is the integral one times (alive / goal) ** GAIN


def goal(progress: float, seed_cost: float, final_cost: float) -> float:
    """The alive cost aimed at after `progress` (0..1) of the shrink's steps."""
    t = min(1.0, max(0.0, progress) / DESCENT)
    if seed_cost <= 0 or final_cost <= 0:
        return final_cost
    return seed_cost * (final_cost / seed_cost) ** t


def step(lam: float, alive: float, aim: float, fraction: float) -> float:
    """Lambda after one update that covered `fraction` of an epoch."""
    if aim <= 0 or alive <= 0:
        return lam
    error = max(-MAX_LOG_STEP, min(MAX_LOG_STEP, math.log(alive / aim)))
    return lam * math.exp(error * fraction)


def bounds(lam0: float, learning_rate: float, min_weight: float,
           threshold: float) -> tuple[float, float]:
    """(lowest, highest) lambda the controller may set: the highest is the one at
    which the cheapest channel (weight `min_weight`) reaches the step clip."""
    low, high = lam0 * LAMBDA_RANGE[0], lam0 * LAMBDA_RANGE[1]
    if learning_rate > 0 and min_weight > 0:
        high = min(high, STEP_CAP * threshold / (learning_rate * min_weight))
    return low, max(low, high)


def cheapest(weights: np.ndarray) -> float:
    """The smallest positive channel weight (0 when none is)."""
    positive = weights[weights > 0]
    return float(positive.min()) if positive.size else 0.0


def callback(reg, *, seed_cost: float, final_cost: float, lam0: float, learning_rate: float):
    """A Keras callback that steers the trainee's `strength` variable (see module doc)
    and logs `lambda` and `target_cost` with every epoch."""
    import keras

    class StrengthController(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch = 0

        def set_model(self, model):
            super().set_model(model)
            if learning_rate > 0:  # before the train step is traced
                reg.limit_step(model.strength, learning_rate, STEP_CAP * reg.threshold)

        def _steps(self) -> int:
            return int(self.params.get("steps") or 1)

        def _progress(self, batch: int) -> float:
            epochs = int(self.params.get("epochs") or 1)
            return (self.epoch * self._steps() + batch) / (epochs * self._steps())

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            steps = self._steps()
            interval = max(1, steps // UPDATES_PER_EPOCH)
            if (batch + 1) % interval and batch + 1 != steps:
                return
            done = (batch + 1) % interval or interval  # batches since the last update
            aim = goal(self._progress(batch + 1), seed_cost, final_cost)
            low, high = bounds(lam0, learning_rate, cheapest(reg.channel_weights()),
                               reg.threshold)
            alive = reg.cost()
            base = float(self.model.strength_base.numpy())
            base = min(high, max(low, step(base, alive, aim, done / steps)))
            self.model.strength_base.assign(base)
            lam = float(self.model.strength.numpy())
            new = min(high, max(low, base * (alive / aim) ** GAIN)) if aim > 0 else base
            if new != lam:
                self.model.strength.assign(new)

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["lambda"] = float(self.model.strength.numpy())
                aim = goal((epoch + 1) / int(self.params.get("epochs") or 1),
                           seed_cost, final_cost)
                logs["target_cost"] = aim
                logs["target_fraction"] = aim / seed_cost if seed_cost else 0.0

    return StrengthController()


def landing_threshold(reg, aim: float) -> float:
    """The alive threshold that lands the shrink on `aim` from below.

    The alive cost keeps falling for a while after lambda eases off, so a
    steered shrink may end under its goal. Then the dead channels with the
    largest values (the last to die) are revived, as many as keep the cost
    within `aim`: the returned threshold is the lowest one, not above the
    regularizer's, at which `reg.cost(threshold) <= aim`. Reviving a channel
    whose value is near zero changes the trained network almost not at all.
    """
    if reg.cost() >= aim:
        return reg.threshold
    dead = np.concatenate([v[v <= reg.threshold] for v in reg.numpy_vectors().values()])
    candidates = np.unique(dead)[::-1]  # descending: reviving more and more
    best, lo, hi = reg.threshold, 0, len(candidates) - 1
    while lo <= hi:  # the cost grows as the threshold falls
        mid = (lo + hi) // 2
        below = float(np.nextafter(candidates[mid], -np.inf))
        if reg.cost(below) <= aim:
            best, lo = below, mid + 1
        else:
            hi = mid - 1
    return best
