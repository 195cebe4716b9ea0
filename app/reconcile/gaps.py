"""Gaps and epochs of a facility's subscriptions: the event numbers the receiver's ledger shows missing,
recovered once the grace period is over.

The receiver's ledger (``app.ingest.ledger``, table ``subscription_ledger``) lists each subscription's
missing event numbers and its epoch. This module reads it and never writes it: what it did is in its own
tables, ``subscription_gaps`` (one row per gap as a pass first saw it, and per epoch reset) and
``subscription_gap_watch`` (what the last pass saw of each subscription: its epoch and last good event).

A pass over one facility (``check_gaps``; periodic, ``reconciler.tasks``):

1. **Track**, in one transaction under a per-facility transaction lock (two passes never track twice): a
   missing range of the ledger that no gap row covers becomes an ``open`` gap whose window starts at the
   last good event the previous pass saw. An epoch above the watch's (the counter went down: the server
   restarted or recreated the subscription) requests a reconcile of the window since that last good event
   at once, recorded as a handled gap of kind ``epoch``. A subscription's first pass has no last good
   event: its epoch is only recorded, and the gaps it already lists are windowed from the epoch's start.
2. **Close**: an open gap whose numbers have all arrived (late, reordered) is ``filled``: not missed.
3. **Handle**, once a gap has been open for ``event_gap_grace``: the gap is claimed (a conditional update
   with a lease: a concurrent pass, from a second beat, finds it claimed), what is still missing is
   counted in ``ehri_events_missed_total``, and fetched with ``Subscription/{id}/$events`` where the
   probe found ``$events`` advertised: each event's focus is read and stored through the one pipeline,
   recorded as *recovered* (strategy ``events``). Whatever ``$events`` did not give (no ``$events``, the
   server's retention, an error, a gap of an epoch gone by) becomes a reconcile request of the gap's
   window (``reconcile_requests``). The outcome is written by one update conditional on the claim: a gap
   is handled once, and counted once.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import (
    DELETION_NOT_FOUND,
    DELETION_NOT_FOUND_ANNOUNCED,
    Facility,
    SubscriptionGap,
    SubscriptionGapWatch,
    SubscriptionLedger,
)
from app.ehr.pool import ClientFactory
from app.errors import IngestError
from app.fhir.notifications import NotificationEvent, parse_notification
from app.fhir.references import ResourceRef
from app.ingest.ledger import MAX_MISSING_RANGES
from app.ingest.pipeline.observed import Observed
from app.ingest.pipeline.references import ReferenceCache
from app.ingest.pipeline.service import Pipeline, Work
from app.metrics import EVENTS_MISSED
from app.reconcile import coverage, queries
from app.reconcile.probe import load_capabilities
from app.reconcile.subscriptions import reconcile_window_requested
from app.settings import Settings

log = structlog.get_logger("reconcile.gaps")

GAP, EPOCH = "gap", "epoch"
OPEN, HANDLING, FILLED, RECOVERED, REQUESTED = "open", "handling", "filled", "recovered", "requested"
#: Why a gap's window was reconciled rather than (all) fetched with ``$events``.
NOT_ADVERTISED = "events_not_advertised"
INCOMPLETE = "events_incomplete"  # $events answered without some of the numbers (retention)
NOT_OURS = "subscription_not_at_base"  # the ledger names a subscription we cannot address at the base
EPOCH_GONE = "epoch_changed"  # the gap's epoch is over: its numbers now name other events
TOO_LARGE = "gap_too_large"
EPOCH_RESET = "epoch_reset"
#: The reconcile requests' reasons (``reconcile_requests.reason``).
GAP_WINDOW, EPOCH_WINDOW = "subscription_gap", "subscription_epoch"

CLAIM_LEASE = timedelta(minutes=5)  # a pass that died while handling a gap lets another take it after this
MAX_EVENTS_FETCH = 1000  # a larger gap is reconciled by its window: one $events answer stays small
_SUBSCRIPTION_ID = re.compile(r"^Subscription/([A-Za-z0-9\-.]{1,64})$")

Range = tuple[int, int]


# -- ranges ------------------------------------------------------------------------------------------


def _ranges(missing: list[list[int]] | None) -> list[Range]:
    return [(int(r[0]), int(r[1])) for r in missing or [] if len(r) >= 2 and r[0] <= r[1]]


def subtract(ranges: list[Range], covered: list[Range]) -> list[Range]:
    """The parts of ``ranges`` outside every range of ``covered``."""
    result: list[Range] = []
    for first, last in ranges:
        pieces = [(first, last)]
        for c_first, c_last in covered:
            left: list[Range] = []
            for a, b in pieces:
                if b < c_first or a > c_last:
                    left.append((a, b))
                    continue
                if a < c_first:
                    left.append((a, c_first - 1))
                if b > c_last:
                    left.append((c_last + 1, b))
            pieces = left
        result += pieces
    return result


def intersect(first: int, last: int, ranges: list[Range]) -> list[Range]:
    return [(max(first, a), min(last, b)) for a, b in ranges if a <= last and b >= first]


def count(ranges: list[Range]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def still_open(first: int, last: int, missing: list[Range]) -> list[Range]:
    """What of the gap ``first..last`` is still missing, by the ledger's ``missing`` of the gap's epoch.
    A full ledger drops its oldest ranges (``MAX_MISSING_RANGES``): a gap below everything a full ledger
    still lists may have been dropped rather than filled, so it is taken as wholly missing (fetching an
    event twice is harmless; taking a lost one for filled is not)."""
    if len(missing) >= MAX_MISSING_RANGES and missing and last < min(a for a, _ in missing):
        return [(first, last)]
    return intersect(first, last, missing)


# -- the pass ------------------------------------------------------------------------------------------


@dataclass
class GapReport:
    facility_id: str
    tracked: int = 0  # gaps seen for the first time
    filled: int = 0  # closed by late events: not missed
    recovered: int = 0  # handled by $events alone
    requested: int = 0  # handled by a window reconcile (wholly or for what $events did not give)
    epochs: int = 0  # epoch resets (each requests a reconcile)
    missed: int = 0  # event numbers still missing after the grace period
    fetched: int = 0  # of those, the events $events gave and the pipeline stored
    claimed_elsewhere: int = 0  # due gaps another pass was handling


def check_gaps(
    sessions: sessionmaker[Session],
    client_for: ClientFactory,
    facility_id: str,
    settings: Settings,
    *,
    now: datetime | None = None,
    references: ReferenceCache | None = None,
) -> GapReport:
    """One pass over the facility's subscriptions (see the module docstring). Idempotent; safe to run
    concurrently with itself."""
    now = now or datetime.now(UTC)
    report = GapReport(facility_id)
    with sessions.begin() as session:
        facility = session.get(Facility, facility_id)
        if facility is None or not facility.enabled:
            return report
        _track(session, facility_id, now, report)
    due = _close_filled(sessions, facility_id, now - settings.event_gap_grace, now, report)
    if not due:
        return report
    with sessions() as session:
        facility = session.get(Facility, facility_id)
        assert facility is not None
        capabilities = load_capabilities(session, facility_id)
        session.expunge(facility)
    advertised = capabilities is not None and capabilities.subscription_events
    pipeline: Pipeline | None = None
    for gap_id in due:
        taken = claim(sessions, gap_id, now)
        if taken is None:
            report.claimed_elsewhere += 1
            continue
        if advertised and pipeline is None:
            pipeline = Pipeline.for_facility(facility, client_for(facility), settings, references)
        _handle(sessions, taken, pipeline if advertised else None, now, report)
    return report


def _last_good(watch: SubscriptionGapWatch) -> datetime:
    """The subscription's last good event as the previous pass saw it (the earlier of the event's own
    time and our check, so a sender's clock ahead of ours cannot narrow the window)."""
    seen = [t for t in (watch.highest_event_at, watch.checked_at) if t is not None]
    return min(seen)


