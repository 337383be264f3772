"""Tests for morphcli.config: schema defaults, precedence, errors, quantities, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from morphcli.config import (
    Config,
    HardwareSpec,
    Quantity,
    config_keys,
    default_config,
    demo_config_path,
    describe_schema,
    dump_yaml,
    format_quantity,
    load_config,
    parse_override,
    parse_quantity,
    parse_target,
    to_dict,
)
from morphcli.errors import ConfigError, MorphError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture
def write(tmp_path):
    """Writes YAML text to a file in tmp_path and returns its path."""
    def write(text: str, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path
    return write


def error_of(path=None, overrides=None, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, **kwargs)
    return info.value


# ---------------------------------------------------------------- defaults


def test_defaults():
    config = default_config()
    assert config == load_config(None) == Config(output_dir="runs/demo")
    assert (config.name, config.output_dir, config.seed, config.source) == (
        "demo", "runs/demo", 0, None)
    assert config.model.seed == "zoo:cnn" and config.model.input_shape is None
    assert (config.data.source, config.data.batch_size, config.data.validation_split) == (
        "builtin:digits", 64, 0.2)
    assert config.target.value == Quantity(0.5, True)
    assert (config.target.metric, config.target.hardware) == ("flops", "cpu")
    assert (config.regularizer.kind, config.regularizer.strength,
            config.regularizer.threshold, config.regularizer.min_channels) == (
        "gamma", "auto", "auto", 1)
    assert (config.shrink.epochs, config.shrink.learning_rate, config.shrink.optimizer) == (
        20, 0.1, "momentum")
    assert (config.retrain.epochs, config.retrain.schedule, config.retrain.keep_weights) == (
        20, "cosine", False)
    assert (config.expand.mode, config.distribute.strategy, config.run.rounds) == (
        "below", "default", 1)


def test_config_keys_lists_every_dotted_key():
    keys = config_keys()
    assert len(keys) == len(set(keys)) == 69  # 13 top-level + 56 nested
    assert {"search.scoring", "search.scratch_epochs"} <= set(keys)
    assert {"shrink.precise_batch_norm", "retrain.precise_batch_norm"} <= set(keys)
    assert {"shrink.epochs", "retrain.warmup_epochs", "target.hardware_spec.peak_gflops"} <= set(keys)
    assert "source" not in keys  # bookkeeping, not schema


def test_empty_file_and_empty_section_keep_defaults(write):
    assert load_config(write("# only a comment\n")) == default_config()
    assert load_config(write("shrink:\nretrain: {}\n")) == default_config()


# -------------------------------------------------------------- precedence


def test_file_then_overrides(write):
    path = write("name: exp\nshrink:\n  epochs: 5\nretrain:\n  epochs: 7\n")
    config = load_config(path, {"shrink.epochs": 3, "seed": 42})
    assert (config.shrink.epochs, config.retrain.epochs, config.seed) == (3, 7, 42)
    assert (config.name, config.output_dir, config.source) == ("exp", "runs/exp", str(path))
    assert config.shrink.learning_rate == 0.1  # untouched default


def test_later_files_win_and_sections_merge(write):
    first = write("shrink: {epochs: 5, learning_rate: 0.1}\ntarget: {metric: params}\n", "a.yaml")
    second = write("shrink: {epochs: 6}\n", "b.yaml")
    config = load_config([first, second], {"target": {"value": "20k"}})
    assert (config.shrink.epochs, config.shrink.learning_rate) == (6, 0.1)
    assert config.target.metric == "params"
    assert config.target.value == Quantity(20000.0, False)
    assert config.source == f"{first}, {second}"


def test_explicit_output_dir_and_hardware_spec(write):
    path = write("output_dir: out/x\ntarget:\n  hardware_spec: {peak_gflops: 500}\n")
    config = load_config(path, {"target.hardware_spec.bandwidth_gbs": 50})
    assert config.output_dir == "out/x"
    assert config.target.hardware_spec == HardwareSpec(500.0, 50.0)
    assert load_config(path, {"target.hardware_spec": None,
                              "target.hardware_spec.peak_gflops": 1,
                              "target.hardware_spec.bandwidth_gbs": 2}
                       ).target.hardware_spec == HardwareSpec(1.0, 2.0)


# ------------------------------------------------------------ value checks


@pytest.mark.parametrize("key, given, expected", [
    ("regularizer.kind", "GroupLasso", "group_lasso"),
    ("regularizer.kind", "group-lasso", "group_lasso"),
    ("regularizer.kind", "bn", "gamma"),
    ("regularizer.kind", "batch_norm", "gamma"),
    ("shrink.optimizer", "RMSprop", "rmsprop"),
    ("distribute.strategy", "MultiWorker", "multi_worker"),
    ("regularizer.strength", 3, 3.0),
    ("regularizer.strength", "1e-3", 0.001),  # YAML 1.1 reads 1e-3 as text
    ("regularizer.threshold", "AUTO", "auto"),
    ("model.input_shape", "32,32,3", (32, 32, 3)),
    ("model.input_shape", [224, 224, 3], (224, 224, 3)),
    ("data.image_size", "64x48", (64, 48)),
    ("model.seed", "Zoo:cnn", "zoo:cnn"),
    ("model.seed", "models/seed.keras", "models/seed.keras"),
    ("model.seed", "C:\\models\\seed.keras", "C:\\models\\seed.keras"),
    ("data.source", "npz:data/x.npz", "npz:data/x.npz"),
    ("distribute.devices", "/cpu:0, /cpu:1", ("/cpu:0", "/cpu:1")),
    ("retrain.warmup_epochs", 20, 20),
])
def test_values_are_normalised(key, given, expected):
    config = load_config(None, {key: given})
    section, name = key.split(".")
    assert getattr(getattr(config, section), name) == expected
    plain = list(expected) if isinstance(expected, tuple) else expected
    assert to_dict(config)[section][name] == plain


@pytest.mark.parametrize("key, given, expected", [
    ("shrink.epochs", "ten", "an integer >= 1"),
    ("shrink.epochs", 3.0, "an integer >= 1"),
    ("shrink.epochs", 0, "an integer >= 1"),
    ("seed", -1, "an integer >= 0"),
    ("seed", True, "an integer >= 0"),
    ("data.augment", 1, "true or false"),
    ("data.validation_split", 1, "a number with 0 <= x < 1"),
    ("shrink.learning_rate", 0, "a number > 0"),
    ("shrink.learning_rate", "fast", "a number > 0"),
    ("regularizer.strength", -1.0, '"auto" or a number > 0'),
    ("model.input_shape", [32, 0, 3], "null or a shape [H, W, C] of positive integers"),
    ("data.image_size", [32, 32, 3], "null or a size [H, W] of positive integers"),
    ("model.seed", "foo:bar", "a .keras path, zoo:NAME or applications:NAME"),
    ("model.seed", "zoo:", "a .keras path, zoo:NAME or applications:NAME"),
    ("data.source", "x.npz", "builtin:NAME, npz:PATH, images:DIR or keras:NAME"),
    ("name", "a/b", "a name of letters, digits, '.', '_' or '-'"),
    ("retrain.warmup_epochs", 21, "an integer between 0 and epochs (= 20)"),
    ("distribute.devices", [], "null or a list of device names"),
])
def test_bad_values(key, given, expected):
    error = error_of(None, {key: given})
    assert (error.key, error.source) == (key, "the command line")
    assert f"Expected {expected}" in str(error)
    assert str(error).split(" Hint:")[0].endswith(f"Received: {key}={given!r}")


def test_bad_enum_lists_choices_and_suggests(write):
    error = error_of(write("shrink:\n  optimizer: adamw\n"))
    assert str(error) == (
        f"`shrink.optimizer` in {error.source}: Expected one of sgd, momentum, adam, rmsprop. "
        "Received: shrink.optimizer='adamw' Hint: did you mean `adam`?")
    assert error.source.endswith("run.yaml, line 2")


def test_wrong_type_names_key_file_and_line(write):
    path = write("name: x\nshrink:\n  epochs: ten\n")
    assert str(error_of(path)) == (
        f"`shrink.epochs` in {path}, line 3: Expected an integer >= 1. "
        "Received: shrink.epochs='ten'")


def test_override_error_names_the_flag():
    error = error_of(None, {"shrink.epochs": 0}, flags={"shrink.epochs": "--epochs"})
    assert str(error).startswith("`shrink.epochs` in --epochs: Expected an integer >= 1.")


def test_target_value_is_parsed_for_the_final_metric(write):
    path = write("target:\n  value: 25M\n")
    assert load_config(path).target.value == Quantity(25e6, False)
    error = error_of(path, {"target.metric": "latency"})
    assert error.key == "target.value" and "line 2" in error.source
    assert "latency takes time units" in str(error)


def test_missing_hardware_spec_key():
    error = error_of(None, {"target.hardware_spec": {"peak_gflops": 3}})
    assert error.key == "target.hardware_spec.bandwidth_gbs"
    assert "Missing key" in str(error)


# ---------------------------------------------------------- structure errors


def test_unknown_nested_key_suggests_closest(write):
    path = write("name: x\nshrink:\n  epoch: 3\n")
    error = error_of(path)
    assert (error.key, error.source) == ("shrink.epoch", f"{path}, line 3")
    assert "Unknown key" in str(error)
    assert str(error).endswith("Hint: did you mean `shrink.epochs`?")


def test_unknown_top_level_key_suggests_sections(write):
    error = error_of(write("epochs: 3\n"))
    assert error.key == "epochs"
    assert "Expected one of: name, output_dir, seed, model," in str(error)
    assert str(error).endswith("Hint: did you mean `shrink.epochs` or `retrain.epochs`?")


def test_unknown_override_key():
    error = error_of(None, {"shrink.epoch": 3})
    assert (error.key, error.source) == ("shrink.epoch", "the command line")


def test_non_mapping_section(write):
    error = error_of(write("shrink: 5\n"))
    assert error.key == "shrink"
    assert "Expected a mapping of keys (epochs, learning_rate" in str(error)
    assert "Received: shrink=5" in str(error)


def test_top_level_not_a_mapping(write):
    path = write("- a\n- b\n")
    assert str(error_of(path)).startswith(f"Expected a mapping of sections at the top of {path}")


def test_yaml_syntax_error_has_line_number(write):
    path = write("shrink:\n  epochs: 3\n   learning_rate: 0.1\n")
    assert str(error_of(path)) == (
        f"Invalid YAML in {path}, line 3, column 17: mapping values are not allowed here.")


def test_duplicate_key_is_an_error(write):
    path = write("shrink:\n  epochs: 3\nshrink:\n  epochs: 4\n")
    assert str(error_of(path)).startswith(
        f"Duplicate key `shrink` in {path}, line 3: it is already set at line 1.")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    error = error_of(path)
    assert isinstance(error, MorphError)
    assert str(error).startswith(f"Config file not found. Received: path={str(path)!r}")


def test_safe_loader_refuses_python_tags(write, tmp_path):
    marker = tmp_path / "pwned"
    path = write(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    error = error_of(path)
    assert "could not determine a constructor" in str(error)
    assert "!!python/object are refused" in str(error)
    assert not marker.exists()


# -------------------------------------------------------------- quantities


@pytest.mark.parametrize("text, metric, value, relative", [
    ("50%", "flops", 0.5, True),
    ("33.3%", "flops", 0.333, True),
    ("100%", "latency", 1.0, True),
    ("150%", "flops", 1.5, True),  # wider than the model: for `morph expand`
    ("2x", "params", 2.0, True),
    (0.5, "flops", 0.5, True),
    (1, "params", 1.0, True),
    ("0.25", "latency", 0.25, True),
    ("25M", "flops", 25000000.0, False),
    ("1.5G", "flops", 1500000000.0, False),
    ("300k", "params", 300000.0, False),
    ("300K", "params", 300000.0, False),
    ("1T", "macs", 1e12, False),
    ("2.5e7", "flops", 25000000.0, False),
    (2.5e7, "flops", 25000000.0, False),
    (25000000, "macs", 25000000.0, False),
    ("2", "flops", 2.0, False),
    ("0.5k", "params", 500.0, False),
    ("25MFLOPs", "flops", 25000000.0, False),
    ("1.5 GMACs", "macs", 1500000000.0, False),
    ("20k params", "params", 20000.0, False),
    ("1.5ms", "latency", 0.0015, False),
    ("0.3ms", "latency", 0.0003, False),
    ("200us", "latency", 0.0002, False),
    ("200µs", "latency", 0.0002, False),
    ("0.002s", "latency", 0.002, False),
    ("50ns", "latency", 5e-08, False),
    ("2.5e3us", "latency", 0.0025, False),
])
def test_parse_quantity(text, metric, value, relative):
    quantity = parse_quantity(text, metric=metric)
    assert quantity == Quantity(value, relative)
    assert type(quantity.value) is float


@pytest.mark.parametrize("text, metric, hint", [
    ("0", "flops", "a budget must be positive"),
    ("-1", "flops", "a budget must be positive"),
    ("-50%", "params", "a budget must be positive"),
    ("1.5ms", "flops", "time units need `target.metric: latency`"),
    ("25M", "latency", "latency takes time units"),
    ("3", "latency", "give a unit, e.g. 3ms"),
    ("25m", "flops", "use k, M, G or T (M is millions)"),
    ("25Mparams", "flops", "use k, M, G or T"),
    ("0.001k", "flops", "an absolute budget must be more than 1"),
    ("abc", "flops", None),
    ("nan", "flops", None),
    (float("inf"), "flops", None),
    (True, "flops", None),
    (None, "params", None),
])
def test_parse_quantity_errors(text, metric, hint):
    with pytest.raises(ConfigError) as info:
        parse_quantity(text, metric=metric)
    message = str(info.value)
    assert message.startswith(f"`target.value`: Expected a fraction of the seed's {metric}")
    assert f"Received: target.value={text!r}" in message
    if hint:
        assert f"Hint: {hint}" in message


def test_parse_quantity_unknown_metric():
    with pytest.raises(ConfigError, match="Expected one of flops, macs, params, latency"):
        parse_quantity("0.5", metric="energy")


@pytest.mark.parametrize("quantity, metric, text", [
    (Quantity(0.5, True), "flops", "50%"),
    (Quantity(0.333, True), "latency", "33.3%"),
    (Quantity(25e6, False), "flops", "25M"),
    (Quantity(1.5e9, False), "macs", "1.5G"),
    (Quantity(1234.5, False), "params", "1.2345k"),
    (Quantity(2.0, False), "flops", "2"),
    (Quantity(0.0015, False), "latency", "1.5ms"),
    (Quantity(0.0002, False), "latency", "200us"),
    (Quantity(5e-8, False), "latency", "50ns"),
    (Quantity(2.5, False), "latency", "2.5s"),
])
def test_format_quantity(quantity, metric, text):
    assert format_quantity(quantity, metric) == text
    assert parse_quantity(text, metric=metric) == quantity


@pytest.mark.parametrize("value", [0.1 + 0.2, 1 / 3, 2 / 7, 1.0])
@pytest.mark.parametrize("metric", ["flops", "latency"])
def test_format_quantity_round_trips_awkward_floats(value, metric):
    for quantity in (Quantity(value, True), Quantity(value * 12345.678, False)):
        assert parse_quantity(format_quantity(quantity, metric), metric=metric) == quantity


@pytest.mark.parametrize("text, expected", [
    ("flops=25M", ("flops", Quantity(25e6, False))),
    ("params=0.5", ("params", Quantity(0.5, True))),
    ("latency=2ms", ("latency", Quantity(0.002, False))),
    (" MACs = 40% ", ("macs", Quantity(0.4, True))),
])
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text, message", [
    ("flops", "Expected METRIC=VALUE"),
    ("flops=", "Expected METRIC=VALUE"),
    ("energy=0.5", "Expected one of flops, macs, params, latency"),
    ("latency=25M", "latency takes time units"),
])
def test_parse_target_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_target(text)


def test_override_accepts_a_quantity():
    config = load_config(None, {"target.metric": "latency", "target.value": Quantity(0.002, False)})
    assert config.target.value == Quantity(0.002, False)
    assert to_dict(config)["target"]["value"] == "2ms"


@pytest.mark.parametrize("text, expected", [
    ("shrink.epochs=3", ("shrink.epochs", 3)),
    ("model.input_shape=[32, 32, 3]", ("model.input_shape", [32, 32, 3])),
    ("distribute.tpu=", ("distribute.tpu", None)),
    ("target.value=25M", ("target.value", "25M")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_needs_equals():
    with pytest.raises(ConfigError, match="Expected KEY=VALUE"):
        parse_override("shrink.epochs")


# ------------------------------------------------------------- round trips


def test_to_dict_is_plain_and_resolved():
    config = load_config(None, {"target.metric": "latency", "target.value": "1.5ms",
                                "model.input_shape": "32,32,3"})
    data = to_dict(config)
    assert data["output_dir"] == "runs/demo"
    assert data["target"] == {"metric": "latency", "value": "1.5ms", "hardware": "cpu",
                              "hardware_spec": None}
    assert data["model"]["input_shape"] == [32, 32, 3]
    assert data["regularizer"]["strength"] == "auto"
    assert to_dict(default_config())["target"]["value"] == 0.5


@pytest.mark.parametrize("comments", [False, True])
def test_dump_yaml_round_trip(tmp_path, comments):
    config = load_config(None, {
        "name": "rt", "seed": 7, "model.input_shape": [16, 16, 3], "model.classes": 10,
        "data.image_size": [16, 16], "target.metric": "latency", "target.value": "0.3ms",
        "target.hardware": "T4", "target.hardware_spec": {"peak_gflops": 1.5, "bandwidth_gbs": 2},
        "regularizer.kind": "group_lasso", "regularizer.strength": 1e-5,
        "shrink.learning_rate": 0.1 + 0.2, "retrain.warmup_epochs": 3,
        "distribute.strategy": "mirrored", "distribute.devices": ["/cpu:0", "/cpu:1"],
        "run.baseline": True})
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_yaml(config, comments=comments), encoding="utf-8")
    assert load_config(path) == config
    if comments:
        assert "  epochs: 20                             # passes over the training data" in (
            path.read_text())


def test_dump_yaml_shape():
    lines = dump_yaml(load_config(None, {"model.input_shape": [8, 8, 1]})).splitlines()
    assert lines[:5] == ["name: demo", "output_dir: runs/demo", "seed: 0", "model:",
                         "  seed: zoo:cnn"]
    assert "  input_shape: [8, 8, 1]" in lines


def test_describe_schema_is_the_default_config(tmp_path):
    text = describe_schema()
    # Comments wrap at 80 columns onto lines aligned under their start.
    comments = " ".join(line.partition("#")[2].strip() for line in text.splitlines())
    assert "  strength: auto" in text and "the regularization loss starts at this value" in (
        comments)
    assert max(len(line) for line in text.splitlines()) <= 80
    path = tmp_path / "schema.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == default_config()


# --------------------------------------------------------- shipped configs


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.name == config.output_dir.removeprefix("runs/")
    # Commented line by line: every `key: value` line explains itself.
    values = [line for line in path.read_text().splitlines()
              if ":" in line and not line.lstrip().startswith("#") and not line.endswith(":")]
    assert values and all("#" in line for line in values), values


def test_shipped_examples_cover_every_metric():
    names = {p.name for p in SHIPPED}
    assert {"demo.yaml", "params.yaml", "latency_t4.yaml", "cifar10_resnet20.yaml",
            "applications_mobilenetv2.yaml"} <= names
    targets = {p.name: load_config(p).target for p in SHIPPED}
    assert targets["demo.yaml"].value == Quantity(0.5, True)
    assert targets["params.yaml"].metric == "params"
    assert (targets["latency_t4.yaml"].metric, targets["latency_t4.yaml"].hardware) == (
        "latency", "T4")
    assert load_config(ROOT / "configs/cifar10_resnet20.yaml").model.seed == "zoo:resnet20"
    assert load_config(ROOT / "configs/applications_mobilenetv2.yaml").model.seed == (
        "applications:MobileNetV2")


def test_packaged_demo_equals_configs_demo():
    assert demo_config_path().read_bytes() == (ROOT / "configs" / "demo.yaml").read_bytes()
