"""Atomic writes: a file is either its old self or complete, never half-written.

Every output of morphcli goes through these helpers: the content is written
to a temporary file in the same folder, flushed, and renamed over the target
(`os.replace` is atomic on POSIX and Windows). Temporaries are named
``.morph-tmp.HOST.PID.NAME.*``, so those a killed process left behind are
recognised and swept (`sweep`) when a command next writes into their folder.
Output paths are checked before any work (`check_target`): never a device, a
pipe or a folder morph did not make, always in a folder that can be written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yields a temporary path next to `path`; renames it over `path` on success.

    Args:
        path: The final file.
        suffix: Suffix of the temporary file (default: that of `path`, which
            Keras needs to pick the `.keras` format).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path.parent)
    tmp_path = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix or path.suffix,
                                   dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        _refuse_special(path, "the output")
        os.replace(tmp_path, path)
    except OSError as err:  # name the user's path in the message, not our temporary
        if err.filename and Path(str(err.filename)).name.startswith(TEMP + "."):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def copy_file(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copies `source` to `path` atomically."""
    import shutil

    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes `data` as indented JSON to `path` atomically. NaN and infinities, which
    JSON has no words for, are written as null."""
    write_text(path, dumps(data) + "\n")


def dumps(data: Any) -> str:
    """`data` as valid, indented JSON (non-finite numbers as null)."""
    return json.dumps(_finite(data), indent=2, default=_jsonable, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):
        return _finite(value.tolist())
    return value


def save_model(model, path: str | os.PathLike) -> None:
    """Saves a Keras model to a `.keras` file atomically."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


# What morph writes into an output folder; `--overwrite` removes these and nothing else.
MARKER, LOCK = ".morph-run", ".morph-lock"
WRITTEN = {MARKER, "config.yaml", "checkpoints", "logs", "structure.json", "shrunk.keras",
           "summary.json", "expanded.keras", "expand.json", "final.keras", "metrics.json",
           "report.md", "report.json", "widths.png", "expand", "retrain", "baseline",
           "profile.sha256", "trained.keras", "search", "best.keras"}


# --- temporaries ----------------------------------------------------------------------------

