"""The per-subscription event ledger rules (pure) and the dedup keys of every source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.fhir.notifications import Delivery, NotificationType, Timestamp, parse_delivery, parse_notification
from app.ingest.inbox import intake_for
from app.ingest.ledger import LedgerObservation, LedgerState, NumberedEvent, apply
from app.ingest.writer import with_epoch
from app.vendors import adapter_for
from tests.app.api.fixtures_shapes import athena_event, medplum_resource, r4b_bundle, subscription_status
from tests.fixtures import BASE, backport_id_only

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _events(*numbers: int, at: datetime | None = T0) -> LedgerObservation:
    stamps = [NumberedEvent(n, Timestamp(at + timedelta(seconds=n), True) if at else None) for n in numbers]
    return LedgerObservation("f", "Subscription/s", "event-notification", numbers=stamps)


def _status(ntype: NotificationType, since: int) -> LedgerObservation:
    return LedgerObservation("f", "Subscription/s", ntype, events_since_start=since)


def test_increasing_numbers_advance_without_gaps() -> None:
    state = LedgerState("f", "Subscription/s")
    apply(state, _events(1, 2), NOW)
    applied = apply(state, _events(3), NOW)
    assert (state.highest_event, state.missing, state.gaps_observed, applied.epochs) == (3, [], 0, [1])


def test_a_jump_opens_a_gap_that_late_events_fill() -> None:
    state = LedgerState("f", "Subscription/s")
    apply(state, _events(1), NOW)
    applied = apply(state, _events(5), NOW)
    assert (applied.new_gaps, state.missing) == (3, [[2, 4]])
    apply(state, _events(3), NOW)
    assert state.missing == [[2, 2], [4, 4]]
    apply(state, _events(2, 4), NOW)
    assert (state.missing, state.gaps_observed, state.epoch) == ([], 3, 1)


def test_a_late_duplicate_changes_nothing() -> None:
    state = LedgerState("f", "Subscription/s")
    apply(state, _events(1, 2, 3), NOW)
    applied = apply(state, _events(2), NOW)
    assert (state.highest_event, state.epoch, applied.epochs, applied.new_epoch) == (3, 1, [1], False)


def test_a_lower_counter_with_a_later_timestamp_starts_a_new_epoch() -> None:
    state = LedgerState("f", "Subscription/s")
    apply(state, _events(10, 11), NOW)
    restarted = apply(state, _events(2, at=T0 + timedelta(hours=1)), NOW)
    assert restarted.new_epoch
    assert (state.epoch, state.highest_event, state.missing, restarted.epochs) == (2, 2, [[1, 1]], [2])


def test_an_event_older_than_the_epoch_belongs_to_the_previous_one() -> None:
    state = LedgerState("f", "Subscription/s")
    apply(state, _events(10), NOW)
    apply(state, _events(1, at=T0 + timedelta(hours=1)), NOW)
    late = apply(state, _events(11), NOW)  # old epoch's event 11, delivered late
    assert (late.epochs, state.epoch, state.highest_event) == ([1], 2, 1)


def test_heartbeat_above_the_highest_means_missed_events() -> None:
    state = LedgerState("f", "Subscription/s")
    apply(state, _events(1, 2), NOW)
    applied = apply(state, _status("heartbeat", 5), NOW)
    assert (applied.new_gaps, state.missing, state.highest_event) == (3, [[3, 5]], 5)
    assert state.last_heartbeat_at == NOW


def test_handshake_below_the_highest_starts_a_new_epoch() -> None:
    state = LedgerState("f", "Subscription/s")
    apply(state, _events(1, 2, 3), NOW)
    applied = apply(state, _status("handshake", 0), NOW)
    assert applied.new_epoch
    assert (state.epoch, state.highest_event, state.last_handshake_at) == (2, 0, NOW)


def test_first_sighting_opens_no_gap() -> None:
    state = LedgerState("f", "Subscription/s")
    applied = apply(state, _events(500), NOW)
    assert (applied.new_gaps, state.highest_event, state.notifications) == (0, 500, 1)


# -- dedup keys per source ---------------------------------------------------------------------


def test_numbered_events_are_keyed_by_subscription_and_number_and_await_their_epoch() -> None:
    n = parse_notification(backport_id_only([(9, "Patient/p1")]), BASE)
    entry = intake_for("f", n).entries[0]
    assert entry.dedup_key.startswith("evt|Subscription/sub-1|9|")
    assert entry.ledger_index == 0
    assert with_epoch(entry, 2).dedup_key.endswith("|e2")


def test_an_entry_keeps_what_its_event_announced_the_version_and_the_precise_time() -> None:
    n = parse_notification(backport_id_only([(9, "Patient/p1/_history/3"), (10, "Patient/p2")]), BASE)
    versioned, bare = intake_for("f", n).entries
    assert (versioned.notified_version, versioned.notified_at) == (
        "3",
        datetime(2026, 11, 24, 10, tzinfo=UTC),
    )
    assert (bare.notified_version, bare.focus_id) == (None, "p2")
    dated = backport_id_only([(11, "Patient/p3")])
    dated["entry"][0]["resource"]["parameter"][-1]["part"][1] = {
        "name": "timestamp",
        "valueDate": "2026-11-24",
    }
    assert (
        intake_for("f", parse_notification(dated, BASE)).entries[0].notified_at is None
    )  # a day orders nothing


def test_athena_events_are_keyed_by_event_id_and_skip_the_numbers() -> None:
    focus = {"reference": "Patient/p1"}
    body = r4b_bundle(subscription_status([athena_event("A", focus), athena_event("B", focus)], since="1"))
    intake = intake_for("f", parse_notification(body, BASE), event_identity="event-id")
    assert [e.dedup_key for e in intake.entries] == ["eid|Subscription/r4b-1|A", "eid|Subscription/r4b-1|B"]
    assert intake.observation.numbers == []
    assert intake.observation.events_since_start is None


def test_medplum_is_keyed_by_subscription_type_id_and_version() -> None:
    resource = medplum_resource()
    headers = {"x-medplum-subscription": "mp"}
    announced = Delivery(headers=headers, announcement=adapter_for("medplum").announcement(headers))
    n = parse_delivery(resource, BASE, announced)
    key = intake_for("f", n).entries[0].dedup_key
    assert key == f"ver|Subscription/mp|Observation/o-mp/_history/{resource['meta']['versionId']}|-"


def test_legacy_resource_without_version_is_keyed_by_content_hash() -> None:
    resource = {"resourceType": "Patient", "id": "p1", "active": True}
    a = intake_for("f", parse_notification(resource, BASE)).entries[0].dedup_key
    b = intake_for("f", parse_notification(dict(resource), BASE)).entries[0].dedup_key
    assert a == b
    assert a.startswith("hash|-|Patient/p1|")


def test_deletes_and_empty_posts_are_never_merged() -> None:
    delete = Delivery("DELETE", "Patient", "p1")
    keys = {intake_for("f", parse_delivery(None, BASE, delete)).entries[0].dedup_key for _ in range(2)}
    empties = {intake_for("f", parse_delivery(None, BASE, Delivery())).entries[0].dedup_key for _ in range(2)}
    assert (len(keys), len(empties)) == (2, 2)


def test_ledger_state_is_the_ledger_table_but_its_bookkeeping_timestamps() -> None:
    """LedgerState's fields are the ledger's columns for every reader and writer (LEDGER_COLUMNS); the
    model adds only created_at/updated_at. A column added on one side only fails here."""
    from app.db.models import SubscriptionLedger
    from app.ingest.ledger import LEDGER_COLUMNS

    table = {c.name for c in SubscriptionLedger.__table__.columns}
    assert table - set(LEDGER_COLUMNS) == {"created_at", "updated_at"}
    assert set(LEDGER_COLUMNS) <= table


def test_inbox_entry_fields_are_inbox_columns() -> None:
    from app.db.models import InboxRow
    from app.ingest.inbox import INBOX_COLUMNS

    assert set(INBOX_COLUMNS) <= {c.name for c in InboxRow.__table__.columns}
    assert "ledger_index" not in INBOX_COLUMNS


def test_far_apart_numbers_never_count_more_gaps_than_a_bigint_holds() -> None:
    """gaps_observed is a bigint column: a sender's extreme numbers must not overflow it and fail the
    shared commit (issue 10 item 2)."""
    biggest = 2**63 - 1
    state = LedgerState("f", "Subscription/s")
    apply(state, _events(1), NOW)
    apply(state, _events(biggest, at=None), NOW)
    apply(state, _status("handshake", 2), NOW)  # a new epoch: the counter restarted
    apply(state, _events(biggest, at=None), NOW)
    assert state.gaps_observed == biggest
