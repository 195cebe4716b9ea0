"""Short leases, renewed while a batch is in flight.

A claim hides its rows for one lease (``EHRI_LEASE``, seconds). While the batch is fetched and stored, a
daemon thread renews the lease every third of it, so a live worker keeps its rows however slow the EHR
is, and a worker that dies (kill -9, a lost machine, a Postgres restart that broke its connection) stops
renewing: its rows are due again within one lease, and the sweeper rings for them. Renewal stops after
``max_hold``, so a wedged process cannot hide rows for ever; if it wakes up later, the claim token keeps
its outcomes off rows another worker has claimed since (``app.ingest.queries``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import Protocol

import structlog
from sqlalchemy.orm import Session, sessionmaker

from app.ingest import queries

log = structlog.get_logger("ingest.lease")

DEFAULT_MAX_HOLD = timedelta(minutes=10)


class Claimed(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def claim_token(self) -> str | None: ...


class LeaseKeeper:
    """Context manager: renews the lease of ``rows`` (one claim) until the block ends."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        rows: Sequence[Claimed],
        lease: timedelta,
        *,
        max_hold: timedelta = DEFAULT_MAX_HOLD,
    ) -> None:
        self._sessions = sessions
        self._ids = [r.id for r in rows]
        self._token = rows[0].claim_token if rows else None
        self._lease = lease
        self._interval = lease.total_seconds() / 3
        self._max_hold_s = max_hold.total_seconds()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renew(self) -> int:
        """Extend the lease of the rows still held under this claim; returns how many."""
        if not self._ids or self._token is None:
            return 0
        with self._sessions.begin() as session:
            result = session.execute(
                queries.RENEW_LEASE, {"ids": self._ids, "token": self._token, "lease": self._lease}
            )
        return int(getattr(result, "rowcount", 0))

    def __enter__(self) -> LeaseKeeper:
        if self._ids:
            self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 5)

    def _run(self) -> None:
        deadline = time.monotonic() + self._max_hold_s
        while not self._stop.wait(self._interval):
            if time.monotonic() >= deadline:
                log.warning("ingest.lease_hold_exceeded", rows=len(self._ids))
                return
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; the lease bounds the harm
                log.warning("ingest.lease_renew_failed", rows=len(self._ids), error=type(exc).__name__)
