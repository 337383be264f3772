"""Benchmark: how much of the keras.applications zoo and of typical user models morphcli covers.

For every model: does `morph report` price it (graph + costs), how close does
`expand` land on half its FLOPs, what share of its internal channels is frozen
(groups frozen for another reason than being the model's input or output), and
how far the rebuilt model is from the masked seed (the dead channels' kernels
and gammas zeroed, as training leaves them: `surgery.check`) on one random
input, with random masks that kill about half of every prunable group.
BatchNorm statistics and betas are randomised first, so dead channels carry
constants that surgery must fold into the layers reading them.

Models: all 40 `keras.applications` (random weights, no download) and five
models users bring (a Sequential `.keras` file, a U-Net with Conv2DTranspose and
UpSampling2D, a 1-D FCN, a small attention model, a SeparableConv2D residual
net). Applications are built at a reduced input (the first of 96, 128, 224,
299, 331 they accept): channel structure, groups and surgery do not depend on
the spatial size, and it keeps the run short.

Goal (issue 10): expand error < 0.1%, frozen < 10%, surgery max |delta| < 1e-5
except where `surgery.check` (what `morph shrink` reports) calls groups
approximate: read by a LayerNormalization, or carrying a constant into a
zero-padded conv. The conclusions printed last are computed from this run.

Usage: .venv/bin/python benchmarks/coverage.py [--quick] [--only NAME,NAME]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from morphcli.core.costs import CostModel  # noqa: E402
from morphcli.core.graph import build_graph  # noqa: E402
from morphcli.core.solver import solve_multiplier  # noqa: E402
from morphcli.core.surgery import apply_structure, check  # noqa: E402
from morphcli.errors import MorphError  # noqa: E402
from morphcli.models.zoo import application_names  # noqa: E402
from morphcli.reporting import build_report  # noqa: E402

QUICK = ("ResNet50", "MobileNetV2", "MobileNetV3Small", "InceptionV3", "InceptionResNetV2",
         "DenseNet121", "EfficientNetB0", "ConvNeXtTiny", "NASNetMobile", "Xception")
SIZES = (96, 128, 224, 299, 331)
GOAL = {"expand": 1e-3, "frozen": 0.10, "surgery": 1e-5}


# --- models users bring ------------------------------------------------------------------


def sequential_file() -> keras.Model:
    """The gallery's MNIST convnet, saved to .keras and loaded back."""
    model = keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(), layers.Flatten(),
        layers.Dropout(0.5), layers.Dense(10, activation="softmax")])
    path = os.path.join(tempfile.mkdtemp(), "mnist_convnet.keras")
    model.save(path)
    return keras.models.load_model(path)


def unet() -> keras.Model:
    """A small U-Net: conv blocks, max pooling down, Conv2DTranspose and UpSampling2D
    up, skip concatenations, per-pixel softmax over 3 classes."""
    def block(x, width):
        for _ in range(2):
            x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(width, 3, padding="same")(x)))
        return x

    inputs = keras.Input((64, 64, 3))
    d1 = block(inputs, 16)
    d2 = block(layers.MaxPooling2D()(d1), 32)
    bottom = block(layers.MaxPooling2D()(d2), 64)
    u2 = layers.Conv2DTranspose(32, 2, strides=2, padding="same")(bottom)
    u2 = block(layers.Concatenate()([u2, d2]), 32)
    u1 = layers.Conv2D(16, 1)(layers.UpSampling2D()(u2))
    u1 = block(layers.Concatenate()([u1, d1]), 16)
    return keras.Model(inputs, layers.Conv2D(3, 1, activation="softmax")(u1), name="unet")


def fcn_1d() -> keras.Model:
    """The gallery's time-series FCN: three Conv1D-BN-ReLU blocks, global pooling."""
    x = inputs = keras.Input((500, 1))
    for width in (64, 64, 64):
        x = layers.ReLU()(layers.BatchNormalization()(layers.Conv1D(width, 3, padding="same")(x)))
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x), name="fcn_1d")


def attention() -> keras.Model:
    """The gallery's time-series transformer, one block: MultiHeadAttention,
    LayerNormalization and a Conv1D feed-forward."""
    x = inputs = keras.Input((128, 8))
    y = layers.LayerNormalization(epsilon=1e-6)(x)
    y = layers.MultiHeadAttention(key_dim=32, num_heads=4, dropout=0.1)(y, y)
    x = layers.Add()([x, layers.Dropout(0.1)(y)])
    y = layers.LayerNormalization(epsilon=1e-6)(x)
    y = layers.Conv1D(32, 1, activation="relu")(y)
    x = layers.Add()([x, layers.Conv1D(8, 1)(y)])
    x = layers.Dense(64, activation="relu")(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x), name="attention")


def separable_residual() -> keras.Model:
    """Xception-style: SeparableConv2D blocks with strided 1x1 projection shortcuts."""
    inputs = keras.Input((64, 64, 3))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(32, 3, strides=2, padding="same")(inputs)))
    for width in (64, 128):
        y = layers.BatchNormalization()(layers.SeparableConv2D(width, 3, padding="same")(x))
        y = layers.BatchNormalization()(layers.SeparableConv2D(width, 3, padding="same")(
            layers.ReLU()(y)))
        y = layers.MaxPooling2D(3, strides=2, padding="same")(y)
        shortcut = layers.BatchNormalization()(layers.Conv2D(width, 1, strides=2)(x))
        x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, activation="softmax")(x), name="separable_residual")


USER_MODELS = {"sequential_file": sequential_file, "unet": unet, "fcn_1d": fcn_1d,
               "attention": attention, "separable_residual": separable_residual}


