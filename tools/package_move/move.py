#!/usr/bin/env python3
"""Issue 15, part 1: move ``streams/`` from one flat folder to one folder per concept.

Run once, from the root of a checkout of main whose ``streams/`` is still flat::

    python3 tools/package_move/move.py            # refuses a tree with uncommitted changes
    python3 tools/package_move/move.py --dry-run  # what would change, nothing written

It ``git mv``s every module of ``streams/`` to the folder of ``MODULES`` below (the
moves are staged, as ``git mv`` does), writes each folder's ``__init__.py`` (what it
owns, what it may import), rewrites every import and every ``streams.x`` name,
``streams/x.py`` path and bare ``x.py`` mention in the repository's sources, build
files and docs, applies the few ``EDITS`` no rule can make (paths computed from
``__file__``), copies in ``docs/architecture.md``, appends the folder layers to
``tests/unit/test_layers.py``, replaces the README's "Layout" section, and runs ruff
(import order, format) on the Python files it wrote. It commits nothing: it prints the
files to ``git add`` at the end. Everything is checked before anything is written.

Standard library only (ruff is taken from ``.venv/bin`` if it is there).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

HERE = Path(__file__).resolve().parent

# -- the map: old module of streams/ -> its new dotted name under streams ---------------
MODULES: dict[str, str] = {
    # core: the rules, consent, effects, record checks, ISO codes. No Kafka, no Faust.
    "policy": "core.policy",
    "consent": "core.consent",
    "enforcement": "core.enforcement",
    "records": "core.records",
    "iso3166": "core.iso3166",
    # serde: Avro, compiled readers/writers, splicing
    "avro_compiled": "serde.avro_compiled",
    "codec": "serde.codec",
    # kafka: one connection configuration, topics, the output producer, the registry
    "connection": "kafka.connection",
    "topics": "kafka.topics",
    "outputs": "kafka.outputs",
    "registry": "kafka.registry",  # made by issue 15 part 2 (optional: may not exist yet)
    # state: the consent table and the live-post ledger on RocksDB
    "ledger": "state.ledger",
    # gate: the processor, its positions, its counters, the C fast path
    "agents": "gate.processor",
    "offsets": "gate.offsets",
    "native": "gate.native",
    "_native": "gate._native",  # the C extension (its .c, .pyi and a built .so)
    "metrics": "gate.metrics",
    # rekey: the re-keying stage (a child process on librdkafka)
    "rekey": "rekey.stage",
    # runtime: the Faust app and worker process, its HTTP side
    "app": "runtime.app",
    "worker": "runtime.worker",
    "lookup": "runtime.lookup",
    # traffic: synthetic traffic and producing it (generate, demo, the benchmark)
    "generator": "traffic.generator",
    "produce": "traffic.produce",
    # verify: the independent check of the topics (and its HTML report)
    "verify": "verify.checker",
    "report": "verify.report",
    # cli: the enforcer command and its operator sub-commands
    "cli": "cli.main",
    "operator_cli": "cli.operator_commands",
    "demo": "cli.demo",
    "replay": "cli.replay",
    "audit": "cli.audit",
}
# modules (and the schemas symlink) that stay at the top of streams/
TOP_LEVEL = {"__init__", "__main__", "settings", "faust_compat", "schemas"}
# non-Python files of streams/: old name -> new path under streams/
FILES: dict[str, str] = {
    "default_policy.toml": "core/default_policy.toml",
    "_native.c": "gate/_native.c",
    "_native.pyi": "gate/_native.pyi",
}
OPTIONAL = {"registry"}  # modules of the map that may not exist on the tree moved

# -- each folder's __init__.py: what it owns and what it may import ----------------------
# (tests/unit/test_import_layers.py holds the same "May import" table and checks both)
FOLDERS: dict[str, str] = {
    "core": """The pure core: what the enforcer decides, as functions of decoded records.

Owns: the training policy and its rules file (``policy.py``, ``default_policy.toml``),
consent state and how objection events change it (``consent.py``), what to emit for a
post, an objection event or a replay (``enforcement.py``), what counts as a valid input
record, the internal headers and the one partitioner of a user (``records.py``), and the
ISO 3166 country codes (``iso3166.py``).

May import: nothing else of ``streams``; no Kafka client, Faust, RocksDB, HTTP or CLI.
""",
    "serde": """Serialization: every record the enforcer reads or writes, as bytes.

