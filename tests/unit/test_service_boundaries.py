"""No service imports another service's code: what two services share lives in shared/.

services/cli.py and services/ops_cli.py are the operator's command line over every service and
may import any of them.
"""
from __future__ import annotations

import ast
from pathlib import Path

from shared.settings import REPO

SERVICES = REPO / "services"


def imported_modules(source: str) -> set[str]:
    """Every absolute module a Python source imports (`import a.b`, `from a.b import c`, inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"services.{a.name}" for a in node.names} if node.module == "services" else {node.module}
    return found


def crossings(root: Path) -> list[str]:
    """Return 'file: module' for every import of services.<b> from a file under services/<a>/ (b != a)."""
    out = []
    for package in sorted(p for p in root.iterdir() if (p / "__init__.py").exists()):
        for path in sorted(package.rglob("*.py")):
            for module in sorted(imported_modules(path.read_text())):
                parts = module.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] != package.name:
                    out.append(f"{path.relative_to(root.parent)}: {module}")
    return out


def test_no_service_imports_another():
    assert crossings(SERVICES) == []


def test_the_scan_finds_a_crossing_import(tmp_path):
    for name, source in {"alpha": "from services.beta.thing import x\n",
                         "beta": "def f():\n    import services.alpha\n    from services import beta\n"}.items():
        (tmp_path / "services" / name).mkdir(parents=True)
        (tmp_path / "services" / name / "__init__.py").write_text("")
        (tmp_path / "services" / name / "mod.py").write_text(source)
    (tmp_path / "services" / "cli.py").write_text("from services.alpha import mod\n")  # the operator CLI: allowed
    assert crossings(tmp_path / "services") == ["services/alpha/mod.py: services.beta.thing",
                                                "services/beta/mod.py: services.alpha"]
