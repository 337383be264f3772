"""User-facing errors.

`MorphError` is the one exception type for mistakes a user can fix (a bad
path, a YAML typo, an impossible target). The CLI prints its message on one
line and exits with code 2. Anything else that escapes is a bug in morphcli.
"""

from __future__ import annotations

import re


class MorphError(Exception):
    """A problem with the user's input, explained in one line.

    Args:
        message: What was wrong and what was expected; end with
            "Received: name=value" where a value is involved.
        hint: Optional advice on how to fix it, printed after the message.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} Hint: {self.hint}"
        return " ".join(text.split())


class ConfigError(MorphError):
    """A YAML config value is wrong: the message names the key and the file.

    Args:
        message: What is wrong with the value.
        key: Dotted location of the value, e.g. ``"shrink.epochs"``.
        source: The file the value came from (or ``"--flag"``).
    """

    def __init__(self, message: str, key: str | None = None, source: str | None = None,
                 hint: str | None = None):
        where = ""
        if key:
            where = f"`{key}`"
            if source:
                where += f" in {source}"
            where += ": "
        super().__init__(where + message, hint=hint)
        self.key = key
        self.source = source


class ModelError(MorphError):
    """A model cannot be loaded, analysed or rebuilt."""


class DataError(MorphError):
    """A dataset cannot be loaded or does not fit the model."""


class TrainingError(MorphError):
    """Training stopped for a reason the user can act on (e.g. a NaN loss)."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """A library's error message for one of ours: whitespace collapsed, TensorFlow's
    `{{function_node ...}}` and `[Op:...]` tags dropped, and, when longer than
    `limit`, cut in the middle so the end stays: the reason a file operation
    failed ("No space left on device") comes last."""
    import re

    text = " ".join(str(err).split())
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\]$", "", text)
    if len(text) > limit:
        tail = limit // 3
        text = f"{text[:limit - tail - 5]} ... {text[-tail:]}"
    return text


def tf_first_line(error: Exception) -> str:
    """The informative line of a TensorFlow error (not "Graph execution error:")."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", getattr(error, "message", None) or str(error))
    cause = re.search(r"aborted by: (.+)", text, re.DOTALL)
    lines = [line.strip() for line in (cause[1] if cause else text).splitlines() if line.strip(
        ) and not line.strip().startswith(("Graph execution error", "Detected at node", "File "))]
    lines = lines or [type(error).__name__]
    first = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return first.split(". ")[0][:300].rstrip(".")  # its first sentence
