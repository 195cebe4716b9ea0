"""Decimals keep their precision from the wire to ``resources.resource`` and ``observations.value_numeric``
(issue 9 item 4), through the real drain, real Postgres and an EHR at the network edge."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.ingest.drain import claim, process_batch
from app.settings import Settings
from tests.conftest import make_facility
from tests.ehr_mocks import make_client

# As a lab system writes them: significant zeros, more digits than a double holds, a tiny exponent.
UCUM = "http://unitsofmeasure.org"
VALUES = ["1.00", "66.899999999999991", "1.000000000000000000E-245"]


def _observation(obs_id: str, value: str) -> bytes:
    """The resource as JSON text, ``value`` written as is: no float ever holds it."""
    body = {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "meta": {"versionId": "1", "lastUpdated": "2026-11-24T10:00:00Z"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "valueQuantity": {"value": "@", "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
    }
    return json.dumps(body).replace('"@"', value).encode()


def _ehr() -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 300})
        index = int(request.url.path.rsplit("-", 1)[1])
        headers = {"content-type": "application/fhir+json"}
        return httpx.Response(200, content=_observation(f"o-{index}", VALUES[index]), headers=headers)

    return httpx.MockTransport(handler)


def _stored(db: Session) -> dict[str, tuple[bool, bool, int]]:
    """Per observation: the jsonb number equals the wire's, value_numeric too, and value_numeric's scale."""
    rows = db.execute(
        text(
            "SELECT o.observation_id AS id, v.wire,"
            " (r.resource #>> '{valueQuantity,value}')::numeric = v.wire::numeric"
            "   AND (r.resource #>> '{valueQuantity,value}') = (v.wire::numeric)::text AS body_exact,"
            " o.value_numeric::text = (v.wire::numeric)::text AS numeric_exact,"
            " scale(o.value_numeric) AS scale"
            " FROM resources r JOIN observations o"
            "   ON o.facility_id = r.facility_id AND o.observation_id = r.resource_id"
            " JOIN unnest(CAST(:ids AS text[]), CAST(:wire AS text[])) AS v(id, wire) ON v.id = r.resource_id"
            " WHERE r.facility_id = 'fac-1'"
        ),
        {"ids": [f"o-{i}" for i in range(len(VALUES))], "wire": VALUES},
    )
    return {r.wire: (r.body_exact, r.numeric_exact, r.scale) for r in rows}


EXPECTED = {"1.00": (True, True, 2), "66.899999999999991": (True, True, 15), VALUES[2]: (True, True, 263)}


def test_fetched_decimals_are_stored_and_exposed_exactly(db: Session) -> None:
    facility = make_facility(db)
    for i in range(len(VALUES)):
        db.execute(
            text(
                "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id)"
                " VALUES ('fac-1', :k, 'Observation', :i)"
            ),
            {"k": f"k{i}", "i": f"o-{i}"},
        )
    rows = claim(db, "fac-1", limit=10, lease=timedelta(minutes=5))
    facility.vendor = "epic"  # one read per resource: the raw response bodies above
    process_batch(db, facility, make_client(_ehr()), rows, Settings())
    assert _stored(db) == EXPECTED


@pytest.mark.parametrize("index", range(len(VALUES)))
def test_a_payload_keeps_its_decimals_through_the_inbox(db: Session, index: int) -> None:
    """The inbox row's jsonb is read back by the claim: the path where psycopg would make floats."""
    facility = make_facility(db)
    db.execute(
        text(
            "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id, payload)"
            " VALUES ('fac-1', 'k', 'Observation', :i, CAST(:p AS jsonb))"
        ),
        {"i": f"o-{index}", "p": _observation(f"o-{index}", VALUES[index]).decode()},
    )
    rows = claim(db, "fac-1", limit=10, lease=timedelta(minutes=5))
    never = httpx.MockTransport(lambda request: httpx.Response(500))
    process_batch(db, facility, make_client(never, attempts=1), rows, Settings())
    assert _stored(db) == {VALUES[index]: EXPECTED[VALUES[index]]}
