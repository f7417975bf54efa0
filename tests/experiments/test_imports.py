"""The experiments use the package's public API only: `parcae` itself, `parcae.train`,
`parcae.eval` and `parcae.scaling`, plus the shared pieces every command uses (`parcae.errors`,
`parcae.outputs`' path checks, `parcae.cli`'s one-line argument parser)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_imports import _imports

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
PUBLIC = ("parcae.train", "parcae.eval", "parcae.scaling")
SHARED = ("parcae", "parcae.errors", "parcae.outputs", "parcae.cli")


def parcae_imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every `parcae` module that `path` imports."""
    found = []
    for node in _imports(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        found += [(n, node.lineno) for n in names if n and n.split(".")[0] == "parcae"]
    return found


def test_experiments_import_only_the_public_api():
    scripts = sorted(EXPERIMENTS.glob("*.py"))
    assert len(scripts) > 5
    private = [
        f"{path.name}:{line} imports {module}"
        for path in scripts
        for module, line in parcae_imports(path)
        if module not in SHARED
        and not module.startswith(tuple(p + "." for p in PUBLIC))
        and module not in PUBLIC
    ]
    assert private == []


def test_the_package_does_not_import_the_experiments():
    src = Path(__file__).resolve().parents[2] / "src"
    offenders = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        for node in _imports(ast.parse(path.read_text()))
        if "experiments"
        in (
            [a.name.split(".")[0] for a in node.names]
            if isinstance(node, ast.Import)
            else [(node.module or "").split(".")[0]]
        )
    ]
    assert offenders == []
