"""What a step folder records so that a resume can trust it: the whole resolved
config (`config.yaml`) and, with a `profile:` device, the profile's hash
(`profile.sha256`). `morph run` records them in its run folder and `morph shrink`
in its output folder; a resume refuses a recorded config that is missing,
damaged or different, and a profile changed since the folder's first steps.
"""

from __future__ import annotations

from pathlib import Path

from morphcli.errors import MorphError

PROFILE_RECORD = "profile.sha256"


def record_folder(conf, folder: Path, *, started: bool) -> None:
    """Records `conf` and its profile's hash in `folder`, or, resuming, checks them.

    Args:
        conf: The resolved config of the command.
        folder: The run or step folder.
        started: Whether the folder already holds a step's work (a resume); then
            its config must be there, whole.

    Raises:
        MorphError: The recorded config is missing, damaged or another one
            (`check_record`, `config.record`), or the profile changed
            (`record_profile`).
    """
    from morphcli.config import record

    folder = Path(folder)
    if (folder / "config.yaml").exists() or started:
        check_record(folder / "config.yaml")  # whole, and there when steps are
    record(conf, folder / "config.yaml")  # a resumed run must have the same config
    record_profile(conf.target.hardware, folder, started=started)


def check_record(path: Path) -> None:
    """Refuses a run's recorded config that is missing or damaged: it must read back
    to exactly what `record` wrote (a truncated file would have defaults fill the gaps,
    a 1-epoch run resumed with 20).

    Raises:
        MorphError: The file is missing, unreadable, or not a whole recorded config.
    """
    from morphcli.config import dump_yaml, load_config

    where = f"Received: -o {path.parent}"
    hint = "restore it, or start the run again with --overwrite."
    if not path.is_file():
        raise MorphError(f"{path.parent} holds a run whose recorded config.yaml is missing; "
                         f"resuming without it would run another config. {where}", hint=hint)
    try:
        whole = dump_yaml(load_config(path)) == path.read_text(encoding="utf-8")
    except (MorphError, OSError, UnicodeDecodeError) as err:
        raise MorphError(f"The run's recorded config {path} cannot be read ({err}). {where}",
                         hint=hint) from None
    if not whole:
        raise MorphError(f"The run's recorded config {path} is damaged: it is not the whole "
                         f"config morph wrote (keys missing, cut short or edited). {where}",
                         hint=hint)


def record_profile(hardware, folder: Path, *, started: bool) -> None:
    """Records the hash of a `profile:` device's file in `folder`, or, resuming, refuses
    a profile changed since the run started (its steps were priced on the old one).

    Args:
        hardware: `target.hardware` (only a `profile:PATH` device is recorded).
        folder: The run or step folder.
        started: Whether the folder already holds a step's work.

    Raises:
        MorphError: The profile's hash differs from the recorded one, or a started
            run has no record of it.
    """
    import hashlib

    from morphcli import files
    from morphcli.core.profile import is_profile_name

    if not is_profile_name(hardware):
        return
    path, digest = hardware.partition(":")[2], hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    record, now = Path(folder) / PROFILE_RECORD, digest.hexdigest()
    if record.is_file():
        then = record.read_text().split(maxsplit=1)[0] if record.read_text().strip() else ""
        if then != now:
            raise MorphError(
                f"The profile {path} changed since this run started (sha256 {then[:12]} "
                f"recorded, {now[:12]} now): its steps were priced on the old one. Received: "
                f"target.hardware={hardware}",
                hint="restore the profile, or start again with --overwrite.")
        return
    if started:
        raise MorphError(f"{folder} holds a run with no record of its profile ({PROFILE_RECORD})"
                         f", so a changed profile cannot be ruled out. Received: "
                         f"target.hardware={hardware}",
                         hint="start again with --overwrite.")
    files.write_text(record, f"{now}  {path}\n")
