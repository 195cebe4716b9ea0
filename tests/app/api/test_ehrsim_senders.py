"""ehrsim's renderers (one per notification style: backport R4, R4B/athena, R5, Medplum, HAPI) delivered
to the receiver in-process: every style is understood, authenticated and committed."""

from __future__ import annotations

import httpx
import pytest

from ehrsim.notify import Event, Target, render
from ehrsim.store import Change
from tests.app.api.conftest import SECRET, Facilities, shared_secret, signed
from tests.fixtures import BASE, observation

pytestmark = pytest.mark.anyio


def _target(style: str, payload: str, fid: str) -> Target:
    return Target(
        id="sim-sub",
        endpoint=f"http://receiver.test/hooks/{fid}",
        headers={"Authorization": f"Bearer {SECRET}"} if style in ("backport-r4", "r5", "hapi") else {},
        topic="http://example.org/topic",
        style=style,
        payload=payload,
        status="active",
        secret=SECRET if style in ("r4b", "medplum") else None,
        hapi_deletes=True,
        events_since_start=0,
    )


def _events() -> list[Event]:
    changes = [
        Change("create", "Observation", "o1", 1, 1_790_000_000_000),
        Change("update", "Observation", "o1", 2, 1_790_000_001_000),
        Change("delete", "Observation", "o1", 3, 1_790_000_002_000),
    ]
    return [
        Event(
            n,
            c,
            None if c.kind == "delete" else observation("o1", str(c.version), "2026-11-24T10:00:00Z"),
            f"ev{n}",
        )
        for n, c in enumerate(changes, start=1)
    ]


@pytest.mark.parametrize(
    "case",
    [
        ("backport-r4", "id-only", "generic", shared_secret()),
        ("backport-r4", "full-resource", "generic", shared_secret()),
        ("backport-r4", "empty", "generic", shared_secret()),
        ("r4b", "id-only", "athena", signed("hub-signature")),
        ("r5", "full-resource", "generic", shared_secret()),
        ("medplum", "full-resource", "medplum", signed("x-signature")),
        ("hapi", "full-resource", "hapi", shared_secret()),
        ("hapi", "empty", "hapi", shared_secret()),
    ],
)
async def test_every_ehrsim_style_is_committed_one_row_per_event(
    receiver: httpx.AsyncClient, facilities: Facilities, case: tuple[str, str, str, dict[str, object]]
) -> None:
    style, payload, vendor, webhook = case
    fid = facilities.add(webhook, vendor=vendor, base_url=BASE)
    target = _target(style, payload, fid)
    for event in _events():
        out = render(target, "event-notification", event, BASE, 1_790_000_000_000)
        assert out is not None
        response = await receiver.request(out.method, out.url, content=out.body, headers=out.headers)
        assert response.status_code == 200, response.text
    rows = facilities.inbox(fid)
    assert len(rows) == 3
    if payload != "empty":
        assert {(r.focus_type, r.focus_id) for r in rows} == {("Observation", "o1")}
        assert rows[-1].interaction == "delete"
