"""The house stays clean: services import only the shared package, the shared package imports
no service, the product imports no tool, and no module imports itself back in a circle."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).parent.parent
SHARED = "pubsub"
SERVICES = ("ingest", "consumer", "readapi", "publisher", "stack")
TOOLS = ("bench", "tests")
PACKAGES = (SHARED, *SERVICES, *TOOLS)


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``path`` imports when it is loaded (imports inside
    functions and ``TYPE_CHECKING`` blocks run later or never, and make no circle)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def test_services_import_only_the_shared_package() -> None:
    wrong = defaultdict(set)
    for module, targets in graph().items():
        top = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if top == SHARED and other != SHARED:
                wrong[module].add(target)
            if top in SERVICES and other not in (top, SHARED):
                wrong[module].add(target)
    assert not wrong, dict(wrong)


def test_no_import_circles() -> None:
    g = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not circles, circles
