"""The architecture, enforced: which package may import which, no import cycle
inside the package, Keras internals in one module only, and one `morph run`
building each model's graph and the strategy once."""

from __future__ import annotations

import ast
import collections
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "morphcli"

# Each layer and what it may import from morphcli (besides itself). Arrows point
# down only: core is pure model arithmetic; training and models sit on it; config
# takes its choice lists from them; reporting renders core's numbers; measure
# converts and times models; steps use all of those; api and the CLI are the shells on top.
BASE_MODULES = {"errors", "files"}
BASE = {"base"}
ALLOWED = {
    "base": BASE,
    "core": BASE | {"core"},
    "models": BASE | {"core", "models"},
    "training": BASE | {"core", "training"},
    "config": BASE | {"core", "models", "training", "config"},
    "report": BASE | {"core", "report"},
    "measure": BASE | {"core", "models", "measure"},
    "steps": BASE | {"core", "models", "training", "config", "report", "measure", "steps"},
    "api": BASE | {"core", "models", "training", "config", "report", "measure", "steps", "api"},
    "cli": None,  # the top: anything
}
KERAS_PRIVATE = {"_nodes_by_depth", "_inbound_nodes", "_outbound_nodes", "_functional",
                 "_maybe_symbolic_build", "_keras_history", "_tracker", "_layers"}
ADAPTER = "core/keras_adapter.py"


def layer_of(rel: str) -> str:
    parts = Path(rel).with_suffix("").parts
    if parts[0] in {"core", "models", "training", "config", "measure", "steps"}:
        return parts[0]
    name = parts[0]
    if name in BASE_MODULES:
        return "base"
    return {"reporting": "report", "api": "api", "shrinker": "api", "__init__": "api"}.get(name, "cli")


