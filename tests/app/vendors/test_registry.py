from __future__ import annotations

from typing import get_args

import pytest

from app.facilities.schemas import Vendor
from app.vendors import DefaultAdapter, adapter_for


def test_every_configurable_vendor_has_an_adapter_named_after_it() -> None:
    for vendor in get_args(Vendor):
        assert adapter_for(vendor).vendor == vendor


def test_unknown_vendor_gets_the_generic_adapter() -> None:
    adapter = adapter_for("aidbox")
    assert type(adapter) is DefaultAdapter
    assert adapter.vendor == "generic"


def test_vendor_names_are_matched_case_insensitively() -> None:
    assert adapter_for(" Epic ").vendor == "epic"


def test_epic_reads_one_resource_at_a_time() -> None:
    adapter = adapter_for("epic")
    assert adapter.supports_batch_read() is False
    assert adapter.batch_read_max() == 1


@pytest.mark.parametrize("vendor", ["generic", "hapi", "medplum"])
def test_standard_servers_read_in_batches(vendor: str) -> None:
    adapter = adapter_for(vendor)
    assert adapter.supports_batch_read() is True
    assert adapter.batch_read_max() > 1


@pytest.mark.parametrize("vendor", ["oracle", "athena", "meditech"])
def test_unverified_batch_reads_are_off_by_default(vendor: str) -> None:
    assert adapter_for(vendor).supports_batch_read() is False


def test_a_facility_can_turn_batch_reads_on_once_verified() -> None:
    from app.vendors.oracle import OracleAdapter

    adapter = OracleAdapter(batch_read=True)
    assert adapter.supports_batch_read() is True
    assert adapter.batch_read_max() == 100
    assert OracleAdapter().supports_batch_read() is False
