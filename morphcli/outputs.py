"""A command's outputs, for the CLI: refuse outputs that are inputs, prepare and
lock output folders (after the inputs are loaded), print valid JSON."""

from __future__ import annotations

import click

from morphcli.files import dumps

__all__ = ["check_folder", "check_outputs", "dumps", "take_folder"]


def _data_file(conf) -> str | None:
    kind, _, rest = conf.data.source.partition(":")
    return rest if kind == "npz" else None


def check_folder(conf, outdir, resume: bool, overwrite: bool, config_path,
                  model: str | None = None) -> None:
    """Refuses, before anything is loaded, an output folder that is not free or that
    holds an input (the model, the config, the data)."""
    from morphcli.files import check_outdir

    check_outputs({"MODEL": model or conf.model.seed, "--config": config_path,
                   "data.source": _data_file(conf)}, {}, {"-o": outdir})
    check_outdir(outdir, resume=resume, overwrite=overwrite)


def take_folder(outdir, resume: bool, overwrite: bool, chief: bool):
    """Prepares the output folder (after the inputs are loaded) and locks it."""
    from morphcli.files import lock_folder, prepare_outdir, unlock

    outdir = prepare_outdir(outdir, resume=resume, overwrite=overwrite)
    if chief:  # workers of a multi-worker run share the chief's folder
        handle = lock_folder(outdir)
        click.get_current_context().call_on_close(lambda: unlock(handle))
    return outdir


def check_outputs(inputs: dict, outputs: dict, folders: dict | None = None) -> None:
    from morphcli import files

    files.check_outputs(inputs, outputs, folders)
