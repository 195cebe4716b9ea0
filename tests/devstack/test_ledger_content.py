"""The ledger check for an EHR that serves no versions (Epic): the stored content must be the EHR's."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.ingest.pipeline.observed import Observed
from app.ingest.pipeline.store import store_versions
from devstack.ledger import check_ledger
from tests.conftest import make_facility

FACILITY = "fac-ledger"


def _encounter(status: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": status,
        "length": {"value": Decimal("1.50")},
    }


def _store(db: Session, resource: dict[str, Any]) -> None:
    make_facility(db, FACILITY)
    store_versions(db, [Observed(FACILITY, "Encounter", "enc-1", resource, datetime.now(UTC))])


def _truth(content: dict[str, Any] | None, version: str = "3") -> list[dict[str, Any]]:
    item: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "enc-1",
        "versionId": version,  # ehrsim's own count: no client sees it
        "deleted": False,
        "versioned": False,
    }
    if content is not None:
        item["content"] = content
    return [item]


def test_an_unversioned_resource_stored_with_the_ehrs_content_matches(db: Session) -> None:
    _store(db, _encounter("finished"))
    report = check_ledger(db, FACILITY, _truth(_encounter("finished")))
    assert (report.matched, report.unmatched) == (1, 0)


def test_an_unversioned_resource_stored_with_older_content_is_behind(db: Session) -> None:
    _store(db, _encounter("in-progress"))
    report = check_ledger(db, FACILITY, _truth(_encounter("finished")))
    assert report.behind == ["Encounter/enc-1"]


def test_decimals_compare_by_their_digits(db: Session) -> None:
    _store(db, _encounter("finished"))
    changed = {**_encounter("finished"), "length": {"value": Decimal("1.5")}}
    assert check_ledger(db, FACILITY, _truth(changed)).behind == ["Encounter/enc-1"]


def test_an_unversioned_truth_without_content_cannot_be_checked(db: Session) -> None:
    _store(db, _encounter("finished"))
    with pytest.raises(ValueError, match="content"):
        check_ledger(db, FACILITY, _truth(None))