def _track(session: Session, facility_id: str, now: datetime, report: GapReport) -> None:
    session.execute(queries.GAPS_TRACK_LOCK, {"fid": facility_id})
    ledgers = session.scalars(
        select(SubscriptionLedger).where(
            SubscriptionLedger.facility_id == facility_id, SubscriptionLedger.subscription != ""
        )
    ).all()
    watches = {
        w.subscription: w
        for w in session.scalars(
            select(SubscriptionGapWatch).where(SubscriptionGapWatch.facility_id == facility_id)
        )
    }
    tracked = _tracked(session, facility_id, ledgers)
    for ledger in ledgers:
        watch = watches.get(ledger.subscription)
        if watch is not None and ledger.epoch > watch.epoch:
            _epoch_reset(session, ledger, watch, now)
            report.epochs += 1
        if watch is not None and watch.epoch == ledger.epoch:
            since = _last_good(watch)
        else:  # never watched, or a new epoch: from the start of the ledger's epoch
            since = ledger.epoch_started_at or ledger.created_at
        for first, last in subtract(_ranges(ledger.missing), tracked[(ledger.subscription, ledger.epoch)]):
            session.add(
                SubscriptionGap(
                    facility_id=facility_id,
                    subscription=ledger.subscription,
                    epoch=ledger.epoch,
                    kind=GAP,
                    first_event=first,
                    last_event=last,
                    state=OPEN,
                    opened_at=now,
                    window_since=since,
                    window_until=ledger.highest_event_at,
                )
            )
            report.tracked += 1
            log.info(
                "reconcile.gap.opened",
                facility_id=facility_id,
                epoch=ledger.epoch,
                first_event=first,
                last_event=last,
            )
        values = {
            "epoch": ledger.epoch,
            "highest_event": ledger.highest_event,
            "highest_event_at": ledger.highest_event_at,
            "checked_at": now,
        }
        stmt = insert(SubscriptionGapWatch).values(
            facility_id=facility_id, subscription=ledger.subscription, **values
        )
        session.execute(
            stmt.on_conflict_do_update(index_elements=["facility_id", "subscription"], set_=values)
        )