def target_layer(module: str) -> str:
    parts = module.split(".")[1:]
    return layer_of("/".join(parts) + ".py") if parts else "api"


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def morphcli_imports(tree) -> list[tuple[int, str]]:
    """Every morphcli module a file imports, at any depth (function-level too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "morphcli":
                found += [(node.lineno, f"morphcli.{a.name}") for a in node.names]
            elif node.module.startswith("morphcli."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("morphcli")]
    return found


def test_layers_import_only_downwards():
    wrong = []
    for rel, tree in modules():
        allowed = ALLOWED[layer_of(rel)]
        if allowed is None:
            continue
        for line, module in morphcli_imports(tree):
            if target_layer(module) not in allowed:
                wrong.append(f"{rel}:{line} ({layer_of(rel)}) imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_layering_check_catches_an_upward_import():
    tree = ast.parse("def f():\n    from morphcli.steps.shrink import shrink\n")
    (line, module), = morphcli_imports(tree)
    assert (line, target_layer(module)) == (2, "steps")
    assert target_layer(module) not in ALLOWED[layer_of("core/graph.py")]
    assert layer_of("config/schema.py") == "config" and layer_of("cli/pipeline.py") == "cli"


def node_of(rel: str) -> str:
    """A module's node in the import graph: its dotted name (a package's
    `__init__` is a node of its own, `morphcli.core.__init__`)."""
    return ".".join(("morphcli", *Path(rel).with_suffix("").parts))


def import_graph(files) -> dict[str, dict[str, int]]:
    """Module -> {imported module: line of the first such import}, for every import
    of a morphcli module (function-level and `TYPE_CHECKING` ones too). `from
    morphcli.x import y` is an edge to `morphcli.x.y` when that is a module, else to
    `morphcli.x` (its `__init__` when `x` is a package); importing a submodule is
    not counted as importing its package's `__init__`."""
    files = dict(files)
    nodes = {node_of(rel) for rel in files}

    def resolve(module: str) -> str | None:
        return next((m for m in (module, module + ".__init__") if m in nodes), None)

    graph: dict[str, dict[str, int]] = {}
    for rel, tree in files.items():
        package = node_of(rel).split(".")[:-1]
        edges = graph.setdefault(node_of(rel), {})
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) + 1 - node.level] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                targets = [resolve(f"{module}.{a.name}") or resolve(module) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            for target in targets:
                if target is not None:
                    edges.setdefault(target, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component with a cycle (Tarjan's algorithm), each
    named by a shortest cycle through its first member, `[a, b, a]`; sorted."""
    index, low, stack, found = {}, {}, [], []

    def visit(v):  # recursive: the package's graph is shallow
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            if len(component) > 1 or v in graph.get(v, {}):
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_one_cycle(graph, c) for c in found)


def _one_cycle(graph, component: set[str]) -> list[str]:
    """A shortest cycle from the component's first member back to it, inside it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w == start:
                    return [*paths[v], start]
                if w in component and w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(component)  # a strongly connected component always has one


def describe(graph, cycle: list[str]) -> str:
    """`a.py:12 -> b.py:30 -> a.py`: each module with the line of its import."""
    def short(module: str) -> str:
        return module.removeprefix("morphcli.").replace(".", "/") + ".py"

    steps = [f"{short(a)}:{graph[a][b]}" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, short(cycle[-1])])


# Cycles that another change removes, each named by its members (empty when none).
# None today: the steps' expand -> export -> profile -> expand was cut when export
# stopped importing profile and clock (commit ebca956).
ALLOWED_CYCLES: set[frozenset[str]] = set()


def test_no_import_cycles():
    graph = import_graph(modules())
    found = [c for c in cycles(graph) if frozenset(c) not in ALLOWED_CYCLES]
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


def test_the_cycle_check_finds_function_level_and_package_cycles():
    files = {
        "core/a.py": "from morphcli.core import b\n",
        "core/b.py": "def f():\n    from morphcli.core.c import x\n",
        "core/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from morphcli.core.a import A\n",
        "core/d.py": "import morphcli.core\n",
        "core/__init__.py": "from .d import y\n",
        "core/e.py": "from morphcli.core.a import A\n",  # into a cycle, not on one
    }
    graph = import_graph((rel, ast.parse(text)) for rel, text in files.items())
    assert graph["morphcli.core.b"] == {"morphcli.core.c": 2}
    assert cycles(graph) == [
        ["morphcli.core.__init__", "morphcli.core.d", "morphcli.core.__init__"],
        ["morphcli.core.a", "morphcli.core.b", "morphcli.core.c", "morphcli.core.a"],
    ]
    assert describe(graph, cycles(graph)[1]) == "core/a.py:1 -> core/b.py:2 -> core/c.py:3 -> core/a.py"


def test_keras_internals_only_in_the_adapter():
    wrong = []
    for rel, tree in modules():
        if rel == ADAPTER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
                wrong.append(f"{rel}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Import):
                wrong += [f"{rel}:{node.lineno} imports {a.name}" for a in node.names
                          if a.name.startswith("keras.src")]
            elif isinstance(node, ast.Attribute) and node.attr in KERAS_PRIVATE:
                wrong.append(f"{rel}:{node.lineno} reads .{node.attr}")
            elif isinstance(node, ast.FunctionDef) and node.name in KERAS_PRIVATE:
                wrong.append(f"{rel}:{node.lineno} overrides {node.name}")
    assert not wrong, "\n".join(wrong)


def test_modules_stay_readable():
    long = {rel: n for rel, n in ((p.relative_to(PACKAGE).as_posix(),
                                   len(p.read_text().splitlines()))
                                  for p in PACKAGE.rglob("*.py")) if n > 540}
    assert not long, long


CLI = "morphcli.cli."
CLI_INIT, CLI_MAIN, CLI_COMMON = CLI + "__init__", CLI + "__main__", CLI + "common"


def cli_import_errors(graph: dict[str, dict[str, int]]) -> list[str]:
    """How `graph` breaks the one way the CLI package is imported: its `__init__`
    (the `morph` group) imports every command module and registers its commands;
    a command module imports only `common` from the package (never `__init__`,
    never another command); `common` imports nothing of the package; outside it,
    only the package itself (`morphcli.cli`, its `__init__`) is imported, and
    `cli/__main__.py` (`python -m morphcli.cli`) imports that too."""
    def allowed(module: str) -> set[str]:
        if not module.startswith(CLI) or module == CLI_MAIN:
            return {CLI_INIT}
        if module == CLI_INIT:
            return {m for m in graph if m.startswith(CLI)} - {CLI_INIT, CLI_MAIN}
        return set() if module == CLI_COMMON else {CLI_COMMON}

    wrong = [f"{module} imports {target} (line {line})"
             for module, edges in sorted(graph.items())
             for target, line in sorted(edges.items())
             if target.startswith(CLI) and target != module and target not in allowed(module)]
    commands = {m for m in graph if m.startswith(CLI)} - {CLI_INIT, CLI_MAIN, CLI_COMMON}
    wrong += [f"{CLI_INIT} does not import {m}" for m in sorted(commands)
              if m not in graph.get(CLI_INIT, {})]
    return wrong


def test_the_cli_package_is_imported_one_way():
    graph = import_graph(modules())
    commands = {m for m in graph if m.startswith(CLI)} - {CLI_INIT, CLI_MAIN, CLI_COMMON}
    assert commands == {CLI + m for m in ("report", "pipeline", "config", "deploy", "search")}
    assert set(graph["morphcli.__main__"]) == {CLI_INIT}  # `python -m morphcli`
    assert cli_import_errors(graph) == []


def test_the_cli_check_catches_imports_the_wrong_way():
    files = {
        "cli/__init__.py": "from morphcli.cli import common, report\n",
        "cli/common.py": "def f():\n    from morphcli.cli import report\n",
        "cli/report.py": "from morphcli.cli.common import load\nfrom morphcli.cli import cli\n",
        "cli/search.py": "from morphcli.cli.report import report\n",
        "api.py": "def f():\n    from morphcli.cli.common import load\n",
        "__main__.py": "from morphcli.cli import main\n",
    }
    graph = import_graph((rel, ast.parse(text)) for rel, text in files.items())
    assert cli_import_errors(graph) == [
        "morphcli.api imports morphcli.cli.common (line 2)",
        "morphcli.cli.common imports morphcli.cli.report (line 2)",
        "morphcli.cli.report imports morphcli.cli.__init__ (line 2)",
        "morphcli.cli.search imports morphcli.cli.report (line 1)",
        "morphcli.cli.__init__ does not import morphcli.cli.search",
    ]


@pytest.mark.slow
def test_one_run_builds_each_graph_once_and_one_strategy(tmp_path, monkeypatch):
    """`morph run` with the baseline: every distinct model's channel graph is built
    once, the strategy is made once, the data is loaded once, nothing reloaded."""
    import keras
    from click.testing import CliRunner

    from morphcli.cli import cli
    from morphcli.core import graph
    from morphcli.training import data, distribute

    builds = collections.Counter()
    strategies, datasets, loads = [], [], []
    finish, make, load_dataset = graph._Builder.finish, distribute.make_strategy, data.load_dataset

    alive = []  # a model freed could pass its id on to the next one

    def counted_finish(self, model):
        builds[id(model)] += 1
        alive.append(model)
        return finish(self, model)

    monkeypatch.setattr(graph._Builder, "finish", counted_finish)
    monkeypatch.setattr(distribute, "make_strategy",
                        lambda conf: strategies.append(conf) or make(conf))
    monkeypatch.setattr(data, "load_dataset",
                        lambda *a, **k: datasets.append(a) or load_dataset(*a, **k))
    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: loads.append(a))
    result = CliRunner().invoke(cli, [
        "run", "-o", str(tmp_path / "run"), "--baseline", "--json",
        "--set", "shrink.epochs=2", "--set", "retrain.epochs=1",
        "--set", "regularizer.strength=3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # seed, shrunk, expanded, baseline expanded; the retrained clones reuse their source's.
    assert len(builds) == 4 and set(builds.values()) == {1}, builds
    assert len(strategies) == 1 and len(datasets) == 1 and not loads


def test_a_step_imports_no_other_step():
    """Steps share `steps/context.py` (the command's context), `steps/records.py`
    (the run folder's recorded config and profile), `steps/scoring.py` (how the
    search scores a structure; no step itself) and what lies below them (measure,
    core...); only `run`, which chains the steps, imports them."""
    shared = {"morphcli.steps.context", "morphcli.steps.records", "morphcli.steps.scoring"}
    wrong = []
    for rel, tree in modules():
        if layer_of(rel) != "steps" or rel in {"steps/run.py", "steps/context.py",
                                               "steps/records.py"}:
            continue
        for line, module in morphcli_imports(tree):
            if module.startswith("morphcli.steps") and module not in shared:
                wrong.append(f"{rel}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)
