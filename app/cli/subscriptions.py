"""``ehr-ingest subscribe`` / ``unsubscribe``: the Subscription we keep at a facility's EHR."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from app.cli import ledger, render
from app.errors import ConfigurationError, IngestError

T = TypeVar("T")

FacilityArg = Annotated[str, typer.Argument(metavar="FACILITY", help="facility id")]


def _with_client(facility_id: str, action: Callable[..., T]) -> T:
    """Run ``action(session, facility, client)`` in one transaction: a configuration error exits 2, an EHR
    that fails or refuses exits 1 (nothing is recorded then)."""
    from app.ehr.pool import EHRClientPool
    from app.facilities.service import get_facility

    pool = EHRClientPool()
    try:
        with ledger.session(write=True) as session:
            ledger.require_facility(session, facility_id)
            facility = get_facility(session, facility_id)
            assert facility is not None
            try:
                return action(session, facility, pool.get(facility))
            except ConfigurationError as exc:
                render.fail(exc.detail or exc.reason)
            except IngestError as exc:
                render.fail(f"{facility_id}: {exc}", render.EXIT_FAILED)
    finally:
        pool.close()


def subscribe(facility_id: FacilityArg) -> None:
    """Create or update FACILITY's subscription at its EHR from the facilities YAML's `subscription` block
    (idempotent), re-read it and store what the server accepted."""
    from datetime import UTC, datetime

    from app.reconcile.subscriptions import Subscribed
    from app.reconcile.subscriptions import subscribe as subscribe_

    done: Subscribed = _with_client(facility_id, lambda s, f, c: subscribe_(s, f, c, now=datetime.now(UTC)))
    end = done.end.isoformat() if done.end else "none"
    render.line(
        f"{facility_id}: {done.result} Subscription/{done.subscription_id}, status {done.status}, "
        f"heartbeat {done.heartbeat_s or 'none'} s, end {end}"
    )


def unsubscribe(facility_id: FacilityArg) -> None:
    """Remove FACILITY's subscription at its EHR (nothing to do when there is none)."""
    from app.reconcile.subscriptions import unsubscribe as unsubscribe_

    removed: bool = _with_client(facility_id, unsubscribe_)
    render.line(f"{facility_id}: {'removed' if removed else 'no subscription to remove'}")
