"""Each vendor profile's search, paging, auth and data shapes, as EHR-FACTS.md §4-7 documents them."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ehrsim.server import create_app
from tests.ehrsim.simclient import follow_pages

if TYPE_CHECKING:
    from tests.ehrsim.conftest import Assertions, FakeClock, Form, MakeConfig, OpenSim, Run

pytestmark = pytest.mark.anyio
TOKEN_URL = "/general/oauth2/token"
FHIR = "/general/fhir"


@pytest.fixture
def open_sim(
    make_config: MakeConfig, clock: FakeClock, assertion: Assertions, form: Form, run: Run
) -> OpenSim:
    """``async with open_sim("epic", patients=10) as client``: a logged-in client of one facility."""

    @asynccontextmanager
    async def open_(profile: str, *, login: bool = True, **facility: Any) -> AsyncIterator[httpx.AsyncClient]:
        overrides = facility.pop("profile_overrides", {})
        if profile == "epic":
            overrides = {"token_flaky_400_rate": 0, **overrides}
        config = make_config(profile=profile, profile_overrides=overrides, **facility)
        async with run(create_app(config, clock=clock)) as client:
            if login:
                response = await client.post(TOKEN_URL, data=form(assertion()))
                assert response.status_code == 200, response.text
                client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
            yield client

    return open_


async def _pages(client: httpx.AsyncClient, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every match, and every bundle."""
    bundles = await follow_pages(client, url)
    matches = [e["resource"] for b in bundles for e in b.get("entry", []) if e["search"]["mode"] == "match"]
    return matches, bundles


