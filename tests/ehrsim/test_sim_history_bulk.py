"""What the reconciler's strategies meet: ``_history`` (HAPI, Medplum), deletions and split files in
``$export``, and reads from a lagging replica."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ehrsim.instants import format_instant
from ehrsim.server import create_app

if TYPE_CHECKING:
    from tests.ehrsim.conftest import Assertions, FakeClock, Form, MakeConfig, OpenSim, Run

pytestmark = pytest.mark.anyio

FHIR = "/general/fhir"
PREFER = {"Prefer": "respond-async"}


@pytest.fixture
def open_sim(
    make_config: MakeConfig, clock: FakeClock, assertion: Assertions, form: Form, run: Run
) -> OpenSim:
    @asynccontextmanager
    async def open_(profile: str, **facility: Any) -> AsyncIterator[httpx.AsyncClient]:
        config = make_config(profile=profile, **facility)
        async with run(create_app(config, clock=clock)) as client:
            response = await client.post("/general/oauth2/token", data=form(assertion()))
            assert response.status_code == 200, response.text
            client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
            yield client

    return open_


async def _truth(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = (await client.get("/_admin/general/truth")).json()["resources"]
    return resources


async def _changes(client: httpx.AsyncClient, clock: FakeClock, n: int) -> str:
    """Advance the clock, make ``n`` changes; the instant before them."""
    clock.advance(60)
    since = format_instant(int(clock.now * 1000))
    clock.advance(1)
    response = await client.post("/_admin/general/activity", json={"changes": n})
    assert response.status_code == 200
    return since


async def _history_pages(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    bundles: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        bundles.append(response.json())
        next_url = next((link["url"] for link in bundles[-1]["link"] if link["relation"] == "next"), None)
        assert len(bundles) < 100
    return bundles


async def _export(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    kickoff = await client.get(url, headers=PREFER)
    assert kickoff.status_code == 202, kickoff.text
    while (poll := await client.get(kickoff.headers["content-location"])).status_code == 202:
        assert int(poll.headers["retry-after"]) > 0
    manifest: dict[str, Any] = poll.json()
    return manifest


# -- _history --------------------------------------------------------------------------------------------


async def test_medplum_serves_instance_history_only_as_its_capability_statement_says(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    async with open_sim("medplum", patients=2) as client:
        await _changes(client, clock, 5)
        typed = await client.get(f"{FHIR}/Observation/_history")
        metadata = (await client.get(f"{FHIR}/metadata")).json()
        truth = await _truth(client)
        some = next(r for r in truth if r["resourceType"] == "Observation")
        instance = await client.get(f"{FHIR}/Observation/{some['id']}/_history")
    assert typed.status_code == 404
    assert instance.status_code == 200
    interactions = {
        i["code"]
        for r in metadata["rest"][0]["resource"]
        if r["type"] == "Observation"
        for i in r["interaction"]
    }
    assert "history-instance" in interactions
    assert "history-type" not in interactions


async def test_type_history_since_lists_every_change_and_deletion_newest_first(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    async with open_sim("hapi", patients=8) as client:
        since = await _changes(client, clock, 60)
        bundles = await _history_pages(client, f"{FHIR}/Observation/_history?_since={since}&_count=7")
        truth = await _truth(client)
    entries = [e for b in bundles for e in b["entry"]]
    assert all(b["type"] == "history" for b in bundles)
    assert len(bundles) > 1
    # Every page says when the history was read (the first page's snapshot), as HAPI stamps its bundles;
    # a deletion carries no time of its own.
    read_at = {b["meta"]["lastUpdated"] for b in bundles}
    assert len(read_at) == 1
    assert all("lastModified" not in e["response"] for e in entries if e["request"]["method"] == "DELETE")
    stamps = [e["response"]["lastModified"] for e in entries if e["request"]["method"] != "DELETE"]
    assert stamps == sorted(stamps, reverse=True)
    assert all(since <= s <= next(iter(read_at)) for s in stamps)
    deleted = {r["id"] for r in truth if r["resourceType"] == "Observation" and r["deleted"]}
    deletions = {e["request"]["url"].split("/")[1] for e in entries if e["request"]["method"] == "DELETE"}
    assert deletions == deleted
    assert deleted
    assert all("resource" not in e for e in entries if e["request"]["method"] == "DELETE")
    # The newest entry of each live resource is its current version.
    newest: dict[str, dict[str, Any]] = {}
    for e in entries:
        newest.setdefault(e["fullUrl"].rsplit("/", 1)[1], e)
    current = {
        r["id"]: r["versionId"] for r in truth if r["resourceType"] == "Observation" and not r["deleted"]
    }
    for rid, entry in newest.items():
        if rid in current:
            assert entry["resource"]["meta"]["versionId"] == current[rid]


async def test_type_history_pages_do_not_shift_while_changes_go_on(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    async with open_sim("hapi", patients=8) as client:
        since = await _changes(client, clock, 40)
        first = (await client.get(f"{FHIR}/Observation/_history?_since={since}&_count=5")).json()
        await _changes(client, clock, 40)  # newer changes after the snapshot
        rest = await _history_pages(client, next(x["url"] for x in first["link"] if x["relation"] == "next"))
    entries = first["entry"] + [e for b in rest for e in b["entry"]]
    keys = [(e["fullUrl"], e["response"]["etag"]) for e in entries]
    assert len(keys) == len(set(keys)) == first["total"]


async def test_instance_history_lists_every_version_newest_first(open_sim: OpenSim, clock: FakeClock) -> None:
    async with open_sim("hapi", patients=8) as client:
        await _changes(client, clock, 80)
        truth = await _truth(client)
        target = max(
            (r for r in truth if r["resourceType"] == "Observation"), key=lambda r: int(r["versionId"])
        )
        bundle = (await client.get(f"{FHIR}/Observation/{target['id']}/_history")).json()
    versions = [e["response"]["etag"] for e in bundle["entry"]]
    assert versions == [f'W/"{v}"' for v in range(int(target["versionId"]), 0, -1)]
    assert bundle["entry"][-1]["request"]["method"] == "POST"


async def test_history_is_served_only_where_the_vendor_has_it(open_sim: OpenSim) -> None:
    async with open_sim("hapi") as client:
        statement = (await client.get(f"{FHIR}/metadata")).json()
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    assert {"code": "history-type"} in observation["interaction"]
    assert {"code": "history-instance"} in observation["interaction"]
    async with open_sim("oracle") as client:
        refused = await client.get(f"{FHIR}/Observation/_history")
        statement = (await client.get(f"{FHIR}/metadata")).json()
    assert refused.status_code == 404
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    assert all(not i["code"].startswith("history") for i in observation["interaction"])


async def test_one_named_resource_is_deleted_and_created_again_through_the_admin_api(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    async with open_sim("hapi") as client:
        target = next(r for r in await _truth(client) if r["resourceType"] == "Observation")
        before = (await client.get(f"{FHIR}/Observation/{target['id']}")).json()
        name = {"type": "Observation", "id": target["id"]}
        clock.advance(1)
        deleted = await client.post("/_admin/general/change", json={**name, "delete": True})
        gone = await client.get(f"{FHIR}/Observation/{target['id']}")
        again = await client.post("/_admin/general/change", json={**name, "delete": True})
        clock.advance(1)
        created = await client.post("/_admin/general/change", json={**name, "delete": False})
        back = (await client.get(f"{FHIR}/Observation/{target['id']}")).json()
        history = (await client.get(f"{FHIR}/Observation/{target['id']}/_history")).json()
        unknown = await client.post(
            "/_admin/general/change", json={"type": "Observation", "id": "nope", "delete": True}
        )
        malformed = await client.post("/_admin/general/change", json={"type": "Observation"})
    assert deleted.json()["change"] == "delete"
    assert gone.status_code in (404, 410)
    assert again.status_code == 409
    assert created.json()["change"] == "create"
    assert {k: v for k, v in back.items() if k != "meta"} == {k: v for k, v in before.items() if k != "meta"}
    assert back["meta"]["lastUpdated"] > before["meta"]["lastUpdated"]
    assert [e["request"]["method"] for e in history["entry"][:2]] == ["PUT", "DELETE"]
    assert (unknown.status_code, malformed.status_code) == (404, 400)


# -- $export ---------------------------------------------------------------------------------------------


async def test_export_since_lists_what_was_deleted_as_bundles_of_deletes(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    async with open_sim("generic", patients=10) as client:
        since = await _changes(client, clock, 80)
        manifest = await _export(client, f"{FHIR}/$export?_since={since}")
        lines = [
            json.loads(line)
            for f in manifest["deleted"]
            for line in (await client.get(f["url"])).text.splitlines()
        ]
        truth = await _truth(client)
    deleted = {(r["resourceType"], r["id"]) for r in truth if r["deleted"]}
    listed = {tuple(e["request"]["url"].split("/")) for b in lines for e in b["entry"]}
    assert deleted
    assert listed == deleted
    assert all(b["type"] == "transaction" for b in lines)
    assert {e["request"]["method"] for b in lines for e in b["entry"]} == {"DELETE"}


async def test_export_without_since_or_where_unverified_lists_no_deletions(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    async with open_sim("generic", patients=10) as client:
        await _changes(client, clock, 80)
        assert "deleted" not in await _export(client, f"{FHIR}/$export")
    async with open_sim("meditech", patients=10) as client:
        since = await _changes(client, clock, 80)
        assert "deleted" not in await _export(client, f"{FHIR}/Patient/$export?_since={since}")


async def test_export_splits_a_type_over_files_of_bounded_size(open_sim: OpenSim) -> None:
    async with open_sim("generic", patients=12, profile_overrides={"bulk_file_resources": 5}) as client:
        manifest = await _export(client, f"{FHIR}/$export?_type=Observation")
        counts = [o["count"] for o in manifest["output"]]
        ids = [
            json.loads(line)["id"]
            for o in manifest["output"]
            for line in (await client.get(o["url"])).text.splitlines()
        ]
        truth = await _truth(client)
    assert len(counts) > 1
    assert max(counts) == 5
    live = {r["id"] for r in truth if r["resourceType"] == "Observation" and not r["deleted"]}
    assert sorted(ids) == sorted(live)


async def test_a_second_kickoff_while_a_job_runs_is_refused_with_retry_after(open_sim: OpenSim) -> None:
    async with open_sim("generic") as client:
        first = await client.get(f"{FHIR}/$export", headers=PREFER)
        second = await client.get(f"{FHIR}/$export", headers=PREFER)
    assert (first.status_code, second.status_code) == (202, 429)
    assert int(second.headers["retry-after"]) > 0
    assert second.json()["issue"][0]["code"] == "throttled"


async def test_a_bad_ndjson_resource_is_cut_short_in_its_file_and_the_rest_is_whole(
    open_sim: OpenSim,
) -> None:
    async with open_sim("meditech", patients=4) as client:
        truth = await _truth(client)
        live = [r for r in truth if r["resourceType"] == "Observation" and not r["deleted"]]
        bad = live[1]
        await client.post("/_admin/general/faults", json={"bad_ndjson": [f"Observation/{bad['id']}"]})
        manifest = await _export(client, f"{FHIR}/Patient/$export?_type=Observation")
        lines = [line for o in manifest["output"] for line in (await client.get(o["url"])).text.splitlines()]
    parsed, broken = [], []
    for line in lines:
        try:
            parsed.append(json.loads(line)["id"])
        except ValueError:
            broken.append(line)
    assert len(broken) == 1
    assert sorted(parsed) == sorted(r["id"] for r in live if r["id"] != bad["id"])


async def test_a_failed_job_answers_its_polls_500_and_can_still_be_deleted(open_sim: OpenSim) -> None:
    async with open_sim("meditech") as client:
        await client.post("/_admin/general/faults", json={"bulk_job_error": True})
        kickoff = await client.get(f"{FHIR}/Patient/$export", headers=PREFER)
        assert kickoff.status_code == 202
        status_url = kickoff.headers["content-location"]
        poll = await client.get(status_url)
        deleted = await client.delete(status_url)
        again = await client.get(f"{FHIR}/Patient/$export", headers=PREFER)
    assert poll.status_code == 500
    assert poll.json()["resourceType"] == "OperationOutcome"
    assert deleted.status_code == 202
    assert again.status_code == 202  # the failed job no longer holds the client's one slot


def _subject(resource: dict[str, Any]) -> str | None:
    """The Patient id a resource belongs to (itself for a Patient), as a ``patient=`` search finds it."""
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
            return str(ref["reference"]).removeprefix("Patient/")
    return None


async def _exported(client: httpx.AsyncClient, manifest: dict[str, Any]) -> dict[tuple[str, str], str | None]:
    """Every resource of the manifest's output files: key → the Patient it belongs to."""
    found = {}
    for output in manifest["output"]:
        for line in (await client.get(output["url"])).text.splitlines():
            resource = json.loads(line)
            assert resource["resourceType"] == output["type"]
            found[(resource["resourceType"], resource["id"])] = _subject(resource)
    return found


