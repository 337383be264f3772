"""The config schema: one frozen dataclass per section, mirroring the object it
configures (`model`, `data`, `target`, `regularizer`, `shrink`, `expand`,
`retrain`, `distribute`, `run`). Every field carries its validator and the line
of documentation that `describe_schema()` prints, so the schema, its checks and
its help text live in one place. Choice lists come from the modules that own
them (optimizers from the engine, strategies from distribute, ...)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from morphcli.config import checks as c
from morphcli.config.checks import Check
from morphcli.core.quantities import TARGET_METRICS, Quantity, format_quantity
from morphcli.core.solver import MODES as EXPAND_MODES
from morphcli.models.zoo import MAX_CLASSES
from morphcli.models.zoo import PREFIXES as MODEL_PREFIXES
from morphcli.training.data import SCHEMES as DATA_PREFIXES
from morphcli.training.distribute import COMMUNICATIONS, STRATEGIES
from morphcli.training.engine import OPTIMIZERS, SCHEDULES
from morphcli.training.regularizers import KIND_NAMES, KINDS

_OPTIMIZER = c.choice(*OPTIMIZERS)
# How the search scores a candidate (morphcli.steps.search): cut from the shrink's
# trained network and fine-tuned, or trained from fresh weights.
SEARCH_SCORINGS = ("finetune", "scratch")


def _opt(default: Any, check: Check, doc: str, dump: Callable | None = None) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc, "dump": dump})


def _required(check: Check, doc: str) -> Any:
    return field(metadata={"check": check, "doc": doc})


def _section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"section": cls, "doc": doc})


@dataclass(frozen=True)
class ModelConfig:
    """The seed network."""

    seed: str = _opt("zoo:cnn", c.spec(MODEL_PREFIXES, True, "a .keras path, zoo:NAME or applications:NAME"),
                     "seed network: path.keras | zoo:NAME | applications:NAME")
    input_shape: tuple[int, ...] | None = _opt(
        None, c.optional(c.dims((1, 2, 3), "a shape [H, W, C] of positive integers")),
        "[H, W, C] or 'H,W,C'; needed when the model's input shape is dynamic")
    classes: int | None = _opt(None, c.optional(c.integer(1, MAX_CLASSES)),
                               "output classes, for zoo: and applications: seeds")
    trust_code: bool = _opt(False, c.boolean,
                            "allow Lambda/custom code when loading a .keras file (unsafe)")


@dataclass(frozen=True)
class DataConfig:
    """The dataset, as a tf.data pipeline."""

    source: str = _opt("builtin:digits",
                       c.spec(DATA_PREFIXES, False, "builtin:NAME, npz:PATH, images:DIR or keras:NAME"),
                       "builtin:digits | npz:PATH | images:DIR | keras:NAME")
    batch_size: int = _opt(64, c.integer(1), "global batch size, split over replicas")
    validation_split: float = _opt(0.2, c.real("a number with 0 <= x < 1", lambda x: 0 <= x < 1),
                                   "fraction held out for validation, 0 <= x < 1")
    selection_split: float = _opt(0.1, c.real("a number with 0 <= x < 1", lambda x: 0 <= x < 1),
                                  "fraction of the training data held out to choose on "
                                  "(best model, search); validation only reports")
    image_size: tuple[int, int] | None = _opt(
        None, c.optional(c.dims((2,), "a size [H, W] of positive integers")),
        "[H, W]: resize images to this size")
    augment: bool = _opt(False, c.boolean, "random 1-2 pixel shifts of training images (no flips)")


@dataclass(frozen=True)
class HardwareSpec:
    """A custom device for the roofline latency model."""

    peak_gflops: float = _required(c.POSITIVE, "peak compute, GFLOP/s (> 0)")
    bandwidth_gbs: float = _required(c.POSITIVE, "memory bandwidth, GB/s (> 0)")


@dataclass(frozen=True)
class TargetConfig:
    """The budget the reshaped network must fit."""

    metric: str = _opt("flops", c.METRIC, " | ".join(TARGET_METRICS))
    value: Quantity = _opt(Quantity(0.5, True), c.target_value,
                           "fraction of the seed (0.5, '50%') or absolute: 25M, 1.5G, 1.5ms",
                           dump=lambda q, target: q.value if q.relative
                           else format_quantity(q, target.metric))
    hardware: str = _opt("cpu", c.text(), "device for metric latency, e.g. cpu, T4, V100, A100")
    hardware_spec: HardwareSpec | None = field(default=None, metadata={
        "section": HardwareSpec, "optional": True,
        "doc": "null or {peak_gflops: .., bandwidth_gbs: ..}: custom device"})


@dataclass(frozen=True)
class RegularizerConfig:
    """The resource-weighted sparsifying regularizer used while shrinking."""

    kind: str = _opt("gamma", c.choice(*KIND_NAMES, aliases=KINDS),
        "gamma (batch-norm scales) | group_lasso (weight norms, no BN needed) | gates "
        "(learned channel gates, inserted while shrinking and folded away)")
    strength: float | str = _opt("auto", c.auto(c.POSITIVE),
                                 "auto (lambda steered so the shrink lands on the target) or "
                                 "> 0: fixed lambda, the regularization loss starts at this value")
    target_fraction: float = _opt(1.0, c.real("a number with 0 < x <= 2", lambda x: 0 < x <= 2),
                                  "strength auto: the shrink aims at target x this (0 < x <= 2)")
    cost_exponent: float = _opt(1.0, c.real("a number with 0 <= x <= 2", lambda x: 0 <= x <= 2),
                                "weight each channel's penalty by cost^x (1: MorphNet; "
                                "0: every channel alike)")
    threshold: float | str = _opt("auto", c.auto(c.POSITIVE),
                                  "auto (1e-2; 0.1 for gates) or > 0; a channel is alive above it")
    min_channels: int = _opt(1, c.integer(1), "channels kept alive in every group, at least")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings shared by shrink and retrain."""

    epochs: int = _opt(10, c.integer(1), "passes over the training data")
    learning_rate: float = _opt(0.01, c.POSITIVE, "initial learning rate (> 0)")
    optimizer: str = _opt("adam", _OPTIMIZER, "sgd | momentum | adam | rmsprop")
    steps_per_epoch: int | None = _opt(None, c.optional(c.integer(1)),
                                       "null (whole dataset) or batches per epoch")
    precise_batch_norm: int = _opt(100, c.integer(0),
                                   "after training, re-estimate batch-norm statistics over "
                                   "this many training batches, weights unchanged (0: off)")


