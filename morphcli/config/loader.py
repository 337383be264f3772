"""Loading a run configuration: YAML files (safe loader, duplicate keys and line
numbers tracked), dotted command-line overrides, and the merge and validation
into the schema's dataclasses.

Precedence: dataclass defaults < each YAML file in order < overrides (dotted
keys such as ``{"shrink.epochs": 3}``, from command-line flags). Errors are
`ConfigError`s that name the dotted key, the file and line it came from, what
was expected and what was received.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, replace
from pathlib import Path
from typing import Any

import yaml

from morphcli.config.checks import METRIC, apply, show
from morphcli.config.schema import Config, _fields, config_keys
from morphcli.core.quantities import TARGET_METRICS, Quantity, quantity
from morphcli.errors import ConfigError

COMMAND_LINE = "the command line"
MAX_CONFIG_BYTES = 1 << 20


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
        with open(path, "rb") as f:  # bounded: /dev/zero or a huge file is not a config
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"Config file is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a "
                              f"config. Received: path={name!r}")
        text = raw.decode("utf-8")
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
    except RecursionError:  # e.g. 50,000 nested brackets: no config is that deep
        raise ConfigError(f"Invalid YAML in {name}: it is nested too deeply to be a config. "
                          f"Received: path={name!r}") from None
    finally:
        loader.dispose()
    if data is None:  # an empty file, or only comments
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Expected a mapping of sections at the top of {name} "
                          f"(e.g. `shrink: {{epochs: 10}}`). Received: {show(data)}")
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
                       f"Received: {key}={show(value)}", key=key, source=source, hint=hint)


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
                                  f"Received: {key}={show(value)}", key=key, source=source)
            if not isinstance(into.get(name), dict):
                into[name] = {}
            _merge(into[name], value, section, key + ".", where, sources)


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
            raise ConfigError(f"Missing key: {f.metadata['doc']}. Received: {parent}={show(dict(raw))}",
                              key=key, source=sources.get(parent, "defaults"))
        value = f.default if value is MISSING else value
        done[f.name] = apply(f.metadata["check"], value, done, key, sources.get(key, "defaults"))
    return cls(**done)


def _nest(key: str, value: Any) -> dict:
    if not isinstance(key, str) or not all(key.split(".")):
        raise ConfigError(f"Expected a dotted key such as shrink.epochs. Received: key={show(key)}")
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
        raise ConfigError(f"Expected KEY=VALUE, e.g. shrink.epochs=3. Received: {show(text)}")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"Expected a YAML value after `=`. Received: {key.strip()}={value!r}") from None


def demo_config_path() -> Path:
    """The packaged default config (a copy of configs/demo.yaml)."""
    return Path(__file__).parent.parent / "configs" / "demo.yaml"


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------


def parse_quantity(text: str | float, *, metric: str) -> Quantity:
    """Parses a target budget for a metric.

    A bare number up to 1 (or ``"x%"``) is a fraction of the seed's cost; a
    bare number above 1 or a number with a unit is absolute: ``k``, ``M``,
    ``G``, ``T`` for flops/macs/params (optionally followed by the metric's
    name, as in ``"25MFLOPs"``), and ``s``, ``ms``, ``us``, ``ns`` for latency,
    which requires a unit for absolute values.

    Args:
        text: The budget, e.g. ``0.5``, ``"50%"``, ``"25M"``, ``"1.5ms"``.
        metric: One of `TARGET_METRICS`.

    Returns:
        The `Quantity`.

    Raises:
        ConfigError: If the budget cannot be read for this metric.

    Example:

    >>> parse_quantity("25M", metric="flops")
    Quantity(value=25000000.0, relative=False)
    """
    metric = apply(METRIC, metric, {}, "target.metric", None)
    return apply(lambda v, _: quantity(v, metric), text, {}, "target.value", None)


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
            f"Expected METRIC=VALUE with METRIC one of {', '.join(TARGET_METRICS)}. "
            f"Received: target={show(text)}", hint="e.g. flops=25M, params=0.5, latency=2ms")
    metric = apply(METRIC, metric.strip(), {}, "target.metric", None)
    return metric, parse_quantity(value.strip(), metric=metric)


# ----------------------------------------------------------------------------
# Field validators
# ----------------------------------------------------------------------------