Owns: the Avro codec (single-object encoding and the Confluent wire format, schema
fingerprints, schema history, the registry lookups it retries), ``codec.py``, and the
readers, writers and splicers compiled for the current schemas, ``avro_compiled.py``.

May import: ``streams.core``.
""",
    "kafka": """The clients of the cluster: how the enforcer talks to Kafka and the registry.

Owns: the one connection configuration every client is built from, the access checks
and the one-line failures (``connection.py``); topic administration, start and resume
offsets (``topics.py``); the output producer every record of the gate goes through,
transactional with fencing (``outputs.py``); the schema registry client and the output
schemas registered at start (``registry.py``).

May import: ``streams.core``, ``streams.serde``, ``streams.settings``.
""",
    "state": """The gate's state: the consent table and the live-post ledger, on RocksDB.

Owns: the tables' RocksDB partitions written together with their changelog records
(``TableState``), the persisted changelog offsets, and the ledger that holds removals
until their tombstones are acknowledged (``ledger.py``).

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.faust_compat``, ``streams.kafka``.
""",
    "gate": """The gate: what happens to each record of the internal user-events topic.

Owns: the processor (decode, check, call the core, emit, DLQ, replay answers,
repositioning), ``processor.py``; the gate's own input positions and what it may
commit, ``offsets.py``; its counters and their Prometheus exposition, ``metrics.py``;
the optional C fast path for the common post, ``native.py`` and ``_native.c``.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.faust_compat``, ``streams.kafka``, ``streams.state``.
""",
    "rekey": """The re-keying stage: the inputs, partitioned any way, onto the internal topic.

Owns: the child process that reads ``posts`` and ``objections`` on librdkafka and
forwards each record's unchanged bytes to its user's partition of the internal topic
(objections first), with its own flush-then-commit, ``stage.py``.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.kafka``.
""",
    "runtime": """The running worker: the Faust app, its process, its HTTP side.

Owns: the Faust application (topics, tables, the gate agent and its dispatch, the
commit timer, fencing before recovery, ``/ready`` and ``/metrics``), ``app.py``; the
worker process and its logging, ``worker.py``; the consent lookup
(``GET /consent/{user_id}``), ``lookup.py``.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.faust_compat``, ``streams.kafka``, ``streams.state``, ``streams.gate``,
``streams.rekey``.
""",
    "traffic": """Synthetic traffic: posts, objection events and bad records, and producing them.

Owns: the deterministic generator (no Kafka), ``generator.py``, and producing its records
to the input topics (``generate``, ``demo``, the benchmark), ``produce.py``.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.kafka``.
""",
    "verify": """The independent check of what the enforcer wrote (``enforcer verify``).

Owns: the checker, which re-derives from the topics alone, with its own Avro decoding,
consent rule and policy reading, what must hold (``checker.py``), and its HTML report
(``report.py``). It imports none of the worker's decision code, so that a fault there
cannot hide itself.

May import: ``streams.settings``, ``streams.kafka``.
""",
    "cli": """The ``enforcer`` command and its sub-commands.

Owns: the parser, the worker and ``topics create`` commands, the one-line failures and
exit codes, ``main.py``; the operator sub-commands' parsers and dispatch
(``operator_commands.py``); ``demo``, ``replay`` and ``audit``, a module each.

May import: ``streams.core``, ``streams.serde``, ``streams.settings``,
``streams.faust_compat``, ``streams.kafka``, ``streams.state``, ``streams.gate``,
``streams.rekey``, ``streams.runtime``, ``streams.traffic``, ``streams.verify``.
""",
}
PACKAGE_DOC = '''"""The objection enforcer, one folder per concept (docs/architecture.md).

