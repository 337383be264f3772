"""What every `morph` command shares: the group that turns errors, usage
mistakes, interrupts and a closed pipe into one line and an exit code (the
README's "Exit codes"), the consoles, the MODEL options, --threads and the
N|auto parameter type.

Every command module of the package imports from here; this module imports none
of them, nor the package's `__init__`.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

import click

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: stdout's reader left (`morph ... | head`)
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that whatever
    cleans up after an interrupt (temp files, checkpoints) cleans up after it too."""


def _on_sigterm(signum, frame):
    raise Terminated()


def consoles():
    """(stdout, stderr) rich consoles; also imports TensorFlow quietly, once.
    Off a terminal (a pipe, a file) lines are not wrapped: a reader or a grep
    gets each message whole; tables keep the width (COLUMNS, else 80)."""
    from rich.console import Console

    class Lines(Console):
        def print(self, *objects, **options):
            if not self.is_terminal and all(isinstance(o, str) for o in objects):
                options.setdefault("soft_wrap", True)
            return super().print(*objects, **options)

        def on_broken_pipe(self) -> None:  # rich's own exits 1
            self.quiet = True
            _pipe_closed()
            raise SystemExit(EXIT_PIPE_CLOSED)

    quiet_tensorflow()
    return Lines(), Lines(stderr=True)


def quiet_tensorflow() -> None:
    """Imports TensorFlow with file descriptor 2 muted: its C++ start-up lines
    (oneDNN, CUDA probing) are printed before any log level applies. Python
    errors still surface, after stderr is restored. MORPH_TF_LOGS=1 keeps them."""
    if "tensorflow" in sys.modules:
        return
    from morphcli.measure.runners import muted_stderr

    with muted_stderr():
        import tensorflow  # noqa: F401


def os_error_line(err: OSError) -> str:
    """An OSError in one line that keeps the system's reason ("No space left on
    device") and the file it concerns."""
    reason = err.strerror or " ".join(str(err).split())
    where = f": {err.filename}" if err.filename else ""
    return (f"Error: {reason}{where}. Nothing was left half-written (every output is "
            "written atomically). Hint: free space, fix the permissions or choose another "
            "output path.")


def _interrupted_line(ctx: click.Context, terminated: bool) -> str:
    """`Interrupted.`, with how to continue when the command can resume."""
    what = "Terminated (SIGTERM)." if terminated else "Interrupted."
    name = ctx.invoked_subcommand
    command = ctx.command.get_command(ctx, name) if name else None
    if command is not None and any(p.name == "resume" for p in command.params):
        what += f" Rerun the same `morph {name}` with --resume to continue where it stopped."
    return what


def _pipe_closed() -> None:
    """stdout's reader is gone: drop what is still buffered, silently."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class MorphGroup(click.Group):
    """A click group that ends every failure in one line and a documented exit code:
    a user error or a usage mistake 2, Ctrl-C 130, SIGTERM 143, a closed stdout
    pipe 141 (silently); anything else is a bug (traceback, 1)."""

    def invoke(self, ctx: click.Context):
        from morphcli.errors import MorphError

        try:
            return super().invoke(ctx)
        except MorphError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except OSError as err:  # read-only or full disk, permissions: the machine, not a bug
            if err.errno == errno.EPIPE:
                _pipe_closed()
                ctx.exit(EXIT_PIPE_CLOSED)
            click.echo(os_error_line(err), err=True)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt as err:
            terminated = isinstance(err, Terminated)
            click.echo(_interrupted_line(ctx, terminated), err=True)
            ctx.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        """click's `main`, with click's own messages (usage errors, Ctrl-C while
        parsing) turned into one line; SIGTERM is handled like Ctrl-C meanwhile."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        previous = _handle_sigterm()
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
            sys.stdout.flush()
        except click.UsageError as err:
            click.echo(f"Error: {err.format_message().rstrip('.')} (see "
                       f"{self._command_path(err, args)} --help)", err=True)
            code = EXIT_USER_ERROR
        except click.ClickException as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            code = err.exit_code
        except (click.Abort, KeyboardInterrupt) as err:
            terminated = isinstance(err, Terminated) or isinstance(err.__context__, Terminated)
            click.echo("Terminated (SIGTERM)." if terminated else "Interrupted.", err=True)
            code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        except BrokenPipeError:
            _pipe_closed()
            code = EXIT_PIPE_CLOSED
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(code if isinstance(code, int) else 0)

    def _command_path(self, err: click.UsageError, args) -> str:
        """`morph COMMAND` of a usage error (click gives some of them the group's
        context), or `morph` when no command was named."""
        if err.ctx is not None and err.ctx.command is not self:
            return " ".join(["morph", *err.ctx.command_path.split()[1:]])
        words = list(sys.argv[1:] if args is None else args)
        name = next((w for w in words if not w.startswith("-")), None)
        return f"morph {name}" if name in self.commands else "morph"


