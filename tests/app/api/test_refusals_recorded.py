"""A known facility's refused deliveries reach ``webhook_refusals`` (feed health's signature failures),
counted per minute and reason, written in batches rather than one write per forged request."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.app.api.conftest import SECRET, Facilities, running, settings_for, shared_secret, signed
from tests.app.api.fixtures_shapes import dumps
from tests.fixtures import backport_id_only

pytestmark = pytest.mark.anyio
BODY = dumps(backport_id_only([(1, "Patient/p1")]))
JSON = {"Content-Type": "application/fhir+json"}


def _refusals(facilities: Facilities, fid: str) -> dict[str, int]:
    with facilities.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT reason, sum(refusals) AS n FROM webhook_refusals WHERE facility_id = :f GROUP BY 1"),
            {"f": fid},
        )
        return {r.reason: int(r.n) for r in rows}


async def test_refusals_of_a_known_facility_are_counted_per_reason(
    facilities: Facilities, api_database_url: str, redis_prefix: str
) -> None:
    shared = facilities.add(shared_secret())
    hub = facilities.add(signed("hub-signature"))
    async with running(settings_for(api_database_url, redis_prefix)) as client:
        for _ in range(3):
            response = await client.post(
                f"/hooks/{shared}", content=BODY, headers={**JSON, "Authorization": "x"}
            )
            assert response.status_code == 401
        bad_signature = {**JSON, "X-Hub-Signature": "sha256=" + "0" * 64}
        assert (await client.post(f"/hooks/{hub}", content=BODY, headers=bad_signature)).status_code == 401
        accepted = {**JSON, "Authorization": f"Bearer {SECRET}"}
        assert (await client.post(f"/hooks/{shared}", content=BODY, headers=accepted)).status_code < 300
    # The receiver writes what it counted when it stops (and every few seconds while it runs).

    assert _refusals(facilities, shared) == {"wrong_secret": 3}
    assert _refusals(facilities, hub) == {"bad_signature": 1}


async def test_an_unknown_facility_records_nothing(
    facilities: Facilities, api_database_url: str, redis_prefix: str
) -> None:
    async with running(settings_for(api_database_url, redis_prefix)) as client:
        response = await client.post(
            "/hooks/fac-nobody-knows", content=BODY, headers={**JSON, "Authorization": "x"}
        )
        assert response.status_code == 401

    assert _refusals(facilities, "fac-nobody-knows") == {}
