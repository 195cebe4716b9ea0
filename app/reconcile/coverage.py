"""Coverage: the changes a reconcile applied that no notification had delivered (*recovered*).

What a page's write changed is told by the stored rows before and after it, in the same transaction:
a key whose (content, deleted, version) moved was applied by this write. It is recovered unless a
notification for it is still on its way (a pending inbox row): then the webhook path would have
delivered it too, and the reconciler merely came first.

A notification can also still be on its way at the EHR or the receiver (a slow interface engine): it
arrives after the run. When it announced the very version the reconciler stored (or, announcing none,
the drain's read of it finds that version still current), the feed delivered that change, late:
``retract_delivered`` deletes the recovered row, so a feed that is slow but whole is never counted as
leaking (``feed_leaking``). Only a versioned change, and only within ``LATE_DELIVERY`` of its recovery.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import structlog
from sqlalchemy.orm import Session

from app.ingest.pipeline.observed import Observed
from app.metrics import RECONCILE_RECOVERED
from app.reconcile import queries

log = structlog.get_logger("reconcile.coverage")

Key = tuple[str, str]
#: A notification's focus (type, id) and the version it announced (None: none).
Notified = tuple[str, str, str | None]
State = tuple[str, bool, str | None]

#: A notification arriving this long after the reconciler stored its change still delivered it.
LATE_DELIVERY = timedelta(minutes=15)


def _state(session: Session, facility_id: str, keys: list[Key]) -> dict[Key, State]:
    if not keys:
        return {}
    rows = session.execute(
        queries.SNAPSHOT,
        {"fid": facility_id, "resource_type": [k[0] for k in keys], "resource_id": [k[1] for k in keys]},
    )
    return {(r.resource_type, r.resource_id): (r.content_hash, r.deleted, r.version_id) for r in rows}


def _keys(items: list[Observed]) -> list[Key]:
    return list(dict.fromkeys((o.resource_type, o.resource_id) for o in items))


def snapshot(session: Session, facility_id: str, items: list[Observed]) -> dict[Key, State]:
    return _state(session, facility_id, _keys(items))


def record(
    session: Session,
    facility_id: str,
    items: list[Observed],
    before: dict[Key, State],
    *,
    strategy: str,
    run_id: int | None,
) -> int:
    """Record what the write of ``items`` recovered (caller commits); returns how many."""
    keys = _keys(items)
    after = _state(session, facility_id, keys)
    changed = [k for k in keys if k in after and after[k] != before.get(k)]
    if not changed:
        return 0
    pending = {
        (r.focus_type, r.focus_id)
        for r in session.execute(
            queries.NOTIFIED_PENDING,
            {"fid": facility_id, "types": [k[0] for k in changed], "ids": [k[1] for k in changed]},
        )
    }
    recovered = [k for k in changed if k not in pending]
    if not recovered:
        return 0
    session.execute(
        queries.RECORD_RECOVERED,
        {
            "fid": facility_id,
            "strategy": strategy,
            "run_id": run_id,
            "resource_type": [k[0] for k in recovered],
            "resource_id": [k[1] for k in recovered],
            "version_id": [after[k][2] for k in recovered],
            "deleted": [after[k][1] for k in recovered],
        },
    )
    for resource_type, _ in recovered:
        RECONCILE_RECOVERED.labels(facility_id, resource_type, strategy).inc()
    return len(recovered)


def retract_delivered(session: Session, facility_id: str, notified: Iterable[Notified], now: datetime) -> int:
    """The drain read ``notified`` (the focus of notifications it is marking done, after its store, in
    its transaction, with the version each announced, if any): a recent recovered change of one of them
    at the announced version (none announced: at the version now stored) was delivered after all, late.
    Deletes those recovered rows; returns how many (caller commits)."""
    keys = list(dict.fromkeys(notified))
    if not keys:
        return 0
    retracted = len(
        session.execute(
            queries.RETRACT_RECOVERED,
            {
                "fid": facility_id,
                "types": [k[0] for k in keys],
                "ids": [k[1] for k in keys],
                "versions": [k[2] for k in keys],
                "now": now,
                "late_s": LATE_DELIVERY.total_seconds(),
            },
        ).all()
    )
    if retracted:
        log.info("reconcile.recovered.delivered_late", facility_id=facility_id, changes=retracted)
    return retracted
