"""The import direction of DESIGN.md: app is the kernel; the edges depend on it, never the reverse.

workers, reconciler, app.api, app.cli ──► app
devstack ──► app, ehrsim              (development only)
app ──► none of app.api, app.cli, workers, reconciler, devstack, ehrsim
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = ("devstack", "ehrsim")
EDGES = ("workers", "reconciler")


def _names(nodes: list[ast.stmt] | list[ast.AST]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _imports(path: Path) -> set[str]:
    """Every absolute import in the file, deferred ones inside functions included."""
    return _names(list(ast.walk(ast.parse(path.read_text(), filename=str(path)))))


def _module_level_imports(path: Path) -> set[str]:
    """Imports that run when the module is imported: everything outside function bodies."""
    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            found.append(child)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return _names(found)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _within(path: Path, *subpackage: str) -> bool:
    return path.relative_to(ROOT / "app").parts[: len(subpackage)] == subpackage


def _matches(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def _offending(paths: list[Path], forbidden: tuple[str, ...], *, module_level: bool = False) -> list[str]:
    read = _module_level_imports if module_level else _imports
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in paths
        for name in sorted(read(path))
        if _matches(name, forbidden)
    ]


def test_app_kernel_imports_no_edge() -> None:
    kernel = [p for p in _modules("app") if not _within(p, "api") and not _within(p, "cli")]
    assert _offending(kernel, ("app.api", "app.cli", *EDGES)) == []


def test_app_imports_no_dev_package_or_edge_at_import_time() -> None:
    assert _offending(_modules("app"), (*DEV_ONLY, *EDGES), module_level=True) == []


def test_only_the_dev_commands_import_dev_packages_even_lazily() -> None:
    product = [p for p in _modules("app") if p != ROOT / "app" / "cli" / "dev.py"]
    assert _offending(product, DEV_ONLY) == []


def test_cli_reaches_the_api_only_by_import_string() -> None:
    # `serve` hands uvicorn "app.api.main:create_app"; importing app.api would make the CLI load FastAPI.
    assert _offending(_modules("app/cli"), ("app.api", "fastapi", "starlette")) == []


def test_ehrsim_does_not_depend_on_the_dev_stack() -> None:
    assert _offending(_modules("ehrsim"), ("devstack",)) == []


def test_workers_and_reconciler_never_import_fastapi() -> None:
    edges = _modules("workers") + _modules("reconciler")
    assert _offending(edges, ("fastapi", "starlette", "app.api", "uvicorn")) == []


def test_app_package_init_imports_nothing() -> None:
    assert _imports(ROOT / "app" / "__init__.py") == set()


def _loaded_after(imports: str, watched: tuple[str, ...]) -> list[str]:
    code = (
        f"import sys, {imports}; "
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(watched)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_importing_the_worker_app_does_not_load_fastapi() -> None:
    assert _loaded_after("workers.tasks, reconciler.tasks", ("fastapi", "starlette")) == []


def test_importing_the_cli_loads_no_dev_package_edge_or_fastapi() -> None:
    watched = (*DEV_ONLY, *EDGES, "fastapi", "starlette", "uvicorn")
    assert _loaded_after("app.cli.main", watched) == []


def _dockerfile_stages() -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (the stage it is built FROM, the sources its COPY lines name)."""
    stages: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        words = raw.split()
        if words[:1] == ["FROM"]:
            current = words[3] if len(words) > 3 else words[1]
            stages[current] = (words[1], [])
        elif words[:1] == ["COPY"] and current:
            stages[current][1].extend(w.rstrip("/") for w in words[1:-1] if not w.startswith("--"))
    return stages


def test_the_production_image_ships_no_dev_package_tests_or_bench() -> None:
    stages = _dockerfile_stages()
    assert list(stages)[-1] == "production", "the default build target must be the production image"
    copied: list[str] = []
    stage = "production"
    while stage in stages:
        parent, sources = stages[stage]
        copied += sources
        stage = parent
    assert {"app", "workers", "reconciler", "migrations"} <= set(copied)
    assert set(copied) & {*DEV_ONLY, "tests", "bench", "."} == set()
