"""The run configuration: one YAML schema for the whole tool.

Each section is a frozen dataclass that mirrors the object it configures
(`model`, `data`, `target`, `regularizer`, `shrink`, `expand`, `retrain`,
`distribute`, `run`). Every field carries its own validator and the line of
documentation that `describe_schema()` prints, so the schema, its checks and
its help text live in one place.

Precedence: dataclass defaults < each YAML file in order < overrides (dotted
keys such as ``{"shrink.epochs": 3}``, from command-line flags). Errors are
`ConfigError`s that name the dotted key, the file and line it came from, what
was expected and what was received.

Example:

>>> config = load_config("configs/demo.yaml", {"shrink.epochs": 3})
>>> config.shrink.epochs
3
>>> print(dump_yaml(config, comments=True))
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from morphcli.errors import ConfigError

METRICS = ("flops", "macs", "params", "latency")
MODEL_PREFIXES = ("zoo", "applications")
DATA_PREFIXES = ("builtin", "npz", "images", "keras")
COMMAND_LINE = "the command line"


class _Invalid(Exception):
    """A validator's complaint; `expected` completes the sentence "Expected ..."."""

    def __init__(self, expected: str, hint: str | None = None):
        super().__init__(expected)
        self.expected = expected
        self.hint = hint


# A validator takes the raw value and the already validated earlier fields of
# its section (for checks that depend on a sibling) and returns the clean value.
Check = Callable[[Any, Mapping[str, Any]], Any]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------
# Target quantities
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantity:
    """A budget: a fraction of the seed's cost, or an absolute amount.

    Attributes:
        value: The fraction (``0 < value <= 1``) when `relative`, else the
            amount in base units (FLOPs, multiply-adds, weights or seconds).
        relative: True when `value` is a fraction of the seed network's cost.
    """

    value: float
    relative: bool


_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(.*)")
_COUNT_UNITS = {"": 0, "k": 3, "K": 3, "M": 6, "G": 9, "T": 12}
_TIME_UNITS = {"s": 0, "ms": -3, "us": -6, "µs": -6, "ns": -9}
_WORDS = {"flops": ("flops", "flop"), "macs": ("macs", "mac"),
          "params": ("parameters", "params", "param", "weights")}


def _expected_quantity(metric: str) -> str:
    amount = ("a time with a unit, e.g. 1.5ms, 200us, 0.002s" if metric == "latency"
              else "an absolute count, e.g. 25M, 1.5G, 300k, 2.5e7")
    return (f"a fraction of the seed's {metric} (0 < x <= 1, 'x%' or a multiple such as "
            f"'2x') or {amount}")


def _unit_exponent(unit: str, metric: str) -> int:
    """Power of ten of a unit suffix, e.g. ``"M"`` -> 6, ``"ms"`` -> -3."""
    if metric == "latency":
        if unit in _TIME_UNITS:
            return _TIME_UNITS[unit]
        raise _Invalid(_expected_quantity(metric), hint="latency takes time units: s, ms, us, ns")
    for word in _WORDS[metric]:
        if unit.lower().endswith(word):
            unit = unit[: -len(word)]
            break
    if unit in _COUNT_UNITS:
        return _COUNT_UNITS[unit]
    hint = "use k, M, G or T (M is millions)"
    if unit in _TIME_UNITS:
        hint = "time units need `target.metric: latency`"
    raise _Invalid(_expected_quantity(metric), hint=hint)


