from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.errors import UnparseableResource
from app.fhir.resources import content_hash, resource_meta
from tests.fixtures import observation


def test_content_hash_ignores_meta_and_key_order() -> None:
    a = observation("o1", "1", "2026-01-01T00:00:00Z")
    b = dict(reversed(list(observation("o1", "2", "2026-02-01T00:00:00Z").items())))
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(observation("o1", "1", "2026-01-01T00:00:00Z", value=80))


def test_meta_is_optional_epic_style() -> None:
    body = observation("o1", "1", "2026-01-01T00:00:00Z")
    del body["meta"]
    meta = resource_meta(body)
    assert (meta.version_id, meta.last_updated) == (None, None)


def test_last_updated_is_parsed_as_aware_utc() -> None:
    meta = resource_meta(observation("o1", "3", "2026-01-01T10:00:00.123+02:00"))
    assert meta.last_updated == datetime(2026, 1, 1, 8, 0, 0, 123000, tzinfo=UTC)
    assert meta.version_id == "3"


def test_wrong_type_is_unparseable() -> None:
    with pytest.raises(UnparseableResource):
        resource_meta(observation("o1", "1", "2026-01-01T00:00:00Z"), expected_type="Patient")
