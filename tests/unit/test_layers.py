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
    "streams.policy",
    "streams.consent",
    "streams.enforcement",
    "streams.records",
    "streams.iso3166",
}
FORBIDDEN_IN_CORE = {"faust", "mode", "aiokafka", "confluent_kafka", "aiohttp", "rocksdict"}
CLI = {"streams.cli", "streams.operator_cli", "streams.demo", "streams.__main__"}


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
    assert "streams.app" in graph and "streams.agents" in graph["streams.app"]


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