def _quantity(value: Any, metric: str) -> Quantity:
    """Parses a budget; raises `_Invalid` (see `parse_quantity`)."""
    if isinstance(value, Quantity):
        value = format_quantity(value, metric)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(_expected_quantity(metric))
    text = repr(value) if isinstance(value, float) else str(value).strip()
    match = _NUMBER.fullmatch(text)
    if not match:
        raise _Invalid(_expected_quantity(metric))
    # Decimal arithmetic then one rounding: "0.3ms" is exactly the float 0.0003.
    number, unit = Decimal(match[1]), "".join(match[2].split())
    if number <= 0:
        raise _Invalid(_expected_quantity(metric), hint="a budget must be positive")
    if unit == "%":  # above 100% only makes sense for `morph expand` (wider than the model)
        return Quantity(float(number.scaleb(-2)), True)
    if unit == "x":
        return Quantity(float(number), True)
    if not unit and number <= 1:
        return Quantity(float(number), True)
    if not unit and metric == "latency":
        raise _Invalid(_expected_quantity(metric), hint=f"give a unit, e.g. {text}ms")
    amount = number.scaleb(_unit_exponent(unit, metric))
    if metric != "latency" and amount <= 1:
        raise _Invalid(_expected_quantity(metric), hint="an absolute budget must be more than 1")
    return Quantity(float(amount), False)


