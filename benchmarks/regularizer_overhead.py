"""Train-step time with the MorphNet regularizer / without it, same model, one run.

Goal (issue 3): ratio <= 1.05. Times `steps` training steps of a ResNet-20 on
random 32x32x3 batches, after a warm-up, alternating the two settings to
share machine noise, and prints the median ratio.

    .venv/bin/python benchmarks/regularizer_overhead.py [--steps 30] [--batch 64]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_step(model, penalty):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
            if penalty is not None:
                loss = loss + 1e-9 * penalty()
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", default="zoo:resnet20")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from morphcli.api import load_model
    from morphcli.core.costs import CostModel
    from morphcli.core.graph import build_graph
    from morphcli.training.regularizers import make_regularizer

    results = {}
    for resource in ("flops", "latency"):
        model = load_model(args.model, input_shape=(32, 32, 3), classes=10)
        graph = build_graph(model)
        reg = make_regularizer(graph, CostModel(graph, "T4"), "gamma", resource)
        x = tf.constant(np.random.default_rng(0).random((args.batch, 32, 32, 3), "float32"))
        y = tf.constant(np.random.default_rng(1).integers(0, 10, args.batch))
        plain, regularized = build_step(model, None), build_step(model, reg.term)
        for fn in (plain, regularized):  # trace and warm up
            for _ in range(3):
                fn(x, y)
        ratios = []
        for _ in range(5):
            times = []
            for fn in (plain, regularized):
                t = time.perf_counter()
                for _ in range(args.steps):
                    fn(x, y)
                float(fn(x, y))
                times.append(time.perf_counter() - t)
            ratios.append(times[1] / times[0])
        results[resource] = (statistics.median(ratios), min(ratios), max(ratios))
    print(f"{args.model}, batch {args.batch}, {args.steps} steps x 5 repeats, 2-core CPU")
    for resource, (med, lo, hi) in results.items():
        print(f"train-step time with {resource} regularizer / without: median {med:.3f} "
              f"(min {lo:.3f}, max {hi:.3f})")


if __name__ == "__main__":
    main()
