"""Token lifecycle events (issued, renewed, rejected, expired early): their own log stream
(``stream=token``) and the ``token_events`` table, apart from application errors.

A sink is called outside the caller's transaction, so an event survives a batch that rolls back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

# Initial values, not .bind(): bind() here would build the logger at import, before logging is configured.
log = structlog.get_logger("ehr.token", stream="token")

ISSUED = "issued"
RENEWED = "renewed"
REJECTED = "rejected"
EXPIRED_EARLY = "expired_early"


class TokenEventSink(Protocol):
    def __call__(
        self, facility_id: str, event: str, *, expires_in: int | None = None, detail: str = ""
    ) -> None: ...


def log_only(facility_id: str, event: str, *, expires_in: int | None = None, detail: str = "") -> None:
    log.info(f"ehr.token.{event}", facility_id=facility_id, expires_in=expires_in, detail=detail or None)


_INSERT = text("INSERT INTO token_events (facility_id, event, expires_in, detail) VALUES (:f, :e, :x, :d)")


def database_sink(sessions: sessionmaker[Session]) -> Callable[..., None]:
    def sink(facility_id: str, event: str, *, expires_in: int | None = None, detail: str = "") -> None:
        log_only(facility_id, event, expires_in=expires_in, detail=detail)
        try:
            with sessions.begin() as session:
                session.execute(
                    _INSERT, {"f": facility_id, "e": event, "x": expires_in, "d": detail[:500] or None}
                )
        except Exception:  # noqa: BLE001 - losing an audit row must not fail a fetch; the log line remains
            log.warning("ehr.token.event_not_recorded", facility_id=facility_id, event=event)

    return sink
