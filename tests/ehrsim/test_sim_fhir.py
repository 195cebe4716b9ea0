from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.ehrsim.simclient import follow_pages

pytestmark = pytest.mark.anyio
INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


async def _truth(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = (await client.get("/_admin/general/truth")).json()["resources"]
    return resources


async def _live(client: httpx.AsyncClient, resource_type: str) -> list[dict[str, Any]]:
    resources = [r for r in await _truth(client) if r["resourceType"] == resource_type and not r["deleted"]]
    return sorted(resources, key=lambda r: r["lastUpdated"])


async def _all_pages(client: httpx.AsyncClient, url: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The ids in order, and every bundle."""
    bundles = await follow_pages(client, url)
    return [e["resource"]["id"] for b in bundles for e in b.get("entry", [])], bundles


async def test_metadata_is_an_r4_capability_statement_without_auth(sim: httpx.AsyncClient) -> None:
    response = await sim.get("/general/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in body["rest"][0]["resource"]}
    assert set(resources) == {"Patient", "Observation", "Condition", "Subscription", "Group"}
    for resource in (resources[t] for t in ("Patient", "Observation", "Condition")):
        assert {i["code"] for i in resource["interaction"]} == {"read", "search-type"}
        assert "_lastUpdated" in {p["name"] for p in resource["searchParam"]}


async def test_read_returns_the_current_version_with_meta(authed: httpx.AsyncClient) -> None:
    response = await authed.get("/general/fhir/Observation/obs-1")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "Observation"
    assert body["id"] == "obs-1"
    assert body["meta"]["versionId"] == "1"
    assert INSTANT.fullmatch(body["meta"]["lastUpdated"])
    assert body["subject"]["reference"].startswith("Patient/pat-")
    assert body["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert response.headers["etag"] == 'W/"1"'


async def test_read_of_an_unknown_resource_is_404(authed: httpx.AsyncClient) -> None:
    response = await authed.get("/general/fhir/Observation/nope")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_read_of_a_deleted_resource_is_410(authed: httpx.AsyncClient) -> None:
    await authed.post("/_admin/general/activity", json={"changes": 60})
    deleted = [r for r in await _truth(authed) if r["deleted"]]
    assert deleted
    response = await authed.get(f"/general/fhir/{deleted[0]['resourceType']}/{deleted[0]['id']}")
    assert response.status_code == 410
    assert response.json()["issue"][0]["code"] == "deleted"


async def test_every_change_has_a_distinct_last_updated(authed: httpx.AsyncClient) -> None:
    await authed.post("/_admin/general/activity", json={"changes": 100})
    stamps = [r["lastUpdated"] for r in await _truth(authed)]
    assert len(stamps) == len(set(stamps))


async def test_paging_through_next_links_returns_every_live_resource_once(authed: httpx.AsyncClient) -> None:
    await authed.post("/_admin/general/activity", json={"changes": 80})
    live = await _live(authed, "Observation")
    ids, bundles = await _all_pages(authed, "/general/fhir/Observation?_count=3&_sort=_lastUpdated")
    assert ids == [r["id"] for r in live]
    assert len(bundles) == -(-len(live) // 3)
    assert {b["total"] for b in bundles} == {len(live)}
    entry = bundles[0]["entry"][0]
    assert entry["fullUrl"] == f"http://testserver/general/fhir/Observation/{entry['resource']['id']}"
    assert entry["search"] == {"mode": "match"}
    assert bundles[0]["type"] == "searchset"


async def test_last_updated_gt_returns_only_later_changes(authed: httpx.AsyncClient) -> None:
    await authed.post("/_admin/general/activity", json={"changes": 40})
    live = await _live(authed, "Observation")
    pivot = live[len(live) // 2]["lastUpdated"]
    ids, _ = await _all_pages(authed, f"/general/fhir/Observation?_lastUpdated=gt{pivot}&_count=4")
    assert ids == [r["id"] for r in live if r["lastUpdated"] > pivot]
    ids, _ = await _all_pages(authed, f"/general/fhir/Observation?_lastUpdated=ge{pivot}")
    assert ids == [r["id"] for r in live if r["lastUpdated"] >= pivot]


async def test_two_last_updated_bounds_intersect(authed: httpx.AsyncClient) -> None:
    live = await _live(authed, "Patient")
    low, high = live[1]["lastUpdated"], live[3]["lastUpdated"]
    url = f"/general/fhir/Patient?_lastUpdated=ge{low}&_lastUpdated=lt{high}"
    ids, _ = await _all_pages(authed, url)
    assert ids == [live[1]["id"], live[2]["id"]]
    ids, _ = await _all_pages(authed, url.replace("lt", "le"))
    assert ids == [live[1]["id"], live[2]["id"], live[3]["id"]]


async def test_descending_sort_reverses_the_order(authed: httpx.AsyncClient) -> None:
    live = await _live(authed, "Observation")
    ids, _ = await _all_pages(authed, "/general/fhir/Observation?_sort=-_lastUpdated&_count=5")
    assert ids == [r["id"] for r in reversed(live)]


async def test_search_by_id_list(authed: httpx.AsyncClient) -> None:
    ids, bundles = await _all_pages(authed, "/general/fhir/Patient?_id=pat-3,pat-1,unknown&_count=1")
    assert ids == ["pat-1", "pat-3"]
    assert bundles[0]["total"] == 2


async def test_unsupported_search_parameter_is_rejected(authed: httpx.AsyncClient) -> None:
    response = await authed.get("/general/fhir/Observation?code=8867-4")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_garbled_page_token_is_rejected(authed: httpx.AsyncClient) -> None:
    assert (await authed.get("/general/fhir/Observation?_page_token=garbage")).status_code == 400
    _, bundles = await _all_pages(authed, "/general/fhir/Observation?_count=2")
    token = bundles[0]["link"][1]["url"].split("_page_token=")[1]
    # A token for another type is refused, not misapplied.
    assert (await authed.get(f"/general/fhir/Patient?_page_token={token}")).status_code == 400


async def test_tampered_page_token_cannot_reach_past_the_log(authed: httpx.AsyncClient) -> None:
    import base64
    import json

    state = {
        "resource_type": "Observation",
        "count": 5,
        "descending": False,
        "total": 1,
        "pos": 3,
        "stop": 10**9,
    }
    token = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
    response = await authed.get(f"/general/fhir/Observation?_page_token={token}")
    assert response.status_code == 200


async def test_unknown_resource_type_is_404(authed: httpx.AsyncClient) -> None:
    assert (await authed.get("/general/fhir/Medication/m1")).status_code == 404
