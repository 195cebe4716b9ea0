from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ehrsim.generator import RECORDED_AT, Generator
from ehrsim.profiles import get_profile
from ehrsim.server import create_app
from ehrsim.store import ResourceStore

if TYPE_CHECKING:
    from tests.ehrsim.conftest import FakeClock, MakeConfig, Run

pytestmark = pytest.mark.anyio


async def _truth(client: httpx.AsyncClient) -> dict[tuple[str, str], dict[str, Any]]:
    resources = (await client.get("/_admin/general/truth")).json()["resources"]
    return {(r["resourceType"], r["id"]): r for r in resources}


async def test_each_change_bumps_exactly_one_version(authed: httpx.AsyncClient) -> None:
    before = await _truth(authed)
    response = await authed.post("/_admin/general/activity", json={"changes": 50})
    assert response.json() == {"changes": 50}
    after = await _truth(authed)
    assert set(before) <= set(after)
    versions = {key: int(r["versionId"]) for key, r in after.items()}
    bumped = sum(versions.values()) - sum(int(r["versionId"]) for r in before.values())
    assert bumped == 50


async def test_truth_matches_what_reads_return(authed: httpx.AsyncClient) -> None:
    await authed.post("/_admin/general/activity", json={"changes": 50})
    for (resource_type, id_), record in (await _truth(authed)).items():
        response = await authed.get(f"/general/fhir/{resource_type}/{id_}")
        if record["deleted"]:
            assert response.status_code == 410
        else:
            assert response.json()["meta"] == {
                "versionId": record["versionId"],
                "lastUpdated": record["lastUpdated"],
            }


async def test_patients_are_never_deleted(authed: httpx.AsyncClient) -> None:
    await authed.post("/_admin/general/activity", json={"changes": 300})
    truth = (await _truth(authed)).values()
    assert any(r["deleted"] for r in truth)
    assert not any(r["deleted"] for r in truth if r["resourceType"] == "Patient")


async def test_same_seed_gives_the_same_history(make_config: MakeConfig, clock: FakeClock, run: Run) -> None:
    histories = []
    for _ in range(2):
        async with run(create_app(make_config(seed=7), clock=clock)) as client:
            await client.post("/_admin/general/activity", json={"changes": 40})
            truth = await _truth(client)
            histories.append({key: (r["versionId"], r["deleted"]) for key, r in truth.items()})
    assert histories[0] == histories[1]


async def test_activity_rejects_a_bad_body(sim: httpx.AsyncClient) -> None:
    assert (await sim.post("/_admin/general/activity", json={"changes": -1})).status_code == 400
    assert (await sim.post("/_admin/general/activity", json={})).status_code == 400


async def test_healthz(sim: httpx.AsyncClient) -> None:
    assert (await sim.get("/_admin/healthz")).json() == {"ok": True}


def test_what_activity_records_carries_its_time_as_the_admin_date() -> None:
    """A created-date search finds what was recorded since: activity's admin dates are the store's time;
    the seeded chart keeps its historic dates."""
    now = 1_796_300_000.0  # 2026-12-03T12:13:20Z
    profile = get_profile("epic")
    store = ResourceStore(lambda: now, profile.resource_types, meta=False)
    generator = Generator(store, 7, "fac", profile)
    seeded = {(c.resource_type, c.id) for c in generator.populate(5)}
    while len({c.resource_type for c in store.records() if (c.resource_type, c.id) not in seeded}) < 6:
        generator.step()
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    for record in store.records():
        element = RECORDED_AT.get(record.resource_type)
        if element is None or record.deleted:
            continue
        value = str(record.resource.get(element, ""))
        if (record.resource_type, record.id) in seeded:
            assert not value.startswith(today)
        else:
            assert value in {today, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