TEMP = ".morph-tmp"  # how every temporary file and folder morph makes begins
STALE_AFTER_S = 24 * 3600  # a temporary this old is stale whoever made it (pids get reused)
_TEMP_PATTERN = re.compile(rf"{re.escape(TEMP)}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:24] or "host"


def temp_prefix(name: str) -> str:
    """The prefix of a temporary for the output `name`: it names this host and
    process, so `sweep` can tell a live writer's temporary from a killed one's."""
    return f"{TEMP}.{_host()}.{os.getpid()}.{name[:80]}."  # short of 255 with mkstemp's


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporaries killed morph processes left in `folder`.

    A temporary (a name made by `temp_prefix`, owned by this user, not a link) is
    stale when the process named in it is gone (same host) or it is older than
    `STALE_AFTER_S`. Nothing else is touched, and a failure to remove one is
    ignored: sweeping never stops a command.

    Returns:
        What was removed.
    """
    import shutil

    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(TEMP + ".")]
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_PATTERN.match(entry.name)
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not match or stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
            continue
        pid = int(match["pid"])
        gone = match["host"] == _host() and pid != os.getpid() and not _alive(pid)
        if not gone and time.time() - info.st_mtime < STALE_AFTER_S:
            continue
        try:
            shutil.rmtree(entry.path) if stat.S_ISDIR(info.st_mode) else os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


# --- output paths, checked before any work ---------------------------------------------------

def _kind(path: Path) -> str | None:
    """None (nothing there, or a dangling link), "file", "folder" or "special" (a
    device, a pipe, a socket), following links."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return "file"
    return "folder" if stat.S_ISDIR(mode) else "special"


def _refuse_special(path: Path, label: str) -> None:
    from morphcli.errors import MorphError

    kind = _kind(path)
    if kind == "special":
        raise MorphError(f"{path} is not a regular file (a device, a pipe or a socket): morph "
                         f"never replaces one. Received: {label}={path}",
                         hint="choose a path for a new or regular file.")
    if kind == "folder":
        raise MorphError(f"{path} is a folder; {label} names a file. Received: {label}={path}",
                         hint="choose a file path (inside the folder, say).")


def check_target(path: str | os.PathLike, label: str, *, overwrite: bool | None = None,
                 folder: bool = False) -> None:
    """Refuses an output path that cannot or must not be written, before any work.

    Args:
        path: The output (a file, or with `folder` a folder written whole).
        label: How the user named it (``-o``, ``--markdown``), for the message.
        overwrite: False: an existing output is refused (the command has
            `--overwrite`); None: an existing file is replaced (no flag).
        folder: The output is a folder replaced whole (a SavedModel): an existing
            one must be a folder morph made (its `MARKER`).

    Raises:
        MorphError: It is a device, pipe or socket; a folder where a file is
            written, or one morph did not make; it exists and `overwrite` is
            False; its folder is a file or cannot be written.
    """
    from morphcli.errors import MorphError

    path = Path(path)
    kind = _kind(path)
    if kind == "special" or (kind == "folder" and not folder):
        _refuse_special(path, label)
    if kind is not None and overwrite is False:
        raise MorphError(f"The output exists. Received: {label} {path}",
                         hint="pass --overwrite to replace it, or choose another path.")
    if kind == "folder" and not (path / MARKER).is_file():
        raise MorphError(f"--overwrite refused: {path} is not a folder morph made (no {MARKER} "
                         f"in it), so it is not morph's to replace. Received: {label} {path}",
                         hint="choose a new path, or remove the folder yourself.")
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:  # the folder morph will create
        parent = parent.parent
    if not parent.is_dir():
        raise MorphError(f"Cannot write {path}: {parent} is not a folder. Received: {label} {path}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MorphError(f"Cannot write {path}: the folder {parent} is not writable. Received: "
                         f"{label} {path}", hint="fix its permissions or choose another path.")
_WRITTEN_PATTERN = r"(shrink|expand)\d*|workertemp_\d+"  # later rounds, worker scratch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _same(a: Path, b: Path) -> bool:
    a, b = Path(a).resolve(), Path(b).resolve()
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links too
    except OSError:
        return False


def check_outputs(inputs: dict[str, Any], outputs: dict[str, Any],
                  folders: dict[str, Any] | None = None) -> None:
    """Refuses a command whose output would overwrite one of its inputs.

    Args:
        inputs: Label -> path of every file the command reads (None: not given;
            specs such as ``zoo:cnn`` are not files and are skipped).
        outputs: Label -> path of every file it writes.
        folders: Label -> output folder whose contents it writes or deletes; no
            input may lie inside one.

    Raises:
        MorphError: An output resolves to an input, or an input lies in an output folder.
    """
    from morphcli.errors import MorphError

    files_in = {k: Path(v) for k, v in inputs.items() if v and Path(str(v)).is_file()}
    for out_label, out in outputs.items():
        for in_label, path in files_in.items():
            if out is not None and _same(Path(out), path):
                raise MorphError(
                    f"The output {out_label} is the input {in_label} ({path}): writing it "
                    f"would destroy the input. Received: {out_label}={out}",
                    hint="choose another output path.")
    for out_label, folder in (folders or {}).items():
        root = Path(folder).resolve()
        for in_label, path in files_in.items():
            if root == path.resolve().parent or root in path.resolve().parents:
                raise MorphError(
                    f"The output folder {folder} holds the input {in_label} ({path}): morph "
                    f"writes and, with --overwrite, deletes files there. Received: "
                    f"{out_label}={folder}",
                    hint="choose an output folder that holds none of the inputs (to resume "
                         "a run, omit its config: `morph run --resume -o DIR` reads "
                         "DIR/config.yaml).")


def prepare_outdir(path: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Creates (or reuses) an output folder and marks it as morph's.

    Call it after the inputs are loaded. `--overwrite` removes only what morph
    writes (`WRITTEN`), and only from a folder morph made (its marker file).

    Args:
        path: The folder.
        resume: Keep its contents (steps and checkpoints found there continue).
        overwrite: Remove morph's previous outputs first.

    Raises:
        MorphError: The folder is a file; it holds files and neither flag was
            given; both flags were given; --overwrite on a folder morph did not make.
    """
    import shutil

    path = Path(path)
    entries = check_outdir(path, resume=resume, overwrite=overwrite)
    if entries and not resume:
        for entry in entries:
            if entry.name in WRITTEN or re.fullmatch(_WRITTEN_PATTERN, entry.name):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).exists():
        write_text(path / MARKER, "a folder of morphcli outputs; --overwrite removes only "
                                  "what morph wrote\n")
    return path


def check_outdir(path: str | os.PathLike, *, resume: bool, overwrite: bool,
                 existing: bool = False) -> list[Path]:
    """What `prepare_outdir` checks, changing nothing (call it before loading inputs).

    Args:
        existing: The folder must hold a run (a user's --resume: a mistyped path is
            refused rather than started afresh).

    Returns:
        The folder's entries (empty for a new folder).
    """
    from morphcli.errors import MorphError

    path = Path(path)
    if resume and overwrite:
        raise MorphError("--resume and --overwrite contradict each other: one continues the "
                         f"run in {path}, the other deletes it. Received: --resume --overwrite",
                         hint="pass one of them.")
    if path.exists() and not path.is_dir():
        raise MorphError(f"Output folder {path} is a file. Received: -o {path}")
    if existing and not (path / MARKER).is_file():
        raise MorphError(f"--resume: {path} holds no run to continue (no {MARKER} in it). "
                         f"Received: -o {path}",
                         hint="check the path, or start a new run without --resume.")
    entries = list(path.iterdir()) if path.exists() else []
    if entries and not resume:
        if not overwrite:
            raise MorphError(
                f"Output folder {path} already holds a run. Received: -o {path}",
                hint="pass --resume to continue it, --overwrite to start again, or choose "
                     "another folder.")
        names = {e.name for e in entries}
        if MARKER not in names and "config.yaml" not in names:
            raise MorphError(
                f"--overwrite refused: {path} is not a folder morph made (no {MARKER} or "
                f"config.yaml in it), so its files are not morph's to delete. Received: -o {path}",
                hint="choose a new or empty folder.")
    return entries


def lock_folder(path: str | os.PathLike):
    """Takes the folder's lock, so two commands never write one folder at once.

    Returns:
        The open lock file: the lock is held until it is closed (`unlock`) or the
        process ends.

    Raises:
        MorphError: Another process holds it.
    """
    import fcntl

    from morphcli.errors import MorphError

    lock = Path(path) / LOCK
    handle = open(lock, "a+")  # noqa: SIM115  (kept open: closing it releases the lock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise MorphError(f"Output folder {path} is already in use by PID {owner} (another "
                         f"morph command). Received: -o {path}",
                         hint="wait for it to finish, or choose another folder.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def unlock(handle) -> None:
    """Releases a lock taken by `lock_folder`."""
    handle.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