def _decimal_text(number: Decimal) -> str:
    text = format(number, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_quantity(quantity: Quantity, metric: str) -> str:
    """Writes a budget the way a user would, e.g. ``"50%"``, ``"25M"``, ``"1.5ms"``.

    The text parses back (`parse_quantity`) to exactly the same `Quantity`.

    Args:
        quantity: The budget.
        metric: One of `METRICS`; latency is written with a time unit.

    Returns:
        The budget as text.
    """
    exact = Decimal(repr(float(quantity.value)))  # shortest text of the float
    if quantity.relative:
        return _decimal_text(exact.scaleb(2)) + "%"
    if metric == "latency":
        units = ((0, "s"), (-3, "ms"), (-6, "us"), (-9, "ns"))
    else:
        units = ((12, "T"), (9, "G"), (6, "M"), (3, "k"), (0, ""))
    exponent, unit = next(((e, u) for e, u in units if exact >= Decimal(10) ** e), units[-1])
    return _decimal_text(exact.scaleb(-exponent)) + unit


def parse_quantity(text: str | float, *, metric: str) -> Quantity:
    """Parses a target budget for a metric.

    A bare number up to 1 (or ``"x%"``) is a fraction of the seed's cost; a
    bare number above 1 or a number with a unit is absolute: ``k``, ``M``,
    ``G``, ``T`` for flops/macs/params (optionally followed by the metric's
    name, as in ``"25MFLOPs"``), and ``s``, ``ms``, ``us``, ``ns`` for latency,
    which requires a unit for absolute values.

    Args:
        text: The budget, e.g. ``0.5``, ``"50%"``, ``"25M"``, ``"1.5ms"``.
        metric: One of `METRICS`.

    Returns:
        The `Quantity`.

    Raises:
        ConfigError: If the budget cannot be read for this metric.

    Example:

    >>> parse_quantity("25M", metric="flops")
    Quantity(value=25000000.0, relative=False)
    """
    metric = _apply(_METRIC, metric, {}, "target.metric", None)
    return _apply(lambda v, _: _quantity(v, metric), text, {}, "target.value", None)


def parse_target(text: str) -> tuple[str, Quantity]:
    """Parses a command-line target such as ``"flops=25M"`` or ``"latency=2ms"``.

    Args:
        text: ``METRIC=VALUE``, see `parse_quantity` for the value.

    Returns:
        ``(metric, quantity)``.

    Raises:
        ConfigError: If the text is not ``METRIC=VALUE`` or either part is invalid.
    """
    metric, sep, value = str(text).partition("=")
    if not sep or not value.strip():
        raise ConfigError(
            f"Expected METRIC=VALUE with METRIC one of {', '.join(METRICS)}. "
            f"Received: target={_show(text)}", hint="e.g. flops=25M, params=0.5, latency=2ms")
    metric = _apply(_METRIC, metric.strip(), {}, "target.metric", None)
    return metric, parse_quantity(value.strip(), metric=metric)


# ----------------------------------------------------------------------------
# Field validators
# ----------------------------------------------------------------------------


def _integer(low: int) -> Check:
    def check(value, done):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _Invalid(f"an integer >= {low}")
        return value
    return check


def _real(expected: str, ok: Callable[[float], bool]) -> Check:
    def check(value, done):
        # YAML 1.1 reads `1e-3` (no dot) as a string, so numeric text is accepted.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _Invalid(expected) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(expected)
        if not math.isfinite(value) or not ok(value):
            raise _Invalid(expected)
        return float(value)
    return check


def _boolean(value, done):
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _text(expected: str = "a non-empty string", pattern: str = r".+") -> Check:
    def check(value, done):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not re.fullmatch(pattern, value.strip()):
            raise _Invalid(expected)
        return value.strip()
    return check


def _normal(name: str) -> str:
    return re.sub(r"[\s_-]", "", name.lower())


def _choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Check:
    table = {_normal(c): c for c in choices}
    table.update({_normal(a): c for a, c in (aliases or {}).items()})

    def check(value, done):
        if isinstance(value, str) and _normal(value) in table:
            return table[_normal(value)]
        close = difflib.get_close_matches(str(value), choices, n=1)
        raise _Invalid(f"one of {', '.join(choices)}",
                       hint=f"did you mean `{close[0]}`?" if close else None)
    return check


def _optional(check: Check) -> Check:
    def optional(value, done):
        if value is None:
            return None
        try:
            return check(value, done)
        except _Invalid as error:
            raise _Invalid(f"null or {error.expected}", error.hint) from None
    return optional


def _auto(check: Check) -> Check:
    def auto(value, done):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return check(value, done)
        except _Invalid as error:
            raise _Invalid(f'"auto" or {error.expected}', error.hint) from None
    return auto


def _dims(counts: Sequence[int], expected: str) -> Check:
    """A shape: a list of positive ints, or text like ``"32,32,3"``."""
    def check(value, done):
        if isinstance(value, str):
            value = [part.strip() for part in value.replace("x", ",").split(",")]
            value = [int(p) if p.isdigit() else p for p in value]
        if not isinstance(value, (list, tuple)) or len(value) not in counts or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise _Invalid(expected)
        return tuple(value)
    return check


def _spec(prefixes: Sequence[str], path_ok: bool, expected: str) -> Check:
    """`prefix:rest` with a known prefix, or (if `path_ok`) a file path."""
    def check(value, done):
        value = _text(expected)(value, done)
        prefix, sep, rest = value.partition(":")
        if sep and prefix.lower() in prefixes and rest.strip():
            return f"{prefix.lower()}:{rest.strip()}"
        # A colon in a path: a Windows drive ("C:\\m.keras") or inside a folder name.
        if path_ok and (not sep or len(prefix) == 1 or re.search(r"[/\\.]", prefix)):
            return value
        hint = None
        if not sep and not path_ok:
            hint = f"prefix it with its kind, e.g. `{prefixes[1]}:{value}`"
        raise _Invalid(expected, hint=hint)
    return check


def _strings(value, done):
    """A list of non-empty strings, or one comma-separated string."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise _Invalid("a list of device names, e.g. [/cpu:0, /cpu:1]")
    return tuple(v.strip() for v in value)


def _addresses(value, done):
    """Worker addresses: a list of ``host:port``, or one comma-separated string."""
    expected = "a list of worker addresses host:port, e.g. [10.0.0.1:12345, 10.0.0.2:12345]"
    try:
        value = _strings(value, done)
    except _Invalid:
        raise _Invalid(expected) from None
    if not all(re.fullmatch(r"[^\s:]+:\d{1,5}", v) for v in value):
        raise _Invalid(expected)
    return value


def _task_index(value, done):
    """This worker's position in `distribute.cluster` (required with it)."""
    if done.get("cluster") is None:
        return _optional(_integer(0))(value, done)
    last = len(done["cluster"]) - 1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= last:
        raise _Invalid(f"an integer between 0 and {last}: this worker's position in "
                       "distribute.cluster", hint="set it per machine, e.g. "
                       "`--set distribute.task_index=1`, or leave cluster null and use TF_CONFIG")
    return value


def _output_dir(value, done):
    if value is None:
        return f"runs/{done['name']}"
    return _text("a folder path or null")(value, done)


def _target_value(value, done):
    return _quantity(value, done["metric"])


def _warmup(value, done):
    value = _integer(0)(value, done)
    if value > done["epochs"]:
        raise _Invalid(f"an integer between 0 and epochs (= {done['epochs']})")
    return value


_METRIC = _choice(*METRICS)
_POSITIVE = _real("a number > 0", lambda x: x > 0)
_OPTIMIZER = _choice("sgd", "momentum", "adam", "rmsprop")


# ----------------------------------------------------------------------------
# The schema
# ----------------------------------------------------------------------------


def _opt(default: Any, check: Check, doc: str, dump: Callable | None = None) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc, "dump": dump})


