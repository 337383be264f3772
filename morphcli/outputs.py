"""A command's outputs, for the CLI: refuse outputs that are inputs (every file a
command reads: models, configs, data, structures, profiles), outputs that cannot or
must not be written, all before any work; prepare and lock output folders (after the
inputs are loaded); print valid JSON."""

from __future__ import annotations

from pathlib import Path

import click

from morphcli.files import dumps

__all__ = ["beside", "check_folder", "check_outputs", "dumps", "take_folder"]


def _data_file(conf) -> str | None:
    kind, _, rest = conf.data.source.partition(":")
    return rest if kind == "npz" else None


def _file_of(value):
    """The file an input names: `profile:PATH` (a device) is the file PATH."""
    from morphcli.core.profile import PREFIX

    if isinstance(value, str) and value.startswith(PREFIX):
        return value[len(PREFIX):] or None
    return value


def check_folder(conf, outdir, resume: bool, overwrite: bool, config_path,
                 model: str | None = None) -> None:
    """Refuses, before anything is loaded, an output folder that is not free or that
    holds an input (the model, the config, the data, the profile); with --resume, one
    that holds no run (except for multi-worker, whose workers always pass --resume)."""
    from morphcli import files

    inputs = {"MODEL": model or conf.model.seed, "--config": config_path,
              "data.source": _data_file(conf), "target.hardware": conf.target.hardware}
    files.check_outputs({k: _file_of(v) for k, v in inputs.items()}, {}, {"-o": outdir})
    files.check_outdir(outdir, resume=resume, overwrite=overwrite,
                       existing=resume and conf.distribute.strategy != "multi_worker")


def take_folder(outdir, resume: bool, overwrite: bool, chief: bool):
    """Prepares the output folder (after the inputs are loaded) and locks it."""
    from morphcli.files import lock_folder, prepare_outdir, unlock

    outdir = prepare_outdir(outdir, resume=resume, overwrite=overwrite)
    if chief:  # workers of a multi-worker run share the chief's folder
        handle = lock_folder(outdir)
        click.get_current_context().call_on_close(lambda: unlock(handle))
    return outdir


def check_outputs(inputs: dict, outputs: dict, folders: dict | None = None, *,
                  overwrite: bool | None = None) -> None:
    """Refuses, before any work, a command whose outputs would destroy an input or
    cannot be written (see `files.check_target`).

    Args:
        inputs: Label -> what the command reads (a path, `profile:PATH`, a spec
            such as ``zoo:cnn``, or None).
        outputs: Label -> file it writes (None: not asked for).
        folders: Label -> folder it replaces whole (export's SavedModel): no input
            may lie inside, and an existing one must be a folder morph made.
        overwrite: False: an existing output is refused (without --overwrite);
            None: the command replaces existing files (no such flag).
    """
    from morphcli import files

    inputs = {k: _file_of(v) for k, v in inputs.items()}
    files.check_outputs(inputs, {**outputs, **(folders or {})}, folders)
    for label, path in outputs.items():
        if path is not None:
            files.check_target(path, label, overwrite=overwrite)
    for label, path in (folders or {}).items():
        files.check_target(path, label, overwrite=overwrite, folder=True)


def beside(path: str) -> str:
    """The expansion record of an expanded model: OUT.keras -> OUT.expand.json, so
    several expands into one folder keep their own records."""
    path = Path(path)
    return str(path.with_name(f"{path.stem if path.suffix == '.keras' else path.name}"
                              ".expand.json"))