def application(name: str) -> tuple[keras.Model, int]:
    for size in SIZES:
        try:
            return getattr(keras.applications, name)(weights=None,
                                                     input_shape=(size, size, 3)), size
        except ValueError:
            continue
    raise ValueError(f"{name} accepts none of the sizes {SIZES}")


# --- measurements ------------------------------------------------------------------------


def randomize_statistics(model, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics and betas, so dead channels carry constants."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():  # noqa: SLF001 (nested models' layers too)
        if isinstance(layer, layers.BatchNormalization):
            for weight in layer.weights:
                shape, name = weight.shape, weight.name
                value = (rng.uniform(0.5, 1.5, shape) if "variance" in name or "gamma" in name
                         else rng.normal(0, 0.1, shape))
                weight.assign(value.astype("float32"))


def random_alive(graph, seed: int = 0) -> dict[int, np.ndarray]:
    """About half of every prunable group dies (whole blocks), at least one lives."""
    rng = np.random.default_rng(seed)
    alive = {}
    for group in graph.prunable_groups():
        blocks = group.width // group.block
        keep = rng.random(blocks) < 0.5
        keep[rng.integers(blocks)] = True
        alive[group.id] = np.repeat(keep, group.block)
    return alive


def frozen_share(graph) -> float:
    internal = [g for g in graph.groups.values()
                if not {"model input", "model output"} & set(g.frozen)]
    total = sum(g.width for g in internal)
    return sum(g.width for g in internal if g.frozen) / total if total else 0.0


def surgery_delta(model, graph) -> tuple[float, bool]:
    """max |delta| against the masked seed (dead producers zeroed), and whether
    the check calls any group approximate."""
    alive = random_alive(graph)
    if not alive:
        return 0.0, False
    result = check(model, alive, apply_structure(model, alive, graph), graph, batch=1)
    return result["max_abs_delta"], bool(result["approximate"])


def measure(name: str, build) -> dict:
    start = time.perf_counter()
    row = {"model": name}
    try:
        model, size = build()
        row["input"] = "x".join(str(d) for d in model.inputs[0].shape[1:]) if size is None else (
            f"{size}x{size}x3")
        randomize_statistics(model)
        graph = build_graph(model)
        costs = CostModel(graph)
        build_report(graph, costs)
        row["report"] = "ok"
        row["prunable"] = len(graph.prunable_groups())
        row["frozen"] = frozen_share(graph)
        try:
            row["expand"] = solve_multiplier(costs, "flops", 0.5 * costs.total("flops")).error
        except MorphError as err:  # e.g. frozen layers alone cost more than half
            row["expand_error"] = str(err).split(". Received")[0][:110]
        row["surgery"], row["approximate"] = surgery_delta(model, graph)
    except Exception as err:  # a benchmark row, not a crash: the table says what broke
        row["report"] = row.get("report", f"error: {type(err).__name__}: {str(err)[:80]}")
        row["error"] = f"{type(err).__name__}: {str(err)[:120]}"
    row["seconds"] = time.perf_counter() - start
    keras.backend.clear_session()
    return row


def verdict(row: dict) -> bool:
    if row.get("report") != "ok" or "error" in row:
        return False
    exact = row["approximate"] or row["surgery"] < GOAL["surgery"]
    return abs(row.get("expand", 1.0)) < GOAL["expand"] and row["frozen"] < GOAL["frozen"] and exact


def line(row: dict) -> str:
    expand = f"{100 * row['expand']:+.4f}%" if "expand" in row else (
        "impossible" if "expand_error" in row else "—")
    frozen = f"{100 * row['frozen']:.1f}%" if "frozen" in row else "—"
    surgery = f"{row['surgery']:.1e}" if "surgery" in row else "—"
    if row.get("approximate"):
        surgery += " (approximate, said)"
    report = row["report"] if row["report"] == "ok" else "error"
    mark = "yes" if verdict(row) else "no"
    text = (f"| {row['model']} | {row.get('input', '—')} | {report} | {expand} | {frozen} | "
            f"{surgery} | {mark} | {row['seconds']:.0f} s |")
    for key in ("error", "expand_error"):
        text += f"\n|  ↳ {row[key]} | | | | | | | |" if key in row else ""
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--only", default=None, help="comma-separated model names")
    args = parser.parse_args()
    apps = list(QUICK) if args.quick else application_names()
    builds = {name: (lambda n=name: application(n)) for name in apps}
    builds.update({name: (lambda f=f: (f(), None)) for name, f in USER_MODELS.items()})
    if args.only:
        builds = {k: v for k, v in builds.items() if k in args.only.split(",")}
    print("| model | input | report | expand error (flops=0.5) | frozen | surgery max abs delta "
          "| goal met | time |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: |")
    rows = []
    start = time.perf_counter()
    for name, build in builds.items():
        rows.append(measure(name, build))
        print(line(rows[-1]), flush=True)
    zoo = [r for r in rows if r["model"] not in USER_MODELS]
    users = [r for r in rows if r["model"] in USER_MODELS]
    print()
    for label, part in (("keras.applications", zoo), ("user models", users)):
        if not part:
            continue
        ok = sum(r.get("report") == "ok" for r in part)
        print(f"{label}: report ok {ok}/{len(part)}, goal met {sum(map(verdict, part))}/{len(part)}"
              f" (expand < 0.1%: {sum(abs(r.get('expand', 1)) < GOAL['expand'] for r in part)}, "
              f"frozen < 10%: {sum(r.get('frozen', 1) < GOAL['frozen'] for r in part)}, "
              f"surgery < 1e-5: {sum(r.get('surgery', 1) < GOAL['surgery'] for r in part)})")
    print(f"total time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
