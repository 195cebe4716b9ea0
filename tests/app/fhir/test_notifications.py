from __future__ import annotations

import pytest

from app.errors import NotificationError
from app.fhir.notifications import Notification, parse_notification
from app.fhir.references import ResourceRef
from app.ingest.inbox import dedup_key
from tests.fixtures import BASE, backport_id_only


def test_backport_id_only_bundle_yields_one_event_per_notification_event() -> None:
    body = backport_id_only([(41, f"{BASE}/Observation/o1"), (42, "Patient/p1")])
    n = parse_notification(body, BASE)
    assert n.type == "event-notification"
    assert n.subscription == "Subscription/sub-1"  # normalized: the ledger's key for this subscription
    assert [(e.event_number, e.focus) for e in n.events] == [
        (41, ResourceRef("Observation", "o1")),
        (42, ResourceRef("Patient", "p1")),
    ]


def test_event_numbers_may_be_integers() -> None:
    n = parse_notification(backport_id_only([(7, "Patient/p1")], numbers_as_int=True), BASE)
    assert n.events[0].event_number == 7


def test_parameters_in_any_order_and_subscription_as_string() -> None:
    body = backport_id_only([(3, "Patient/p1")])
    params = body["entry"][0]["resource"]["parameter"]
    params.reverse()
    params[-1] = {"name": "subscription", "valueString": "Subscription/sub-9"}
    n = parse_notification(body, BASE)
    assert n.subscription == "Subscription/sub-9"
    assert n.events[0].event_number == 3


def test_focus_with_history_keeps_the_version() -> None:
    n = parse_notification(backport_id_only([(1, f"{BASE}/Observation/o1/_history/4")]), BASE)
    assert n.events[0].focus == ResourceRef("Observation", "o1", "4")


def test_delete_entry_marks_the_event_as_delete() -> None:
    body = backport_id_only([(5, "Observation/o1")], methods={"Observation/o1": "DELETE"})
    assert parse_notification(body, BASE).events[0].interaction == "delete"


def test_foreign_host_focus_is_refused_not_parsed() -> None:
    body = backport_id_only([(1, "https://evil.example/fhir/Patient/p1"), (2, "Patient/p2")])
    events = parse_notification(body, BASE).events
    assert events[0].refused == "foreign_host"
    assert events[0].focus is None
    assert events[1].focus == ResourceRef("Patient", "p2")


def test_same_host_outside_base_path_is_foreign() -> None:
    body = backport_id_only([(1, "https://ehr.test/other/Patient/p1")])
    assert parse_notification(body, BASE).events[0].refused == "foreign_host"


def test_handshake_has_no_events() -> None:
    n = parse_notification(backport_id_only([], ntype="handshake"), BASE)
    assert n.type == "handshake"
    assert n.events == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"resourceType": "Patient"}, "not_a_bundle"),
        ({"id": "x"}, "not_a_bundle"),
        ({"resourceType": "Bundle", "type": "searchset", "entry": []}, "not_a_notification"),
        ({"resourceType": "Bundle", "type": "history", "entry": []}, "no_status_entry"),
        ({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}]}, "no_status_entry"),
        ([1, 2], "not_a_bundle"),
    ],
)
def test_unrecognizable_bodies_raise_with_a_reason(body: object, reason: str) -> None:
    with pytest.raises(NotificationError) as info:
        parse_notification(body, BASE)
    assert info.value.reason == reason


def test_unknown_notification_type_is_rejected() -> None:
    with pytest.raises(NotificationError):
        parse_notification(backport_id_only([], ntype="mystery"), BASE)


def test_dedup_key_is_stable_for_the_same_event_and_differs_across_events() -> None:
    a = parse_notification(backport_id_only([(9, "Patient/p1")]), BASE)
    b = parse_notification(backport_id_only([(9, "Patient/p1")]), BASE)
    c = parse_notification(backport_id_only([(10, "Patient/p1")]), BASE)

    def key(n: Notification) -> str:
        return dedup_key(n.subscription, n.events[0], fallback="x")

    assert key(a) == key(b)
    assert key(a) != key(c)


def test_events_without_number_or_version_are_never_merged() -> None:
    n = parse_notification(backport_id_only([(1, "Patient/p1")]), BASE)
    event = n.events[0].__class__(None, n.events[0].focus, None, None)
    assert dedup_key(None, event, fallback="a") != dedup_key(None, event, fallback="b")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (f"{BASE}/Observation?_id=a,b&_count=2", True),
        (f"{BASE}/Observation/o1", True),
        ("https://ehr.test:8443/fhir/Observation/o1", False),  # another port
        ("http://ehr.test/fhir/Observation/o1", False),  # another scheme
        ("https://user@ehr.test/fhir/Observation/o1", False),  # userinfo
        (f"{BASE}/../admin/x", False),
        (f"{BASE}/%2e%2e/admin/x", False),
        ("https://ehr.test.evil.example/fhir/Observation/o1", False),
    ],
)
def test_request_urls_must_stay_under_the_registered_base(url: str, allowed: bool) -> None:
    from app.fhir.base_url import is_under_base

    assert is_under_base(url, BASE) is allowed


def test_a_body_beside_a_delete_is_never_taken_as_the_current_resource() -> None:
    body = backport_id_only([(5, "Observation/o1")], methods={"Observation/o1": "DELETE"})
    body["entry"][1]["resource"] = {"resourceType": "Observation", "id": "o1", "status": "final"}
    event = parse_notification(body, BASE).events[0]
    assert (event.interaction, event.resource) == ("delete", None)


def test_a_payload_for_another_id_is_not_used_as_the_focus() -> None:
    body = backport_id_only([(6, "Observation/o1")])
    body["entry"][1]["resource"] = {"resourceType": "Observation", "id": "o2", "status": "final"}
    assert parse_notification(body, BASE).events[0].resource is None


@pytest.mark.parametrize("number", ["9223372036854775808", "²", "1" * 5000, "-3"])
def test_event_numbers_outside_integer64_are_kept_as_events_without_a_number(number: str) -> None:
    event = parse_notification(backport_id_only([(0, "Patient/p1")]), BASE).events[0]
    body = backport_id_only([(0, "Patient/p1")])
    body["entry"][0]["resource"]["parameter"][4]["part"][0] = {"name": "event-number", "valueString": number}
    parsed = parse_notification(body, BASE).events[0]
    assert parsed.event_number is None
    assert parsed.focus == event.focus
