"""What an earlier revision defined, for a later revision's downgrade to restore (views, mostly)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

VERSIONS = Path(__file__).resolve().parent / "versions"
CONSUMER_VIEW_COMMENT = "Consumer view over current_resources; see README, For consumers."


def revision_module(filename: str) -> ModuleType:
    """The module of ``versions/{filename}``, loaded by path (revision files are not importable names)."""
    path = VERSIONS / filename
    spec = importlib.util.spec_from_file_location(f"revision_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path.name}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def consumer_views_0004() -> dict[str, str]:
    """The consumer views as 0004 created them (view name -> SELECT)."""
    views: dict[str, str] = revision_module("0004_consumer_views.py").VIEWS
    return views
