"""The package direction (docs/architecture.md) and the test tree's layout, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIBLINGS = ("producers", "streams", "sinks")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", [*SIBLINGS, "schemas"])
def test_the_wire_format_is_the_bottom_and_its_siblings_never_import_each_other(package: str) -> None:
    forbidden = {f"trackstream.{name}" for name in SIBLINGS if name != package}
    if package == "schemas":
        forbidden |= {f"trackstream.{name}" for name in SIBLINGS}
    offences = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
        or name in {"trackstream"} or name.startswith(("trackstream._", "trackstream.cli", "trackstream.local"))
    ]
    assert not offences, offences


def test_test_modules_have_unique_basenames() -> None:
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(REPO)} and {path.relative_to(REPO)}")
        seen[path.name] = path
    assert not clashes, f"pytest imports test modules by basename: {clashes}"
