"""The package layering the lean core promises: cifarnet <- hpo <- dashboard, never the other way, and no
imports of optuna's or optuna-dashboard's private modules anywhere in the shipped code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOWER = {"cifarnet": {"hpo", "dashboard"}, "hpo": {"dashboard"}}  # package -> packages it must not import


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in the file names (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(LOWER))
def test_lower_packages_never_import_higher_ones(package):
    offending = {str(p.relative_to(REPO)): sorted(m for m in imported_modules(p) if m.split(".")[0] in LOWER[package])
                 for p in sources(package)}
    assert {k: v for k, v in offending.items() if v} == {}


def test_no_private_optuna_or_dashboard_imports():
    private = {str(p.relative_to(REPO)): sorted(m for m in imported_modules(p)
                                                if m.split(".")[0] in ("optuna", "optuna_dashboard")
                                                and any(part.startswith("_") for part in m.split(".")[1:]))
               for p in sources("cifarnet", "hpo", "dashboard", "benchmarks")}
    assert {k: v for k, v in private.items() if v} == {}


def test_the_checker_sees_lazy_and_private_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from dashboard.app import serve\n    import optuna.storages._grpc.server\n")
    assert {"dashboard.app", "dashboard.app.serve", "optuna.storages._grpc.server"} <= imported_modules(module)
