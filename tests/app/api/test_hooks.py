"""Contract tests of the receiver: every shape end to end into Postgres, dedup, the ledger, SSRF refusals,
quarantine and every error's OperationOutcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.app.api.conftest import Facilities, bearer, shared_secret
from tests.app.api.fixtures_shapes import (
    backport_010,
    backport_empty,
    backport_full_resource,
    backport_status,
    dumps,
    r4b_bundle,
    r5_bundle,
    subscription_status,
)
from tests.fixtures import BASE, backport_id_only, observation

pytestmark = pytest.mark.anyio


def _outcome(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert response.headers["content-type"].startswith("application/fhir+json")
    return body


def _reason(response: httpx.Response) -> str:
    return str(_outcome(response)["issue"][0]["details"]["coding"][0]["code"])


async def _post(client: httpx.AsyncClient, fid: str, body: Any, **headers: str) -> httpx.Response:
    return await client.post(f"/hooks/{fid}", content=dumps(body), headers={**bearer(), **headers})


async def test_backport_id_only_bundle_commits_one_row_per_event(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    body = backport_id_only([(1, f"{BASE}/Observation/o1"), (2, "Patient/p1")])
    response = await _post(receiver, fid, body)
    assert response.status_code == 200
    assert _outcome(response)["issue"][0]["severity"] == "information"
    rows = facilities.inbox(fid)
    assert [(r.event_number, r.focus_type, r.focus_id, r.status) for r in rows] == [
        (1, "Observation", "o1", "pending"),
        (2, "Patient", "p1", "pending"),
    ]
    assert all(r.dedup_key.endswith("|e1") for r in rows)


async def test_a_duplicate_delivery_is_answered_200_and_stored_once(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    body = backport_id_only([(7, "Patient/p1")])
    first, second = await _post(receiver, fid, body), await _post(receiver, fid, body)
    assert (first.status_code, second.status_code) == (200, 200)
    assert "1 duplicate" in _outcome(second)["issue"][0]["diagnostics"]
    assert len(facilities.inbox(fid)) == 1


async def test_full_resource_payload_is_kept_on_the_row(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    obs = observation("o1", "3", "2026-11-24T10:00:00Z")
    assert (await _post(receiver, fid, backport_full_resource(1, obs))).status_code == 200
    assert facilities.inbox(fid)[0].payload == obs


async def test_a_payload_keeps_its_decimals_exactly_on_the_row(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    """FHIR decimals carry significant figures: 1.00 is not 1.0, and no digit may go through a float."""
    fid = facilities.add(shared_secret())
    wire = ["1.00", "66.899999999999991", "1.000000000000000000E-245"]
    obs = observation("o1", "3", "2026-11-24T10:00:00Z", value=0.5)
    obs["component"] = [{"valueQuantity": {"value": f"@{i}@"}} for i in range(len(wire))]
    raw = dumps(backport_full_resource(1, obs)).decode()
    for i, value in enumerate(wire):
        raw = raw.replace(f'"@{i}@"', value)
    response = await receiver.post(f"/hooks/{fid}", content=raw.encode(), headers=bearer())
    assert response.status_code == 200
    with facilities.engine.connect() as conn:
        exact = conn.execute(
            text(
                "SELECT (c #>> '{valueQuantity,value}') = (w::numeric)::text FROM inbox,"
                " jsonb_array_elements(payload->'component') WITH ORDINALITY AS e(c, n)"
                " JOIN unnest(CAST(:wire AS text[])) WITH ORDINALITY AS x(w, m) ON m = n"
                " WHERE facility_id = :f ORDER BY n"
            ),
            {"f": fid, "wire": wire},
        ).scalars()
        assert list(exact) == [True, True, True]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_a_number_json_does_not_have_is_invalid_json(
    receiver: httpx.AsyncClient, facilities: Facilities, constant: str
) -> None:
    fid = facilities.add(shared_secret())
    obs = observation("o1", "3", "2026-11-24T10:00:00Z", value=0.5)
    raw = dumps(backport_full_resource(1, obs)).replace(b"0.5", constant.encode())
    response = await receiver.post(f"/hooks/{fid}", content=raw, headers=bearer())
    assert (response.status_code, _reason(response)) == (400, "invalid_json")
    assert facilities.inbox(fid) == []


async def test_empty_content_events_are_rows_without_focus(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    assert (await _post(receiver, fid, backport_empty([1, 2]))).status_code == 200
    assert [(r.event_number, r.focus_type) for r in facilities.inbox(fid)] == [(1, None), (2, None)]


@pytest.mark.parametrize("ntype", ["handshake", "heartbeat", "query-status"])
async def test_status_only_notifications_are_200_with_no_rows_but_a_ledger_entry(
    receiver: httpx.AsyncClient, facilities: Facilities, ntype: str
) -> None:
    fid = facilities.add(shared_secret())
    assert (await _post(receiver, fid, backport_status(ntype, 0))).status_code == 200
    assert facilities.inbox(fid) == []
    (ledger,) = facilities.ledger(fid)
    assert (ledger.subscription, ledger.notifications, ledger.last_status) == (
        "Subscription/sub-1",
        1,
        "active",
    )
    assert (ledger.last_heartbeat_at is not None) is (ntype == "heartbeat")
    assert (ledger.last_handshake_at is not None) is (ntype == "handshake")


async def test_ledger_records_gaps_and_heartbeat_counts_in_the_same_commit(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    await _post(receiver, fid, backport_status("handshake", 0))
    await _post(receiver, fid, backport_id_only([(1, "Patient/p1")]))
    await _post(receiver, fid, backport_id_only([(4, "Patient/p4")]))
    await _post(receiver, fid, backport_id_only([(3, "Patient/p3")]))
    await _post(receiver, fid, backport_status("heartbeat", 6))
    (ledger,) = facilities.ledger(fid)
    assert (ledger.highest_event, ledger.epoch, ledger.gaps_observed) == (6, 1, 4)
    assert ledger.missing == [[2, 2], [5, 6]]
    assert ledger.last_heartbeat_at is not None


async def test_a_restarted_counter_starts_a_new_epoch_and_is_not_taken_for_a_duplicate(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    body = backport_id_only([(1, "Patient/p1")])
    await _post(receiver, fid, backport_status("handshake", 0))
    await _post(receiver, fid, body)
    await _post(receiver, fid, backport_id_only([(2, "Patient/p2")]))
    await _post(receiver, fid, backport_status("handshake", 0))  # subscription re-created: counter restarts
    assert (await _post(receiver, fid, body)).status_code == 200
    rows = facilities.inbox(fid)
    assert [r.dedup_key.rsplit("|", 1)[1] for r in rows] == ["e1", "e1", "e2"]
    assert facilities.ledger(fid)[0].epoch == 2


async def test_foreign_host_focus_is_refused_per_event_and_the_rest_stored(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    body = backport_id_only([(1, "https://evil.example/fhir/Patient/p1"), (2, "Patient/p2")])
    response = await _post(receiver, fid, body)
    assert response.status_code == 200
    assert "1 refused" in _outcome(response)["issue"][0]["diagnostics"]
    assert [r.focus_id for r in facilities.inbox(fid)] == ["p2"]


async def test_backport_010(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(shared_secret())
    body = backport_010(since=3, focuses=["Patient/p1", "Patient/p2"])
    assert (await _post(receiver, fid, body)).status_code == 200
    assert [(r.event_number, r.focus_id, r.subscription) for r in facilities.inbox(fid)] == [
        (2, "p1", "Subscription/old-1"),
        (3, "p2", "Subscription/old-1"),
    ]


async def test_r4b_subscription_status(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(shared_secret())
    status = subscription_status([{"eventNumber": "1", "focus": {"reference": "Encounter/e1"}}], since="1")
    assert (await _post(receiver, fid, r4b_bundle(status))).status_code == 200
    assert [(r.event_number, r.focus_type) for r in facilities.inbox(fid)] == [(1, "Encounter")]


async def test_r5_subscription_notification_with_full_resource(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    obs = observation("o9", "2", "2026-11-24T10:00:00Z")
    status = subscription_status([{"eventNumber": "12", "focus": {"reference": f"{BASE}/Observation/o9"}}])
    bundle = r5_bundle(status, [{"fullUrl": f"{BASE}/Observation/o9", "resource": obs}])
    assert (await _post(receiver, fid, bundle)).status_code == 200
    (row,) = facilities.inbox(fid)
    assert (row.event_number, row.payload) == (12, obs)


async def test_athena_events_dedup_on_event_id_not_on_their_restarting_numbers(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret(), vendor="athena")
    first = r4b_bundle(
        subscription_status([{"id": "A", "eventNumber": "1", "focus": {"reference": "Patient/p1"}}])
    )
    second = r4b_bundle(
        subscription_status([{"id": "B", "eventNumber": "1", "focus": {"reference": "Patient/p1"}}])
    )
    for body in (first, second, first):
        assert (await _post(receiver, fid, body)).status_code == 200
    assert [r.dedup_key for r in facilities.inbox(fid)] == [
        "eid|Subscription/r4b-1|A",
        "eid|Subscription/r4b-1|B",
    ]


async def test_identifier_only_focus_is_stored_with_its_identifier(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret(), vendor="athena")
    focus = {"type": "Patient", "identifier": {"system": "urn:athena", "value": "42"}}
    body = r4b_bundle(subscription_status([{"id": "X", "eventNumber": "1", "focus": focus}]))
    assert (await _post(receiver, fid, body)).status_code == 200
    (row,) = facilities.inbox(fid)
    assert (row.focus_type, row.focus_id, row.focus_identifier) == ("Patient", None, "urn:athena|42")


async def test_bare_resource_post_is_stored_with_its_payload(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    obs = observation("o2", "4", "2026-11-24T10:00:00Z")
    assert (await _post(receiver, fid, obs)).status_code == 200
    (row,) = facilities.inbox(fid)
    assert (row.focus_id, row.payload, row.subscription) == ("o2", obs, None)


async def test_empty_post_without_content_type_is_accepted(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.post(f"/hooks/{fid}", headers={"Authorization": "Bearer s3cret-current"})
    assert response.status_code == 200
    (row,) = facilities.inbox(fid)
    assert (row.focus_type, row.event_number) == (None, None)


async def test_hapi_put_and_delete_payload_mode(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(shared_secret(), vendor="hapi")
    obs = observation("o4", "2", "2026-11-24T10:00:00Z")
    put = await receiver.put(f"/hooks/{fid}/Observation/o4", content=dumps(obs), headers=bearer())
    delete = await receiver.delete(
        f"/hooks/{fid}/Observation/o4", headers={"Authorization": "Bearer s3cret-current"}
    )
    assert (put.status_code, delete.status_code) == (200, 200)
    rows = facilities.inbox(fid)
    assert [(r.focus_id, r.interaction, r.payload is not None) for r in rows] == [
        ("o4", "update", True),
        ("o4", "delete", False),
    ]


async def test_a_facility_whose_vendor_has_no_payload_mode_refuses_it(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    """Issue 9 item 11: a generic facility is no HAPI server; a body is kept in quarantine, never a row."""
    fid = facilities.add(shared_secret())
    obs = observation("o4", "2", "2026-11-24T10:00:00Z")
    put = await receiver.put(f"/hooks/{fid}/Observation/o4", content=dumps(obs), headers=bearer())
    delete = await receiver.delete(
        f"/hooks/{fid}/Observation/o4", headers={"Authorization": "Bearer s3cret-current"}
    )
    assert [(r.status_code, _reason(r)) for r in (put, delete)] == [
        (202, "unexpected_shape"),
        (400, "unexpected_shape"),
    ]
    assert facilities.inbox(fid) == []
    assert [q.reason for q in facilities.quarantine(fid)] == ["unexpected_shape"]


@pytest.mark.parametrize(
    ("vendor", "accepted"),
    [("medplum", False), ("hapi", False), ("athena", False), ("generic", True), ("epic", True)],
)
async def test_a_bare_resource_is_accepted_only_from_vendors_that_send_one(
    receiver: httpx.AsyncClient, facilities: Facilities, vendor: str, accepted: bool
) -> None:
    fid = facilities.add(shared_secret(), vendor=vendor)
    response = await _post(receiver, fid, observation("o5", "1", "2026-11-24T10:00:00Z"))
    assert response.status_code == (200 if accepted else 202)
    assert len(facilities.inbox(fid)) == int(accepted)


async def test_put_whose_body_is_another_resource_is_quarantined(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret(), vendor="hapi")
    obs = observation("other", "2", "2026-11-24T10:00:00Z")
    response = await receiver.put(f"/hooks/{fid}/Observation/o4", content=dumps(obs), headers=bearer())
    assert (response.status_code, _reason(response)) == (202, "path_mismatch")
    assert facilities.inbox(fid) == []


# -- quarantine, limits, errors -----------------------------------------------------------------


async def test_unrecognizable_json_is_quarantined_once_and_counted_per_delivery(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    body = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    first, second = await _post(receiver, fid, body), await _post(receiver, fid, body)
    assert (first.status_code, second.status_code) == (202, 202)
    outcome = _outcome(first)["issue"][0]
    assert (outcome["severity"], outcome["code"], _reason(first)) == (
        "warning",
        "processing",
        "not_a_notification",
    )
    assert "quarantine #" in outcome["diagnostics"]
    (row,) = facilities.quarantine(fid)
    assert (row.reason, row.deliveries, row.body) == ("not_a_notification", 2, body)
    assert facilities.inbox(fid) == []


async def test_unknown_notification_type_is_quarantined(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    response = await _post(receiver, fid, backport_id_only([], ntype="mystery"))
    assert (response.status_code, _reason(response)) == (202, "unknown_notification_type")


async def test_unknown_facility_is_answered_as_an_unauthenticated_sender(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    """Not 404: that would let anyone enumerate facility ids (tests/app/api/test_sender_auth.py)."""
    response = await _post(receiver, "no-such-facility", backport_id_only([]))
    assert (response.status_code, _reason(response)) == (401, "unauthenticated")


async def test_wrong_content_type_is_415(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.post(
        f"/hooks/{fid}", content=b"<xml/>", headers={**bearer(), "Content-Type": "application/xml"}
    )
    assert (response.status_code, _reason(response)) == (415, "content_type")
    assert facilities.inbox(fid) == []


async def test_body_without_content_type_is_415(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.post(
        f"/hooks/{fid}", content=b"{}", headers={"Authorization": "Bearer s3cret-current"}
    )
    assert response.status_code == 415


async def test_invalid_json_is_400(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.post(f"/hooks/{fid}", content=b'{"resourceType": ', headers=bearer())
    assert (response.status_code, _reason(response)) == (400, "invalid_json")
    assert facilities.quarantine(fid) == []


async def test_non_utf8_body_is_400(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.post(f"/hooks/{fid}", content=b"\xff\xfe{}", headers=bearer())
    assert response.status_code == 400


async def test_declared_oversized_body_is_413(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(shared_secret())
    big = b"{" + b" " * 1_100_000 + b"}"
    response = await receiver.post(f"/hooks/{fid}", content=big, headers=bearer())
    assert (response.status_code, _reason(response)) == (413, "too_large")


async def test_streamed_oversized_body_is_413_while_reading(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MiB offered in 64 KiB chunks, no Content-Length
            sent += 1
            yield b" " * 65_536

    response = await receiver.post(f"/hooks/{fid}", content=chunks(), headers=bearer())
    assert (response.status_code, _reason(response)) == (413, "too_large")
    assert sent < 64  # the receiver stopped reading well before the end


async def test_metrics_count_notifications_by_facility_shape_type_and_outcome(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    await _post(receiver, fid, backport_id_only([(1, "Patient/p1")]))
    text = (await receiver.get("/metrics")).text
    expected = (
        f'ehri_notifications_total{{facility="{fid}",outcome="accepted",'
        f'shape="backport",type="event-notification"}} 1.0'
    )
    assert expected in text
    assert "ehri_ack_seconds_bucket" in text


async def test_concurrent_duplicate_deliveries_commit_one_row(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    """FAULTS.md: the same notification replayed N times concurrently → N answers 200, one inbox row."""
    fid = facilities.add(shared_secret())
    body = backport_id_only([(5, "Patient/p5")])
    responses = await asyncio.gather(*(_post(receiver, fid, body) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert len(facilities.inbox(fid)) == 1
    (ledger,) = facilities.ledger(fid)
    assert (ledger.notifications, ledger.highest_event) == (20, 5)


async def test_many_concurrent_notifications_are_batched_and_all_committed(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    bodies = [backport_id_only([(n, f"Observation/o{n}")]) for n in range(1, 101)]
    responses = await asyncio.gather(*(_post(receiver, fid, b) for b in bodies))
    assert {r.status_code for r in responses} == {200}
    assert sorted(r.event_number for r in facilities.inbox(fid)) == list(range(1, 101))
    (ledger,) = facilities.ledger(fid)
    assert (ledger.highest_event, ledger.missing, ledger.epoch) == (100, [], 1)


@pytest.mark.parametrize("raw", [b"null", b"[1, 2]", b'"text"', b"{}"])
async def test_json_that_is_no_notification_is_quarantined_never_taken_for_an_empty_post(
    receiver: httpx.AsyncClient, facilities: Facilities, raw: bytes
) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.post(f"/hooks/{fid}", content=raw, headers=bearer())
    assert response.status_code == 202
    assert facilities.inbox(fid) == []
    assert len(facilities.quarantine(fid)) == 1


async def test_put_with_a_non_resource_body_is_quarantined(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.put(f"/hooks/{fid}/Patient/p1", content=b"[1]", headers=bearer())
    assert response.status_code == 202
    assert facilities.inbox(fid) == []


async def test_malformed_payload_mode_path_is_400(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.delete(
        f"/hooks/{fid}/patient/p1", headers={"Authorization": "Bearer s3cret-current"}
    )
    assert (response.status_code, _reason(response)) == (400, "bad_reference")


async def test_nul_characters_cannot_poison_a_batch(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    """Postgres text/jsonb refuse NUL; the receiver replaces it rather than failing co-batched requests."""
    fid = facilities.add(shared_secret())
    obs = observation("o1", "3", "2026-11-24T10:00:00Z")
    obs["note"] = [{"text": "bad\u0000byte"}]
    body = backport_full_resource(1, obs)
    body["entry"][0]["resource"]["parameter"][0] = {"name": "subscription", "valueString": "Sub\u0000x"}
    response = await _post(receiver, fid, body)
    assert response.status_code == 200
    (row,) = facilities.inbox(fid)
    assert (row.payload["note"][0]["text"], row.subscription) == ("bad\ufffdbyte", "Sub\ufffdx")


async def test_absurdly_nested_json_is_400_not_500(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    response = await receiver.post(f"/hooks/{fid}", content=b"[" * 200_000 + b"]" * 200_000, headers=bearer())
    assert (response.status_code, _reason(response)) == (400, "invalid_json")


async def test_deep_but_parseable_json_with_nul_is_never_a_500(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    depth = 950
    raw = b'{"a":' * depth + b'"x\\u0000"' + b"}" * depth
    response = await receiver.post(f"/hooks/{fid}", content=raw, headers=bearer())
    assert response.status_code in (202, 400)