def _handle_sigterm():
    """Installs the SIGTERM handler (main thread only); returns the previous one."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (a test runner's worker)
        return None


def model_options(func):
    """--input-shape, --classes and --trust-code, shared by commands taking MODEL."""
    func = click.option("--trust-code", is_flag=True,
                        help="Allow Lambda layers and custom code in model files (unsafe: "
                             "runs code from the file).")(func)
    func = click.option("--classes", type=int, default=None,
                        help="Number of output classes for zoo:/applications: seeds.")(func)
    func = click.option("--input-shape", default=None, metavar="H,W,C",
                        help="Input shape without batch, e.g. 32,32,3. Needed for models "
                             "with a dynamic spatial input.")(func)
    return func


def load(spec: str, input_shape: str | None, classes: int | None, trust_code: bool):
    """MODEL loaded; --input-shape and --classes that contradict a model file are
    refused (they shape built seeds; a file keeps its own)."""
    from morphcli import api

    model = api.load_model(spec, input_shape=input_shape, classes=classes,
                           trust_code=trust_code)
    if not str(spec).startswith(("zoo:", "applications:")):
        _check_file_shapes(model, spec, input_shape, classes)
    return model


def _check_file_shapes(model, spec: str, input_shape: str | None, classes: int | None) -> None:
    import logging

    from morphcli.errors import ModelError
    from morphcli.models.zoo import parse_input_shape

    shape = parse_input_shape(input_shape)
    dims = tuple(model.inputs[0].shape[1:])
    if shape is not None and dims != tuple(shape):
        raise ModelError(f"--input-shape contradicts the file's fixed input shape {dims}. "
                         f"Received: --input-shape {input_shape}, MODEL={spec}",
                         hint="drop --input-shape: it only sets a dynamic input's size.")
    if classes is None:
        return
    outputs = {tuple(o.shape)[-1] for o in model.outputs}
    if outputs != {classes}:
        raise ModelError(f"--classes contradicts the file's output width(s) "
                         f"{sorted(outputs, key=str)}. Received: --classes {classes}, "
                         f"MODEL={spec}", hint="drop --classes: it shapes zoo: and "
                                               "applications: seeds, not model files.")
    logging.getLogger("morphcli").warning(
        f"--classes {classes} ignored: it shapes zoo: and applications: seeds; {spec} has "
        "its own (the same).")


def threads_option(help_text: str):
    """--threads, at most this machine's CPU cores: more threads than cores only
    wait for each other (10,000 threads on 2 cores ran 10x slower)."""
    def bounded(ctx, param, value):
        cores = os.cpu_count() or 1
        if value is not None and value > cores:
            raise click.BadParameter(f"{value} is more than this machine's {cores} CPU "
                                     "core(s); more threads than cores only wait for each "
                                     "other", ctx, param)
        return value

    return click.option("--threads", type=click.IntRange(1), default=None, help=help_text,
                        callback=bounded)


class RoundTo(click.ParamType):
    """`auto` or an integer >= 1."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"expected auto or an integer >= 1, got {value!r}", param, ctx)


ROUND_TO = RoundTo()
