"""Writing a config back: plain values, YAML that reads back to an equal
`Config`, and the commented schema `morph config schema` prints."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import is_dataclass
from typing import Any

import yaml

from morphcli.config.loader import default_config
from morphcli.config.schema import Config, _fields


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
