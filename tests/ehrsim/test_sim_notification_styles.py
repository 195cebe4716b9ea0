"""Each profile's notification style and retry policy, as EHR-FACTS.md §1-2 documents them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette

from ehrsim.server import create_app
from tests.ehrsim.simclient import settle as _settle

if TYPE_CHECKING:
    from tests.ehrsim.conftest import Assertions, FakeClock, Form, MakeConfig, Recorder, Run, Wait

pytestmark = pytest.mark.anyio
HOOK = "http://receiver.test/hooks/general"


def _app(
    make_config: MakeConfig,
    recorder: Recorder,
    *,
    profile: str = "generic",
    time_scale: float = 1.0,
    patients: int = 5,
    clock: Callable[[], float] = time.time,
    **webhook: object,
) -> Starlette:
    config = make_config(
        profile=profile,
        time_scale=time_scale,
        patients=patients,
        webhook={"url": HOOK, "subscription_id": "sub-general", "backoff_initial_s": 0.001, **webhook},
    )
    return create_app(
        config,
        public_base_url="http://ehr.test",
        clock=clock,
        webhook_transport=httpx.MockTransport(recorder),
    )


def _params(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}


async def test_backport_full_resource_payload_carries_the_resource(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, payload="full-resource")) as client:
        await _settle(client, wait, 20)
        truth = {
            (r["resourceType"], r["id"]): r
            for r in (await client.get("/_admin/general/truth")).json()["resources"]
        }
    for request in recorder.requests:
        entry = json.loads(request.content)["entry"][1]
        if entry["request"]["method"] == "DELETE":
            assert "resource" not in entry
            continue
        resource = entry["resource"]
        assert (resource["resourceType"], resource["id"]) in truth
        assert entry["fullUrl"].endswith(f"/{resource['resourceType']}/{resource['id']}")


async def test_backport_empty_payload_has_no_focus_and_no_entries(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, payload="empty")) as client:
        await _settle(client, wait, 5)
    for request in recorder.requests:
        bundle = json.loads(request.content)
        assert len(bundle["entry"]) == 1
        parts = {p["name"] for p in _params(bundle)["notification-event"]["part"]}
        assert parts == {"event-number", "timestamp"}


async def test_handshake_activates_a_requested_subscription(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, handshake=True)) as client:

        async def active() -> bool:
            subs: list[dict[str, str]] = (await client.get("/_admin/general/subscriptions")).json()[
                "subscriptions"
            ]
            return subs[0]["status"] == "active"

        await wait(active)
        counters = await _settle(client, wait, 2)
    handshake = _params(json.loads(recorder.requests[0].content))
    assert handshake["type"]["valueCode"] == "handshake"
    assert handshake["status"]["valueCode"] == "requested"
    assert counters["handshakes"] == 1
    assert counters["delivered"] == 2


async def test_failed_handshake_puts_the_subscription_in_error(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    recorder.status = 500
    async with run(_app(make_config, recorder, handshake=True)) as client:

        async def errored() -> bool:
            subs: list[dict[str, str]] = (await client.get("/_admin/general/subscriptions")).json()[
                "subscriptions"
            ]
            return subs[0]["status"] == "error"

        await wait(errored)
        counters = await _settle(client, wait, 1)
        dropped = (await client.get("/_admin/general/notifications/dropped")).json()["events"]
    assert counters["dropped"] == 1
    assert dropped[0]["reason"] == "subscription-error"


async def test_heartbeats_report_the_event_counter(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, heartbeat_s=0.02)) as client:
        await _settle(client, wait, 3)

        async def heartbeat_seen() -> bool:
            return any(
                _params(json.loads(r.content))["type"]["valueCode"] == "heartbeat" for r in recorder.requests
            )

        await wait(heartbeat_seen)
    beat = next(
        _params(b)
        for b in map(json.loads, (r.content for r in recorder.requests))
        if _params(b)["type"]["valueCode"] == "heartbeat"
    )
    assert beat["events-since-subscription-start"]["valueString"] == "3"
    assert "notification-event" not in beat


async def test_athena_r4b_is_signed_with_bundle_relative_numbers(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, profile="athena", secret="hush")) as client:
        await _settle(client, wait, 4)
    ids = set()
    for request in recorder.requests:
        expected = hmac.new(b"hush", request.content, hashlib.sha256).hexdigest()
        assert request.headers["x-hub-signature"] == f"sha256={expected}"
        bundle = json.loads(request.content)
        assert bundle["type"] == "history"
        status = bundle["entry"][0]["resource"]
        assert status["resourceType"] == "SubscriptionStatus"
        assert status["eventsSinceSubscriptionStart"] == "1"  # restarts in every bundle
        event = status["notificationEvent"][0]
        assert event["eventNumber"] == "1"
        assert "focus" in event
        ids.add(event["id"])
    assert len(ids) == 4  # notificationEvent.id is the dedup key


async def test_athena_names_some_patients_by_identifier_only_and_the_search_finds_them(
    make_config: MakeConfig,
    recorder: Recorder,
    run: Run,
    wait: Wait,
    *,
    assertion: Assertions,
    form: Form,
    clock: FakeClock,
) -> None:
    app = _app(make_config, recorder, profile="athena", patients=20, clock=clock)
    async with run(app) as client:
        await _settle(client, wait, 300)
        focuses = [
            json.loads(r.content)["entry"][0]["resource"]["notificationEvent"][0]["focus"]
            for r in recorder.requests
        ]
        by_identifier = [f for f in focuses if "identifier" in f]
        answer = (await client.post("/general/oauth2/token", data=form(assertion()))).json()
        assert "access_token" in answer, answer
        token = answer["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        found = []
        for focus in by_identifier:
            identifier = f"{focus['identifier']['system']}|{focus['identifier']['value']}"
            bundle = (
                await client.get("/general/fhir/Patient", params={"identifier": identifier}, headers=headers)
            ).json()
            found.append([e["resource"]["id"] for e in bundle.get("entry", [])])
    assert by_identifier
    assert all(f["type"] == "Patient" and "reference" not in f for f in by_identifier)
    assert any("reference" in f for f in focuses)  # only some events
    assert all(len(ids) == 1 for ids in found)


async def test_r5_subscription_notification_numbers_events(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, style="r5")) as client:
        await _settle(client, wait, 3)
    numbers = []
    for request in recorder.requests:
        bundle = json.loads(request.content)
        assert bundle["type"] == "subscription-notification"
        status = bundle["entry"][0]["resource"]
        assert status["resourceType"] == "SubscriptionStatus"
        numbers.append(int(status["notificationEvent"][0]["eventNumber"]))
        assert status["eventsSinceSubscriptionStart"] == status["notificationEvent"][0]["eventNumber"]
    assert sorted(numbers) == [1, 2, 3]


async def test_medplum_posts_the_bare_resource_signed(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, profile="medplum", secret="hush")) as client:
        await _settle(client, wait, 100)
    interactions = set()
    for request in recorder.requests:
        assert request.method == "POST"
        assert request.headers["x-medplum-subscription"] == "sub-general"
        assert (
            request.headers["x-signature"] == hmac.new(b"hush", request.content, hashlib.sha256).hexdigest()
        )
        interaction = request.headers["x-medplum-interaction"]
        interactions.add(interaction)
        body = json.loads(request.content)
        if interaction == "delete":
            assert body == {}
            resource_type, _, id_ = request.headers["x-medplum-deleted-resource"].partition("/")
            assert resource_type
            assert id_
        else:
            assert body["resourceType"] != "Bundle"
            assert len(body["meta"]["versionId"]) == 36  # a UUID
    assert interactions == {"create", "update", "delete"}


async def test_medplum_drops_after_five_attempts(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    recorder.status = 500
    async with run(
        _app(make_config, recorder, profile="medplum", time_scale=0.001, backoff_initial_s=None)
    ) as client:
        counters = await _settle(client, wait, 1)
    assert counters["attempted"] == 5
    assert counters["dropped"] == 1


async def test_hapi_empty_payload_is_an_empty_post(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, profile="hapi")) as client:
        await _settle(client, wait, 10)
    assert recorder.requests
    assert all(r.method == "POST" and r.content == b"" and str(r.url) == HOOK for r in recorder.requests)


async def test_hapi_payload_puts_and_deletes_on_the_resource_url(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder, profile="hapi", payload="full-resource")) as client:
        counters = await _settle(client, wait, 100)
    methods = {r.method for r in recorder.requests}
    assert methods == {"PUT", "DELETE"}
    for request in recorder.requests:
        resource_type, id_ = str(request.url).removeprefix(HOOK + "/").split("/")
        if request.method == "PUT":
            body = json.loads(request.content)
            assert (body["resourceType"], body["id"]) == (resource_type, id_)
    assert counters["delivered"] == 100


async def test_hapi_deletes_go_unnotified_without_opt_in(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(
        _app(make_config, recorder, profile="hapi", payload="full-resource", hapi_deletes=False)
    ) as client:
        counters = await _settle(client, wait, 100)
    assert counters["skipped"] > 0
    assert {r.method for r in recorder.requests} == {"PUT"}
    assert counters["delivered"] + counters["skipped"] == 100


async def test_hapi_gives_up_after_its_retry_window(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    recorder.status = 503
    async with run(
        _app(make_config, recorder, profile="hapi", time_scale=0.001, backoff_initial_s=None)
    ) as client:
        counters = await _settle(client, wait, 1)
        dropped = (await client.get("/_admin/general/notifications/dropped")).json()["events"]
    assert counters["dropped"] == 1
    assert counters["attempted"] > 5  # not an attempt count: a window of ~60 s (scaled)
    assert "retry window" in dropped[0]["reason"]


async def test_athena_keeps_retrying_beyond_a_few_attempts(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    recorder.statuses = [500] * 7
    async with run(
        _app(make_config, recorder, profile="athena", time_scale=0.0001, backoff_initial_s=None)
    ) as client:
        counters = await _settle(client, wait, 1)
    assert counters["delivered"] == 1
    assert counters["attempted"] == 8


async def test_athena_dead_letters_after_its_hour(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    recorder.status = 500
    async with run(
        _app(make_config, recorder, profile="athena", time_scale=0.0001, backoff_initial_s=None)
    ) as client:
        counters = await _settle(client, wait, 1)
        dropped = (await client.get("/_admin/general/notifications/dropped")).json()["events"]
    assert counters["dropped"] == 1
    assert "retry window" in dropped[0]["reason"]


async def test_repeated_drops_put_the_subscription_in_error(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    recorder.status = 500
    async with run(_app(make_config, recorder, max_attempts=1)) as client:
        counters = await _settle(client, wait, 12)
        subs = (await client.get("/_admin/general/subscriptions")).json()["subscriptions"]
        dropped = (await client.get("/_admin/general/notifications/dropped")).json()["events"]
    assert subs[0]["status"] == "error"
    assert counters["attempted"] < 12  # once in error, nothing more is sent
    assert counters["dropped"] == 12
    assert {d["reason"] for d in dropped} >= {"http_500", "subscription-error"}


async def test_athena_counts_a_slow_receiver_as_a_failure(
    make_config: MakeConfig, run: Run, wait: Wait
) -> None:
    import asyncio

    answered: list[int] = []

    async def slow_then_fast(request: httpx.Request) -> httpx.Response:
        if not answered:
            answered.append(1)
            await asyncio.sleep(1)  # the simulated receiver is slow; the sender's timeout ends it
        return httpx.Response(200)

    config = make_config(profile="athena", time_scale=0.01, webhook={"url": HOOK})
    app = create_app(config, webhook_transport=httpx.MockTransport(slow_then_fast))
    async with run(app) as client:
        counters = await _settle(client, wait, 1)
    assert counters["delivered"] == 1
    assert counters["attempted"] == 2  # 2 s (scaled: 20 ms) to answer, then retried
