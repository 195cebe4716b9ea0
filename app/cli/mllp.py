"""``ehr-ingest mllp serve``: the HL7 v2 ADT listener (one port for every facility with an ``hl7v2``
block). Settings: ``EHRI_MLLP_*`` (message size bound, idle timeout, TLS certificate and key)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from app.cli import render

if TYPE_CHECKING:
    from collections.abc import Callable
    from ssl import SSLContext

    from app.hl7v2.listener import Listener
    from app.settings import Settings

cli = typer.Typer(help="The HL7 v2 MLLP listener.", no_args_is_help=True)


@cli.command("serve")
def serve(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 2575,
    metrics_port: Annotated[int, typer.Option(min=0, max=65535, help="0: no /metrics")] = 9102,
) -> None:
    """Listen for MLLP connections; each message is committed to Postgres before its AA."""
    import asyncio
    import gc
    import logging
    import signal

    from app.logging import configure_logging
    from app.settings import get_settings

    settings = get_settings()
    configure_logging(settings, min_level=logging.INFO)
    if (settings.mllp_tls_cert is None) != (settings.mllp_tls_key is None):
        render.fail("TLS needs both EHRI_MLLP_TLS_CERT and EHRI_MLLP_TLS_KEY")
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=host)

    async def main() -> None:
        listener, tls, close = build_listener(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            bound = await listener.start(host, port, tls=tls)
            # Everything loaded so far lives as long as the process: out of the collector's sight, a
            # full collection no longer walks it (~60 ms over the imported modules, a stall every
            # connection's ACK would wait for).
            gc.freeze()
            render.line(f"mllp: listening on {host}:{bound}")
            await stop.wait()
        finally:
            await listener.stop()
            close()

    try:
        import uvloop  # with uvicorn[standard]: the event loop's own cost per message is far lower
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def build_listener(settings: Settings) -> tuple[Listener, SSLContext | None, Callable[[], None]]:
    """The listener as the process runs it: its writer, the facilities directory (re-read every 30 s),
    the Celery doorbell, TLS when configured; and what closes them."""
    from app.db.engine import make_engine, make_sessionmaker
    from app.hl7v2.inbox import AdtWriter
    from app.hl7v2.listener import Listener, ListenerConfig, tls_context
    from app.hl7v2.routing import Directory, load_directory
    from app.queue import make_celery, ring_adt

    engine = make_engine(settings.database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    celery = make_celery(settings)

    def directory() -> Directory:
        with sessions() as session:
            return load_directory(session)

    def ring(facility_id: str) -> bool:
        return ring_adt(celery, settings.queue, facility_id)

    conninfo = make_url_conninfo(settings.database_url)
    listener = Listener(
        AdtWriter(conninfo),
        directory,
        ListenerConfig(
            max_message_bytes=settings.mllp_max_message_bytes,
            idle_timeout_s=settings.mllp_idle_timeout.total_seconds(),
        ),
        ring=ring,
    )
    tls = (
        tls_context(settings.mllp_tls_cert, settings.mllp_tls_key)
        if settings.mllp_tls_cert and settings.mllp_tls_key
        else None
    )

    def close() -> None:
        engine.dispose()

    return listener, tls, close


def make_url_conninfo(database_url: str) -> str:
    """A libpq URL for psycopg from the SQLAlchemy URL (``postgresql+psycopg://`` → ``postgresql://``)."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
