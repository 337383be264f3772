"""`morph export`, `morph bench` and `morph profile` (`COMMANDS`, registered on the
`morph` group by the package's `__init__`)."""

from __future__ import annotations

import click

from morphcli.cli.common import consoles as _consoles
from morphcli.cli.common import load as _load
from morphcli.cli.common import model_options as _model_options
from morphcli.cli.common import threads_option
from morphcli.outputs import check_outputs
from morphcli.outputs import dumps as _dumps
from morphcli.steps.export import FORMATS, QUANTIZATIONS


def _new_output(model: str, out_path: str, overwrite: bool, folder: bool = False) -> None:
    """Refuses, before any work, an output that is an input, that exists without
    --overwrite, or that cannot be written; a `folder` (a SavedModel) is replaced
    whole, so it must hold no input and be one morph made."""
    where = {"-o": out_path}
    check_outputs({"MODEL": model}, {} if folder else where, where if folder else None,
                  overwrite=overwrite)


def _bar(err, label: str, described: bool = False):
    """A transient progress bar of counted calls, under 80 columns (off when the
    terminal is not one); `described` adds what is being measured."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = [TextColumn(f"[bold]{label}"), BarColumn(bar_width=24 if described else 30),
               MofNCompleteColumn()] + ([TextColumn("{task.description}")] if described else [])
    return Progress(*columns, console=err, transient=True, disable=not err.is_terminal)


@click.command()
@click.argument("model")
@click.option("-o", "--output", "out_path", required=True, type=click.Path(),
              help="Where to write: a .tflite file, or a folder for saved_model.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="tflite", show_default=True,
              help="tflite (a flatbuffer for TFLite) or saved_model (a TensorFlow folder).")
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default="none", show_default=True,
              help="TFLite only: float16 weights, or dynamic-range int8 weights.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the export record on stdout.")
@_model_options
def export(model, out_path, fmt, quantize, overwrite, as_json, input_shape, classes, trust_code):
    """Export MODEL for deployment and check it predicts what the Keras model does.

    Writes the model atomically, then runs the export and the Keras model on
    one random batch and prints the largest difference of their outputs
    (float32 exports must agree to 1e-4).

    \b
    Examples:
      morph export runs/demo/retrain/final.keras -o final.tflite
      morph export final.keras --quantize int8 -o final-int8.tflite
      morph export final.keras --format saved_model -o final_saved_model
    """
    from morphcli.steps.export import export as export_step

    out, err = _consoles()
    _new_output(model, out_path, overwrite, folder=fmt == "saved_model")
    result = export_step(_load(model, input_shape, classes, trust_code), out_path, fmt, quantize)
    if as_json:
        click.echo(_dumps(vars(result)))
        return
    err.print(f"wrote {result.path} ({fmt}, {quantize}, {result.bytes:,} bytes); largest "
              f"|export - keras| on {result.checked_on} random examples: "
              f"{result.max_abs_delta:.3g}", markup=False, highlight=False)


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="Examples per call.")
@threads_option("TFLite interpreter threads, at most the CPU cores (default: TFLite's).")
@click.option("--repeats", type=click.IntRange(1), default=50, show_default=True,
              help="Timed calls (of each model).")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True,
              help="Untimed calls first.")
@click.option("--processes", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Time in this many fresh processes, one after another, and print the "
                   "median of theirs, as `expand --measure` times (3). Run it several times "
                   "to see how far this machine's clock moves.")
@click.option("--trust-code", is_flag=True, help="Allow custom code in a .keras file (unsafe).")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements on stdout: a list, one object per PATH.")
def bench(paths, batch, threads, repeats, warmup, processes, trust_code, as_json):
    """Measure the end-to-end latency of .keras, .tflite or SavedModel files here.

    Times one call at a time on a random batch, after warm-up calls, and prints
    the median with the 10th and 90th percentiles. Given several models, it
    times them interleaved call by call (A, B, A, B), so that they meet the
    machine's other load alike, and prints each one's latency relative to the
    first (the median of the per-round ratios): compare models this way.

    \b
    Examples:
      morph bench final.tflite --threads 2
      morph bench seed.tflite small.tflite --threads 2 --repeats 200
      morph bench seed.tflite small.tflite --threads 2 --processes 3
      morph bench runs/demo/retrain/final.keras --batch 8 --json
    """
    from morphcli.measure.bench import bench_many
    from morphcli.measure.isolated import time_files

    out, err = _consoles()
    with _bar(err, "bench") as bar:
        if processes > 1:  # the workers' start, then each one's timing
            task = bar.add_task("bench", total=processes + 1)
            results = time_files(list(paths), processes, batch=batch, threads=threads,
                                 warmup=warmup, repeats=repeats, trust_code=trust_code,
                                 progress=lambda: bar.advance(task))
        else:
            task = bar.add_task("bench", total=(warmup + repeats) * len(paths))
            results = bench_many(list(paths), batch=batch, threads=threads, warmup=warmup,
                                 repeats=repeats, progress=lambda n: bar.advance(task, n),
                                 trust_code=trust_code)
    if as_json:
        click.echo(_dumps([r.to_dict() for r in results]))  # a list, however many
        return
    per_process = f" in each of {processes} processes, medians of theirs" if processes > 1 else ""
    for result in results:
        line = (f"{result.runtime}, batch {batch}: median {result.median_s * 1e3:.3f} ms "
                f"(10th-90th percentile {result.p10_s * 1e3:.3f}-{result.p90_s * 1e3:.3f} ms, "
                f"{repeats} calls{per_process})")
        if len(results) > 1:
            line = f"{result.path}: {line}"
        if result.ratio is not None:
            line += (f"; {result.ratio:.3f}x the first (10th-90th percentile "
                     f"{result.ratio_p10:.3f}-{result.ratio_p90:.3f})")
        out.print(line, markup=False, highlight=False)


@click.command()
@click.argument("model")
@click.option("-o", "--output", "out_path", required=True, type=click.Path(),
              help="Where to write the profile (JSON).")
@click.option("--runtime", type=click.Choice(("tflite", "keras")), default="tflite",
              show_default=True, help="What runs the model in deployment.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="Examples per call.")
@threads_option("TFLite interpreter threads, at most the CPU cores (default: TFLite's).")
@click.option("--repeats", type=click.IntRange(1), default=15, show_default=True,
              help="Timed calls per measurement (the median is kept).")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True,
              help="Untimed calls before each measurement.")
@click.option("--round-to", type=click.IntRange(1), default=None,
              help="The channel step latency falls in (default: measured by a sweep).")
@click.option("--overwrite", is_flag=True, help="Replace an existing profile.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile's summary on stdout.")
@_model_options
def profile(model, out_path, runtime, batch, threads, repeats, warmup, round_to, overwrite,
            as_json, input_shape, classes, trust_code):
    """Measure MODEL's layers on this machine, at several widths, into a profile.

    Every distinct layer (with the batch norm and activation fused after it)
    is timed at a grid of input and output widths, in the runtime you deploy
    on; identical layers are measured once. The whole model is timed too, and
    the profile's prediction for it is printed beside the measurement. Use the
    file as a device: --hardware profile:PATH on report and expand, or
    `target: {metric: latency, hardware: profile:PATH}` in a config. Run it on
    the device you deploy to and copy the file back.

    \b
    Examples:
      morph profile zoo:resnet20 --threads 2 -o resnet20.profile.json
      morph expand zoo:resnet20 --target latency=50% \\
          --hardware profile:resnet20.profile.json -o fast.keras
    """
    from morphcli import files
    from morphcli.steps.profile import OVERHEAD_CAP
    from morphcli.steps.profile import profile as profile_step

    out, err = _consoles()
    _new_output(model, out_path, overwrite)
    seed = _load(model, input_shape, classes, trust_code)
    with _bar(err, "profile", described=True) as bar:
        task = bar.add_task("", total=None, visible=False)  # shown once its total is known
        result = profile_step(
            seed, runtime=runtime, batch=batch, threads=threads, warmup=warmup,
            repeats=repeats, round_to=round_to,
            plan=lambda n: bar.update(task, total=n, visible=True),
            progress=lambda done, what: bar.update(task, completed=done,
                                                   description=what[:28]))
    result.path = out_path
    files.write_json(out_path, result.to_dict())
    summary = {"path": out_path, "runtime": runtime, "threads": threads, "batch": batch,
               "round_to": result.round_to, "scale": result.scale, "fixed_s": result.fixed_s,
               "curve": result.curve,
               **result.model}
    if as_json:
        click.echo(_dumps(summary))
        return
    m = result.model
    err.print(f"wrote {out_path}: {m['distinct_units']} distinct of {m['units']} layers "
              f"measured ({runtime}); latency falls in steps of {result.round_to} channel(s)",
              markup=False, highlight=False)
    if m["overhead_measured_s"] > result.overhead_s:
        err.print(f"warning: a call with no layers measured {m['overhead_measured_s'] * 1e3:.3f}"
                  f" ms, not less than the model's own {m['measured_s'] * 1e3:.3f} ms: its "
                  "layers' time is below this machine's noise, so the profile takes them as "
                  f"{1 - OVERHEAD_CAP:.0%} of it and a latency target on it cannot be trusted "
                  "(profile on a quieter machine, or with a larger input or batch)",
                  markup=False, highlight=False)
    out.print(f"{m['name']}: measured {m['measured_s'] * 1e3:.3f} ms (10th-90th percentile "
              f"{m['p10_s'] * 1e3:.3f}-{m['p90_s'] * 1e3:.3f}); sum of its layers "
              f"{m['unscaled_s'] * 1e3:.3f} ms", markup=False, highlight=False)
    for n in m.get("narrower", []):
        out.print(f"a version at {n['flops_share']:.0%} of its FLOPs: measured "
                  f"{n['measured_s'] * 1e3:.3f} ms, sum of its layers "
                  f"{n['unscaled_s'] * 1e3:.3f} ms", markup=False, highlight=False)
    if result.curve:
        out.print(f"so the profile prices a model on the curve through {len(result.curve)} of "
                  "them, from the sum of its layers to the time measured", markup=False,
                  highlight=False)
    else:
        out.print(f"so the profile prices a model as {result.scale:.3f} x its layers + "
                  f"{result.fixed_s * 1e3:.3f} ms per call", markup=False, highlight=False)


COMMANDS = (export, bench, profile)
