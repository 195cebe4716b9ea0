"""``ehr-ingest serve``: the webhook receiver under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Run the webhook receiver (uvicorn). Readiness is GET /readyz."""
    import uvicorn

    # By import string, so that app.cli never imports app.api (the edge) itself. log_config=None: uvicorn
    # installs no handlers of its own; its lines go through app.logging (configured by the CLI callback).
    uvicorn.run(
        "app.api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level="warning",
        log_config=None,
    )
