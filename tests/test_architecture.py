"""The floor plan holds: each room imports only the rooms below it, and docs/inside.md
describes the rooms the package has.

The rooms are the subpackages of ``sequence`` (and the few modules its contract fixes at
the top). The foundation (errors, settings, the state table, signals, the hooks and test
points) imports nothing of the package, so any room may use it. Anything else a room
imports must come from a room listed below it here; the test names the offending import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sequence"

FOUNDATION = {
    "sequence.declare.exceptions",
    "sequence.declare.conf",
    "sequence.engine.states",
    "sequence.engine.hooks",
    "sequence.engine.points",
    "sequence.signals",
}

# room -> the rooms it may import (besides itself and the foundation), bottom first.
RULES: dict[str, set[str]] = {
    "sequence.models": set(),
    "sequence.declare": {"sequence.models"},
    "sequence.engine.rq": {"sequence.declare", "sequence.models"},
    "sequence.engine": {"sequence.engine.rq", "sequence.declare", "sequence.models"},
    "sequence.runner": {"sequence.engine", "sequence.engine.rq", "sequence.declare", "sequence.models"},
    "sequence.jobs": {"sequence.runner", "sequence.engine", "sequence.engine.rq", "sequence.declare"},
    "sequence.testing": {
        "sequence.runner", "sequence.engine", "sequence.engine.rq", "sequence.declare",
        "sequence.models",
    },
    "sequence.present": {"sequence.declare", "sequence.models"},
    "sequence.ops": {
        "sequence.jobs", "sequence.runner", "sequence.engine", "sequence.engine.rq",
        "sequence.declare", "sequence.models",
    },
    "sequence.admin": {
        "sequence.present", "sequence.ops", "sequence.engine", "sequence.declare",
        "sequence.models",
    },
    "sequence.management": {
        "sequence.ops", "sequence.present", "sequence.engine", "sequence.declare",
        "sequence.models",
    },
    "sequence.apps": {"sequence.ops", "sequence.engine"},
    "sequence.migrations": {"sequence.models"},
    "sequence": {"sequence.declare", "sequence.engine"},
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def room_of(module: str) -> str:
    """The longest room name that ``module`` is, or is inside of."""
    rooms = sorted(RULES, key=len, reverse=True)
    return next(r for r in rooms if module == r or module.startswith(r + "."))


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every module of the package ``path`` imports."""
    found = []
    tree = ast.parse(path.read_text())
    # Imports for type checkers only make no import at run time: a room may name a type
    # from above it in an annotation.
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for child in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sequence"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            modules = [n for n in names if is_module(n)]
            found += [(node.lineno, m) for m in modules or [node.module]]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sequence")]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_room():
    assert [module_name(p) for p in SOURCES if room_of(module_name(p)) is None] == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_a_module_imports_only_the_foundation_and_the_rooms_below_its_own(path):
    here = module_name(path)
    room = room_of(here)
    wrong = []
    for line, target in imports(path):
        if target == "sequence" and here != "sequence":
            continue  # the package's public names (from sequence import Step)
        if here in FOUNDATION and target not in FOUNDATION:
            wrong.append(f"line {line}: {target} (the foundation imports nothing above it)")
            continue
        if target in FOUNDATION or room_of(target) in ({room} | RULES[room]):
            continue
        wrong.append(f"line {line}: {target} (room {room_of(target)})")
    assert wrong == [], f"{here} (room {room}) may import only {sorted(RULES[room])}: {wrong}"


def test_the_top_of_the_package_stays_small():
    entries = sorted(
        p.name
        for p in PACKAGE.iterdir()
        if p.name not in ("__pycache__", "__init__.py", "py.typed")
    )
    assert len(entries) <= 15, entries


def test_no_module_grows_past_400_lines():
    long = {module_name(p): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_inside_md_describes_every_room_and_only_rooms_that_exist():
    text = (ROOT / "docs" / "inside.md").read_text()
    named = set(re.findall(r"`(sequence(?:\.[a-z_]+)+)`", text))
    missing = [m for m in named if not is_module(m) and not _is_attribute(m)]
    assert missing == [], f"docs/inside.md names what the package does not have: {missing}"
    rooms = {r for r in RULES if r != "sequence"}
    assert sorted(rooms - named) == [], "docs/inside.md does not describe these rooms"
    for path in PACKAGE.iterdir():
        if path.is_dir() and (path / "__init__.py").exists() and path.name != "migrations":
            assert f"sequence.{path.name}" in rooms, f"sequence.{path.name} is not a room here"


def _is_attribute(dotted: str) -> bool:
    """``sequence.runner.run_step``: a module, then a name in it."""
    module, _, name = dotted.rpartition(".")
    if not is_module(module):
        return False
    path = ROOT.joinpath(*module.split("."))
    source = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
    return (
        re.search(rf"^(def|class) {name}\b|^{name}\b\s*[:=]", source.read_text(), re.M) is not None
    )


def _functions_running_sql() -> set[str]:
    """Every function or method whose own body runs SQL by hand."""
    found: set[str] = set()
    for path in SOURCES:
        text = path.read_text()
        _visit(ast.parse(text), text, f"{module_name(path)}.", found)
    return found


def _visit(node: ast.AST, text: str, prefix: str, found: set[str]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            _visit(child, text, f"{prefix}{child.name}.", found)
        elif isinstance(child, ast.FunctionDef):
            own = ast.get_source_segment(text, child) or ""
            for inner in ast.walk(child):
                if inner is not child and isinstance(inner, ast.FunctionDef):
                    own = own.replace(ast.get_source_segment(text, inner) or "", "")
            if "cursor.execute(" in own or ".extra(" in own:
                found.add(f"{prefix}{child.name}")
            _visit(child, text, f"{prefix}{child.name}.", found)


def test_inside_md_names_every_hand_written_statement_and_the_test_that_pins_it():
    text = (ROOT / "docs" / "inside.md").read_text()
    table = text.split("## Hand-written SQL", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(sequence[\w.]+)` \|.*\| `(tests/[\w/]+\.py)::(\w+)` \|$", table, re.M)
    listed = {function for function, _, _ in rows}
    assert sorted(_functions_running_sql() - listed) == [], "SQL by hand not in docs/inside.md"
    assert sorted(listed - _functions_running_sql()) == [], "docs/inside.md lists no SQL there"
    for function, path, test in rows:
        source = (ROOT / path).read_text() if (ROOT / path).exists() else ""
        assert re.search(rf"^def {test}\(", source, re.M), f"{function}: no {path}::{test}"
