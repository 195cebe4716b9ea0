from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette

from ehrsim.server import create_app
from tests.ehrsim.simclient import notification_counters

if TYPE_CHECKING:
    from tests.ehrsim.conftest import MakeConfig, Recorder, Run, Wait

pytestmark = pytest.mark.anyio
STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)


def _webhook(**overrides: object) -> dict[str, object]:
    return {
        "url": "http://receiver.test/hooks/general",
        "headers": {"Authorization": "Bearer s3cret"},
        "subscription_id": "sub-general",
        "backoff_initial_s": 0.001,
        **overrides,
    }


def _app(make_config: MakeConfig, recorder: Recorder, **webhook: object) -> Starlette:
    return create_app(
        make_config(webhook=_webhook(**webhook)),
        public_base_url="http://ehr.test",
        webhook_transport=httpx.MockTransport(recorder),
    )


CORE = ("queued", "attempted", "delivered", "dropped", "pending")


async def _counters(client: httpx.AsyncClient) -> dict[str, int]:
    """The counters every consumer relies on (the endpoint reports more)."""
    counters = await notification_counters(client)
    return {k: counters[k] for k in CORE}


def _params(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}


async def test_every_change_is_delivered_with_consecutive_event_numbers(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    async with run(_app(make_config, recorder)) as client:
        await client.post("/_admin/general/activity", json={"changes": 30})

        async def settled() -> bool:
            return (await _counters(client))["pending"] == 0

        await wait(settled)
        counters = await _counters(client)
        truth = (await client.get("/_admin/general/truth")).json()["resources"]
    assert counters == {"queued": 30, "attempted": 30, "delivered": 30, "dropped": 0, "pending": 0}
    bundles = [json.loads(r.content) for r in recorder.requests]
    numbers = sorted(int(_params(b)["events-since-subscription-start"]["valueString"]) for b in bundles)
    assert numbers == list(range(1, 31))
    request = recorder.requests[0]
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["content-type"] == "application/fhir+json"
    assert str(request.url) == "http://receiver.test/hooks/general"
    latest = {(r["resourceType"], r["id"]): r for r in truth}
    for bundle in bundles:
        assert bundle["type"] == "history"
        status = bundle["entry"][0]["resource"]
        assert status["meta"]["profile"] == [STATUS_PROFILE]
        params = _params(bundle)
        assert (
            params["subscription"]["valueReference"]["reference"]
            == "http://ehr.test/general/fhir/Subscription/sub-general"
        )
        assert params["type"]["valueCode"] == "event-notification"
        parts = {p["name"]: p for p in params["notification-event"]["part"]}
        assert (
            parts["event-number"]["valueString"] == params["events-since-subscription-start"]["valueString"]
        )
        focus = parts["focus"]["valueReference"]["reference"]
        entry = bundle["entry"][1]
        assert entry["fullUrl"] == focus
        resource_type, id_ = entry["request"]["url"].split("/")
        assert focus == f"http://ehr.test/general/fhir/{resource_type}/{id_}"
        assert (resource_type, id_) in latest
        if entry["request"]["method"] == "DELETE":
            assert entry["response"]["status"] == "204"
        else:
            assert entry["request"]["method"] == "PUT"
    deletes = [b for b in bundles if b["entry"][1]["request"]["method"] == "DELETE"]
    assert len(deletes) == sum(r["deleted"] for r in truth)


async def test_a_failing_attempt_is_retried(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    recorder.statuses = [503, 500]
    async with run(_app(make_config, recorder, max_attempts=3)) as client:
        await client.post("/_admin/general/activity", json={"changes": 1})

        async def delivered() -> bool:
            return (await _counters(client))["delivered"] == 1

        await wait(delivered)
        assert (await _counters(client))["attempted"] == 3
    assert len({r.content for r in recorder.requests}) == 1  # the same notification each time


async def test_notifications_are_dropped_after_max_attempts(
    make_config: MakeConfig, recorder: Recorder, run: Run, wait: Wait
) -> None:
    recorder.status = 500
    async with run(_app(make_config, recorder, max_attempts=3)) as client:
        await client.post("/_admin/general/activity", json={"changes": 4})

        async def settled() -> bool:
            return (await _counters(client))["pending"] == 0

        await wait(settled)
        counters = await _counters(client)
        dropped = (await client.get("/_admin/general/notifications/dropped")).json()
    assert counters == {"queued": 4, "attempted": 12, "delivered": 0, "dropped": 4, "pending": 0}
    assert sorted(dropped["event_numbers"]) == [1, 2, 3, 4]


async def test_transport_errors_count_as_failed_attempts(
    make_config: MakeConfig, run: Run, wait: Wait
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    app = create_app(
        make_config(webhook=_webhook(max_attempts=2)), webhook_transport=httpx.MockTransport(refuse)
    )
    async with run(app) as client:
        await client.post("/_admin/general/activity", json={"changes": 2})

        async def settled() -> bool:
            return (await _counters(client))["pending"] == 0

        await wait(settled)
        assert await _counters(client) == {
            "queued": 2,
            "attempted": 4,
            "delivered": 0,
            "dropped": 2,
            "pending": 0,
        }


async def test_facility_without_webhook_queues_nothing(sim: httpx.AsyncClient) -> None:
    await sim.post("/_admin/general/activity", json={"changes": 5})
    assert await _counters(sim) == {"queued": 0, "attempted": 0, "delivered": 0, "dropped": 0, "pending": 0}
