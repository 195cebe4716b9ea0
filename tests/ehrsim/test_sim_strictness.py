"""ehrsim refuses what the vendors refuse (EHR-FACTS §6-7), so green tests cannot rest on leniency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ehrsim.instants import date_range
from ehrsim.server import create_app
from tests.ehrsim.simclient import follow_pages

if TYPE_CHECKING:
    from tests.ehrsim.conftest import Assertions, FakeClock, Form, MakeConfig, OpenSim, Run

pytestmark = pytest.mark.anyio
FHIR = "/general/fhir"


@pytest.fixture
def open_sim(
    make_config: MakeConfig, clock: FakeClock, assertion: Assertions, form: Form, run: Run
) -> OpenSim:
    @asynccontextmanager
    async def open_(profile: str, **facility: Any) -> AsyncIterator[httpx.AsyncClient]:
        overrides = {"token_flaky_400_rate": 0} if profile == "epic" else {}
        config = make_config(profile=profile, profile_overrides=overrides, **facility)
        async with run(create_app(config, clock=clock)) as client:
            response = await client.post("/general/oauth2/token", data=form(assertion()))
            client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
            yield client

    return open_


async def _matches(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    bundles = await follow_pages(client, url)
    return [e["resource"] for b in bundles for e in b.get("entry", []) if e["search"]["mode"] == "match"]


async def _truth(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = (await client.get("/_admin/general/truth")).json()["resources"]
    return resources


def _issue(response: httpx.Response) -> str:
    return str(response.json()["issue"][0]["code"])


# -- patient-scoped clinical searches -----------------------------------------------------------------


@pytest.mark.parametrize("profile", ["oracle", "athena"])
async def test_clinical_searches_without_patient_are_refused(open_sim: OpenSim, profile: str) -> None:
    async with open_sim(profile) as client:
        patient = (await _matches(client, f"{FHIR}/Patient"))[0]["id"]
        alone = await client.get(f"{FHIR}/Observation")
        scoped = await client.get(f"{FHIR}/Observation?patient={patient}")
        by_id = await client.get(f"{FHIR}/Observation?_id=obs-1,a-1.obs-1")
        patients = await client.get(f"{FHIR}/Patient")
    assert alone.status_code == 400
    assert _issue(alone) == "required"
    assert "4111" not in alone.text  # Epic's numbers are Epic's
    assert (scoped.status_code, by_id.status_code, patients.status_code) == (200, 200, 200)


@pytest.mark.parametrize(("profile", "allowed"), [("oracle", False), ("athena", False), ("hapi", True)])
async def test_patient_last_updated_only_where_documented(
    open_sim: OpenSim, profile: str, allowed: bool
) -> None:
    async with open_sim(profile) as client:
        response = await client.get(f"{FHIR}/Patient?_lastUpdated=ge2020-01-01")
    assert (response.status_code == 200) is allowed


async def test_oracle_last_updated_is_not_combined_with_a_date(open_sim: OpenSim) -> None:
    async with open_sim("oracle") as client:
        response = await client.get(
            f"{FHIR}/Observation?patient=pat-1&_lastUpdated=ge2020-01-01&date=ge2020-01-01"
        )
    assert response.status_code == 400


# -- Epic --------------------------------------------------------------------------------------------------


async def test_epic_patient_search_past_100_results_is_4127(open_sim: OpenSim) -> None:
    async with open_sim("epic", patients=101) as client:
        too_many = await client.get(f"{FHIR}/Patient")
    async with open_sim("epic", patients=100) as client:
        enough = await client.get(f"{FHIR}/Patient")
    assert too_many.status_code == 400
    assert too_many.json()["issue"][0]["details"]["coding"][0]["code"] == "4127"
    assert enough.status_code == 200


@pytest.mark.parametrize(
    ("resource_type", "param", "element"),
    [
        ("Observation", "issued", "issued"),
        ("Observation", "date", "effectiveDateTime"),
        ("Condition", "recorded-date", "recordedDate"),
        ("Condition", "onset-date", "onsetDateTime"),
        ("MedicationRequest", "authoredon", "authoredOn"),
        ("AllergyIntolerance", "date", "recordedDate"),
        ("DocumentReference", "date", "date"),
    ],
)
async def test_epic_searches_each_types_created_date(
    open_sim: OpenSim, resource_type: str, param: str, element: str
) -> None:
    async with open_sim("epic", patients=30) as client:
        patients = [p["id"] for p in await _matches(client, f"{FHIR}/Patient")]
        every = [r for p in patients for r in await _matches(client, f"{FHIR}/{resource_type}?patient={p}")]
        dated = sorted(date_range(r[element])[0] for r in every if element in r)
        cut = dated[len(dated) // 2] // 1000 * 1000  # whole seconds: the query below has no millis
        since = datetime.fromtimestamp(cut / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        found = [
            r
            for p in patients
            for r in await _matches(client, f"{FHIR}/{resource_type}?patient={p}&{param}=ge{since}")
        ]
    expected = {r["id"] for r in every if element in r and date_range(r[element])[0] >= cut}
    assert 0 < len(expected) < len(every)
    assert {r["id"] for r in found} == expected


async def test_epic_mrn_is_typed_by_text_in_a_per_customer_oid(open_sim: OpenSim) -> None:
    async with open_sim("epic") as client:
        identifier = (await client.get(f"{FHIR}/Patient/pat-1")).json()["identifier"][0]
    assert identifier["type"] == {"text": "EPI"}
    assert identifier["system"].startswith("urn:oid:1.2.840.114350.")


# -- Oracle: only clinically significant edits move _lastUpdated ------------------------------------------


async def test_oracle_minor_edits_make_a_version_without_moving_last_updated(
    open_sim: OpenSim, clock: FakeClock
) -> None:
    async with open_sim("oracle", patients=10) as client:
        before = {(r["resourceType"], r["id"]): r for r in await _truth(client)}
        clock.advance(60)
        await client.post("/_admin/general/activity", json={"changes": 200})
        after = await _truth(client)
        minor = [
            r
            for r in after
            if (key := (r["resourceType"], r["id"])) in before
            and r["resourceType"] not in ("Patient", "Medication")  # no _lastUpdated to look through
            and not r["deleted"]
            and r["versionId"] != before[key]["versionId"]
            and r["lastUpdated"] == before[key]["lastUpdated"]
        ]
        assert minor
        edited = minor[0]
        body = (await client.get(f"{FHIR}/{edited['resourceType']}/{edited['id']}")).json()
        patient = body.get("subject", body.get("patient", {}))["reference"].removeprefix("Patient/")
        since = f"gt{before[(edited['resourceType'], edited['id'])]['lastUpdated']}"
        changed = await _matches(
            client, f"{FHIR}/{edited['resourceType']}?patient={patient}&_lastUpdated={since}"
        )
    assert body["meta"]["versionId"] == edited["versionId"]
    assert body["meta"]["lastUpdated"] == edited["lastUpdated"]
    assert edited["id"] not in {r["id"] for r in changed}
