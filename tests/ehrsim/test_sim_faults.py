"""Each fault does what it says, switched at runtime (``/_admin/{fac}/faults``) or at start (config), and
leaves ground truth intact: what it suppressed is listed as dropped."""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette

from ehrsim.server import create_app
from tests.ehrsim.simclient import settle as _settle

if TYPE_CHECKING:
    from tests.ehrsim.conftest import Assertions, FakeClock, Form, MakeConfig, Recorder, Run, Wait

pytestmark = pytest.mark.anyio
FAULTS = "/_admin/general/faults"


def _app(
    make_config: MakeConfig,
    recorder: Recorder,
    clock: FakeClock | None = None,
    faults: dict[str, Any] | None = None,
    **webhook: object,
) -> Starlette:
    config = make_config(
        webhook={"url": "http://receiver.test/hook", "backoff_initial_s": 0.001, **webhook},
        faults=faults or {},
    )
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return create_app(config, webhook_transport=httpx.MockTransport(recorder), **kwargs)


async def _dropped(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await client.get("/_admin/general/notifications/dropped")).json()[
        "events"
    ]
    return events


def _number(request: httpx.Request) -> int:
    status = json.loads(request.content)["entry"][0]["resource"]
    params = {p["name"]: p for p in status["parameter"]}
    return int(params["events-since-subscription-start"]["valueString"])


async def test_drop_rate_drops_and_records_notifications(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder)) as client:
        await client.post(FAULTS, json={"drop_rate": 1.0})
        counters = await _settle(client, wait, 5)
        dropped = await _dropped(client)
        state = (await client.get(FAULTS)).json()
    assert counters["dropped"] == 5
    assert not recorder.requests
    assert [d["event_number"] for d in dropped] == [1, 2, 3, 4, 5]
    assert {d["reason"] for d in dropped} == {"fault-drop"}
    assert state["applied"]["drop"] == 5
    assert state["faults"]["drop_rate"] == 1.0


async def test_drop_next_drops_exactly_that_many_notifications_then_delivers_again(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder)) as client:
        await _settle(client, wait, 1)
        await client.post(FAULTS, json={"drop_next": 2})
        await _settle(client, wait, 3)
        dropped = await _dropped(client)
        state = (await client.get(FAULTS)).json()
    assert [d["event_number"] for d in dropped] == [2, 3]
    assert {d["reason"] for d in dropped} == {"fault-drop"}
    assert sorted(_number(r) for r in recorder.requests) == [1, 4]
    assert state["remaining"]["drop_next"] == 0


async def test_faults_can_be_set_in_the_config(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, faults={"drop_rate": 1.0})) as client:
        counters = await _settle(client, wait, 3)
    assert counters["dropped"] == 3


async def test_duplicate_rate_delivers_twice(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, faults={"duplicate_rate": 1.0})) as client:
        counters = await _settle(client, wait, 4)

        async def all_sent() -> bool:
            return len(recorder.requests) == 8

        await wait(all_sent)
    assert counters["delivered"] == 4
    assert counters["duplicated"] == 4
    assert sorted(_number(r) for r in recorder.requests) == [1, 1, 2, 2, 3, 3, 4, 4]


async def test_delay_with_reorder_loses_the_order(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, faults={"delay_s": 0.05, "reorder": True})) as client:
        counters = await _settle(client, wait, 30)
    numbers = [_number(r) for r in recorder.requests]
    assert counters["delivered"] == 30
    assert sorted(numbers) == list(range(1, 31))
    assert numbers != sorted(numbers)


async def test_stopped_feed_sends_nothing_and_numbers_continue(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, heartbeat_s=0.01)) as client:
        await client.post(FAULTS, json={"feed_stopped": True})
        recorder.requests.clear()
        await _settle(client, wait, 3)
        assert not [r for r in recorder.requests if b"event-notification" in r.content]
        await client.post(FAULTS, json={"feed_stopped": False})
        await _settle(client, wait, 1)
        dropped = await _dropped(client)
    assert [d["reason"] for d in dropped] == ["feed-stopped"] * 3
    events = [r for r in recorder.requests if b"event-notification" in r.content]
    assert [_number(r) for r in events] == [4]  # the receiver can see the gap


async def test_restart_counters_starts_a_new_epoch(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder)) as client:
        await _settle(client, wait, 3)
        await client.post(FAULTS, json={"actions": ["restart-counters"]})
        await _settle(client, wait, 2)
        subscription = (await client.get("/_admin/general/subscriptions")).json()["subscriptions"][0]
        state = (await client.get(FAULTS)).json()
    assert sorted(_number(r) for r in recorder.requests) == [1, 1, 2, 2, 3]
    assert subscription["epoch"] == 1
    assert subscription["eventsSinceSubscriptionStart"] == 2
    assert state["log"][-1]["actions"] == ["restart-counters"]


@pytest.mark.parametrize("action", ["expire-tokens", "revoke-tokens"])
async def test_token_faults_invalidate_issued_tokens(authed: httpx.AsyncClient, action: str) -> None:
    assert (await authed.get("/general/fhir/Patient/pat-1")).status_code == 200
    await authed.post(FAULTS, json={"actions": [action]})
    response = await authed.get("/general/fhir/Patient/pat-1")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_throttle_answers_429_with_retry_after_seconds(authed: httpx.AsyncClient) -> None:
    await authed.post(FAULTS, json={"throttle": {"requests": 2, "retry_after_s": 7}})
    statuses = []
    for _ in range(3):
        response = await authed.get("/general/fhir/Patient/pat-1")
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["retry-after"] == "7"
            assert response.json()["issue"][0]["code"] == "throttled"
    assert statuses == [429, 429, 200]