def _required(check: Check, doc: str) -> Any:
    return field(metadata={"check": check, "doc": doc})


def _section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"section": cls, "doc": doc})


@dataclass(frozen=True)
class ModelConfig:
    """The seed network."""

    seed: str = _opt("zoo:cnn", _spec(MODEL_PREFIXES, True, "a .keras path, zoo:NAME or applications:NAME"),
                     "seed network: path.keras | zoo:NAME | applications:NAME")
    input_shape: tuple[int, ...] | None = _opt(
        None, _optional(_dims((1, 2, 3), "a shape [H, W, C] of positive integers")),
        "[H, W, C] or 'H,W,C'; needed when the model's input shape is dynamic")
    classes: int | None = _opt(None, _optional(_integer(1)),
                               "output classes, for zoo: and applications: seeds")
    trust_code: bool = _opt(False, _boolean,
                            "allow Lambda/custom code when loading a .keras file (unsafe)")


@dataclass(frozen=True)
class DataConfig:
    """The dataset, as a tf.data pipeline."""

    source: str = _opt("builtin:digits",
                       _spec(DATA_PREFIXES, False, "builtin:NAME, npz:PATH, images:DIR or keras:NAME"),
                       "builtin:digits | npz:PATH | images:DIR | keras:NAME")
    batch_size: int = _opt(64, _integer(1), "global batch size, split over replicas")
    validation_split: float = _opt(0.2, _real("a number with 0 <= x < 1", lambda x: 0 <= x < 1),
                                   "fraction held out for validation, 0 <= x < 1")
    image_size: tuple[int, int] | None = _opt(
        None, _optional(_dims((2,), "a size [H, W] of positive integers")),
        "[H, W]: resize images to this size")
    augment: bool = _opt(False, _boolean, "random 1-2 pixel shifts of training images (no flips)")


@dataclass(frozen=True)
class HardwareSpec:
    """A custom device for the roofline latency model."""

    peak_gflops: float = _required(_POSITIVE, "peak compute, GFLOP/s (> 0)")
    bandwidth_gbs: float = _required(_POSITIVE, "memory bandwidth, GB/s (> 0)")


@dataclass(frozen=True)
class TargetConfig:
    """The budget the reshaped network must fit."""

    metric: str = _opt("flops", _METRIC, "flops | macs | params | latency")
    value: Quantity = _opt(Quantity(0.5, True), _target_value,
                           "fraction of the seed (0.5, '50%') or absolute: 25M, 1.5G, 1.5ms",
                           dump=lambda q, target: q.value if q.relative
                           else format_quantity(q, target.metric))
    hardware: str = _opt("cpu", _text(), "device for metric latency, e.g. cpu, T4, V100, A100")
    hardware_spec: HardwareSpec | None = field(default=None, metadata={
        "section": HardwareSpec, "optional": True,
        "doc": "null or {peak_gflops: .., bandwidth_gbs: ..}: custom device"})


