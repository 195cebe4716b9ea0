"""Every notification shape and tolerance of EHR-FACTS.md §2, against fixtures written from the specs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.errors import NotificationError
from app.fhir.notifications import Delivery, parse_delivery, parse_notification, parse_timestamp
from app.fhir.references import ResourceRef
from app.vendors import adapter_for
from tests.app.api.fixtures_shapes import (
    athena_event,
    backport_010,
    backport_empty,
    backport_event,
    backport_full_resource,
    backport_status,
    medplum_resource,
    r4b_bundle,
    r5_bundle,
    subscription_status,
)
from tests.fixtures import BASE, backport_id_only, observation


def _medplum(headers: dict[str, str]) -> Delivery:
    """A delivery as the receiver builds it for a Medplum facility: its adapter reads the headers."""
    return Delivery(headers=headers, announcement=adapter_for("medplum").announcement(headers))


@pytest.mark.parametrize(
    "ntype", ["handshake", "heartbeat", "event-notification", "query-status", "query-event"]
)
def test_every_notification_type_is_recognized(ntype: str) -> None:
    n = parse_notification(backport_status(ntype, 3), BASE)
    assert (n.type, n.events_since_start, n.shape) == (ntype, 3, "backport")


def test_backport_full_resource_keeps_the_resource() -> None:
    obs = observation("o1", "3", "2026-11-24T10:00:00Z")
    event = parse_notification(backport_full_resource(4, obs), BASE).events[0]
    assert event.resource == obs
    assert event.focus == ResourceRef("Observation", "o1")


def test_backport_full_resource_entry_without_resource_means_fetch() -> None:
    body = backport_id_only([(4, "Observation/o1")])
    assert parse_notification(body, BASE).events[0].resource is None


def test_backport_empty_content_gives_numbered_events_without_focus() -> None:
    n = parse_notification(backport_empty([7, 8]), BASE)
    assert [(e.event_number, e.focus) for e in n.events] == [(7, None), (8, None)]


def test_backport_status_and_topic_are_read() -> None:
    n = parse_notification(backport_status("heartbeat", 9, status="error"), BASE)
    assert (n.status, n.topic) == ("error", "http://example.org/topic/all")


@pytest.mark.parametrize(
    ("text", "precise"),
    [
        ("2026-11-24T10:00:00.123Z", True),
        ("2026-11-24T10:00:00+02:00", True),
        ("2026-11-24T10:00:00", True),
        ("2026-11-24", False),
        ("2026-11", False),
    ],
)
def test_timestamps_as_instant_datetime_or_date(text: str, precise: bool) -> None:
    n = parse_notification(backport_event(1, "Patient/p1", text), BASE)
    ts = n.events[0].timestamp
    assert ts is not None
    assert ts.precise is precise
    assert ts.value.tzinfo is not None


def test_unparseable_timestamp_is_tolerated_as_unknown() -> None:
    assert parse_timestamp("yesterday") is None
    assert parse_notification(backport_event(1, "Patient/p1", "soon"), BASE).events[0].timestamp is None


def test_relative_focus_and_absolute_subscription_string() -> None:
    body = backport_id_only([(2, "Encounter/e1")])
    params = body["entry"][0]["resource"]["parameter"]
    params[0] = {"name": "subscription", "valueString": f"{BASE}/Subscription/s-str"}
    n = parse_notification(body, BASE)
    assert n.subscription == "Subscription/s-str"
    assert n.events[0].focus == ResourceRef("Encounter", "e1")


def test_backport_010_numbers_events_from_the_counts() -> None:
    obs = observation("o2", "1", "2026-11-24T10:00:00Z")
    body = backport_010(since=12, focuses=["Patient/p1", "Observation/o2"], resources={"Observation/o2": obs})
    n = parse_notification(body, BASE)
    assert n.shape == "backport-0.1"
    assert n.subscription == "Subscription/old-1"
    assert [(e.event_number, e.focus) for e in n.events] == [
        (11, ResourceRef("Patient", "p1")),
        (12, ResourceRef("Observation", "o2")),
    ]
    assert n.events[0].resource is None
    assert n.events[1].resource == obs


def test_backport_010_handshake() -> None:
    n = parse_notification(backport_010(since=0, focuses=[], ntype="handshake"), BASE)
    assert (n.shape, n.type, n.events) == ("backport-0.1", "handshake", [])


def test_r4b_subscription_status_with_numbers_as_json_numbers() -> None:
    status = subscription_status(
        [{"eventNumber": 5, "timestamp": "2026-11-24T10:00:00Z", "focus": {"reference": "Patient/p5"}}],
        since=5,
    )
    n = parse_notification(r4b_bundle(status), BASE)
    assert (n.shape, n.subscription, n.events_since_start) == ("r4b", "Subscription/r4b-1", 5)
    assert n.events[0].event_number == 5
    assert n.events[0].focus == ResourceRef("Patient", "p5")


def test_r5_subscription_notification_full_resource_and_delete() -> None:
    obs = observation("o9", "2", "2026-11-24T10:00:00Z")
    status = subscription_status(
        [
            {"eventNumber": "41", "focus": {"reference": f"{BASE}/Observation/o9/_history/2"}},
            {"eventNumber": "42", "focus": {"reference": f"{BASE}/Patient/gone"}},
        ],
        since="42",
    )
    extra = [
        {
            "fullUrl": f"{BASE}/Observation/o9",
            "resource": obs,
            "request": {"method": "PUT", "url": "Observation/o9"},
        },
        {"fullUrl": f"{BASE}/Patient/gone", "request": {"method": "DELETE", "url": "Patient/gone"}},
    ]
    n = parse_notification(r5_bundle(status, extra), BASE)
    assert (n.shape, n.events_since_start) == ("r5", 42)
    first, second = n.events
    assert (first.event_number, first.focus, first.resource) == (
        41,
        ResourceRef("Observation", "o9", "2"),
        obs,
    )
    assert (second.event_number, second.interaction, second.resource) == (42, "delete", None)


def test_athena_event_id_and_identifier_only_focus() -> None:
    focus = {"type": "Patient", "identifier": {"system": "urn:athena:patient", "value": "123"}}
    status = subscription_status([athena_event("evt-a1", focus)], since="1")
    event = parse_notification(r4b_bundle(status), BASE).events[0]
    assert event.event_id == "evt-a1"
    assert event.focus is None
    assert (event.focus_identifier, event.focus_type_hint) == ("urn:athena:patient|123", "Patient")


def test_subscription_status_sent_outside_a_bundle_is_understood() -> None:
    n = parse_notification(subscription_status([], ntype="heartbeat", since="3"), BASE)
    assert (n.type, n.events_since_start) == ("heartbeat", 3)


def test_foreign_host_focus_in_r5_is_refused() -> None:
    status = subscription_status(
        [{"eventNumber": "1", "focus": {"reference": "http://10.0.0.1/fhir/Patient/p"}}]
    )
    assert parse_notification(r5_bundle(status), BASE).events[0].refused == "foreign_host"


def test_bare_resource_is_a_legacy_notification_with_its_payload() -> None:
    obs = observation("o3", "7", "2026-11-24T10:00:00Z")
    n = parse_notification(obs, BASE)
    assert (n.shape, n.type) == ("resource", "event-notification")
    assert n.events[0].focus == ResourceRef("Observation", "o3", "7")
    assert n.events[0].resource == obs


def test_medplum_update_carries_version_uuid_and_payload() -> None:
    resource = medplum_resource()
    headers = {"x-medplum-subscription": "mp-sub-1", "x-medplum-interaction": "update"}
    n = parse_delivery(resource, BASE, _medplum(headers))
    assert (n.shape, n.subscription) == ("medplum", "Subscription/mp-sub-1")
    event = n.events[0]
    assert event.focus == ResourceRef("Observation", "o-mp", resource["meta"]["versionId"])
    assert (event.interaction, event.resource) == ("update", resource)


def test_medplum_delete_is_an_empty_object_with_the_deleted_resource_header() -> None:
    headers = {"x-medplum-interaction": "delete", "x-medplum-deleted-resource": "Observation/o-mp"}
    event = parse_delivery({}, BASE, _medplum(headers)).events[0]
    assert (event.focus, event.interaction, event.resource) == (
        ResourceRef("Observation", "o-mp"),
        "delete",
        None,
    )


def test_medplum_empty_object_without_delete_header_is_not_a_notification() -> None:
    with pytest.raises(NotificationError):
        parse_delivery({}, BASE, _medplum({"x-medplum-subscription": "s"}))


def test_empty_post_is_one_focusless_event() -> None:
    n = parse_delivery(None, BASE, Delivery())
    assert n.shape == "empty"
    assert [(e.focus, e.event_number) for e in n.events] == [(None, None)]


def test_hapi_put_with_resource_and_without() -> None:
    obs = observation("o4", "2", "2026-11-24T10:00:00Z")
    with_body = parse_delivery(obs, BASE, Delivery("PUT", "Observation", "o4")).events[0]
    assert (with_body.focus, with_body.interaction, with_body.resource) == (
        ResourceRef("Observation", "o4", "2"),
        "update",
        obs,
    )
    bare = parse_delivery(None, BASE, Delivery("PUT", "Observation", "o4")).events[0]
    assert (bare.focus, bare.resource) == (ResourceRef("Observation", "o4"), None)


def test_hapi_delete() -> None:
    n = parse_delivery(None, BASE, Delivery("DELETE", "Patient", "p1"))
    assert (n.shape, n.events[0].interaction, n.events[0].focus) == (
        "delete",
        "delete",
        ResourceRef("Patient", "p1"),
    )


def test_hapi_put_whose_body_names_another_resource_is_refused() -> None:
    with pytest.raises(NotificationError) as info:
        parse_delivery(
            observation("o5", "1", "2026-11-24T10:00:00Z"), BASE, Delivery("PUT", "Observation", "o4")
        )
    assert info.value.reason == "path_mismatch"


def test_date_only_timestamp_is_midnight_utc() -> None:
    ts = parse_timestamp("2026-11-24")
    assert ts is not None
    assert ts.value == datetime(2026, 11, 24, tzinfo=UTC)
