"""Subscription resources through the FHIR API: create, read, update, delete, ``$status`` and ``$events``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ehrsim.server import create_app

if TYPE_CHECKING:
    from tests.ehrsim.conftest import Assertions, FakeClock, Form, MakeConfig, OpenSim, Recorder, Run, Wait

pytestmark = pytest.mark.anyio
FHIR = "/general/fhir"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
ENDPOINT = "http://receiver.test/hooks/api"


def subscription(
    *, payload: str = "id-only", heartbeat: int | None = None, criteria: str | None = None
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": ENDPOINT,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": payload}]},
        "header": ["Authorization: Bearer hook-secret"],
    }
    if heartbeat is not None:
        channel["extension"] = [
            {"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": heartbeat}
        ]
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "ingest",
        "criteria": "http://example.org/fhir/SubscriptionTopic/all-changes",
        "channel": channel,
    }
    if criteria is not None:
        resource["_criteria"] = {
            "extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": criteria}]
        }
    return resource


@pytest.fixture
def open_sim(
    make_config: MakeConfig,
    clock: FakeClock,
    assertion: Assertions,
    *,
    form: Form,
    run: Run,
    recorder: Recorder,
) -> OpenSim:
    """A client allowed to manage subscriptions; notifications go to ``recorder``."""

    @asynccontextmanager
    async def open_(profile: str = "generic", **facility: Any) -> AsyncIterator[httpx.AsyncClient]:
        config = make_config(profile=profile, time_scale=0.001, **facility)
        client_config = (
            config.facilities[0]
            .clients[0]
            .model_copy(update={"scopes": ["system/*.read", "system/Subscription.*"]})
        )
        facility_config = config.facilities[0].model_copy(update={"clients": [client_config]})
        config = config.model_copy(update={"facilities": [facility_config]})
        app = create_app(config, clock=clock, webhook_transport=httpx.MockTransport(recorder))
        async with run(app) as client:
            scope = "system/*.read system/Subscription.*"
            response = await client.post("/general/oauth2/token", data=form(assertion(), scope=scope))
            assert response.status_code == 200, response.text
            client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
            yield client

    return open_


async def _status_of(client: httpx.AsyncClient, id_: str) -> str:
    status: str = (await client.get(f"{FHIR}/Subscription/{id_}")).json()["status"]
    return status


async def test_created_subscription_is_activated_by_a_handshake(
    open_sim: OpenSim, recorder: Recorder, wait: Wait
) -> None:
    async with open_sim() as client:
        created = await client.post(f"{FHIR}/Subscription", json=subscription())
        assert created.status_code == 201
        id_ = created.json()["id"]
        assert created.headers["location"].endswith(f"/Subscription/{id_}")
        assert created.json()["status"] == "requested"

        async def active() -> bool:
            return await _status_of(client, id_) == "active"

        await wait(active)
    handshake = recorder.requests[0]
    assert str(handshake.url) == ENDPOINT
    assert handshake.headers["authorization"] == "Bearer hook-secret"
    assert b'"handshake"' in handshake.content


async def test_created_subscription_receives_matching_events_only(
    open_sim: OpenSim, recorder: Recorder, wait: Wait
) -> None:
    async with open_sim() as client:
        id_ = (await client.post(f"{FHIR}/Subscription", json=subscription(criteria="Observation?"))).json()[
            "id"
        ]

        async def active() -> bool:
            return await _status_of(client, id_) == "active"

        await wait(active)
        await client.post("/_admin/general/activity", json={"changes": 30})

        async def settled() -> bool:
            counters: dict[str, int] = (await client.get("/_admin/general/notifications")).json()
            return counters["pending"] == 0

        await wait(settled)
    events = [json.loads(r.content) for r in recorder.requests[1:]]
    assert events
    assert all(e["entry"][1]["request"]["url"].startswith("Observation/") for e in events)


async def test_server_raises_a_too_short_heartbeat_period(open_sim: OpenSim) -> None:
    async with open_sim() as client:
        created = (await client.post(f"{FHIR}/Subscription", json=subscription(heartbeat=0))).json()
        raised = (await client.post(f"{FHIR}/Subscription", json=subscription(heartbeat=1))).json()
    assert "extension" not in created["channel"]  # 0: no heartbeat asked
    # the minimum is 10 s scaled by time_scale 0.001: a 1 s request is kept
    assert raised["channel"]["extension"][0]["valueUnsignedInt"] == 1


async def test_athena_server_changes_the_payload_to_id_only(open_sim: OpenSim) -> None:
    async with open_sim("athena") as client:
        created = (
            await client.post(f"{FHIR}/Subscription", json=subscription(payload="full-resource"))
        ).json()
    assert created["channel"]["_payload"]["extension"][0]["valueCode"] == "id-only"


async def test_update_back_to_requested_reactivates_an_errored_subscription(
    open_sim: OpenSim, wait: Wait
) -> None:
    async with open_sim() as client:
        id_ = (await client.post(f"{FHIR}/Subscription", json=subscription())).json()["id"]
        await client.post("/_admin/general/faults", json={"actions": ["subscription-error"]})
        assert await _status_of(client, id_) == "error"
        updated = await client.put(f"{FHIR}/Subscription/{id_}", json=subscription())
        assert updated.status_code == 200
        assert updated.json()["meta"]["versionId"] == "2"

        async def active() -> bool:
            return await _status_of(client, id_) == "active"

        await wait(active)


async def test_deleted_subscription_is_gone(open_sim: OpenSim) -> None:
    async with open_sim() as client:
        id_ = (await client.post(f"{FHIR}/Subscription", json=subscription())).json()["id"]
        assert (await client.delete(f"{FHIR}/Subscription/{id_}")).status_code == 204
        assert (await client.get(f"{FHIR}/Subscription/{id_}")).status_code == 404
        assert (await client.get(f"{FHIR}/Subscription")).json()["total"] == 0


async def test_invalid_subscription_is_refused(open_sim: OpenSim) -> None:
    async with open_sim() as client:
        bad = subscription()
        bad["channel"]["endpoint"] = "ftp://nope"
        assert (await client.post(f"{FHIR}/Subscription", json=bad)).status_code == 400
        assert (await client.post(f"{FHIR}/Subscription", content=b"{")).status_code == 400


async def test_subscriptions_need_write_scope(sim: httpx.AsyncClient, authed: httpx.AsyncClient) -> None:
    response = await authed.post(f"{FHIR}/Subscription", json=subscription())
    assert response.status_code == 403


async def test_epic_has_no_subscriptions(open_sim: OpenSim) -> None:
    async with open_sim("epic", profile_overrides={"token_flaky_400_rate": 0}) as client:
        response = await client.post(f"{FHIR}/Subscription", json=subscription())
    assert response.status_code == 404


async def test_status_operation_reports_the_event_counter(open_sim: OpenSim, wait: Wait) -> None:
    async with open_sim() as client:
        id_ = (await client.post(f"{FHIR}/Subscription", json=subscription())).json()["id"]

        async def active() -> bool:
            return await _status_of(client, id_) == "active"

        await wait(active)
        await client.post("/_admin/general/activity", json={"changes": 4})
        bundle = (await client.get(f"{FHIR}/Subscription/{id_}/$status")).json()
    params = {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}
    assert params["type"]["valueCode"] == "query-status"
    assert params["status"]["valueCode"] == "active"
    assert params["events-since-subscription-start"]["valueString"] == "4"


async def test_events_operation_returns_only_retained_events(open_sim: OpenSim, wait: Wait) -> None:
    async with open_sim(profile_overrides={"events_retention": 3}) as client:
        id_ = (await client.post(f"{FHIR}/Subscription", json=subscription())).json()["id"]

        async def active() -> bool:
            return await _status_of(client, id_) == "active"

        await wait(active)
        await client.post("/_admin/general/activity", json={"changes": 5})
        bundle = (
            await client.get(f"{FHIR}/Subscription/{id_}/$events?eventsSinceNumber=1&eventsUntilNumber=5")
        ).json()
        truth = {
            (r["resourceType"], r["id"])
            for r in (await client.get("/_admin/general/truth")).json()["resources"]
        }
    status = bundle["entry"][0]["resource"]
    numbers = [
        int(next(p["valueString"] for p in e["part"] if p["name"] == "event-number"))
        for e in status["parameter"]
        if e["name"] == "notification-event"
    ]
    assert numbers == [3, 4, 5]
    assert {p["name"]: p for p in status["parameter"]}["type"]["valueCode"] == "query-event"
    for entry in bundle["entry"][1:]:
        assert tuple(entry["request"]["url"].split("/")) in truth


async def test_athena_allows_one_subscription_per_topic(open_sim: OpenSim) -> None:
    async with open_sim("athena") as client:
        first = await client.post(f"{FHIR}/Subscription", json=subscription())
        second = await client.post(f"{FHIR}/Subscription", json=subscription())
    assert first.status_code == 201
    assert second.status_code == 409


async def test_subscription_turns_off_at_its_end(open_sim: OpenSim, clock: FakeClock, wait: Wait) -> None:
    async with open_sim() as client:
        resource = subscription() | {"end": "2026-09-20T00:00:00Z"}  # the fake clock starts 2026-09-21
        id_ = (await client.post(f"{FHIR}/Subscription", json=resource)).json()["id"]
        await client.post("/_admin/general/activity", json={"changes": 1})
        status = await _status_of(client, id_)
        dropped = (await client.get("/_admin/general/notifications/dropped")).json()["events"]
    assert status == "off"
    assert dropped[0]["reason"] == "subscription-off"


async def test_configured_subscription_can_be_reactivated_through_the_api(
    open_sim: OpenSim, recorder: Recorder, wait: Wait
) -> None:
    webhook = {"url": ENDPOINT, "subscription_id": "sub-config", "max_attempts": 7}
    async with open_sim(webhook=webhook) as client:
        await client.post("/_admin/general/faults", json={"actions": ["subscription-off"]})
        current = (await client.get(f"{FHIR}/Subscription/sub-config")).json()
        assert current["status"] == "off"
        updated = await client.put(f"{FHIR}/Subscription/sub-config", json=current | {"status": "requested"})
        assert updated.status_code == 200

        async def active() -> bool:
            return await _status_of(client, "sub-config") == "active"

        await wait(active)
        await client.post("/_admin/general/activity", json={"changes": 2})

        async def delivered() -> bool:
            counters: dict[str, int] = (await client.get("/_admin/general/notifications")).json()
            return counters["delivered"] == 2

        await wait(delivered)
    numbers = [json.loads(r.content) for r in recorder.requests if b"event-notification" in r.content]
    assert len(numbers) == 2


@pytest.mark.parametrize(("profile", "served"), [("generic", True), ("hapi", False), ("medplum", False)])
async def test_subscription_operations_are_served_only_where_the_vendor_has_them(
    open_sim: OpenSim, profile: str, served: bool
) -> None:
    async with open_sim(profile) as client:
        created = await client.post(f"{FHIR}/Subscription", json=subscription())
        id_ = created.json()["id"]
        answers = [
            (await client.get(f"{FHIR}/Subscription/{id_}/{op}")).status_code for op in ("$status", "$events")
        ]
    assert created.status_code == 201, created.text
    assert answers == ([200, 200] if served else [404, 404])


async def test_events_of_an_r5_subscription_answer_in_r5_and_parse_as_a_query_event(
    open_sim: OpenSim, wait: Wait
) -> None:
    from app.fhir.notifications import parse_notification

    webhook = {"url": ENDPOINT, "subscription_id": "sub-r5", "style": "r5"}
    async with open_sim(webhook=webhook) as client:
        await client.post("/_admin/general/activity", json={"changes": 3})
        answer = await client.get(
            f"{FHIR}/Subscription/sub-r5/$events?eventsSinceNumber=2&eventsUntilNumber=3"
        )
        base = f"{client.base_url}{FHIR}".rstrip("/")
    bundle = answer.json()
    assert answer.status_code == 200
    assert bundle["type"] == "subscription-notification"
    status = bundle["entry"][0]["resource"]
    assert (status["resourceType"], status["type"]) == ("SubscriptionStatus", "query-event")
    parsed = parse_notification(bundle, base)
    assert parsed.type == "query-event"
    assert [e.event_number for e in parsed.events] == [2, 3]
    assert all(e.focus is not None for e in parsed.events)
