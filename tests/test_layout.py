"""The import direction of DESIGN.md: app is the kernel; the edges depend on it, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in paths
        for name in sorted(_imports(path))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_app_kernel_imports_no_edge() -> None:
    kernel = [p for p in _modules("app") if "api" not in p.relative_to(ROOT / "app").parts[:1]]
    assert _offending(kernel, ("app.api", "workers", "reconciler")) == []


def test_workers_and_reconciler_never_import_fastapi() -> None:
    edges = _modules("workers") + _modules("reconciler")
    assert _offending(edges, ("fastapi", "starlette", "app.api", "uvicorn")) == []


def test_app_package_init_imports_nothing() -> None:
    assert _imports(ROOT / "app" / "__init__.py") == set()


def test_importing_the_worker_app_does_not_load_fastapi() -> None:
    import subprocess
    import sys

    code = "import sys, workers.tasks, reconciler.tasks; print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