def _tracked(
    session: Session, facility_id: str, ledgers: Sequence[SubscriptionLedger]
) -> dict[tuple[str, int], list[Range]]:
    """The gap rows that may cover what the ledgers list missing, per (subscription, epoch): only those
    reaching the lowest number each ledger lists (older rows cannot cover anything it still lists)."""
    reaching = [
        and_(
            SubscriptionGap.subscription == ledger.subscription,
            SubscriptionGap.epoch == ledger.epoch,
            SubscriptionGap.last_event >= min(first for first, _ in ranges),
        )
        for ledger in ledgers
        if (ranges := _ranges(ledger.missing))
    ]
    tracked: dict[tuple[str, int], list[Range]] = defaultdict(list)
    if not reaching:
        return tracked
    rows = session.execute(
        select(
            SubscriptionGap.subscription,
            SubscriptionGap.epoch,
            SubscriptionGap.first_event,
            SubscriptionGap.last_event,
        ).where(SubscriptionGap.facility_id == facility_id, SubscriptionGap.kind == GAP, or_(*reaching))
    )
    for row in rows:
        tracked[(row.subscription, row.epoch)].append((row.first_event, row.last_event))
    return tracked


def _epoch_reset(
    session: Session, ledger: SubscriptionLedger, watch: SubscriptionGapWatch, now: datetime
) -> None:
    """The counter went down: reconcile since the last good event of the epoch that ended."""
    since = _last_good(watch)
    reconcile_window_requested(
        session, ledger.facility_id, since, reason=EPOCH_WINDOW, subscription_id=ledger.subscription
    )
    last = watch.highest_event or 0
    session.add(
        SubscriptionGap(
            facility_id=ledger.facility_id,
            subscription=ledger.subscription,
            epoch=ledger.epoch,
            kind=EPOCH,
            first_event=last,
            last_event=last,
            state=REQUESTED,
            opened_at=now,
            window_since=since,
            reason=EPOCH_RESET,
            handled_at=now,
        )
    )
    log.warning(
        "reconcile.gap.epoch_reset",
        facility_id=ledger.facility_id,
        epoch=ledger.epoch,
        previous_epoch=watch.epoch,
    )


def _still_missing(session: Session, gap: SubscriptionGap) -> list[Range] | None:
    """What of the gap the ledger still lists missing; None when the ledger's epoch moved on."""
    ledger = session.get(SubscriptionLedger, (gap.facility_id, gap.subscription))
    if ledger is None or ledger.epoch != gap.epoch:
        return None
    return still_open(gap.first_event, gap.last_event, _ranges(ledger.missing))