@dataclass(frozen=True)
class ShrinkConfig(TrainConfig):
    """Training with the regularizer, constant learning rate.

    Momentum SGD by default: Adam rescales each weight's step by its own
    gradient history, which largely cancels the resource weighting of the
    regularizer (cheap and expensive channels then shrink alike).
    """

    epochs: int = _opt(20, c.integer(1), "passes over the training data")
    learning_rate: float = _opt(0.1, c.POSITIVE, "constant learning rate (> 0)")
    optimizer: str = _opt("momentum", _OPTIMIZER,
                          "momentum (default: keeps the cost weighting) | sgd | adam | rmsprop")
    round_to: int | str = _opt(1, c.auto(c.integer(1)),
                               "round alive channel counts up to a multiple of this; auto: "
                               "the step of a profile:PATH device (1 otherwise)")


@dataclass(frozen=True)
class ExpandConfig:
    """The width multiplier that brings the shrunk network to the target."""

    round_to: int | str = _opt(1, c.auto(c.integer(1)),
                               "round expanded widths to a multiple of this; auto: the step "
                               "of a profile:PATH device (1 otherwise)")
    mode: str = _opt("below", c.choice(*EXPAND_MODES),
                     "below (never above the target) | nearest")
    measure: bool = _opt(False, c.boolean,
                         "latency targets: time each candidate on this machine and correct "
                         "the multiplier until the measured latency lands on the target")


@dataclass(frozen=True)
class SearchConfig:
    """Structures at the exact budget judged by accuracy (morphcli.steps.search)."""

    enabled: bool = _opt(False, c.boolean,
                         "run: choose the structure to retrain among uniform, MorphNet's, "
                         "blends and local moves, by selection-split accuracy")
    rounds: int = _opt(1, c.integer(0), "rounds of local moves around the best candidate")
    finetune_epochs: float = _opt(0.5, c.real("a number with 0 <= x <= 100",
                                              lambda x: 0 <= x <= 100),
                                  "training of each cut candidate before it is scored")
    learning_rate: float = _opt(0.001, c.POSITIVE, "Adam's learning rate for that training")
    scoring: str = _opt("finetune", c.choice(*SEARCH_SCORINGS),
                        "finetune: cut from the shrink's network and fine-tuned | scratch: "
                        "fresh weights, the retrain's first scratch_epochs")
    scratch_epochs: float = _opt(2.0, c.real("a number with 0 < x <= 100",
                                             lambda x: 0 < x <= 100),
                                 "scoring scratch: retrain epochs before a candidate is scored")


