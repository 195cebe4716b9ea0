"""No 500, no traceback, for any authenticated body (issue 10 item 3): through the real ASGI app and its
lifespan (writer, doorbell, Postgres), every hostile body is a 2xx (stored or quarantined) or a 4xx,
and no exception escapes the app (httpx's ASGI transport re-raises any)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.app.api.conftest import (
    WHSEC,
    Facilities,
    bearer,
    running,
    settings_for,
    shared_secret,
    signed,
)
from tests.app.api.fixtures_shapes import standard_webhooks_headers
from tests.strategies import hostile_bodies

EXAMPLES = 600
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
STATUSES: Counter[int] = Counter()


@contextmanager
def app_client(api_database_url: str, redis_prefix: str) -> Iterator[Callable[..., httpx.Response]]:
    """A function sending one request to the app, whose lifespan runs for the whole property run."""
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        client = runner.run(stack.enter_async_context(running(settings_for(api_database_url, redis_prefix))))

        def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
            response = runner.run(client.request(method, path, **kwargs))
            STATUSES[response.status_code] += 1
            return response

        try:
            yield send
        finally:
            runner.run(stack.aclose())


def _no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    assert response.json()["resourceType"] == "OperationOutcome"


def test_hostile_json_bodies_are_never_a_5xx(
    api_database_url: str, redis_prefix: str, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    with app_client(api_database_url, redis_prefix) as send:

        @PROPERTY
        @given(body=hostile_bodies)
        def check(body: Any) -> None:
            response = send("POST", f"/hooks/{fid}", content=json.dumps(body).encode(), headers=bearer())
            _no_5xx(response)
            assert response.status_code in (200, 202, 400)

        check()
    print(f"\nhostile JSON: {sum(STATUSES.values())} requests, statuses {dict(STATUSES)}")


def test_hostile_payload_mode_paths_are_never_a_5xx(
    api_database_url: str, redis_prefix: str, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    segments = st.one_of(
        st.sampled_from(["Patient", ".", "..", "%2E%2E", "p1", "x" * 65]), st.text(max_size=70)
    )
    with app_client(api_database_url, redis_prefix) as send:

        @settings(PROPERTY, max_examples=EXAMPLES // 2)
        @given(
            rtype=segments,
            rid=segments,
            body=st.one_of(st.none(), hostile_bodies),
            method=st.sampled_from(["PUT", "DELETE"]),
        )
        def check(rtype: str, rid: str, body: Any, method: str) -> None:
            content = b"" if body is None else json.dumps(body).encode()
            path = f"/hooks/{fid}/{quote(rtype, safe='%') or 'x'}/{quote(rid, safe='%') or 'x'}"
            response = send(method, path, content=content, headers=bearer())
            # A path that routes nowhere (httpx drops "." segments) is the framework's 404.
            assert response.status_code < 500, (response.status_code, response.text)

        check()
    print(f"\nhostile paths: {sum(STATUSES.values())} requests so far, statuses {dict(STATUSES)}")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"resourceType":"Parameters","parameter":5}',
        b'{"resourceType":"Parameters","parameter":true}',
        b'{"resourceType":"Parameters","parameter":null}',
        b'{"resourceType":"Parameters","parameter":1.5}',
        b'{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Parameters","parameter":'
        b'[{"name":"type","valueCode":"event-notification"},'
        b'{"name":"notification-event","part":[{"name":["focus"]}]}]}}]}',
        b'{"a":'
        + b"1" * 5000
        + b"}",  # beyond Python's int-parsing digit limit: ValueError, not JSONDecodeError
        b'{"resourceType":"Observation","id":"o1","value":1e999}',
        b"[" * 100_000,
        # a bare resource whose own id or type is a URL (found by hypothesis: ForeignHostError, a 500)
        b'{"resourceType":"Observation","id":"https://ehr.test/fhir/Patient/p1"}',
        b'{"resourceType":"https://evil.test/Patient","id":"p1"}',
        b'{"resourceType":"Observation","id":"p1/_history/2"}',
    ],
)
def test_reported_malformed_bodies_are_a_400_or_a_quarantine(
    api_database_url: str, redis_prefix: str, facilities: Facilities, raw: bytes
) -> None:
    fid = facilities.add(shared_secret())
    with app_client(api_database_url, redis_prefix) as send:
        response = send("POST", f"/hooks/{fid}", content=raw, headers=bearer())
    _no_5xx(response)
    assert response.status_code in (200, 202, 400)


@pytest.mark.parametrize("path", ["/hooks/%00", "/hooks/a%00b", "/hooks/" + "f" * 5000, "/hooks/%E2%80%AE"])
def test_hostile_facility_ids_are_never_a_5xx(
    api_database_url: str, redis_prefix: str, facilities: Facilities, path: str
) -> None:
    with app_client(api_database_url, redis_prefix) as send:
        _no_5xx(send("POST", path, content=b"{}", headers=bearer()))


@pytest.mark.parametrize("stamp", [b"\xb2", b"1" * 5000, b"\xd9\xa3", b" 12 "])  # b"\xb2" is "²" in latin-1
def test_hostile_standard_webhooks_timestamps_are_a_401(
    api_database_url: str, redis_prefix: str, facilities: Facilities, stamp: bytes
) -> None:
    fid = facilities.add(signed("standard-webhooks"))
    headers = standard_webhooks_headers(b"{}", WHSEC, "msg_1", int(time.time()))
    encoded = {k.encode(): v.encode() for k, v in headers.items()} | {b"webhook-timestamp": stamp}
    with app_client(api_database_url, redis_prefix) as send:
        response = send(
            "POST",
            f"/hooks/{fid}",
            content=b"{}",
            headers=[(b"content-type", b"application/json"), *encoded.items()],
        )
    _no_5xx(response)
    assert response.status_code == 401