async def _by_patient(
    client: httpx.AsyncClient, resource_type: str, count: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every match of a clinical type, searched patient by patient (Epic, Oracle and athena refuse a
    clinical search without ``patient``), and every bundle."""
    patients, _ = await _pages(client, f"{FHIR}/Patient?_count=100")
    matches: list[dict[str, Any]] = []
    bundles: list[dict[str, Any]] = []
    for patient in patients:
        found, pages = await _pages(client, f"{FHIR}/{resource_type}?patient={patient['id']}&_count={count}")
        matches += found
        bundles += pages
    return matches, bundles


async def _live(client: httpx.AsyncClient, resource_type: str) -> set[str]:
    truth = (await client.get("/_admin/general/truth")).json()["resources"]
    return {r["id"] for r in truth if r["resourceType"] == resource_type and not r["deleted"]}


def _code(response: httpx.Response) -> str:
    return str(response.json()["issue"][0]["details"]["coding"][0]["code"])


# -- Epic ------------------------------------------------------------------------------------------------


async def test_epic_resources_have_no_meta(open_sim: OpenSim) -> None:
    async with open_sim("epic") as client:
        response = await client.get(f"{FHIR}/Patient/pat-1")
    assert response.status_code == 200
    assert "meta" not in response.json()
    assert "etag" not in response.headers


async def test_epic_truth_says_it_serves_no_versions_and_gives_the_content_as_served(
    open_sim: OpenSim,
) -> None:
    async with open_sim("epic") as client:
        served = (await client.get(f"{FHIR}/Patient/pat-1")).json()
        plain = (await client.get("/_admin/general/truth")).json()["resources"]
        full = (await client.get("/_admin/general/truth?content=true")).json()["resources"]
    assert {r["versioned"] for r in plain} == {False}
    assert not any("content" in r for r in plain)
    patient = next(r for r in full if (r["resourceType"], r["id"]) == ("Patient", "pat-1"))
    assert patient["content"] == served
    assert all("content" not in r for r in full if r["deleted"])


async def test_epic_identifier_values_are_padded(open_sim: OpenSim) -> None:
    async with open_sim("epic") as client:
        patient = (await client.get(f"{FHIR}/Patient/pat-1")).json()
    value = patient["identifier"][0]["value"]
    assert value != value.strip()
    assert value.strip() == "M0000001"


async def test_epic_official_and_usual_names_are_identical(open_sim: OpenSim) -> None:
    async with open_sim("epic") as client:
        names = (await client.get(f"{FHIR}/Patient/pat-1")).json()["name"]
    assert [n["use"] for n in names] == ["official", "usual"]
    assert {k: v for k, v in names[0].items() if k != "use"} == {
        k: v for k, v in names[1].items() if k != "use"
    }


async def test_epic_clinical_search_without_patient_is_4111(open_sim: OpenSim) -> None:
    async with open_sim("epic") as client:
        response = await client.get(f"{FHIR}/Observation")
    assert response.status_code == 400
    assert _code(response) == "4111"


async def test_epic_search_with_two_patients_is_4112(open_sim: OpenSim) -> None:
    async with open_sim("epic") as client:
        response = await client.get(f"{FHIR}/Observation?patient=pat-1,pat-2")
    assert response.status_code == 400
    assert _code(response) == "4112"


async def test_epic_bundles_carry_outcome_entries(open_sim: OpenSim) -> None:
    async with open_sim("epic") as client:
        found = (await client.get(f"{FHIR}/Observation?patient=pat-1")).json()
        empty = (await client.get(f"{FHIR}/Observation?patient=nobody")).json()
    modes = [e["search"]["mode"] for e in found["entry"]]
    assert "match" in modes
    assert modes[-1] == "outcome"
    assert found["entry"][-1]["resource"]["resourceType"] == "OperationOutcome"
    assert [e["search"]["mode"] for e in empty["entry"]] == ["outcome"]
    assert empty["entry"][0]["resource"]["issue"][0]["details"]["coding"][0]["code"] == "4101"


async def test_epic_paging_session_expires_with_4113(open_sim: OpenSim, clock: FakeClock) -> None:
    async with open_sim("epic", patients=3, token_lifetime_s=3600) as client:
        first = (await client.get(f"{FHIR}/Observation?patient=pat-1&_count=1")).json()
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        assert "session=" in next_url
        clock.advance(601)
        response = await client.get(next_url)
    assert response.status_code == 400
    assert _code(response) == "4113"


async def test_epic_last_updated_only_on_document_reference_and_spelled_as_epic_does(
    open_sim: OpenSim,
) -> None:
    async with open_sim("epic") as client:
        observation = await client.get(f"{FHIR}/Observation?patient=pat-1&_lastupdated=ge2020-01-01")
        document = await client.get(f"{FHIR}/DocumentReference?patient=pat-1&_lastupdated=ge2020-01-01")
        camel = await client.get(f"{FHIR}/DocumentReference?patient=pat-1&_lastUpdated=ge2020-01-01")
    assert observation.status_code == 400
    assert document.status_code == 200
    assert camel.status_code == 400


async def test_epic_token_endpoint_sometimes_answers_a_bare_400(
    open_sim: OpenSim, assertion: Assertions, form: Form
) -> None:
    async with open_sim("epic", login=False, profile_overrides={"token_flaky_400_rate": 1.0}) as client:
        response = await client.post(TOKEN_URL, data=form(assertion()))
    assert response.status_code == 400
    assert response.content == b""


async def test_epic_medication_requests_reference_a_medication(open_sim: OpenSim) -> None:
    async with open_sim("epic", patients=20) as client:
        requests = [
            r
            for p in range(1, 21)
            for r in (await _pages(client, f"{FHIR}/MedicationRequest?patient=pat-{p}"))[0]
        ]
        assert requests
        for request in requests:
            reference = request["medicationReference"]["reference"]
            assert reference.startswith("Medication/")
            assert (await client.get(f"{FHIR}/{reference}")).status_code == 200


# -- Oracle Health ------------------------------------------------------------------------------------------


async def test_oracle_last_updated_requires_patient(open_sim: OpenSim) -> None:
    async with open_sim("oracle") as client:
        alone = await client.get(f"{FHIR}/Observation?_lastUpdated=ge2020-01-01")
        scoped = await client.get(f"{FHIR}/Observation?patient=pat-1&_lastUpdated=ge2020-01-01")
    assert alone.status_code == 400
    assert alone.json()["resourceType"] == "OperationOutcome"
    assert scoped.status_code == 200
    assert scoped.json()["total"] > 0


async def test_oracle_pages_with_an_opaque_page_context(open_sim: OpenSim) -> None:
    async with open_sim("oracle", patients=10) as client:
        matches, bundles = await _by_patient(client, "Observation", 1)
        live = await _live(client, "Observation")
    assert any("-pageContext=" in link["url"] for b in bundles for link in b["link"][1:])
    assert {m["id"] for m in matches} == live


async def test_oracle_observation_count_is_capped_at_200(open_sim: OpenSim) -> None:
    async with open_sim("oracle", patients=80) as client:
        ids = sorted(await _live(client, "Observation"))
        bundle = (await client.get(f"{FHIR}/Observation?_id={','.join(ids)}&_count=500")).json()
    assert len(ids) > 200
    assert len(bundle["entry"]) == 200


async def test_oracle_returns_unpaired_blood_pressure_readings(open_sim: OpenSim) -> None:
    async with open_sim("oracle", patients=40) as client:
        observations, _ = await _by_patient(client, "Observation", 200)
    codes = [o["code"]["coding"][0]["code"] for o in observations]
    assert "85354-9" in codes  # paired readings: the panel
    systolic = [o for o in observations if o["code"]["coding"][0]["code"] == "8480-6"]
    assert systolic
    for reading in systolic:
        assert "component" not in reading
        partners = [
            o
            for o in observations
            if o["code"]["coding"][0]["code"] == "8462-4"
            and o["subject"] == reading["subject"]
            and o["effectiveDateTime"] == reading["effectiveDateTime"]
        ]
        assert partners


async def test_oracle_usual_name_has_the_given_name_only(open_sim: OpenSim) -> None:
    async with open_sim("oracle") as client:
        names = (await client.get(f"{FHIR}/Patient/pat-1")).json()["name"]
    usual = next(n for n in names if n["use"] == "usual")
    assert "family" not in usual
    assert usual["given"]


async def test_oracle_medications_are_codeable_concepts_or_contained(open_sim: OpenSim) -> None:
    async with open_sim("oracle", patients=30) as client:
        requests, _ = await _by_patient(client, "MedicationRequest", 200)
    shapes = {
        "contained"
        if "contained" in r
        else "codeable-concept"
        if "medicationCodeableConcept" in r
        else "other"
        for r in requests
    }
    assert shapes == {"contained", "codeable-concept"}
    for request in requests:
        if "contained" in request:
            assert request["medicationReference"]["reference"] == f"#{request['contained'][0]['id']}"


async def test_oracle_tokens_last_570_seconds_then_get_invalid_token(
    open_sim: OpenSim, clock: FakeClock, assertion: Assertions, form: Form
) -> None:
    async with open_sim("oracle", login=False, token_lifetime_s=None) as client:
        answer = (await client.post(TOKEN_URL, data=form(assertion()))).json()
        headers = {"Authorization": f"Bearer {answer['access_token']}"}
        assert (await client.get(f"{FHIR}/Patient/pat-1", headers=headers)).status_code == 200
        clock.advance(571)
        response = await client.get(f"{FHIR}/Patient/pat-1", headers=headers)
    assert answer["expires_in"] == 570
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert (
        'error_description="Token has expired or signature is invalid"'
        in response.headers["www-authenticate"]
    )
    assert response.json()["issue"][0]["code"] == "login"


SECRET_CLIENT = [{"client_id": "backend", "client_secret": "s3cret", "scopes": ["system/*.read"]}]


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def test_oracle_accepts_a_client_secret_with_basic_auth(open_sim: OpenSim) -> None:
    async with open_sim("oracle", login=False, clients=SECRET_CLIENT) as client:
        good = await client.post(
            TOKEN_URL, data={"grant_type": "client_credentials"}, headers=_basic("backend", "s3cret")
        )
        bad = await client.post(
            TOKEN_URL, data={"grant_type": "client_credentials"}, headers=_basic("backend", "nope")
        )
        post = await client.post(
            TOKEN_URL,
            data={"grant_type": "client_credentials", "client_id": "backend", "client_secret": "s3cret"},
        )
    assert good.status_code == 200, good.text
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client"
    assert post.status_code == 401  # Oracle: Basic only


async def test_medplum_accepts_a_client_secret_in_the_form(open_sim: OpenSim) -> None:
    async with open_sim("medplum", login=False, clients=SECRET_CLIENT, token_lifetime_s=None) as client:
        response = await client.post(
            TOKEN_URL,
            data={"grant_type": "client_credentials", "client_id": "backend", "client_secret": "s3cret"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 3600


async def test_generic_refuses_client_secrets(open_sim: OpenSim) -> None:
    async with open_sim("generic", login=False, clients=SECRET_CLIENT) as client:
        response = await client.post(
            TOKEN_URL, data={"grant_type": "client_credentials"}, headers=_basic("backend", "s3cret")
        )
    assert response.status_code == 401


# -- athenahealth -----------------------------------------------------------------------------------------


async def test_athena_last_updated_has_day_precision(open_sim: OpenSim) -> None:
    async with open_sim("athena") as client:
        instant = await client.get(
            f"{FHIR}/Observation?patient=a-1.pat-1&_lastUpdated=ge2020-01-01T00:00:00Z"
        )
        day = await client.get(f"{FHIR}/Observation?patient=a-1.pat-1&_lastUpdated=ge2020-01-01")
        alone = await client.get(f"{FHIR}/Observation?_lastUpdated=ge2020-01-01")
    assert instant.status_code == 400
    assert day.status_code == 200
    assert alone.status_code == 400  # patient-scoped


async def test_athena_ids_are_practice_scoped(open_sim: OpenSim) -> None:
    async with open_sim("athena") as client:
        response = await client.get(f"{FHIR}/Patient/a-1.pat-1")
    assert response.status_code == 200
    assert response.json()["id"] == "a-1.pat-1"


async def test_athena_pages_with_a_cursor(open_sim: OpenSim) -> None:
    async with open_sim("athena", patients=8) as client:
        matches, bundles = await _by_patient(client, "Observation", 1)
        live = await _live(client, "Observation")
    assert any("?cursor=" in link["url"] for b in bundles for link in b["link"][1:])
    assert {m["id"] for m in matches} == live


async def test_athena_token_endpoint_is_rate_limited(
    open_sim: OpenSim, assertion: Assertions, form: Form
) -> None:
    async with open_sim("athena", login=False, profile_overrides={"token_requests_per_min": 2}) as client:
        statuses = [(await client.post(TOKEN_URL, data=form(assertion()))) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["retry-after"]) > 0


async def test_athena_patients_have_nicknames(open_sim: OpenSim) -> None:
    async with open_sim("athena", patients=30) as client:
        patients, _ = await _pages(client, f"{FHIR}/Patient?_count=100")
    assert any(n["use"] == "nickname" for p in patients for n in p["name"])


# -- MEDITECH ---------------------------------------------------------------------------------------------


async def test_meditech_has_no_last_updated(open_sim: OpenSim) -> None:
    async with open_sim("meditech") as client:
        response = await client.get(f"{FHIR}/Observation?patient=pat-1&_lastUpdated=ge2020-01-01")
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "not-supported"


async def test_meditech_pages_with_continue(open_sim: OpenSim) -> None:
    async with open_sim("meditech", patients=8) as client:
        matches, bundles = await _pages(client, f"{FHIR}/Observation?_count=4")
        live = await _live(client, "Observation")
    assert "?continue=" in bundles[0]["link"][1]["url"]
    assert {m["id"] for m in matches} == live


async def test_meditech_group_export_is_asynchronous(open_sim: OpenSim) -> None:
    async with open_sim("meditech", patients=6, groups=[{"id": "all"}]) as client:  # every live patient
        kickoff = await client.get(
            f"{FHIR}/Group/all/$export?_type=Patient,Observation", headers={"Prefer": "respond-async"}
        )
        assert kickoff.status_code == 202
        status_url = kickoff.headers["content-location"]
        polls = []
        while True:
            poll = await client.get(status_url)
            if poll.status_code != 202:
                break
            polls.append(poll)
            assert len(polls) < 10
        assert poll.status_code == 200
        manifest = poll.json()
        files = {o["type"]: (await client.get(o["url"])) for o in manifest["output"]}
        live = await _live(client, "Observation")
    assert polls
    for pending in polls:
        assert "complete" in pending.headers["x-progress"]
        assert int(pending.headers["retry-after"]) > 0
    assert manifest["requiresAccessToken"] is True
    assert set(files) == {"Patient", "Observation"}
    assert files["Observation"].headers["content-type"].startswith("application/fhir+ndjson")
    lines = files["Observation"].text.splitlines()
    assert {line.split('"id":"')[1].split('"')[0] for line in lines} == live


async def test_meditech_runs_one_export_at_a_time(open_sim: OpenSim) -> None:
    async with open_sim("meditech") as client:
        prefer = {"Prefer": "respond-async"}
        first = await client.get(f"{FHIR}/Patient/$export", headers=prefer)
        second = await client.get(f"{FHIR}/Patient/$export", headers=prefer)
        cancelled = await client.delete(first.headers["content-location"])
        third = await client.get(f"{FHIR}/Patient/$export", headers=prefer)
    assert first.status_code == 202
    assert second.status_code == 429
    assert "retry-after" in second.headers
    assert cancelled.status_code == 202
    assert third.status_code == 202


async def test_export_since_limits_the_output_to_later_changes(open_sim: OpenSim, clock: FakeClock) -> None:
    async with open_sim("generic") as client:
        clock.advance(10)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.now - 5))
        await client.post("/_admin/general/activity", json={"changes": 20})
        kickoff = await client.get(f"{FHIR}/$export?_since={since}", headers={"Prefer": "respond-async"})
        while (poll := await client.get(kickoff.headers["content-location"])).status_code == 202:
            pass
        outputs = poll.json()["output"]
    assert 0 < sum(o["count"] for o in outputs) <= 20  # the seeded chart predates _since


async def test_export_requires_prefer_respond_async(open_sim: OpenSim) -> None:
    async with open_sim("meditech") as client:
        response = await client.get(f"{FHIR}/Patient/$export")
    assert response.status_code == 400


# -- HAPI and Medplum -----------------------------------------------------------------------------------


async def test_hapi_next_links_use_getpages_without_a_type(open_sim: OpenSim) -> None:
    async with open_sim("hapi", patients=8) as client:
        matches, bundles = await _pages(client, f"{FHIR}/Observation?_count=3&_lastUpdated=ge2020-01-01")
        live = await _live(client, "Observation")
    next_url = bundles[0]["link"][1]["url"]
    assert next_url.startswith("http://testserver/general/fhir?_getpages=")
    assert {m["id"] for m in matches} == live


async def test_hapi_pages_one_cached_search_by_offset_as_hapi_does(open_sim: OpenSim) -> None:
    async with open_sim("hapi", patients=20) as client:
        matches, bundles = await _pages(client, f"{FHIR}/Observation")
        live = await _live(client, "Observation")
        unknown = await client.get(f"{FHIR}?_getpages=nope&_getpagesoffset=0&_count=20")
    links = [httpx.URL(link["url"]) for b in bundles for link in b["link"] if link["relation"] == "next"]
    assert len({u.params["_getpages"] for u in links}) == 1  # one search id, held by the server
    assert [int(u.params["_getpagesoffset"]) for u in links] == [20 * n for n in range(1, len(links) + 1)]
    assert all(u.params["_count"] == "20" for u in links)  # HAPI's default page size
    assert len(bundles[0]["entry"]) == 20
    assert sorted(m["id"] for m in matches) == sorted(live)
    assert unknown.status_code == 410


async def test_hapi_getpages_of_an_expired_search_answer_410(open_sim: OpenSim, clock: FakeClock) -> None:
    async with open_sim("hapi", patients=3, token_lifetime_s=7200) as client:
        first = (await client.get(f"{FHIR}/Observation?_count=1")).json()
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        clock.advance(3601)
        response = await client.get(next_url)
    assert response.status_code == 410


async def test_expire_paging_sessions_fault_ends_every_open_session(open_sim: OpenSim) -> None:
    async with open_sim("epic", patients=3) as client:
        first = (await client.get(f"{FHIR}/Observation?patient=pat-1&_count=1")).json()
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        await client.post("/_admin/general/faults", json={"actions": ["expire-paging-sessions"]})
        expired = await client.get(next_url)
        again = (await client.get(f"{FHIR}/Observation?patient=pat-1&_count=1")).json()
        fresh = await client.get(next(link["url"] for link in again["link"] if link["relation"] == "next"))
    assert expired.status_code == 400
    assert _code(expired) == "4113"
    assert fresh.status_code == 200


async def test_medplum_version_ids_are_uuids(open_sim: OpenSim) -> None:
    async with open_sim("medplum") as client:
        resource = (await client.get(f"{FHIR}/Patient/pat-1")).json()
        truth = (await client.get("/_admin/general/truth")).json()["resources"]
    version_id = resource["meta"]["versionId"]
    uuid.UUID(version_id)
    assert (
        next(r for r in truth if r["id"] == "pat-1" and r["resourceType"] == "Patient")["versionId"]
        == version_id
    )


# -- auth with a JWKS URL ----------------------------------------------------------------------------------


async def test_es384_assertion_verified_against_a_jwks_url(
    make_config: MakeConfig, clock: FakeClock, run: Run
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k-2026", "use": "sig"}
    fetched: list[str] = []

    def jwks(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(200, json={"keys": [jwk]})

    config = make_config(
        profile="epic",
        profile_overrides={"token_flaky_400_rate": 0},
        clients=[{"client_id": "app", "jwks_url": "https://keys.example/jwks.json"}],
    )
    claims = {"iss": "app", "sub": "app", "aud": f"http://testserver{TOKEN_URL}", "exp": int(clock() + 60)}
    async with run(create_app(config, clock=clock, webhook_transport=httpx.MockTransport(jwks))) as client:
        answers = []
        for kid in ("k-2026", "unknown"):
            assertion = jwt.encode(
                {**claims, "jti": str(uuid.uuid4())},
                key,
                algorithm="ES384",
                headers={"kid": kid, "typ": "JWT"},
            )
            answers.append(
                await client.post(
                    TOKEN_URL,
                    data={
                        "grant_type": "client_credentials",
                        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        "client_assertion": assertion,
                    },
                )
            )
    assert answers[0].status_code == 200, answers[0].text
    assert answers[1].status_code == 401
    assert fetched[0] == "https://keys.example/jwks.json"


# -- data realism -------------------------------------------------------------------------------------------


async def test_labs_come_with_and_without_ucum_codes(open_sim: OpenSim) -> None:
    async with open_sim("athena", patients=60) as client:
        observations, _ = await _by_patient(client, "Observation", 500)
    labs = [o for o in observations if o["category"][0]["coding"][0]["code"] == "laboratory"]
    assert any(o["valueQuantity"].get("system") == "http://unitsofmeasure.org" for o in labs)
    assert any("code" not in o["valueQuantity"] and o["valueQuantity"]["unit"] for o in labs)


async def test_rich_profiles_have_encounters_allergies_and_documents(open_sim: OpenSim) -> None:
    async with open_sim("hapi", patients=20) as client:
        counts = {
            t: len(await _live(client, t)) for t in ("Encounter", "AllergyIntolerance", "DocumentReference")
        }
    assert all(counts.values()), counts


# -- CapabilityStatement and SMART configuration ----------------------------------------------------------


def _params_of(statement: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    resource = next(r for r in statement["rest"][0]["resource"] if r["type"] == resource_type)
    return {p["name"]: p for p in resource.get("searchParam", [])}


async def _statements(open_sim: OpenSim, **facility: Any) -> dict[str, dict[str, Any]]:
    statements = {}
    for profile in ("generic", "epic", "oracle", "athena", "meditech", "medplum", "hapi"):
        async with open_sim(profile, login=False, **facility) as client:
            statements[profile] = (await client.get(f"{FHIR}/metadata")).json()
    return statements


def _resource(statement: dict[str, Any], resource_type: str) -> dict[str, Any] | None:
    return next((r for r in statement["rest"][0]["resource"] if r["type"] == resource_type), None)


async def test_capability_statements_tell_the_truth(open_sim: OpenSim) -> None:
    statements = await _statements(open_sim)
    types = {p: {r["type"] for r in s["rest"][0]["resource"]} for p, s in statements.items()}
    assert "_lastupdated" not in _params_of(statements["epic"], "Observation")
    assert "_lastupdated" in _params_of(statements["epic"], "DocumentReference")
    assert _params_of(statements["epic"], "Observation")["patient"]["extension"][0]["valueBoolean"] is True
    for vendor in ("oracle", "athena"):
        assert _params_of(statements[vendor], "Observation")["patient"]["extension"][0]["valueBoolean"]
        assert "_lastUpdated" not in _params_of(statements[vendor], "Patient")
    assert "patient" in _params_of(statements["oracle"], "Observation")["_lastUpdated"]["documentation"]
    assert "day precision" in _params_of(statements["athena"], "Observation")["_lastUpdated"]["documentation"]
    assert "_lastUpdated" not in _params_of(statements["meditech"], "Observation")
    assert "_lastUpdated" in _params_of(statements["hapi"], "Observation")
    assert {"issued", "date"} <= set(_params_of(statements["epic"], "Observation"))
    assert {"recorded-date", "onset-date"} <= set(_params_of(statements["epic"], "Condition"))
    assert "authoredon" in _params_of(statements["epic"], "MedicationRequest")
    assert "Group" in types["meditech"]
    assert "Group" not in types["epic"]


async def test_capability_statements_name_the_vendors_software(open_sim: OpenSim) -> None:
    statements = await _statements(open_sim)
    names = {p: s["software"]["name"] for p, s in statements.items()}
    assert len(set(names.values())) == len(names)
    assert names["hapi"] == "HAPI FHIR Server"
    assert names["epic"] == "Epic"


async def test_subscription_is_advertised_and_served_only_where_the_vendor_has_it(
    open_sim: OpenSim,
) -> None:
    webhook = {"url": "http://127.0.0.1:9/hooks"}  # even with a configured feed
    statements = await _statements(open_sim, webhook=webhook)
    for vendor in ("epic", "oracle", "meditech"):
        assert _resource(statements[vendor], "Subscription") is None, vendor
        async with open_sim(vendor, webhook=webhook, profile_overrides={}) as client:
            assert (await client.get(f"{FHIR}/Subscription")).status_code == 404
    for vendor in ("generic", "athena", "medplum", "hapi"):
        assert _resource(statements[vendor], "Subscription") is not None, vendor


async def test_events_operation_only_where_the_vendor_has_it(open_sim: OpenSim) -> None:
    statements = await _statements(open_sim)
    operations = {
        p: {o["name"]: o["definition"] for o in (_resource(s, "Subscription") or {}).get("operation", [])}
        for p, s in statements.items()
    }
    assert operations["generic"]["events"].endswith("/backport-subscription-events")
    assert operations["generic"]["status"].endswith("/backport-subscription-status")
    assert "events" not in operations["medplum"] | operations["hapi"] | operations["athena"]


async def test_export_is_advertised_per_level_with_its_own_definition(open_sim: OpenSim) -> None:
    statements = await _statements(open_sim)
    bulk = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
    system = statements["generic"]["rest"][0]["operation"]
    assert system == [{"name": "export", "definition": f"{bulk}/export"}]
    patient = _resource(statements["meditech"], "Patient") or {}
    group = _resource(statements["meditech"], "Group") or {}
    assert patient["operation"] == [{"name": "export", "definition": f"{bulk}/patient-export"}]
    assert group["operation"] == [{"name": "export", "definition": f"{bulk}/group-export"}]
    assert "operation" not in statements["meditech"]["rest"][0]  # no system-level export
    async with open_sim("meditech") as client:
        refused = await client.get(f"{FHIR}/$export", headers={"Prefer": "respond-async"})
    assert refused.status_code == 404


async def test_smart_configuration_lists_the_profiles_auth_methods(open_sim: OpenSim) -> None:
    async with open_sim("oracle", login=False) as client:
        oracle = (await client.get(f"{FHIR}/.well-known/smart-configuration")).json()
    async with open_sim("generic", login=False) as client:
        generic = (await client.get(f"{FHIR}/.well-known/smart-configuration")).json()
    assert set(oracle["token_endpoint_auth_methods_supported"]) == {"private_key_jwt", "client_secret_basic"}
    assert generic["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]


async def test_groups_are_read_and_searched_where_the_profile_serves_them(open_sim: OpenSim) -> None:
    groups = [{"id": "g-all"}, {"id": "g-two", "members": ["pat-1", "pat-2"]}]
    async with open_sim("generic", patients=3, groups=groups) as client:
        every = (await client.get(f"{FHIR}/Group/g-all")).json()
        two = await client.get(f"{FHIR}/Group/g-two")
        missing = await client.get(f"{FHIR}/Group/g-none")
        search = (await client.get(f"{FHIR}/Group?_id=g-two")).json()
        refused = await client.get(f"{FHIR}/Group?name=x")
        await client.post("/_admin/general/groups", json={"id": "g-two", "members": ["pat-3"]})
        changed = (await client.get(f"{FHIR}/Group/g-two")).json()
        statement = (await client.get(f"{FHIR}/metadata")).json()
        live = await _live(client, "Patient")
    assert {m["entity"]["reference"] for m in every["member"]} == {f"Patient/{p}" for p in live}
    assert two.status_code == 200
    assert [m["entity"]["reference"] for m in two.json()["member"]] == ["Patient/pat-1", "Patient/pat-2"]
    assert two.json()["quantity"] == 2
    assert missing.status_code == 404
    assert [e["resource"]["id"] for e in search["entry"]] == ["g-two"]
    assert refused.status_code == 400
    assert [m["entity"]["reference"] for m in changed["member"]] == ["Patient/pat-3"]
    assert changed["meta"]["versionId"] == "2"
    group = _resource(statement, "Group")
    assert group is not None
    assert {i["code"] for i in group["interaction"]} == {"read", "search-type"}


@pytest.mark.parametrize("profile", ["epic", "oracle", "meditech", "athena"])
async def test_groups_are_no_readable_type_where_the_vendor_is_not_known_to_serve_them(
    open_sim: OpenSim, profile: str
) -> None:
    async with open_sim(profile, patients=2, groups=[{"id": "g-all"}]) as client:
        read = await client.get(f"{FHIR}/Group/g-all")
        search = await client.get(f"{FHIR}/Group")
        statement = (await client.get(f"{FHIR}/metadata")).json()
    assert read.status_code == 404
    assert read.json()["issue"][0]["code"] == "not-supported"
    assert search.status_code == 404
    group = _resource(statement, "Group")
    assert group is None or group["interaction"] == []
