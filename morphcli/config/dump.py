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
            yield from _commented(text, f.metadata["doc"], "  " * indent)
        else:
            yield text
        if nested:
            yield from _render(section, value, indent + 1, comments)


WIDTH = 80  # a terminal's columns: comments wrap to stay within them


def _commented(text: str, doc: str, indent: str) -> Iterable[str]:
    """`key: value  # doc`, the doc wrapped onto comment lines aligned under its
    start so that no line passes `WIDTH`; above the key when the value is long."""
    import textwrap

    column = 41 if len(text) < 40 else len(text) + 2
    room = WIDTH - column - 2
    if room < 24:
        yield from textwrap.wrap(doc, WIDTH - len(indent) - 2, initial_indent=f"{indent}# ",
                                 subsequent_indent=f"{indent}# ", break_on_hyphens=False)
        yield text
        return
    parts = textwrap.wrap(doc, room, break_on_hyphens=False) or [""]
    yield f"{text:<{column - 1}} # {parts[0]}"
    yield from (f"{'':<{column - 1}} # {part}" for part in parts[1:])


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


# Keys that may differ between an interrupted run and its resumption: where it is
# written, and which worker of a cluster this process is.
_RESUMABLE = {"output_dir", "distribute.task_index"}


def _flat(values: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def differences(config: Config, other: Config) -> list[str]:
    """The dotted keys whose values differ, as ``key: other -> config``."""
    a, b = _flat(to_dict(config)), _flat(to_dict(other))
    return [f"{k}: {b.get(k)!r} -> {a.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in _RESUMABLE and a.get(k) != b.get(k)]


def record(config: Config, path) -> None:
    """Writes the resolved config to `path` (a run or step folder), refusing to resume
    a folder whose recorded config differs (its outputs would mix two configs).

    Raises:
        MorphError: The folder holds a different config.
    """
    from pathlib import Path

    from morphcli import files
    from morphcli.config.loader import load_config
    from morphcli.errors import MorphError

    path = Path(path)
    if path.is_file():
        changed = differences(config, load_config(path))
        if changed:
            raise MorphError(
                f"{path.parent} holds a run made with another config; resuming it would mix "
                f"the two. Changed: {'; '.join(changed[:6])}"
                f"{f' (and {len(changed) - 6} more)' if len(changed) > 6 else ''}.",
                hint="resume with the recorded config (omit -c and --set), or start "
                     "again with --overwrite or another -o folder.")
    files.write_text(path, dump_yaml(config))