Bottom to top: ``core`` (the rules, no I/O), ``settings`` and ``faust_compat`` (the
Faust boundary), ``serde``, ``kafka``, ``state``, ``gate``, ``rekey``, ``traffic``,
``verify``, ``runtime``, ``cli``. Each folder's ``__init__`` says what it owns and what
it may import; tests/unit/test_import_layers.py holds them to it.
"""
'''

# -- edits no rule can make: (path after the move, old text, new text), each found once ---
EDITS: list[tuple[str, str, str]] = [
    (
        "streams/serde/codec.py",
        'SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"',
        'SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"',
    ),
    (
        "streams/verify/checker.py",
        'SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"',
        'SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"',
    ),
    (
        "streams/verify/checker.py",
        'DEFAULT_POLICY = Path(__file__).resolve().parent / "default_policy.toml"',
        'DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "core" / "default_policy.toml"',
    ),
    (
        "streams/cli/demo.py",
        "ROOT = Path(__file__).resolve().parent.parent",
        "ROOT = Path(__file__).resolve().parents[2]",
    ),
    (
        "tests/chaos/harness.py",
        'ROOT / "streams" / "default_policy.toml"',
        'ROOT / "streams" / "core" / "default_policy.toml"',
    ),
    (
        "pyproject.toml",
        'streams = ["schemas/*.avsc", "schemas/history/*.avsc", "default_policy.toml"]',
        'streams = ["schemas/*.avsc", "schemas/history/*.avsc"]\n'
        '"streams.core" = ["default_policy.toml"]',
    ),
    (  # the sanitized build is set as an attribute of streams.gate: import it first
        "Makefile",
        "import importlib.util as u, sys, streams;",
        "import importlib.util as u, sys, streams.gate;",
    ),
]

# what is rewritten: every text file under these (git-tracked or not), but not these
TEXT_ROOTS = ["streams", "tests", "bench", "docs", "deploy", "README.md", "Makefile",
              "setup.py", "pyproject.toml", "constraints.txt"]
TEXT_SUFFIXES = {".py", ".pyi", ".c", ".md", ".toml", ".txt", ".sh", ".yml", ".yaml",
                 ".java", ".cfg", ".ini"}
TEXT_NAMES = {"Makefile", "Dockerfile", "local-kafka"}
SKIP_PARTS = {".git", ".venv", ".venv-peer", "__pycache__", "results", "target", "node_modules",
              ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "build", "dist"}
COPIES = {  # file next to this script -> path in the repository
    "architecture.md": "docs/architecture.md",
}
# the import-graph test of issue 15 part 2, extended by the layers of the folders: the
# file next to this script is appended to it (it uses the test's import_graph and cycles)
LAYERS_TEST = "tests/unit/test_layers.py"
LAYERS_ADDITION = "test_layers_addition.py"
LAYERS_NEEDS = ("def import_graph(", "def cycles(", "\nSTREAMS = ", "import ast\n",
                "from collections.abc import Iterable, Mapping\n")
LAYOUT_FILE = "layout.md"  # the README's new "## Layout" section


class MoveError(Exception):
    """The tree is not what the map expects: nothing (more) is written."""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


# -- rules over text --------------------------------------------------------------------
def new_path(old: str) -> str:
    """``streams/<old>`` -> ``streams/<new>`` for a module file or a data file."""
    stem, dot, suffix = old.partition(".")
    if old in FILES:
        return FILES[old]
    return MODULES[stem].replace(".", "/") + dot + suffix


def text_rules(present: set[str]) -> list[tuple[re.Pattern[str], object]]:
    mods = sorted(present, key=len, reverse=True)
    alt = "|".join(map(re.escape, mods))
    names = [f"{m}.py" for m in present if m != "_native"] + list(FILES)
    names = [n for n in names if n.partition(".")[0] in present or n in FILES]
    files_alt = "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
    bare = [f"{m}.py" for m in present if m != "_native"]
    bare_alt = "|".join(map(re.escape, sorted(bare, key=len, reverse=True)))
    return [
        # streams/agents.py -> streams/gate/processor.py (also streams/_native.c, the toml)
        (
            re.compile(rf"(?<![\w.-])streams/({files_alt})(?![\w.])"),
            lambda m: "streams/" + new_path(m.group(1)),
        ),
        # streams.agents -> streams.gate.processor (imports, monkeypatch targets, mypy)
        (
            re.compile(rf"(?<![\w.])streams\.({alt})(?![\w])"),
            lambda m: "streams." + MODULES[m.group(1)],
        ),
        # a bare ``agents.py`` -> ``gate/processor.py``
        (
            re.compile(rf"(?<![\w/.-])({bare_alt})(?![\w])"),
            lambda m: new_path(m.group(1)),
        ),
    ]


def apply_rules(text: str, rules: list) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        if "getLogger(" not in line:  # logger names stay as they are (log output)
            for pattern, repl in rules:
                line = pattern.sub(repl, line)
        out.append(line)
    return "".join(out)


RENAMED_LEAF = re.compile(r"(?<![\w.])agents\.(?!py\b)(?=[A-Za-z_])")  # ``agents.X`` in prose


def prose_spans(source: str) -> list[tuple[int, int]]:
    """Character spans of the comments and strings of a Python source."""
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    spans = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            (r0, c0), (r1, c1) = tok.start, tok.end
            spans.append((starts[r0 - 1] + c0, starts[r1 - 1] + c1))
    return spans


# -- imports ----------------------------------------------------------------------------
def import_edits(
    source: str, path: Path, repo: Path, present: set[str]
) -> list[tuple[int, int, str]]:
    """(start, end, replacement) in characters for each import of a streams module."""
    tree = ast.parse(source, str(path))
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    lines_b = [line.encode() for line in source.splitlines(keepends=True)]

    def offset(lineno: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        return line_starts[lineno - 1] + len(lines_b[lineno - 1][:col].decode())

    in_flat_streams = path.parent == repo / "streams"
    edits = []
    for node in ast.walk(tree):
        start = end = None
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if not in_flat_streams:
                    continue  # relative imports elsewhere (tests) are not ours
                if node.level != 1:
                    raise MoveError(f"{path}:{node.lineno}: relative import above streams")
                module = "streams" + (f".{node.module}" if node.module else "")
            else:
                module = node.module or ""
            if module != "streams" and not module.startswith("streams."):
                continue
            start = offset(node.lineno, node.col_offset)
            end = offset(node.end_lineno, node.end_col_offset)
            segment = source[start:end]
            if module == "streams":  # from streams import a, b / from . import a, b
                indent = " " * node.col_offset
                groups: dict[str, list[str]] = {}
                for alias in node.names:
                    bound = alias.asname or alias.name
                    if alias.name in MODULES:
                        parent, _, leaf = ("streams." + MODULES[alias.name]).rpartition(".")
                    elif alias.name in TOP_LEVEL:
                        parent, leaf = "streams", alias.name
                    else:
                        raise MoveError(f"{path}:{node.lineno}: from streams import {alias.name}?")
                    groups.setdefault(parent, []).append(
                        leaf if bound == leaf else f"{leaf} as {bound}"
                    )
                if "#" in segment:
                    raise MoveError(f"{path}:{node.lineno}: a comment inside {segment!r}")
                text = f"\n{indent}".join(
                    f"from {parent} import {', '.join(names)}" for parent, names in groups.items()
                )
            else:
                first = module.split(".")[1]
                if first in MODULES:
                    if first not in present:
                        raise MoveError(f"{path}:{node.lineno}: {module} does not exist")
                    module = "streams." + MODULES[first] + module[len("streams." + first) :]
                elif first not in TOP_LEVEL:
                    raise MoveError(f"{path}:{node.lineno}: unknown module {module}")
                match = re.match(r"from\s+[.\w]+\s+import", segment)
                if match is None:
                    raise MoveError(f"{path}:{node.lineno}: cannot read {segment!r}")
                text = f"from {module} import" + segment[match.end() :]
            if text != segment:
                edits.append((start, end, text))
        elif isinstance(node, ast.Import):
            if not any(a.name == "streams" or a.name.startswith("streams.") for a in node.names):
                continue
            start = offset(node.lineno, node.col_offset)
            end = offset(node.end_lineno, node.end_col_offset)
            parts = []
            for alias in node.names:
                name = alias.name
                pieces = name.split(".")
                if len(pieces) > 1 and pieces[0] == "streams" and pieces[1] in MODULES:
                    name = ".".join(["streams", MODULES[pieces[1]], *pieces[2:]])
                parts.append(name + (f" as {alias.asname}" if alias.asname else ""))
            text = "import " + ", ".join(parts)
            if text != source[start:end]:
                edits.append((start, end, text))
    return sorted(edits)


def rewrite_python(source: str, path: Path, repo: Path, present: set[str], rules: list) -> str:
    edits = import_edits(source, path, repo, present)
    prose = prose_spans(source)
    out, pos = [], 0

    def outside(a: int, b: int) -> str:
        chunk = source[a:b]
        # agents.X -> processor.X in comments and strings only (code uses the alias)
        pieces, at = [], a
        for s, e in prose:
            if e <= a or s >= b:
                continue
            s, e = max(s, a), min(e, b)
            pieces.append(source[at:s])
            pieces.append(RENAMED_LEAF.sub("processor.", source[s:e]))
            at = e
        pieces.append(source[at:b])
        chunk = "".join(pieces)
        return apply_rules(chunk, rules)

    for start, end, text in edits:
        out.append(outside(pos, start))
        out.append(text)
        pos = end
    out.append(outside(pos, len(source)))
    return "".join(out)


# -- the run ----------------------------------------------------------------------------
def text_files(repo: Path) -> list[Path]:
    found = []
    for root in TEXT_ROOTS:
        top = repo / root
        if top.is_file():
            found.append(top)
            continue
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*")):
            rel = path.relative_to(repo)
            if set(rel.parts) & SKIP_PARTS or path.is_symlink() or not path.is_file():
                continue
            if (path.suffix and path.suffix in TEXT_SUFFIXES) or path.name in TEXT_NAMES:
                found.append(path)
    return found


def check_tree(repo: Path, allow_dirty: bool) -> set[str]:
    streams = repo / "streams"
    if not (streams / "__main__.py").is_file():
        raise MoveError(f"{repo} is not the enforcer's repository root")
    for folder in FOLDERS:
        if (streams / folder).is_dir():
            raise MoveError(f"streams/{folder}/ exists: already moved? (run once, on flat main)")
    if not allow_dirty:
        dirty = git(repo, "status", "--porcelain", "--untracked-files=no")
        if dirty.strip():
            raise MoveError("uncommitted changes (commit them, or --allow-dirty):\n" + dirty)
    present = set()
    unknown = []
    for entry in sorted(streams.iterdir()):
        name = entry.name
        if name == "__pycache__" or name.endswith(".so"):
            continue
        stem = name[:-3] if name.endswith(".py") else name
        if name.endswith(".py") and stem in MODULES:
            present.add(stem)
        elif stem in TOP_LEVEL or name in FILES:
            continue
        else:
            unknown.append(name)
    if (streams / "_native.c").is_file():
        present.add("_native")
    if unknown:
        raise MoveError(f"not in the map (add them to MODULES, FILES or TOP_LEVEL): {unknown}")
    missing = set(MODULES) - present - OPTIONAL
    if missing:
        raise MoveError(f"in the map but not in streams/: {sorted(missing)}")
    return present


def replace_layout(readme: str, layout: str) -> str:
    match = re.search(r"^## Layout\n.*?(?=^## |\Z)", readme, flags=re.S | re.M)
    if match is None:
        raise MoveError("README.md has no '## Layout' section")
    return readme[: match.start()] + layout.rstrip("\n") + "\n" + (
        "\n" if match.end() < len(readme) else ""
    ) + readme[match.end() :]


def old_location(rel: str) -> str:
    """The path before the move of a path after it (for the EDITS' checks)."""
    for old, new in [(f"{m}.py", new_path(f"{m}.py")) for m in MODULES] + list(FILES.items()):
        if rel == f"streams/{new}":
            return f"streams/{old}"
    return rel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run on a tree with uncommitted changes (they are moved along)")
    parser.add_argument("--no-ruff", action="store_true", help="do not run ruff afterwards")
    parser.add_argument("--ruff", help="the ruff to run (default: .venv/bin/ruff, then PATH)")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    try:
        # 0. everything is checked before anything is written
        present = check_tree(repo, args.allow_dirty)
        for name in [*COPIES, LAYERS_ADDITION, LAYOUT_FILE]:
            if not (HERE / name).is_file():
                raise MoveError(f"{HERE / name} is missing")
        layers_test = (repo / LAYERS_TEST).read_text() if (repo / LAYERS_TEST).is_file() else ""
        lacking = [need for need in LAYERS_NEEDS if need not in layers_test]
        if lacking:
            raise MoveError(f"{LAYERS_TEST} lacks {lacking}: merge {LAYERS_ADDITION} by hand")
        if "def layer_violations(" in layers_test:
            raise MoveError(f"{LAYERS_TEST} has the layers already")
        rules = text_rules(present)
        untracked = set(git(repo, "ls-files", "--others", "--exclude-standard").splitlines())

        # the rewritten text of every file, at its old location (relative imports resolve)
        changed: dict[Path, str] = {}
        for path in text_files(repo):
            try:
                source = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if path.suffix == ".py":
                new = rewrite_python(source, path, repo, present, rules)
            else:
                new = apply_rules(source, rules)
            if new != source:
                changed[path] = new
        for rel, old, _ in EDITS:
            before = repo / old_location(rel)
            text = changed.get(before) or before.read_text(encoding="utf-8")
            if text.count(old) != 1:
                raise MoveError(f"{rel}: expected {old!r} once, found {text.count(old)}")
        readme_path = repo / "README.md"
        readme = replace_layout(
            changed.get(readme_path) or readme_path.read_text(encoding="utf-8"),
            (HERE / LAYOUT_FILE).read_text(),
        )
        moves = [(f"streams/{m}.py", f"streams/{new_path(m + '.py')}") for m in sorted(present)
                 if m != "_native"]
        moves += [(f"streams/{f}", f"streams/{new}") for f, new in FILES.items()
                  if (repo / "streams" / f).exists()]
        if args.dry_run:
            for old, new in moves:
                print(f"git mv {old} {new}")
            for path, new in sorted(changed.items()):
                rel = path.relative_to(repo).as_posix()
                sys.stdout.writelines(difflib.unified_diff(
                    path.read_text(encoding="utf-8").splitlines(keepends=True),
                    new.splitlines(keepends=True), f"a/{rel}", f"b/{rel}", n=0))
            return 0

        # 1. the rewritten files, in place
        for path, new in changed.items():
            path.write_text(new, encoding="utf-8")
        readme_path.write_text(readme, encoding="utf-8")
        touched = {p.relative_to(repo).as_posix() for p in changed} | {"README.md"}

        # 2. the folders, then git mv (a built extension is moved along, untracked)
        for folder, doc in FOLDERS.items():
            target = repo / "streams" / folder
            target.mkdir()
            (target / "__init__.py").write_text(f'"""{doc.rstrip()}\n"""\n', encoding="utf-8")
            touched.add(f"streams/{folder}/__init__.py")
        for old, new in moves:
            git(repo, "mv", old, new)
            touched.update({old, new})
        for built in (repo / "streams").glob("_native*.so"):
            built.rename(repo / "streams" / Path(FILES["_native.c"]).parent / built.name)
        shutil.rmtree(repo / "streams" / "__pycache__", ignore_errors=True)
        init = repo / "streams" / "__init__.py"
        if not init.read_text().strip():
            init.write_text(PACKAGE_DOC, encoding="utf-8")
            touched.add("streams/__init__.py")

        # 3. the edits no rule makes, the copied files, the layer tests
        for rel, old, new in EDITS:
            path = repo / rel
            path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
            touched.add(rel)
        for name, rel in COPIES.items():
            shutil.copyfile(HERE / name, repo / rel)
            touched.add(rel)
        with (repo / LAYERS_TEST).open("a", encoding="utf-8") as test:
            test.write((HERE / LAYERS_ADDITION).read_text())
        touched.add(LAYERS_TEST)
    except MoveError as exc:
        print(f"move: {exc}", file=sys.stderr)
        return 2

    # 4. ruff: imports sorted anew (streams.* is now absolute), formatting
    py = sorted(t for t in touched if t.endswith(".py") and (repo / t).is_file())
    ruff = repo / ".venv" / "bin" / "ruff"
    ruff_cmd = args.ruff or (str(ruff) if ruff.exists() else shutil.which("ruff"))
    if py and not args.no_ruff:
        if ruff_cmd is None:
            print("move: ruff not found: run `ruff check --select I --fix` and "
                  "`ruff format` on the files below", file=sys.stderr)
        else:
            subprocess.run([ruff_cmd, "check", "-q", "--select", "I", "--fix", *py],
                           cwd=repo, check=False)
            subprocess.run([ruff_cmd, "format", "-q", *py], cwd=repo, check=False)
    # 5. what ruff format does not fix: a rewritten path made a line too long
    for rel in py:
        for n, line in enumerate((repo / rel).read_text().splitlines(), 1):
            if len(line) > 100:
                print(f"move: {rel}:{n}: {len(line)} characters (ruff E501): shorten it")
    others = sorted(touched & untracked)
    if others:
        print("move: rewritten too, but untracked before (someone's work in progress?): "
              + " ".join(others))
    paths = sorted(t for t in touched if (repo / t).exists())  # the moves are staged
    print(f"move: {len(moves)} files moved (staged), {len(paths)} files written. To stage them:")
    print("git add -- " + " ".join(paths))
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
