"""Reports: per-layer and total costs as data, rich tables, JSON, Markdown and plots.

`build_report` turns a channel graph and its cost model into plain data (a
`Report`); everything else renders that data. Renderers return rich
renderables or strings and never print: the CLI decides where output goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from morphcli.core.costs import CostModel
from morphcli.core.graph import ChannelGraph
from morphcli.core.rules import Kind

# Set by morphcli.models.applications (INPUT_NOTE) on a model built at its default
# size because its input was dynamic; spelled out here, models/ sits below reporting.py.
INPUT_NOTE = "morph_input_note"

TOTAL_KEYS = ("flops", "macs", "params", "kernel_params", "latency_s")


def total_key(metric: str) -> str:
    """The `totals` key of a target metric (latency is in seconds: ``latency_s``)."""
    return {"latency": "latency_s"}.get(metric, metric)


@dataclass
class Report:
    """Costs of one model (or one structure of it), per layer and in total."""

    name: str
    input_shape: tuple[int, ...]
    hardware: str
    totals: dict[str, float]
    layers: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    # Said in the header: e.g. that the input shape is a default, or which
    # layers are priced by the profiler.
    notes: list[str] = field(default_factory=list)
    # How latency is priced: "roofline, T4" or "measured, tflite, 2 threads, ...".
    latency_label: str = ""

    def layer(self, name: str) -> dict | None:
        return next((row for row in self.layers if row["name"] == name), None)


def build_report(graph: ChannelGraph, costs: CostModel, widths: Mapping[int, int] | None = None,
                 name: str | None = None) -> Report:
    """Prices every layer of `graph` at `widths` (default: the seed's).

    Returns:
        A `Report` whose `layers` holds one row per layer call that has
        weights or does arithmetic, and whose `groups` lists every channel group.
    """
    per = {r: costs.per_layer(r, widths) for r in ("flops", "macs", "params", "latency")}
    total_flops = float(per["flops"].sum()) or 1.0
    total_latency = float(per["latency"].sum()) or 1.0
    layers = []
    for i, node in enumerate(graph.nodes):
        if not (per["flops"][i] or per["params"][i]):
            continue
        layers.append({
            "name": node.name, "type": node.type,
            "channels_in": int(graph.width(node.inputs[0], widths)) if node.inputs else 0,
            "channels_out": int(graph.width(node.outputs[0], widths)),
            "flops": int(round(per["flops"][i])), "macs": int(round(per["macs"][i])),
            "params": int(round(per["params"][i])), "latency_s": float(per["latency"][i]),
            "share": float(per["flops"][i] / total_flops),
            "latency_share": float(per["latency"][i] / total_latency),
            "sets_width": node.kind == Kind.SOURCE,
            "priced_by": "profiler" if node.rule is None else "rule",
        })
    groups = [{
        "id": g.id, "width": int((widths or {}).get(g.id, g.width)), "seed_width": g.width,
        "prunable": g.prunable, "frozen": g.frozen, "sources": g.sources, "layers": g.members,
    } for g in graph.groups.values()]
    totals = {
        "flops": int(round(per["flops"].sum())), "macs": int(round(per["macs"].sum())),
        "params": int(round(per["params"].sum())),
        "kernel_params": int(round(costs.total("kernel_params", widths))),
        "latency_s": float(per["latency"].sum()),
    }
    input_shape = tuple(int(d) for d in graph.model.inputs[0].shape[1:])
    notes = [f"input {note}" for note in [getattr(graph.model, INPUT_NOTE, None)] if note]
    profiled = [n.name for n in graph.nodes if n.rule is None and n.profiled_flops is not None]
    if profiled:
        notes.append(f"priced by the profiler, frozen: no channel rule: {', '.join(profiled)}")
    if costs.profile is not None:
        notes += costs.profile.warnings()
    return Report(name or graph.model.name, input_shape, costs.hardware.name, totals, layers,
                  groups, notes, costs.hardware.label)


def analyze(model, *, hardware: str | None = "cpu", structure: str | Path | None = None,
            widths: Mapping[int, int] | None = None, name: str | None = None) -> Report:
    """The `Report` of a Keras model (`morphcli.analyze`)."""
    from morphcli.core import structure as struct
    from morphcli.core.graph import build_graph

    graph = build_graph(model)
    if structure is not None:
        widths = struct.load(structure).widths_for(graph)
        name = name or f"{model.name} (structure)"
    return build_report(graph, CostModel(graph, hardware), widths, name=name)


def to_json(report: Report, other: Report | None = None) -> dict:
    """JSON-ready dict; with `other`, both models and the after/before ratios."""
    data = asdict(report)
    data["input_shape"] = list(report.input_shape)
    if other is None:
        return data
    return {"before": data, "after": to_json(other), "ratio": ratios(report, other)}


def ratios(before: Report, after: Report) -> dict[str, float | None]:
    return {k: (after.totals[k] / before.totals[k] if before.totals[k] else None)
            for k in TOTAL_KEYS}


# -- formatting ------------------------------------------------------------------

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def human(value: float) -> str:
    """1234567 -> '1.23M'."""
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.4g}" if isinstance(value, float) and not value.is_integer() else f"{value:,.0f}"


def seconds(value: float) -> str:
    """Latency with a readable unit: 0.00123 -> '1.23 ms'."""
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value * 1e9:.3g} ns"


def _fmt(key: str, value: float) -> str:
    return seconds(value) if key == "latency_s" else human(value)


# -- rich tables -------------------------------------------------------------------


def layer_table(report: Report, limit: int | None = None):
    """Per-layer rich table; `limit` keeps the most expensive layers (by FLOPs)."""
    from rich.markup import escape
    from rich.table import Table

    rows = report.layers
    if limit is not None and len(rows) > limit:
        keep = {r["name"] for r in sorted(rows, key=lambda r: -r["flops"])[:limit]}
        rows = [r for r in rows if r["name"] in keep]
    title = f"{escape(report.name)}  input {report.input_shape}  latency on {report.hardware}"
    title += "".join(f"\n{escape(note)}" for note in report.notes)
    table = Table(title=title, show_footer=True)
    table.add_column("layer", footer="total")
    table.add_column("type")
    table.add_column("channels", justify="right")
    for key, label in (("flops", "FLOPs"), ("params", "params"), ("latency_s", "latency")):
        table.add_column(label, justify="right", footer=_fmt(key, report.totals[key]))
    # On a measured device the share is of the latency: what the user budgets there.
    measured = report.latency_label.startswith("measured")
    share = "latency_share" if measured else "share"
    table.add_column("share", justify="right")
    for r in rows:
        table.add_row(escape(r["name"]), r["type"], f"{r['channels_in']} → {r['channels_out']}",
                      human(r["flops"]), human(r["params"]), seconds(r["latency_s"]),
                      f"{r.get(share, r['share']):.1%}")
    caption = [f"share: of the {'latency' if measured else 'FLOPs'}"]
    if len(rows) < len(report.layers):
        caption.append(f"{len(rows)} most expensive of {len(report.layers)} layers "
                       "(--all shows all)")
    table.caption = "; ".join(caption)
    return table


def totals_table(report: Report):
    from rich.table import Table

    table = Table(title="totals (per example)")
    table.add_column("resource")
    table.add_column("value", justify="right")
    labels = {"flops": "FLOPs (TF profiler count)", "macs": "MACs (conv/dense)",
              "params": "params (all weights)", "kernel_params": "params (kernels only)",
              "latency_s": f"latency ({report.latency_label or report.hardware})"}
    for key in TOTAL_KEYS:
        value = report.totals[key]
        exact = "" if key == "latency_s" else f"  ({value:,})"
        table.add_row(labels[key], _fmt(key, value) + exact)
    return table


def groups_table(report: Report):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="channel groups (channels that live or die together)")
    for col in ("group", "width", "state", "layers"):
        table.add_column(col, justify="right" if col in ("group", "width") else "left")
    for g in report.groups:
        width = str(g["width"]) if g["width"] == g["seed_width"] else f"{g['width']}/{g['seed_width']}"
        state = "prunable" if g["prunable"] else "frozen: " + "; ".join(g["frozen"])
        members = ", ".join(g["layers"][:6]) + (f" (+{len(g['layers']) - 6})"
                                                 if len(g["layers"]) > 6 else "")
        table.add_row(str(g["id"]), width, escape(state), escape(members))
    return table


def compare_table(before: Report, after: Report):
    """Per-layer widths and costs of `after`, with ratios to `before`; totals in the footer."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{escape(before.name)} → {escape(after.name)}", show_footer=True,
                  caption="layers that set a width; values of the second model, "
                          "× = second / first")
    # Names wrap past 16 characters and totals take two lines: eight columns fit 80.
    table.add_column("layer", footer="total", max_width=16, overflow="fold")
    table.add_column("channels", justify="right")
    foot = ratios(before, after)
    for key, label in (("flops", "FLOPs"), ("params", "params"), ("latency_s", "latency")):
        footer = f"{_fmt(key, before.totals[key])}\n→ {_fmt(key, after.totals[key])}"
        table.add_column(label, justify="right", footer=footer)
        table.add_column("×", justify="right", footer=_ratio(foot[key]))
    for row in before.layers:
        other = after.layer(row["name"])
        if other is None or not row["sets_width"]:
            continue
        cells = [escape(row["name"]), f"{row['channels_out']} → {other['channels_out']}"]
        for key in ("flops", "params", "latency_s"):
            cells += [_fmt(key, other[key]), _ratio(other[key] / row[key] if row[key] else None)]
        table.add_row(*cells)
    return table


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


