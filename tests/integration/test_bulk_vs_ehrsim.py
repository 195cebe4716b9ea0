"""The Bulk Data client against ehrsim over real HTTP: a private ehrsim process (its data changes here),
our EHR client with its token and guard, the Redis lease."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.ehr.bulk import BulkDeletion, BulkExport, UnparseableLine
from app.errors import BulkExportBusy
from app.settings import Settings
from devstack.keys import write_keypair
from devstack.processes import Stack, free_port
from tests.conftest import REDIS_URL
from tests.integration.conftest import Sim


@pytest.fixture(scope="module")
def bulk_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    workdir: Path = tmp_path_factory.mktemp("ehrsim-bulk")
    private, public = write_keypair(workdir, "client")
    client = {"client_id": "ehr-ingest", "public_key_file": str(public), "scopes": ["system/*.read"]}
    facilities: list[dict[str, Any]] = [
        {
            "id": "generic",
            "profile": "generic",
            "seed": 5,
            "patients": 30,
            "clients": [client],
            "profile_overrides": {"bulk_file_resources": 25},
        },
        {
            "id": "meditech",
            "profile": "meditech",
            "seed": 6,
            "patients": 10,
            "clients": [client],
            "groups": [{"id": "all", "members": None}],  # every live patient
        },
    ]
    port = free_port()
    config = workdir / "ehrsim.yaml"
    config.write_text(
        yaml.safe_dump({"public_base_url": f"http://127.0.0.1:{port}", "facilities": facilities})
    )
    stack = Stack(workdir, dict(os.environ))
    stack.start_ehrsim(config, port)
    try:
        yield Sim(f"http://127.0.0.1:{port}", private.read_text())
    finally:
        stack.stop()


@pytest.fixture
def settings(redis_prefix: str) -> Settings:
    return Settings(
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        bulk_retry_after_cap=timedelta(seconds=0.05),  # ehrsim asks 2-5 s: honoured up to the cap
        bulk_kickoff_wait=timedelta(seconds=30),
    )


def _live(sim: Sim, facility: str, types: set[str] | None = None) -> dict[tuple[str, str], str]:
    return {
        (r["resourceType"], r["id"]): r["versionId"]
        for r in sim.admin(facility, "truth")["resources"]
        if not r["deleted"] and (types is None or r["resourceType"] in types)
    }


def test_a_full_then_an_incremental_export_match_the_ehr(bulk_sim: Sim, settings: Settings) -> None:
    waits: list[float] = []
    quarantined: list[UnparseableLine] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)

    client = bulk_sim.client("generic")
    export = BulkExport(client, settings, quarantine=quarantined.append, sleep=sleep)
    with export.run("system") as job:
        got = {(i["resourceType"], i["id"]): i["meta"]["versionId"] for i in job if isinstance(i, dict)}
        first = job.transaction_time
        assert job.stats.files > 3  # the types are split over files of 25
    assert got == _live(bulk_sim, "generic")
    assert waits == [0.05]  # one 202 with Retry-After: 2, honoured up to the cap

    before = {(r["resourceType"], r["id"]): r for r in bulk_sim.admin("generic", "truth")["resources"]}
    bulk_sim.admin("generic", "activity", {"changes": 150})
    after = bulk_sim.admin("generic", "truth")["resources"]
    changed = [r for r in after if before.get((r["resourceType"], r["id"])) != r]
    with export.run("system", since=first) as job:
        items = list(job)
        assert job.transaction_time > first
    resources = {(i["resourceType"], i["id"]): i["meta"]["versionId"] for i in items if isinstance(i, dict)}
    deletions = {(i.ref.resource_type, i.ref.resource_id) for i in items if isinstance(i, BulkDeletion)}
    expected = {(r["resourceType"], r["id"]): r["versionId"] for r in changed if not r["deleted"]}
    assert expected.items() <= resources.items()  # every change, at its version
    # Anything more is a resource updated at the boundary instant (``_since`` is inclusive, and under
    # load the first export's transactionTime can equal a lastUpdated): re-sent at the version we have.
    extra = {key: version for key, version in resources.items() if key not in expected}
    assert all(got.get(key) == version for key, version in extra.items()), extra
    assert deletions == {(r["resourceType"], r["id"]) for r in changed if r["deleted"]}
    assert deletions
    assert quarantined == []
    client.close()


def test_a_group_export_waits_for_the_clients_running_job_then_proceeds(
    bulk_sim: Sim, settings: Settings
) -> None:
    client = bulk_sim.client("meditech")
    base = bulk_sim.base("meditech")
    # Another job of the same client is in progress at the EHR (a kick-off from elsewhere).
    running = client.send("GET", f"{base}/Patient/$export", ok=(202,), headers={"Prefer": "respond-async"})
    status_url = running.headers["content-location"]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:  # while we wait after the refusal, the other job ends
            client.send("DELETE", status_url, ok=(202,))

    export = BulkExport(client, settings, quarantine=lambda _: None, sleep=sleep)
    with export.run("group", group_id="all", types=["Patient", "Observation"]) as job:
        got = {(i["resourceType"], i["id"]): i["meta"]["versionId"] for i in job if isinstance(i, dict)}
    assert got == _live(bulk_sim, "meditech", {"Patient", "Observation"})
    assert waits[0] == 0.05  # the 429's Retry-After (5 s), capped
    assert len(waits) == 3  # then MEDITECH's two 202 polls
    client.close()


def test_a_second_export_of_the_facility_is_refused_while_one_runs(bulk_sim: Sim, settings: Settings) -> None:
    client = bulk_sim.client("generic")
    first = BulkExport(client, settings, quarantine=lambda _: None, sleep=lambda _: None)
    second = BulkExport(bulk_sim.client("generic"), settings, quarantine=lambda _: None, sleep=lambda _: None)
    job = first.run("patient")
    try:
        with pytest.raises(BulkExportBusy):
            second.run("patient")
    finally:
        job.close()
    # Closing deleted the job at the EHR: its one slot is free again.
    status = httpx.get(job.status_url, headers={"Authorization": "Bearer x"}, timeout=10)
    assert status.status_code in (401, 404)
    with second.run("patient") as again:
        assert sum(1 for _ in again) > 0
