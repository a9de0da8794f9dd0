"""The import layers of ``streams/`` (issue 15): no import cycle between its modules,
counting imports inside functions too (an import there cannot hide one), and the core
(the rules, consent, effects, record checks and ISO codes) imports only the core: no
Kafka client, no Faust, no HTTP, no CLI."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STREAMS = ROOT / "streams"
CORE = {
    "streams.core.policy",
    "streams.core.consent",
    "streams.core.enforcement",
    "streams.core.records",
    "streams.core.iso3166",
}
FORBIDDEN_IN_CORE = {"faust", "mode", "aiokafka", "confluent_kafka", "aiohttp", "rocksdict"}
CLI = {"streams.cli.main", "streams.cli.operator_commands", "streams.cli.demo", "streams.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = STREAMS) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Each module of the package: the package's modules it imports, and the top-level
    names of the other packages it imports (anywhere in it, functions included)."""
    modules = {_module_name(p): p for p in sorted(root.rglob("*.py"))}
    internal: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        inside, outside = set(), set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    stem = ".".join([*base, node.module] if node.module else base)
                else:
                    stem = node.module or ""
                # `from . import x` and `from .m import f`: a module where there is one
                targets = [f"{stem}.{a.name}" for a in node.names if f"{stem}.{a.name}" in modules]
                targets = targets or [stem]
            else:
                continue
            for target in targets:
                if target in modules:
                    inside.add(target)
                elif target.split(".")[0] == "streams":
                    inside.add(target)  # a name of the package that is not a module: caught
                else:
                    outside.add(target.split(".")[0])
        internal[name] = inside - {name}
        external[name] = outside
    return internal, external


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (each a cycle), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def reachable(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    """The modules ``start`` imports, directly or not."""
    seen, todo = set(), [start]
    while todo:
        for succ in graph.get(todo.pop(), ()):
            if succ not in seen:
                seen.add(succ)
                todo.append(succ)
    return seen


def test_the_checks_find_a_cycle_and_a_forbidden_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert reachable({"a": {"b"}, "b": {"c"}, "c": set()}, "a") == {"b", "c"}
    graph, _ = import_graph()
    assert (
        "streams.runtime.app" in graph and "streams.gate.processor" in graph["streams.runtime.app"]
    )


def test_streams_has_no_import_cycle() -> None:
    graph, _ = import_graph()
    assert len(graph) > 20
    assert cycles(graph) == []


def test_the_core_imports_only_the_core() -> None:
    graph, external = import_graph()
    assert set(graph) >= CORE
    for module in sorted(CORE):
        imported = reachable(graph, module)
        assert imported <= CORE, f"{module} imports {sorted(imported - CORE)}"
        assert not imported & CLI
        for each in {module} | imported:
            assert not external[each] & FORBIDDEN_IN_CORE, (each, external[each])


# -- the folders (issue 15, part 1): one concept each, each a layer that imports only the
# layers below it. The same table is in each folder's __init__ docstring ("May import:"),
# which the last test holds in step with this one.
LAYERS: dict[str, set[str]] = {
    "core": set(),
    "settings": set(),
    "faust_compat": set(),
    "serde": {"core"},
    "kafka": {"core", "serde", "settings"},
    "state": {"core", "serde", "settings", "faust_compat", "kafka"},
    "gate": {"core", "serde", "settings", "faust_compat", "kafka", "state"},
    "rekey": {"core", "serde", "settings", "kafka"},
    "traffic": {"core", "serde", "settings", "kafka"},
    # the independent check: nothing of the worker's decisions (core, serde, gate, state)
    "verify": {"settings", "kafka"},
    "runtime": {"core", "serde", "settings", "faust_compat", "kafka", "state", "gate", "rekey"},
    "cli": {
        "core",
        "serde",
        "settings",
        "faust_compat",
        "kafka",
        "state",
        "gate",
        "rekey",
        "runtime",
        "traffic",
        "verify",
    },
    "__main__": {"cli"},
    "__init__": set(),
}
FOLDERS = {
    "core",
    "serde",
    "kafka",
    "state",
    "gate",
    "rekey",
    "traffic",
    "verify",
    "runtime",
    "cli",
}
# other packages only some layers may import (the rest may not import them at all)
ONLY_IN = {
    "faust": {"faust_compat", "state", "gate", "runtime", "kafka"},
    "mode": {"faust_compat"},
    "aiokafka": {"faust_compat"},
    "aiohttp": {"runtime"},
    "yarl": {"runtime"},
    "rocksdict": {"state"},
}


def layer_of(module: str) -> str:
    """``streams.gate.native`` -> ``gate``; ``streams.settings`` -> ``settings``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import of a module from a layer its own may not import."""
    found = []
    for module, imported in sorted(graph.items()):
        own = layer_of(module)
        for target in sorted(imported):
            other = layer_of(target)
            if other != own and other not in LAYERS.get(own, set()):
                found.append(f"{module} imports {target} ({own} may not import {other})")
    return found


def test_the_layer_check_finds_a_violation() -> None:
    graph = {
        "streams.core.policy": {"streams.core.iso3166", "streams.kafka.topics"},
        "streams.gate.processor": {"streams.cli.main", "streams.state.ledger"},
        "streams.cli.main": {"streams.runtime.app"},
        "streams.verify.checker": {"streams.core.policy"},
    }
    assert layer_violations(graph) == [
        "streams.core.policy imports streams.kafka.topics (core may not import kafka)",
        "streams.gate.processor imports streams.cli.main (gate may not import cli)",
        "streams.verify.checker imports streams.core.policy (verify may not import core)",
    ]
    assert cycles({u: set(allowed) for u, allowed in LAYERS.items()}) == []
    # an import inside a function is an edge like any other: cmd_worker's
    graph, _ = import_graph()
    assert "streams.runtime.app" in graph["streams.cli.main"]


def test_every_module_is_in_a_layer_and_imports_only_the_layers_below() -> None:
    graph, _ = import_graph()
    assert {layer_of(m) for m in graph} == set(LAYERS)
    assert layer_violations(graph) == []


def test_packages_only_their_layers_import() -> None:
    _, external = import_graph()
    misplaced = sorted(
        f"{module} imports {package}"
        for module, packages in external.items()
        for package in packages & set(ONLY_IN)
        if layer_of(module) not in ONLY_IN[package]
    )
    assert misplaced == []


def test_each_folder_says_what_it_owns_and_what_it_may_import() -> None:
    assert {p.name for p in STREAMS.iterdir() if (p / "__init__.py").is_file()} == FOLDERS
    for folder in sorted(FOLDERS):
        init = STREAMS / folder / "__init__.py"
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree) or ""
        assert "Owns:" in doc, folder
        assert len(tree.body) == 1, f"{folder}/__init__.py holds its docstring only"
        may = " ".join(doc.split("May import:", 1)[1].split("\n\n", 1)[0].split())
        named = {name.strip("`,.;") for name in may.split() if name.startswith("``streams.")}
        assert {name.removeprefix("streams.") for name in named} == LAYERS[folder], folder
