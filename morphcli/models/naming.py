"""Looking up a model name the way users type it (``MobileNet_V2``, ``mobilenetv2``)."""

from __future__ import annotations

import difflib
import re

from morphcli.errors import ModelError


def unknown(kind: str, name: str, choices: dict[str, str]) -> ModelError:
    """The error for a name not in `choices` (normalised key -> display name)."""
    close = difflib.get_close_matches(normalise(name), list(choices), n=3, cutoff=0.6)
    listed = list(dict.fromkeys(choices[key] for key in close)) or sorted(set(choices.values()))
    label = "Did you mean" if close else "Expected one of"
    return ModelError(f"Unknown {kind}. {label}: {', '.join(listed)}. Received: name={name!r}")


def normalise(name: str) -> str:
    """Lower case without separators: ``MobileNet_V2`` and ``mobilenetv2`` match."""
    return re.sub(r"[\s_\-]", "", name.lower())


def shorten(text: str, limit: int = 200) -> str:
    """`text`, cut to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
