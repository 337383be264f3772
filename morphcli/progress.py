"""Training progress on the terminal, for the CLI only (library code never prints).

`EpochProgress` is a Keras callback: a rich progress bar over all training
steps on a terminal, and one plain line per epoch elsewhere (logs, CI), both
on stderr so that stdout stays clean for data.
"""

from __future__ import annotations


def epoch_progress(console, title: str, epochs: int):
    """A Keras callback showing `title` progress on `console` (stderr)."""
    import keras
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class EpochProgress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.live = console.is_terminal
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=12), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console, transient=False, disable=not self.live)
            self.task = None

        def on_train_begin(self, logs=None):
            steps = self.params.get("steps") or 1
            self.progress.start()
            self.task = self.progress.add_task(title, total=epochs * steps, info="")
            # Resumed runs start later: show the epochs already done.
            start = getattr(self.model, "_initial_epoch", 0) or 0
            self.progress.update(self.task, completed=start * steps)

        def on_train_batch_end(self, batch, logs=None):
            self.progress.advance(self.task)

        def on_epoch_end(self, epoch, logs=None):
            info = _fmt_logs(logs or {})
            steps = self.params.get("steps") or 1
            self.progress.update(self.task, completed=(epoch + 1) * steps,
                                 info=_fmt_logs(logs or {}, short=True))
            if not self.live:
                console.print(f"{title}: epoch {epoch + 1}/{epochs} {info}", markup=False,
                              highlight=False, soft_wrap=True)

        def on_train_end(self, logs=None):
            self.progress.stop()

    return EpochProgress()


def _fmt_logs(logs: dict, short: bool = False) -> str:
    """One epoch's numbers; `short` fits the live bar on an 80-column terminal."""
    parts = []
    keys = ("accuracy", "val_accuracy") if short else ("loss", "reg_loss", "accuracy",
                                                       "val_accuracy")
    for key in keys:
        if key in logs:
            value = float(logs[key])
            name = {"accuracy": "acc", "val_accuracy": "val"}[key] if short else key
            parts.append(f"{name} {value:.1%}" if "accuracy" in key else f"{name} {value:.3g}")
    if "alive_fraction" in logs:
        alive = f"alive {float(logs['alive_fraction']):.0%}"
        if "target_fraction" in logs:  # the target-aware shrink: where it aims now
            alive += f"->{float(logs['target_fraction']):.0%}"
        parts.append(alive)
    if "lambda" in logs and not short:
        parts.append(f"lambda {float(logs['lambda']):.3g}")
    return "  ".join(parts) if not short else " ".join(parts)