def _close_filled(
    sessions: sessionmaker[Session],
    facility_id: str,
    opened_before: datetime,
    now: datetime,
    report: GapReport,
) -> list[int]:
    """Close the open gaps whose events all arrived; the ids of the others that are due (open past
    the grace, or claimed by a pass whose lease ran out)."""
    due: list[int] = []
    with sessions.begin() as session:
        gaps = session.scalars(
            select(SubscriptionGap)
            .where(SubscriptionGap.facility_id == facility_id, SubscriptionGap.handled_at.is_(None))
            .order_by(SubscriptionGap.id)
        ).all()
        for gap in gaps:
            if gap.state == OPEN and _still_missing(session, gap) == []:
                closed = session.execute(
                    update(SubscriptionGap)
                    .where(SubscriptionGap.id == gap.id, SubscriptionGap.state == OPEN)
                    .values(state=FILLED, handled_at=now)
                )
                if closed.rowcount == 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
                    report.filled += 1
                    log.info("reconcile.gap.filled", facility_id=facility_id, gap_id=gap.id)
                continue
            if gap.opened_at <= opened_before and (
                gap.state == OPEN or (gap.lease_until is not None and gap.lease_until < now)
            ):
                due.append(gap.id)
    return due


@dataclass(frozen=True)
class Claim:
    gap: SubscriptionGap
    token: str
    missing: list[Range] | None  # None: the gap's epoch is over


