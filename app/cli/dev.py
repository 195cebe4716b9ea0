"""``ehr-ingest sim`` and ``ehr-ingest demo``: development commands.

They run code from ``ehrsim`` and ``devstack``, which the production image does not ship; both are
imported inside the commands, so the rest of the CLI works without them and these commands say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli import render

_DEV_PACKAGES = ("ehrsim", "devstack")


def _missing(exc: ModuleNotFoundError, command: str) -> None:
    """Exit 2 when a development package is absent; any other missing module is a bug and propagates."""
    top = (exc.name or "").split(".")[0]
    if top not in _DEV_PACKAGES:
        raise exc
    render.fail(
        f"`ehr-ingest {command}` needs the development package {top!r}, which this installation does not "
        "include (the production image leaves it out; use a source checkout or the image's dev target)"
    )


def sim(
    config: Annotated[Path, typer.Option(help="ehrsim YAML config")],
    host: str = "127.0.0.1",
    port: int = 8090,
) -> None:
    """Run the simulated EHR (ehrsim)."""
    try:
        from ehrsim import cli_main
    except ModuleNotFoundError as exc:
        _missing(exc, "sim")
        raise
    cli_main(str(config), host, port)


def demo(changes: int = 200) -> None:
    """Run the end-to-end demo on this machine and print what reached Postgres (exit 1: a change lost)."""
    try:
        from devstack.demo import run_demo
    except ModuleNotFoundError as exc:
        _missing(exc, "demo")
        raise
    raise typer.Exit(run_demo(changes=changes))