@dataclass(frozen=True)
class RegularizerConfig:
    """The resource-weighted sparsifying regularizer used while shrinking."""

    kind: str = _opt("gamma", _choice("gamma", "group_lasso", "gates", aliases={
        "bn": "gamma", "batch_norm": "gamma", "gate": "gates", "gating": "gates"}),
        "gamma (batch-norm scales) | group_lasso (weight norms, no BN needed) | gates "
        "(learned channel gates, inserted while shrinking and folded away)")
    strength: float | str = _opt("auto", _auto(_POSITIVE),
                                 "auto (1.0) or > 0: the regularization loss starts at this value")
    threshold: float | str = _opt("auto", _auto(_POSITIVE),
                                  "auto (1e-2; 0.1 for gates) or > 0; a channel is alive above it")
    min_channels: int = _opt(1, _integer(1), "channels kept alive in every group, at least")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings shared by shrink and retrain."""

    epochs: int = _opt(10, _integer(1), "passes over the training data")
    learning_rate: float = _opt(0.01, _POSITIVE, "initial learning rate (> 0)")
    optimizer: str = _opt("adam", _OPTIMIZER, "sgd | momentum | adam | rmsprop")
    steps_per_epoch: int | None = _opt(None, _optional(_integer(1)),
                                       "null (whole dataset) or batches per epoch")


@dataclass(frozen=True)
class ShrinkConfig(TrainConfig):
    """Training with the regularizer, constant learning rate.

    Momentum SGD by default: Adam rescales each weight's step by its own
    gradient history, which largely cancels the resource weighting of the
    regularizer (cheap and expensive channels then shrink alike).
    """

    epochs: int = _opt(20, _integer(1), "passes over the training data")
    learning_rate: float = _opt(0.1, _POSITIVE, "constant learning rate (> 0)")
    optimizer: str = _opt("momentum", _OPTIMIZER,
                          "momentum (default: keeps the cost weighting) | sgd | adam | rmsprop")
    round_to: int = _opt(1, _integer(1), "round alive channel counts up to a multiple of this")


@dataclass(frozen=True)
class ExpandConfig:
    """The width multiplier that brings the shrunk network to the target."""

    round_to: int = _opt(1, _integer(1), "round expanded widths to a multiple of this")
    mode: str = _opt("below", _choice("below", "nearest"),
                     "below (never above the target) | nearest")


@dataclass(frozen=True)
class RetrainConfig(TrainConfig):
    """Training of the final network, without the regularizer."""

    epochs: int = _opt(20, _integer(1), "passes over the training data")
    schedule: str = _opt("cosine", _choice("constant", "cosine", "step"),
                         "learning-rate schedule: constant | cosine | step")
    warmup_epochs: int = _opt(0, _warmup, "linear warm-up epochs, 0 <= x <= epochs")
    keep_weights: bool = _opt(False, _boolean,
                              "start from the shrunk weights instead of from scratch")


@dataclass(frozen=True)
class DistributeConfig:
    """The tf.distribute strategy for shrink, retrain and run (see morphcli.distribute).

    No `parameter_server`: Keras 3's `model.fit` does not train with
    ParameterServerStrategy; `multi_worker` covers several machines.
    """

    strategy: str = _opt("default", _choice(
        "default", "one_device", "mirrored", "multi_worker", "tpu"),
        "default | one_device | mirrored | multi_worker | tpu")
    devices: tuple[str, ...] | None = _opt(None, _optional(_strings),
                                           "mirrored/one_device: e.g. [/gpu:0, /gpu:1]; null: "
                                           "every GPU; [/cpu:0, /cpu:1] splits the CPU")
    tpu: str | None = _opt(None, _optional(_text()),
                           "TPU for strategy tpu: local (TPU VM), a name or grpc://IP:8470")
    scale_learning_rate: bool = _opt(False, _boolean,
                                     "multiply learning rates by the number of replicas")
    sync_batch_norm: bool = _opt(True, _boolean,
                                 "batch norm statistics over the global batch, not per replica")
    communication: str = _opt("auto", _choice("auto", "ring", "nccl"),
                              "auto | ring | nccl, for multi_worker")
    cluster: tuple[str, ...] | None = _opt(None, _optional(_addresses),
                                           "multi_worker: [host:port, ...], first is the chief; "
                                           "null reads TF_CONFIG")
    task_index: int | None = _opt(None, _task_index,
                                  "multi_worker with cluster: this worker's position in it")
    timeout_seconds: float = _opt(300.0, _POSITIVE,
                                  "multi_worker, tpu: wait at most this long for peers "
                                  "(start-up, every step)")


@dataclass(frozen=True)
class RunConfig:
    """The outer loop."""

    rounds: int = _opt(1, _integer(1), "shrink/expand rounds before the retrain")
    baseline: bool = _opt(False, _boolean,
                          "also train the uniformly scaled seed at the same budget")


@dataclass(frozen=True)
class Config:
    """A whole run, validated. Build it with `load_config`.

    Attributes:
        source: The file(s) it was loaded from, or None (not part of the
            schema; ignored when comparing configs).
    """

    name: str = _opt("demo", _text("a name of letters, digits, '.', '_' or '-'",
                                   r"[A-Za-z0-9][A-Za-z0-9._-]*"),
                     "run name; the default output_dir is runs/<name>")
    output_dir: str = _opt(None, _output_dir, "run folder; null means runs/<name>")
    seed: int = _opt(0, _integer(0), "global random seed (>= 0)")
    model: ModelConfig = _section(ModelConfig, "the seed network")
    data: DataConfig = _section(DataConfig, "the dataset")
    target: TargetConfig = _section(TargetConfig, "the budget")
    regularizer: RegularizerConfig = _section(RegularizerConfig, "the shrink regularizer")
    shrink: ShrinkConfig = _section(ShrinkConfig, "training with the regularizer")
    expand: ExpandConfig = _section(ExpandConfig, "the width multiplier")
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
# ----------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """The safe loader, plus duplicate-key errors and a line number per key."""

    def __init__(self, stream, path: str):
        super().__init__(stream)
        self.path = path
        self.lines: dict[int, dict[str, int]] = {}  # id(mapping) -> key -> line
        self.mappings: list[dict] = []  # keeps every mapping alive, so ids stay unique


def _construct_mapping(loader: _Loader, node: yaml.MappingNode):
    data: dict = {}
    yield data  # PyYAML's two-step construction, so that anchors can refer to it
    lines = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key, line = key_node.value, key_node.start_mark.line + 1
        if key in lines and key != "<<":
            raise ConfigError(f"Duplicate key `{key}` in {loader.path}, line {line}: it is "
                              f"already set at line {lines[key]}. Expected each key once.",
                              hint="merge the two entries (YAML would keep only the last)")
        lines[key] = line
    data.update(loader.construct_mapping(node))
    loader.lines[id(data)] = lines
    loader.mappings.append(data)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _read_yaml(path: str | Path) -> tuple[dict, dict[int, dict[str, int]]]:
    """Reads one config file; returns the mapping and its key line numbers."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file not found. Received: path={name!r}",
                          hint="see configs/demo.yaml for an example") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read the config file: {error}. Received: path={name!r}") from None
    loader = _Loader(text, name)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        hint = ("only plain YAML is read (safe loader): Python tags such as !!python/object "
                "are refused" if "python/" in str(error) else None)
        raise ConfigError(f"Invalid YAML in {name}{where}: {error.problem}.", hint=hint) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"Invalid YAML in {name}: {error}") from None
    finally:
        loader.dispose()
    if data is None:  # an empty file, or only comments
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Expected a mapping of sections at the top of {name} "
                          f"(e.g. `shrink: {{epochs: 10}}`). Received: {_show(data)}")
    return data, loader.lines