async def _deleted(client: httpx.AsyncClient, manifest: dict[str, Any]) -> set[tuple[str, ...]]:
    return {
        tuple(entry["request"]["url"].split("/"))
        for f in manifest.get("deleted", [])
        for line in (await client.get(f["url"])).text.splitlines()
        for entry in json.loads(line)["entry"]
    }


async def test_a_group_export_holds_only_its_members_patients_and_their_compartments(
    open_sim: OpenSim,
) -> None:
    members = {"pat-1", "pat-2"}
    groups = [{"id": "g-two", "members": sorted(members)}]
    overrides = {"medication": ["reference"]}  # Medication resources, which no patient's compartment holds
    async with open_sim("meditech", patients=6, groups=groups, profile_overrides=overrides) as client:
        everything = await _export(client, f"{FHIR}/Group/g-two/$export")
        got = await _exported(client, everything)
        observations = await _export(client, f"{FHIR}/Group/g-two/$export?_type=Observation")
        got_observations = await _exported(client, observations)
        truth = (await client.get("/_admin/general/truth?content=true")).json()["resources"]
    live = {(r["resourceType"], r["id"]): _subject(r["content"]) for r in truth if not r["deleted"]}
    expected = {key: patient for key, patient in live.items() if patient in members}
    assert {("Patient", m) for m in members} <= expected.keys()
    assert {t for t, _ in expected} > {"Patient", "Observation"}  # more types than those: all of them
    assert got == expected  # the members' Patients and every resource of theirs, all types, nothing else
    outsider = next(k for k, p in live.items() if k[0] == "Observation" and p not in members)
    assert outsider not in got
    assert ("Medication", next(i for t, i in live if t == "Medication")) not in got  # in no compartment
    assert got_observations == {k: p for k, p in expected.items() if k[0] == "Observation"}


