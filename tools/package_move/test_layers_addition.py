

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
FOLDERS = {"core", "serde", "kafka", "state", "gate", "rekey", "traffic", "verify", "runtime", "cli"}
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