def _unknown_key(key: str, known: Sequence[str], prefix: str, source: str, value: Any):
    """The error for a key that is not in the schema, with the closest valid key."""
    leaf = key.rpartition(".")[2]
    close = [prefix + m for m in difflib.get_close_matches(leaf, known, n=1)]
    if not close:  # a valid key in the wrong section? (`epochs` at the top level)
        everywhere = config_keys()
        leaves = difflib.get_close_matches(leaf, sorted({k.rpartition(".")[2] for k in everywhere}),
                                           n=1)
        close = [k for k in everywhere if leaves and k.rpartition(".")[2] == leaves[0]]
    hint = f"did you mean {' or '.join(f'`{k}`' for k in close[:3])}?" if close else None
    return ConfigError(f"Unknown key. Expected one of: {', '.join(known)}. "
                       f"Received: {key}={_show(value)}", key=key, source=source, hint=hint)


def _merge(into: dict, new: Mapping, cls: type, prefix: str, where: Callable[[Mapping, str], str],
           sources: dict[str, str]) -> None:
    """Lays `new` over `into`, checking keys and section shapes against `cls`."""
    known = {f.name: f for f in _fields(cls)}
    for name, value in new.items():
        key = prefix + str(name)
        source = where(new, str(name))
        if name not in known:
            raise _unknown_key(key, list(known), prefix, source, value)
        sources[key] = source
        section = known[name].metadata.get("section")
        if section is None or (value is None and known[name].metadata.get("optional")):
            into[name] = value
        elif value is not None:  # an empty section (`shrink:`) keeps the defaults
            if not isinstance(value, Mapping):
                raise ConfigError(f"Expected a mapping of keys ({', '.join(config_keys(section))}). "
                                  f"Received: {key}={_show(value)}", key=key, source=source)
            if not isinstance(into.get(name), dict):
                into[name] = {}
            _merge(into[name], value, section, key + ".", where, sources)


