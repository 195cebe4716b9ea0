"""Serving the worker's metrics: every prefork pool process records into prometheus_client's
multiprocess files, and the celery parent serves their sum on ``EHRI_WORKER_METRICS_PORT`` (off unless
set).

prometheus_client picks its value store when it is first imported, so ``choose_multiprocess_mode`` runs
from ``workers/__init__.py``, before anything imports ``app.metrics``. Without an explicit
``PROMETHEUS_MULTIPROC_DIR`` each worker node gets a private temporary directory, removed when the node
exits. A directory must not be shared by two worker nodes: each clears it when it starts.
Counters and histograms of pool processes that exited stay in the sum (they are totals, and must not go
backwards when a process is replaced).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import structlog

from app.settings import get_settings

log = structlog.get_logger("workers.metrics")

DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def choose_multiprocess_mode() -> None:
    """When the worker serves metrics, point prometheus_client at a multiprocess directory (inherited by
    the pool processes through the environment). Must run before prometheus_client is imported."""
    if get_settings().worker_metrics_port is None or os.environ.get(DIR_ENV):
        return
    if "prometheus_client" in sys.modules:
        # Too late to change the value store (an embedding process imported it first): serve nothing
        # rather than a sum that silently misses the pool processes.
        log.warning("worker.metrics_mode_too_late")
        return
    path = tempfile.mkdtemp(prefix="ehri-worker-metrics-")
    os.environ[DIR_ENV] = path
    atexit.register(_remove_directory, path, os.getpid())


def _remove_directory(path: str, owner: int) -> None:
    if os.getpid() == owner:  # forked pool processes inherit atexit handlers: only the creator removes it
        shutil.rmtree(path, ignore_errors=True)


def multiprocess_dir() -> Path | None:
    path = os.environ.get(DIR_ENV)
    return Path(path) if path else None


def clear_stale_files(directory: Path) -> int:
    """Forget what earlier runs of this node left in ``directory`` (a reused directory would add their
    totals to ours); files of this very process are kept, it already writes to them. Returns how many."""
    mine = f"_{os.getpid()}.db"
    removed = 0
    for path in directory.glob("*.db"):
        if not path.name.endswith(mine):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def serve(port: int, host: str) -> bool:
    """Serve the sum of every process's metrics on ``http://{host}:{port}/metrics`` from a daemon thread
    of this (the parent) process. A port that cannot be bound is logged, not raised: metrics must not stop
    ingestion."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = multiprocess_dir()
    if directory is None:
        log.error("worker.metrics_unavailable", reason="no multiprocess directory")
        return False
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]  # unannotated
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("worker.metrics_unavailable", port=port, error=type(exc).__name__)
        return False
    log.info("worker.metrics_serving", port=port)
    return True


def process_exited(pid: int) -> None:
    """Bookkeeping for a pool process that exited (live gauges are dropped from the sum)."""
    from prometheus_client import multiprocess

    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # unannotated
