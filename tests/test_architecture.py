"""Dependencies point one way: core <- actor, core <- learner. The algorithm core imports neither process, the
actor never imports the learner (nor the learner the actor); only the composition roots (q2rl.local, q2rl.cli)
wire both. Checked from the source, so a lazy import inside a function counts too."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "core": ("q2rl.actor", "q2rl.learner", "q2rl.local", "q2rl.cli"),
    "actor": ("q2rl.learner", "q2rl.local", "q2rl.cli"),
    "learner": ("q2rl.actor", "q2rl.local"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (`from q2rl.learner import x` -> q2rl.learner.x too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def violations(folder: str) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {module}"
            for path in sorted((REPO / folder).rglob("*.py"))
            for module in sorted(imported_modules(path))
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[folder])]


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_dependencies_point_one_way(folder):
    assert violations(folder) == []


def test_the_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from q2rl.learner.learner import Learner\n")
    assert "q2rl.learner.learner" in imported_modules(bad)