def _apply(check: Check, value: Any, done: Mapping, key: str, source: str | None) -> Any:
    """Runs a validator, turning `_Invalid` into a `ConfigError` about `key`."""
    try:
        return check(value, done)
    except _Invalid as error:
        raise ConfigError(f"Expected {error.expected}. Received: {key}={_show(value)}",
                          key=key, source=source, hint=error.hint) from None


def _build(cls: type, raw: Mapping, prefix: str, sources: Mapping[str, str]) -> Any:
    """Validates a merged mapping into the dataclass `cls`, defaults filled in."""
    done: dict[str, Any] = {}
    for f in _fields(cls):
        key, section = prefix + f.name, f.metadata.get("section")
        value = raw.get(f.name, MISSING)
        if section is not None:
            optional = f.metadata.get("optional")
            done[f.name] = (None if optional and value in (None, MISSING)
                            else _build(section, value if isinstance(value, Mapping) else {},
                                        key + ".", sources))
            continue
        if value is MISSING and f.default is MISSING:
            parent = prefix.rstrip(".")
            raise ConfigError(f"Missing key: {f.metadata['doc']}. Received: {parent}={_show(dict(raw))}",
                              key=key, source=sources.get(parent, "defaults"))
        value = f.default if value is MISSING else value
        done[f.name] = _apply(f.metadata["check"], value, done, key, sources.get(key, "defaults"))
    return cls(**done)


def _nest(key: str, value: Any) -> dict:
    if not isinstance(key, str) or not all(key.split(".")):
        raise ConfigError(f"Expected a dotted key such as shrink.epochs. Received: key={_show(key)}")
    for part in reversed(key.split(".")[1:]):
        value = {part: value}
    return {key.split(".")[0]: value}


