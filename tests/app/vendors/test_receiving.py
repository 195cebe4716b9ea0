"""The receiving side of the adapters: how a vendor's events are told apart, and which headers announce
a bare-resource notification. The receiver, the parser and the inbox only read what these return."""

from __future__ import annotations

from typing import get_args

import pytest

from app.facilities.schemas import Vendor
from app.fhir.notifications import Announcement
from app.vendors import adapter_for

MEDPLUM_UPDATE = {
    "x-medplum-subscription": "mp-sub-1",
    "x-medplum-interaction": "update",
    "x-signature": "00",
    "content-type": "application/fhir+json",
}


def test_athena_events_are_told_apart_by_event_id() -> None:
    assert adapter_for("athena").event_identity == "event-id"


@pytest.mark.parametrize("vendor", [v for v in get_args(Vendor) if v != "athena"])
def test_other_vendors_use_the_event_number(vendor: str) -> None:
    assert adapter_for(vendor).event_identity == "number"


def test_medplum_headers_announce_subscription_and_interaction() -> None:
    assert adapter_for("medplum").announcement(MEDPLUM_UPDATE) == Announcement(
        shape="medplum", subscription="mp-sub-1", interaction="update"
    )


def test_medplum_delete_names_the_deleted_resource() -> None:
    headers = {"x-medplum-interaction": "DELETE", "x-medplum-deleted-resource": "Observation/o-mp"}
    assert adapter_for("medplum").announcement(headers) == Announcement(
        shape="medplum", interaction="delete", deleted="Observation/o-mp"
    )


def test_an_unknown_medplum_interaction_is_left_for_the_fetch() -> None:
    announced = adapter_for("medplum").announcement({"x-medplum-interaction": "patch-ish"})
    assert announced is not None
    assert announced.interaction is None


def test_medplum_without_its_headers_announces_nothing() -> None:
    assert adapter_for("medplum").announcement({"content-type": "application/fhir+json"}) is None


@pytest.mark.parametrize("vendor", [v for v in get_args(Vendor) if v != "medplum"])
def test_other_vendors_ignore_medplum_headers(vendor: str) -> None:
    assert adapter_for(vendor).announcement(MEDPLUM_UPDATE) is None
