"""What this machine is: its CPU, cores, system and TensorFlow (`machine`, what a
profile records and compares itself with), and the facts that bound what a
command may ask of it: its memory, and how much of it one tensor may take.

It sits in core because a profile (core) reads it; `morphcli.measure`, which
allocates and times, imports it from here."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

from morphcli.errors import MorphError

# The share of this machine's memory one tensor of the measured model may take
# at the batch asked: the runtime holds several at once (the input, its copy, a
# layer's output).
MEMORY_SHARE = 0.25
FLOAT_BYTES = 4  # float32


def machine() -> dict:
    """What a profile records about the machine and software that measured it."""
    import tensorflow as tf

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "tensorflow": tf.__version__}


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int:
    """This machine's physical memory (8 GiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def check_input_batch(label: str, shape, batch: int) -> None:
    """Refuses a `batch` whose input alone would take more than `MEMORY_SHARE`
    of this machine's memory (before it is allocated)."""
    need = batch * math.prod(int(d) for d in shape) * FLOAT_BYTES
    have = memory_bytes()
    if need > MEMORY_SHARE * have:
        raise MorphError(
            f"--batch {batch} needs {need / 2**30:.1f} GiB for the input of {label} alone, "
            f"more than {MEMORY_SHARE:.0%} of this machine's {have / 2**30:.1f} GiB. "
            f"Received: batch={batch}",
            hint=f"use --batch {max(1, int(MEMORY_SHARE * have // (need / batch)))} "
                 "or less.")