def load_config(path: str | Path | Sequence[str | Path] | None = None,
                overrides: Mapping[str, Any] | None = None, *,
                flags: Mapping[str, str] | None = None) -> Config:
    """Loads, merges and validates a run configuration.

    Precedence: defaults < each YAML file in order < `overrides`.

    Args:
        path: A YAML file, several (later ones win), or None for defaults only.
        overrides: Dotted keys to values, e.g. ``{"shrink.epochs": 3}``;
            a value may also be a mapping for a whole section. Values are
            validated exactly like YAML values (parse text with
            `parse_override` first).
        flags: Optional dotted key -> flag name (``{"shrink.epochs": "--epochs"}``)
            used to say where a bad override came from; default
            "the command line".

    Returns:
        The validated `Config`, defaults filled in and `output_dir` resolved.

    Raises:
        ConfigError: For a missing or unreadable file, invalid YAML, an unknown
            key (with the closest valid key), or a value of the wrong type or
            out of range. The message names the dotted key and its file/line.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    raw: dict = {}
    sources: dict[str, str] = {}
    for one in paths:
        data, lines = _read_yaml(one)

        def where(mapping, name, file=str(one), lines=lines):
            line = lines.get(id(mapping), {}).get(name)
            return f"{file}, line {line}" if line else file

        _merge(raw, data, Config, "", where, sources)
    for key, value in (overrides or {}).items():
        source = (flags or {}).get(key, COMMAND_LINE)
        _merge(raw, _nest(key, value), Config, "", lambda m, n, s=source: s, sources)
    config = _build(Config, raw, "", sources)
    return replace(config, source=", ".join(str(p) for p in paths) or None)


def default_config() -> Config:
    """Returns the configuration with every default (zoo:cnn on builtin:digits)."""
    return load_config(None)


def parse_override(text: str) -> tuple[str, Any]:
    """Parses a command-line ``KEY=VALUE`` (value read as YAML), e.g. ``shrink.epochs=3``.

    Args:
        text: The assignment; the value may be any YAML scalar or flow
            collection, e.g. ``model.input_shape=[32,32,3]``.

    Returns:
        ``(dotted_key, value)`` for `load_config`'s `overrides`.

    Raises:
        ConfigError: Without ``=`` or with a value that is not valid YAML.
    """
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Expected KEY=VALUE, e.g. shrink.epochs=3. Received: {_show(text)}")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"Expected a YAML value after `=`. Received: {key.strip()}={value!r}") from None


def demo_config_path() -> Path:
    """The packaged default config (a copy of configs/demo.yaml)."""
    return Path(__file__).parent / "configs" / "demo.yaml"


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------


def to_dict(config: Any) -> dict:
    """Converts a config (or one section) to plain, YAML-ready Python values.

    Defaults are filled in; ``"auto"`` values stay ``"auto"``; a relative
    target is its fraction and an absolute one text with a unit (``"25M"``).

    Args:
        config: A `Config` or one of its section dataclasses.

    Returns:
        A nested dict of str, int, float, bool, None and lists.
    """
    out = {}
    for f in _fields(type(config)):
        value = getattr(config, f.name)
        if f.metadata.get("dump"):
            value = f.metadata["dump"](value, config)
        elif is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


class _Dumper(yaml.SafeDumper):
    """The safe dumper, with lists on one line (``input_shape: [32, 32, 3]``)."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


def _scalar_line(name: str, value: Any) -> str:
    return yaml.dump({name: value}, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=10**6, allow_unicode=True).strip()


def _render(cls: type, values: Mapping, indent: int, comments: bool) -> Iterable[str]:
    for f in _fields(cls):
        value, section = values[f.name], f.metadata.get("section")
        nested = section is not None and isinstance(value, dict)
        text = "  " * indent + (f"{f.name}:" if nested else _scalar_line(f.name, value))
        if comments:
            text = f"{text:<40} # {f.metadata['doc']}" if len(text) < 40 else f"{text}  # {f.metadata['doc']}"
        yield text
        if nested:
            yield from _render(section, value, indent + 1, comments)


def dump_yaml(config: Config, *, comments: bool = False) -> str:
    """Writes a config as YAML that `load_config` reads back to an equal `Config`.

    Args:
        config: The config to write.
        comments: Add each key's one-line documentation as a comment.

    Returns:
        The YAML text.
    """
    return "\n".join(_render(type(config), to_dict(config), 0, comments)) + "\n"


def describe_schema() -> str:
    """Returns every key with its default and meaning, as commented YAML.

    The text is itself a valid config: the defaults.
    """
    header = ("# morph config schema: key: default  # meaning\n"
              "# Precedence: these defaults < config file(s) < command-line flags.\n")
    return header + dump_yaml(default_config(), comments=True)