def claim(sessions: sessionmaker[Session], gap_id: int, now: datetime) -> Claim | None:
    """Take the gap for this pass, or None when another pass has it (or handled it)."""
    token = str(uuid.uuid4())
    with sessions.begin() as session:
        gap = session.scalars(
            update(SubscriptionGap)
            .where(
                SubscriptionGap.id == gap_id,
                SubscriptionGap.handled_at.is_(None),
                (SubscriptionGap.state == OPEN) | (SubscriptionGap.lease_until < now),
            )
            .values(state=HANDLING, claim_token=token, lease_until=now + CLAIM_LEASE)
            .returning(SubscriptionGap)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if gap is None:
            return None
        missing = _still_missing(session, gap)
        session.expunge(gap)
    return Claim(gap, token, missing)


def _handle(
    sessions: sessionmaker[Session],
    held: Claim,
    pipeline: Pipeline | None,
    now: datetime,
    report: GapReport,
) -> None:
    gap = held.gap
    missing = held.missing if held.missing is not None else [(gap.first_event, gap.last_event)]
    missed = count(missing)
    if missed == 0:  # filled between the grace check and the claim: closed, not missed
        if finish(sessions, held, FILLED, now, missed=0, fetched=0, reason=None):
            report.filled += 1
        return
    fetched: set[int] = set()
    subscription_id = _subscription_id(gap.subscription)
    if pipeline is None:
        reason: str | None = NOT_ADVERTISED
    elif held.missing is None:
        reason = EPOCH_GONE
    elif subscription_id is None:
        reason = NOT_OURS
    elif missed > MAX_EVENTS_FETCH:
        reason = TOO_LARGE
    else:
        try:
            fetched = _recover_with_events(sessions, pipeline, subscription_id, missing)
            reason = None
        except IngestError as exc:
            reason = exc.reason
            log.warning(
                "reconcile.gap.events_failed", facility_id=gap.facility_id, gap_id=gap.id, reason=reason
            )
    rest = subtract(missing, [(n, n) for n in sorted(fetched)])
    if rest and reason is None:
        reason = INCOMPLETE
    state = REQUESTED if rest else RECOVERED
    if finish(
        sessions, held, state, now, missed=missed, fetched=len(fetched), reason=reason if rest else None
    ):
        EVENTS_MISSED.labels(gap.facility_id).inc(missed)
        report.missed += missed
        report.fetched += len(fetched)
        if rest:
            report.requested += 1
        else:
            report.recovered += 1
        log.info(
            "reconcile.gap.recovered" if not rest else "reconcile.gap.window_requested",
            facility_id=gap.facility_id,
            gap_id=gap.id,
            missed=missed,
            fetched=len(fetched),
            reason=reason if rest else None,
        )


def finish(
    sessions: sessionmaker[Session],
    held: Claim,
    state: str,
    now: datetime,
    *,
    missed: int,
    fetched: int,
    reason: str | None,
) -> bool:
    """Record the gap's outcome (and, when something is left, the reconcile request of its window) in
    one transaction, only while this pass still holds the claim. False: it lost the claim (its lease ran
    out and another pass took the gap); nothing is recorded."""
    gap = held.gap
    with sessions.begin() as session:
        done = session.execute(
            update(SubscriptionGap)
            .where(SubscriptionGap.id == gap.id, SubscriptionGap.claim_token == held.token)
            .values(
                state=state,
                missed=missed,
                recovered=fetched,
                reason=reason,
                handled_at=now,
                claim_token=None,
                lease_until=None,
            )
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
            session.rollback()
            return False
        if state == REQUESTED:
            reconcile_window_requested(
                session,
                gap.facility_id,
                gap.window_since,
                until=None,
                reason=GAP_WINDOW,
                subscription_id=gap.subscription,
            )
    return True


def _subscription_id(subscription: str) -> str | None:
    """The id of a subscription the ledger names relative to the facility's base (``Subscription/id``)."""
    match = _SUBSCRIPTION_ID.match(subscription)
    return match.group(1) if match else None


# -- $events -------------------------------------------------------------------------------------------


def _recover_with_events(
    sessions: sessionmaker[Session], pipeline: Pipeline, subscription_id: str, missing: list[Range]
) -> set[int]:
    """Fetch the missing events with ``$events`` and store their focuses; the numbers stored. Raises the
    error of an answer that could not be had or understood."""
    client = pipeline.client
    wanted = {n for first, last in missing for n in range(first, last + 1)}
    path = (
        f"Subscription/{subscription_id}/$events?eventsSinceNumber={missing[0][0]}"
        f"&eventsUntilNumber={missing[-1][1]}&content=id-only"
    )
    _, body = client.fetch_json(path)
    if body is None:  # 404/410: the server no longer knows the subscription (or its events)
        return set()
    notification = parse_notification(body, client.base_url)
    events: dict[int, NotificationEvent] = {
        e.event_number: e
        for e in notification.events
        if e.event_number in wanted and e.focus is not None and e.refused is None
    }
    refs = list(dict.fromkeys(e.focus for e in events.values() if e.focus is not None))
    if not refs:
        return set()
    now = datetime.now(UTC)
    fetched = pipeline.fetch(Work(reads=refs), now=now)
    deleted = {e.focus for e in events.values() if e.interaction == "delete"}
    stored: set[ResourceRef] = set()
    for ref, outcome in list(fetched.reads.items()):
        if isinstance(outcome, IngestError):
            del fetched.reads[ref]
            continue
        if outcome.deletion == DELETION_NOT_FOUND:
            if ref in deleted:  # a 404 for a delete the event announced: a deletion
                fetched.reads[ref] = replace(outcome, deletion=DELETION_NOT_FOUND_ANNOUNCED)
            elif not pipeline.adapter.not_found_is_final:  # unconfirmed: the window reconcile decides
                del fetched.reads[ref]
                continue
        stored.add(ref)
    items: list[Observed] = fetched.observed()
    with sessions() as session:
        before = coverage.snapshot(session, pipeline.facility_id, items)
        pipeline.store(session, items)
        coverage.record(session, pipeline.facility_id, items, before, strategy="events", run_id=None)
        session.commit()
    pipeline.committed(fetched)
    return {n for n, e in events.items() if e.focus in stored}


def facilities_with_numbered_subscriptions(session: Session) -> list[str]:
    """The enabled facilities whose ledger has a subscription with event numbers (the gap pass's fan-out)."""
    return list(
        session.scalars(
            select(SubscriptionLedger.facility_id)
            .join(Facility, Facility.id == SubscriptionLedger.facility_id)
            .where(Facility.enabled, SubscriptionLedger.subscription != "")
            .distinct()
            .order_by(SubscriptionLedger.facility_id)
        )
    )