# -- markdown and plots ------------------------------------------------------------


def to_markdown(report: Report, other: Report | None = None) -> str:
    """A Markdown report: totals, then per-layer rows (side by side with `other`)."""
    lines = [f"# morph report: {report.name}", "",
             f"Input {report.input_shape}; latency: {report.latency_label or report.hardware}.",
             ""]
    lines += [f"{note[0].upper()}{note[1:]}." for note in report.notes] + [""] * bool(report.notes)
    if other is None:
        lines += ["| resource | value |", "| --- | ---: |"]
        lines += [f"| {k} | {_fmt(k, report.totals[k])} |" for k in TOTAL_KEYS]
        lines += ["", "| layer | type | channels | FLOPs | params | latency |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['name']} | {r['type']} | {r['channels_in']} → {r['channels_out']} | "
                  f"{human(r['flops'])} | {human(r['params'])} | {seconds(r['latency_s'])} |"
                  for r in report.layers]
        return "\n".join(lines) + "\n"
    ratio = ratios(report, other)
    lines += [f"| resource | {report.name} | {other.name} | ratio |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {_fmt(k, report.totals[k])} | {_fmt(k, other.totals[k])} | "
              f"{_ratio(ratio[k])} |" for k in TOTAL_KEYS]
    lines += ["", f"| layer | channels {report.name} | channels {other.name} | FLOPs | FLOPs after |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for r in report.layers:
        o = other.layer(r["name"])
        if o is not None:
            lines.append(f"| {r['name']} | {r['channels_out']} | {o['channels_out']} | "
                         f"{human(r['flops'])} | {human(o['flops'])} |")
    return "\n".join(lines) + "\n"


def plot_widths(path: str | Path, reports: Sequence[Report]) -> None:
    """Bar chart of output channels per width-setting layer, one bar per report.

    This is the picture the MorphNet paper uses to show a learned structure.
    Written atomically as PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from morphcli.files import atomic_path

    base = [r for r in reports[0].layers if r["sets_width"]]
    names = [r["name"] for r in base]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names) + 2), 4.2))
    width = 0.8 / len(reports)
    x = np.arange(len(names))
    for i, rep in enumerate(reports):
        values = [(rep.layer(n) or {}).get("channels_out", 0) for n in names]
        ax.bar(x + (i - (len(reports) - 1) / 2) * width, values, width, label=rep.name)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title("channels per layer")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)



# ---------------------------------------------------------------------------
# Results of trained models (`morph retrain`, `morph run`): cost and accuracy.

_RESULT_COLUMNS = ("model", "FLOPs", "params", "latency", "measured", "val accuracy")


UNUSABLE_MARK = "✗"
UNUSABLE_NOTE = (f"{UNUSABLE_MARK} near chance on validation while it fits the training data: "
                 "not usable")


def _result_cells(row: Mapping) -> list[str]:
    acc, measured = row.get("val_accuracy"), row.get("measured_latency_s")
    mark = f" {UNUSABLE_MARK}" if row.get("usable") is False else ""
    return [human(row["flops"]), human(row["params"]), seconds(row["latency_s"]),
            "—" if measured is None else seconds(measured),
            "—" if acc is None else f"{acc:.2%}{mark}"]


def measured_note(data: Mapping) -> str | None:
    """What the measured column is: "measured: median of 50 calls, tflite, 2 threads"."""
    how = data.get("measured")
    if not how:
        return None
    threads = f", {how['threads']} threads" if how.get("threads") else ""
    return (f"latency: {how['estimate']}; measured: median of {how['repeats']} calls on this "
            f"machine, {how['runtime']}{threads}, batch {how['batch']}")


FEW_IMAGES = 3  # a gap of fewer examples than this is called noise


def compare(rows: Mapping[str, Mapping], metric: str, val_size: int, select_size: int = 0,
            names: tuple[str, str] = ("morphnet", "uniform baseline"),
            same: bool = False) -> dict:
    """Which of two trained models is better, and by how much.

    The choice is made on the selection split (training examples held out, never
    trained on; `select_accuracy`) when both models have a score there, so that
    the validation accuracy reported is never what chose; without a selection
    split it falls back to validation and says so (`chosen_on`). The better is
    the one that classifies more examples right; at an equal count, the one that
    costs less in `metric`, then MorphNet's. The gap is also given in examples,
    and called `close` when it is below `FEW_IMAGES`: then the data cannot tell
    the two apart. A model marked not usable (`usable: false`) means no winner.
    `same`: the two are one structure, retrained once (`same_structure`): no gap.
    """
    first, second = (rows[n] for n in names)
    a, b = first.get("val_accuracy"), second.get("val_accuracy")
    if a is None or b is None or not val_size:
        return {"best": None, "why": "no validation data to compare on"}
    broken = [n for n in names if rows[n].get("usable") is False]
    if broken:
        return {"best": None, "unusable": broken, "why": " and ".join(
            f"{n} scores near chance on validation ({rows[n]['val_accuracy']:.1%}, "
            f"{rows[n].get('train_accuracy') or 0:.1%} on training)" for n in broken)
            + ": not usable"}
    sa, sb = first.get("select_accuracy"), second.get("select_accuracy")
    on_selection = sa is not None and sb is not None and select_size > 0
    if same:
        return {"best": names[0], "other": names[1], "names": list(names),
                "same_structure": True, "difference": 0.0, "images": 0,
                "val_size": int(val_size), "close": True,
                "chosen_on": "selection" if on_selection else "validation",
                "why": f"{names[0]} is the uniform structure, retrained once"}
    split, (ca, cb, size) = (("selection", (sa, sb, select_size)) if on_selection
                             else ("validation", (a, b, val_size)))
    key = total_key(metric)
    chosen = round(ca * size) - round(cb * size)
    if chosen:
        best = names[0] if chosen > 0 else names[1]
        why = f"more {split} examples right"
    else:
        cheaper = second.get(key, 0) < first.get(key, 0)
        best = names[1] if cheaper else names[0]
        why = f"as many {split} examples right, lower {metric}" if cheaper else \
            f"as many {split} examples right"
    result = {"best": best, "other": names[1] if best == names[0] else names[0],
              "names": list(names),
              "difference": a - b, "images": round(a * val_size) - round(b * val_size),
              "val_size": int(val_size), "chosen_on": split, "chosen_images": chosen,
              "chosen_size": int(size), "close": abs(chosen) < FEW_IMAGES, "why": why}
    if on_selection:
        result["select_difference"] = sa - sb
    return result


def comparison_line(comparison: Mapping) -> str:
    """One sentence on who won, for the console and report.md."""
    if comparison.get("best") is None:
        return f"no winner: {comparison.get('why', 'no baseline')}"
    images, n = comparison["images"], comparison["val_size"]
    split = comparison.get("chosen_on", "validation")
    first = (comparison.get("names") or ["morphnet"])[0]
    if comparison.get("same_structure"):
        return (f"best: {first}, which is the uniform baseline (one structure, retrained "
                f"once, not twice)")
    if split == "selection":
        line = (f"best: {comparison['best']} ({comparison['why']}: "
                f"{comparison['chosen_images']:+d} of {comparison['chosen_size']:,}); "
                f"on validation, which did not choose: {first} − uniform = "
                f"{comparison['difference']:+.2%}, {images:+d} of {n:,} examples")
    else:
        line = (f"best: {comparison['best']} ({comparison['why']}: {first} − uniform = "
                f"{comparison['difference']:+.2%}, {images:+d} of {n:,} examples; "
                "no selection split, so validation chose)")
    if comparison["close"]:
        line += (f"; the gap is under {FEW_IMAGES} {split} examples, so the two are "
                 "indistinguishable on these data")
    return line


def results_table(rows: Mapping[str, Mapping], best: str | None = None,
                  note: str | None = None):
    """A rich table of trained models: name -> totals plus `val_accuracy` (and
    `measured_latency_s`); `best` is marked with a star; `note` goes under the title."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="results" + (f"\n{escape(note)}" if note else ""))
    for col in _RESULT_COLUMNS:
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, row in rows.items():
        table.add_row(escape(name + (" *" if name == best else "")), *_result_cells(row))
    captions = (["* the better of the two trained models (see the line below)"]
                if best is not None else [])
    if any(row.get("usable") is False for row in rows.values()):
        captions.append(UNUSABLE_NOTE)
    if captions:
        table.caption = "\n".join(captions)
    return table


def results_markdown(data: Mapping) -> str:
    """The comparison table of a run's report.json data: cost and accuracy of each model."""
    metric, target = data["target"]["metric"], data["target"]["value"]
    target_text = seconds(target) if metric == "latency" else human(target)
    lines = [f"# morph run: {metric} target {target_text}", "",
             "| " + " | ".join(_RESULT_COLUMNS) + " |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    best = (data.get("comparison") or {}).get("best")
    for name, row in data["models"].items():
        mark = " **(best)**" if name == best else ""
        lines.append(f"| {name}{mark} | " + " | ".join(_result_cells(row)) + " |")
    if any(row.get("usable") is False for row in data["models"].values()):
        lines += ["", UNUSABLE_NOTE + "."]
    if measured_note(data):
        lines += ["", measured_note(data)[0].upper() + measured_note(data)[1:] + "."]
    if data.get("comparison"):
        lines += ["", comparison_line(data["comparison"]) + "."]
        if data["comparison"].get("file"):
            lines.append(f"The better model is also written as `{data['comparison']['file']}`.")
    return "\n".join(lines) + "\n"