async def test_a_group_export_of_an_unknown_group_is_refused_at_kickoff(open_sim: OpenSim) -> None:
    async with open_sim("meditech", patients=3, groups=[{"id": "g-all"}]) as client:
        unknown = await client.get(f"{FHIR}/Group/g-none/$export", headers=PREFER)
        kickoffs = (await client.get("/_admin/general/exports")).json()["kickoffs"]
        known = await client.get(f"{FHIR}/Group/g-all/$export", headers=PREFER)
    assert unknown.status_code == 404
    assert unknown.json()["resourceType"] == "OperationOutcome"
    assert unknown.json()["issue"][0]["code"] == "not-found"
    assert kickoffs == []  # no job was started
    assert known.status_code == 202


async def test_a_group_export_since_holds_the_members_changes_and_deletions_only(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    members = {"pat-1", "pat-2"}
    groups = [{"id": "g-two", "members": sorted(members)}]
    async with open_sim("generic", patients=6, groups=groups) as client:
        before = (await client.get("/_admin/general/truth?content=true")).json()["resources"]
        observations = [
            (r["id"], _subject(r["content"])) for r in before if r["resourceType"] == "Observation"
        ]
        mine = [i for i, p in observations if p in members]
        theirs = [i for i, p in observations if p not in members]
        assert len(mine) >= 3
        assert len(theirs) >= 2
        clock.advance(60)
        since = format_instant(int(clock.now * 1000))
        clock.advance(1)

        async def change(id_: str, *, delete: bool) -> None:
            response = await client.post(
                "/_admin/general/change", json={"type": "Observation", "id": id_, "delete": delete}
            )
            assert response.status_code == 200, response.text

        await change(mine[0], delete=True)  # a member's deletion
        await change(theirs[0], delete=True)  # a non-member's deletion
        for id_ in (mine[1], theirs[1]):  # changed since: deleted, then made again
            await change(id_, delete=True)
            await change(id_, delete=False)
        manifest = await _export(client, f"{FHIR}/Group/g-two/$export?_since={since}")
        got = await _exported(client, manifest)
        deleted = await _deleted(client, manifest)
        everyone = await _export(client, f"{FHIR}/$export?_since={since}")  # the system level, for contrast
        all_changed = await _exported(client, everyone)
    assert got == {("Observation", mine[1]): next(p for i, p in observations if i == mine[1])}
    assert ("Observation", mine[2]) not in got  # a member's, unchanged since: _since still applies
    assert deleted == {("Observation", mine[0])}
    assert {("Observation", mine[1]), ("Observation", theirs[1])} == set(all_changed)


# -- lagging replica -------------------------------------------------------------------------------------


async def _lagging(
    client: httpx.AsyncClient, clock: FakeClock, *, created_type: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replica lag of 30 s, then changes: an Observation updated, and a resource (of ``created_type``)
    created after that update (as ground truth lists them)."""
    await client.post("/_admin/general/faults", json={"replica_lag_s": 30})
    await _changes(client, clock, 60)
    truth = await _truth(client)
    updated = next(
        r for r in truth if r["resourceType"] == "Observation" and not r["deleted"] and r["versionId"] != "1"
    )
    created = next(
        r
        for r in truth
        if r["versionId"] == "1"
        and r["lastUpdated"] > updated["lastUpdated"]
        and created_type in (None, r["resourceType"])
    )
    return updated, created


async def test_a_lagging_replica_serves_the_older_version_until_it_catches_up(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    async with open_sim("generic", patients=10) as client:
        updated, created = await _lagging(client, clock)
        behind = await client.get(f"{FHIR}/Observation/{updated['id']}")
        not_yet = await client.get(f"{FHIR}/{created['resourceType']}/{created['id']}")
        clock.advance(31)
        caught_up = await client.get(f"{FHIR}/Observation/{updated['id']}")
        state = (await client.get("/_admin/general/faults")).json()
    assert behind.status_code == 200
    assert int(behind.json()["meta"]["versionId"]) < int(updated["versionId"])
    assert not_yet.status_code == 404
    assert caught_up.json()["meta"]["versionId"] == updated["versionId"]
    assert state["applied"]["replica_lag"] >= 2


async def test_a_lagging_replica_answers_batch_reads_by_id_as_it_answers_reads(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    async with open_sim("generic", patients=10) as client:
        updated, created = await _lagging(client, clock, created_type="Observation")
        ids = f"{updated['id']},{created['id']}"
        behind = (await client.get(f"{FHIR}/Observation", params={"_id": ids})).json()
        clock.advance(31)
        caught_up = (await client.get(f"{FHIR}/Observation", params={"_id": ids})).json()

    def versions(bundle: dict[str, Any]) -> dict[str, str]:
        return {e["resource"]["id"]: e["resource"]["meta"]["versionId"] for e in bundle.get("entry", [])}

    assert created["id"] not in versions(behind)  # created since: not on the replica yet
    assert int(versions(behind)[updated["id"]]) < int(updated["versionId"])
    assert versions(caught_up) == {updated["id"]: updated["versionId"], created["id"]: created["versionId"]}
