"""Property: for any JSON body the parser returns a notification or raises NotificationError (a 400 or
a quarantine at the receiver), never anything else; what it lets through fits the inbox and ledger."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from app.db.models import InboxRow, SubscriptionLedger, string_bounds
from app.errors import IngestError, NotificationError
from app.fhir.notifications import Delivery, EventIdentity, parse_delivery, parse_notification
from app.fhir.references import parse_reference
from app.ingest.inbox import intake_for
from tests.fixtures import BASE, backport_id_only
from tests.strategies import hostile_bodies

PROPERTY = settings(
    max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
INBOX_BOUNDS = string_bounds(InboxRow)
LEDGER_BOUNDS = string_bounds(SubscriptionLedger)


def _parse(body: Any) -> None:
    try:
        notification = parse_delivery(body, BASE, Delivery())
    except NotificationError:
        return
    identities: tuple[EventIdentity, ...] = ("number", "event-id")
    for identity in identities:
        intake = intake_for("fac-1", notification, event_identity=identity)
        for entry in intake.entries:
            for column, bound in INBOX_BOUNDS.items():
                value = getattr(entry, column, None)
                assert value is None or len(value) <= bound, column
        status = intake.observation.status
        assert status is None or len(status) <= LEDGER_BOUNDS["last_status"]


@PROPERTY
@given(body=hostile_bodies)
def test_any_json_body_is_a_notification_or_a_notification_error(body: Any) -> None:
    _parse(body)


@pytest.mark.parametrize("parameter", [5, True, None, 1.5, "text", {"name": "type"}])
def test_parameters_that_are_not_a_list_are_no_notification(parameter: Any) -> None:
    with pytest.raises(NotificationError):
        parse_notification({"resourceType": "Parameters", "parameter": parameter}, BASE)


def test_a_notification_event_part_named_by_a_list_is_ignored() -> None:
    body = backport_id_only([(1, "Patient/p1")])
    params = body["entry"][0]["resource"]["parameter"]
    params[-1]["part"].append({"name": ["focus"], "valueString": "x"})
    (event,) = parse_notification(body, BASE).events
    assert event.focus is not None
    assert event.focus.relative == "Patient/p1"


@pytest.mark.parametrize(
    "reference",
    ["https://ehr.test:notaport/fhir/Patient/p1", "https://ehr.test:99999/fhir/Patient/p1", "https://[::1/x"],
)
def test_a_reference_with_a_malformed_port_or_host_is_refused_not_a_crash(reference: str) -> None:
    with pytest.raises(IngestError):
        parse_reference(reference, BASE)


def test_a_timestamp_out_of_range_after_conversion_is_no_timestamp() -> None:
    body = backport_id_only([(1, "Patient/p1")])
    body["entry"][0]["resource"]["parameter"][-1]["part"][1]["valueInstant"] = "0001-01-01T00:00:00+05:00"
    (event,) = parse_notification(body, BASE).events
    assert event.timestamp is None