@dataclass(frozen=True)
class RetrainConfig(TrainConfig):
    """Training of the final network, without the regularizer."""

    epochs: int = _opt(20, c.integer(1), "passes over the training data")
    schedule: str = _opt("cosine", c.choice(*SCHEDULES),
                         "learning-rate schedule: constant | cosine | step")
    warmup_epochs: int = _opt(0, c.warmup, "linear warm-up epochs, 0 <= x <= epochs")
    keep_weights: bool = _opt(False, c.boolean,
                              "start from the shrunk weights instead of from scratch")


@dataclass(frozen=True)
class DistributeConfig:
    """The tf.distribute strategy for shrink, retrain and run (see morphcli.training.distribute).

    No `parameter_server`: Keras 3's `model.fit` does not train with
    ParameterServerStrategy; `multi_worker` covers several machines.
    """

    strategy: str = _opt("default", c.choice(*STRATEGIES),
        "default | one_device | mirrored | multi_worker | tpu")
    devices: tuple[str, ...] | None = _opt(None, c.optional(c.strings),
                                           "mirrored/one_device: e.g. [/gpu:0, /gpu:1]; null: "
                                           "every GPU; [/cpu:0, /cpu:1] splits the CPU")
    tpu: str | None = _opt(None, c.optional(c.text()),
                           "TPU for strategy tpu: local (TPU VM), a name or grpc://IP:8470")
    scale_learning_rate: bool = _opt(False, c.boolean,
                                     "multiply learning rates by the number of replicas")
    sync_batch_norm: bool = _opt(True, c.boolean,
                                 "batch norm statistics over the global batch, not per replica")
    communication: str = _opt("auto", c.choice(*COMMUNICATIONS),
                              "auto | ring | nccl, for multi_worker")
    cluster: tuple[str, ...] | None = _opt(None, c.optional(c.addresses),
                                           "multi_worker: [host:port, ...], first is the chief; "
                                           "null reads TF_CONFIG")
    task_index: int | None = _opt(None, c.task_index,
                                  "multi_worker with cluster: this worker's position in it")
    timeout_seconds: float = _opt(300.0, c.POSITIVE,
                                  "multi_worker, tpu: wait at most this long for peers "
                                  "(start-up, every step)")


@dataclass(frozen=True)
class RunConfig:
    """The outer loop."""

    rounds: int = _opt(1, c.integer(1), "shrink/expand rounds before the retrain")
    baseline: bool = _opt(False, c.boolean,
                          "also train the uniformly scaled seed at the same budget")


@dataclass(frozen=True)
class Config:
    """A whole run, validated. Build it with `load_config`.

    Attributes:
        source: The file(s) it was loaded from, or None (not part of the
            schema; ignored when comparing configs).
    """

    name: str = _opt("demo", c.text("a name of letters, digits, '.', '_' or '-'",
                                   r"[A-Za-z0-9][A-Za-z0-9._-]*"),
                     "run name; the default output_dir is runs/<name>")
    output_dir: str = _opt(None, c.output_dir, "run folder; null means runs/<name>")
    seed: int = _opt(0, c.integer(0), "global random seed (>= 0)")
    model: ModelConfig = _section(ModelConfig, "the seed network")
    data: DataConfig = _section(DataConfig, "the dataset")
    target: TargetConfig = _section(TargetConfig, "the budget")
    regularizer: RegularizerConfig = _section(RegularizerConfig, "the shrink regularizer")
    shrink: ShrinkConfig = _section(ShrinkConfig, "training with the regularizer")
    expand: ExpandConfig = _section(ExpandConfig, "the width multiplier")
    search: SearchConfig = _section(SearchConfig, "accuracy-aware choice at the budget")
    retrain: RetrainConfig = _section(RetrainConfig, "final training")
    distribute: DistributeConfig = _section(DistributeConfig, "tf.distribute strategy")
    run: RunConfig = _section(RunConfig, "the outer loop")
    source: str | None = field(default=None, compare=False, metadata={"internal": True})


def _fields(cls: type) -> list:
    return [f for f in fields(cls) if not f.metadata.get("internal")]


def config_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Lists every dotted key of the schema, e.g. ``"shrink.epochs"``."""
    keys = []
    for f in _fields(cls):
        keys.append(prefix + f.name)
        if "section" in f.metadata:
            keys += config_keys(f.metadata["section"], f"{prefix}{f.name}.")
    return keys


# ----------------------------------------------------------------------------
# Loading
