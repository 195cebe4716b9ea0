"""The one base-URL guard: every URL under the facility's base, and nothing else."""

from __future__ import annotations

import pytest

from app.fhir.base_url import is_under_base

BASE = "https://ehr.test/fhir"


@pytest.mark.parametrize(
    "url",
    [
        f"{BASE}?_getpages=abc&_getpagesoffset=20&_count=20&_bundletype=searchset",  # HAPI next link
        f"{BASE}/?_getpages=abc",
        BASE,
        f"{BASE}/",
        f"{BASE}/Observation?_id=a,b&_count=2",
        f"{BASE}/Observation/o1",
        "https://EHR.test/fhir/Observation/o1",  # host names are case-insensitive
        "https://ehr.test:443/fhir/Observation/o1",  # the scheme's default port, spelled out
    ],
)
@pytest.mark.parametrize("base", [BASE, f"{BASE}/"])
def test_urls_under_the_base_are_accepted_with_or_without_its_trailing_slash(url: str, base: str) -> None:
    assert is_under_base(url, base)


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.test:8443/fhir/Observation/o1",  # another port
        "http://ehr.test/fhir/Observation/o1",  # another scheme
        "https://user@ehr.test/fhir/Observation/o1",  # userinfo
        "https://user:pw@ehr.test/fhir?_getpages=abc",
        "https://ehr.test:abc/fhir/Observation/o1",  # a port that is not a number
        f"{BASE}/../admin/x",
        f"{BASE}/%2e%2e/admin/x",
        f"{BASE}/%2E%2E/admin/x",
        f"{BASE}/Observation/..%2f..%2fadmin",
        f"{BASE}/..\\admin",
        "https://ehr.test/fhir-admin/x",  # a sibling that merely starts with the base path
        "https://ehr.test/fhirx?_getpages=abc",
        "https://ehr.test/?_getpages=abc",  # above the base
        "https://ehr.test/other/fhir/Observation/o1",
        "https://ehr.test.evil.example/fhir/Observation/o1",
        f"{BASE}/Observation/o1#frag",
        "/fhir/Observation/o1",  # not absolute
    ],
)
def test_everything_else_is_refused(url: str) -> None:
    assert not is_under_base(url, BASE)


def test_a_base_at_the_root_accepts_its_whole_origin_only() -> None:
    assert is_under_base("https://ehr.test/?_getpages=abc", "https://ehr.test")
    assert is_under_base("https://ehr.test/Patient/p1", "https://ehr.test/")
    assert not is_under_base("https://ehr.test.evil/Patient/p1", "https://ehr.test")