async def test_throttle_can_give_retry_after_as_an_http_date(
    authed: httpx.AsyncClient, clock: FakeClock
) -> None:
    await authed.post(FAULTS, json={"throttle": {"requests": 1, "retry_after_s": 30, "http_date": True}})
    response = await authed.get("/general/fhir/Patient/pat-1")
    assert response.status_code == 429
    assert parsedate_to_datetime(response.headers["retry-after"]).timestamp() == int(clock() + 30)


async def test_throttle_also_hits_the_token_endpoint(
    sim: httpx.AsyncClient, assertion: Assertions, form: Form
) -> None:
    await sim.post(FAULTS, json={"throttle": {"requests": 1, "retry_after_s": 3}})
    response = await sim.post("/general/oauth2/token", data=form(assertion()))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert (await sim.post("/general/oauth2/token", data=form(assertion()))).status_code == 200


@pytest.mark.parametrize("status", [500, 503])
async def test_error_burst_answers_the_next_requests_with_5xx(authed: httpx.AsyncClient, status: int) -> None:
    await authed.post(FAULTS, json={"error_burst": {"requests": 2, "status": status}})
    statuses = [(await authed.get("/general/fhir/Observation?_count=1")).status_code for _ in range(3)]
    assert statuses == [status, status, 200]


async def test_slow_responses_add_latency(authed: httpx.AsyncClient) -> None:
    await authed.post(FAULTS, json={"slow_s": 0.05})
    started = time.monotonic()
    assert (await authed.get("/general/fhir/Patient/pat-1")).status_code == 200
    assert time.monotonic() - started >= 0.05


async def test_broken_resource_always_answers_500(authed: httpx.AsyncClient) -> None:
    await authed.post(FAULTS, json={"broken_resources": ["Patient/pat-2"]})
    for _ in range(3):
        assert (await authed.get("/general/fhir/Patient/pat-2")).status_code == 500
    assert (await authed.get("/general/fhir/Patient/pat-1")).status_code == 200
    assert (await authed.get("/general/fhir/Patient?_id=pat-2")).status_code == 500


@pytest.mark.parametrize("status", ["error", "off"])
async def test_subscription_forced_off_or_error_stops_delivery(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait, status: str
) -> None:
    async with run(_app(make_config, recorder)) as client:
        await client.post(FAULTS, json={"actions": [f"subscription-{status}"]})
        counters = await _settle(client, wait, 2)
        subscription = (await client.get("/_admin/general/subscriptions")).json()["subscriptions"][0]
        dropped = await _dropped(client)
    assert subscription["status"] == status
    assert counters["dropped"] == 2
    assert {d["reason"] for d in dropped} == {f"subscription-{status}"}
    assert not recorder.requests


async def test_delete_resets_every_fault(authed: httpx.AsyncClient) -> None:
    await authed.post(FAULTS, json={"broken_resources": ["Patient/pat-1"], "slow_s": 0.01})
    state = (await authed.delete(FAULTS)).json()
    assert state["faults"]["broken_resources"] == []
    assert state["faults"]["slow_s"] == 0
    assert (await authed.get("/general/fhir/Patient/pat-1")).status_code == 200


async def test_invalid_fault_update_is_refused(sim: httpx.AsyncClient) -> None:
    assert (await sim.post(FAULTS, json={"drop_rate": 2})).status_code == 400
    assert (await sim.post(FAULTS, json={"nonesuch": True})).status_code == 400
    assert (await sim.post(FAULTS, json={"actions": ["explode"]})).status_code == 400


async def test_medplum_throttle_carries_a_ratelimit_header(
    make_config: MakeConfig, clock: FakeClock, assertion: Assertions, form: Form, run: Run
) -> None:
    async with run(create_app(make_config(profile="medplum"), clock=clock)) as client:
        token = (await client.post("/general/oauth2/token", data=form(assertion()))).json()["access_token"]
        await client.post(FAULTS, json={"throttle": {"requests": 1, "retry_after_s": 4}})
        response = await client.get(
            "/general/fhir/Patient/pat-1", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "4"
    assert "remaining=0" in response.headers["ratelimit"]


async def test_revoked_credentials_refuse_every_token_request_and_issued_token_until_restored(
    authed: httpx.AsyncClient, assertion: Assertions, form: Form
) -> None:
    assert (await authed.get("/general/fhir/Patient/pat-1")).status_code == 200
    await authed.post(FAULTS, json={"credentials_revoked": True})
    assert (await authed.get("/general/fhir/Patient/pat-1")).status_code == 401
    refused = await authed.post("/general/oauth2/token", data=form(assertion()))
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    requests = (await authed.get("/_admin/general/requests")).json()["token"]
    assert requests[-1]["fault"] == 401  # counted where the tests measure token traffic

    await authed.post(FAULTS, json={"credentials_revoked": False})
    restored = await authed.post("/general/oauth2/token", data=form(assertion()))
    assert restored.status_code == 200
    state = (await authed.get(FAULTS)).json()
    assert state["applied"]["credentials_revoked"] == 1
