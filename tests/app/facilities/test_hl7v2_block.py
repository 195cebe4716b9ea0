"""The ``hl7v2:`` block of the facilities YAML: validated, stored by ``facilities apply``, routable."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.facilities.schemas import FacilitiesFile
from app.facilities.service import apply_facilities
from app.hl7v2.routing import load_directory

BLOCK = {
    "sending_application": "EPIC",
    "sending_facility": "GENHOSP",
    "allowed_peers": ["10.1.2.0/24", "127.0.0.1"],
    "mrn_authority": "GENHOSP",
    "refresh_by_event": {"A08": ["Patient"]},
}


def _facility(fid: str = "gh", **extra: Any) -> dict[str, Any]:
    return {
        "id": fid,
        "vendor": "epic",
        "base_url": "https://ehr.test/fhir",
        "mrn_system": "urn:oid:1.2.3",
        "auth": {"client_id": "c", "private_key": {"env": "K"}},
        **extra,
    }


def test_apply_stores_the_block_and_the_directory_routes_by_it(db: Session) -> None:
    apply_facilities(db, FacilitiesFile.model_validate({"facilities": [_facility(hl7v2=BLOCK)]}))
    [facility] = [f for f in load_directory(db).facilities if f.id == "gh"]
    assert facility.allows("10.1.2.77")
    assert facility.allows("::ffff:127.0.0.1")
    assert not facility.allows("10.1.3.1")
    assert facility.config.types_for("A08") == ["Patient"]
    assert facility.config.types_for("A01") == ["Patient", "Encounter"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"allowed_peers": ["not-an-address"]}, "no address or network"),
        ({"refresh_by_event": {"Z99": ["Patient"]}}, "unknown events"),
        ({"refresh": ["patient"]}, "no FHIR resource type"),
    ],
)
def test_an_invalid_block_is_refused_with_a_clear_error(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FacilitiesFile.model_validate({"facilities": [_facility(hl7v2={**BLOCK, **change})]})


def test_the_block_needs_the_mrn_system_and_senders_are_unique() -> None:
    without = _facility(hl7v2=BLOCK)
    del without["mrn_system"]
    with pytest.raises(ValidationError, match="mrn_system"):
        FacilitiesFile.model_validate({"facilities": [without]})
    with pytest.raises(ValidationError, match="same HL7 v2 sender"):
        FacilitiesFile.model_validate(
            {"facilities": [_facility("a", hl7v2=BLOCK), _facility("b", hl7v2=BLOCK)]}
        )
