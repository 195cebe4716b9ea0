"""The EHR client at the network edge (httpx.MockTransport): auth, retries, the base-URL guard."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from app.ehr.client import MAX_QUERY_REISSUES
from app.errors import (
    EHRAuthRejected,
    EHRBadRequest,
    EHRRateLimited,
    EHRTokenExpired,
    ForeignHostError,
    PagingSessionExpired,
    TokenEndpointThrottled,
)
from app.fhir.references import ResourceRef
from tests.ehr_mocks import BASE, TOKEN_URL, keypair, make_client
from tests.fixtures import observation

Handler = Callable[[httpx.Request], httpx.Response]


def _with_token(handler: Handler, tokens: list[str] | None = None) -> httpx.MockTransport:
    issued = iter(tokens or [f"tok-{i}" for i in range(100)])

    def route(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            return httpx.Response(
                200, json={"access_token": next(issued), "expires_in": 300, "token_type": "bearer"}
            )
        return handler(request)

    return httpx.MockTransport(route)


def test_token_request_is_a_signed_rs384_assertion_for_the_token_url() -> None:
    captured: dict[str, str] = {}

    def route(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            form = dict(httpx.QueryParams(request.content.decode()))
            captured.update(form)
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 300})
        assert request.headers["authorization"] == "Bearer tok"
        return httpx.Response(200, json=observation("o1", "1", "2026-01-01T00:00:00Z"))

    make_client(httpx.MockTransport(route)).read(ResourceRef("Observation", "o1"))
    assert captured["grant_type"] == "client_credentials"
    assert captured["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    header = jwt.get_unverified_header(captured["client_assertion"])
    claims = jwt.decode(captured["client_assertion"], keypair()[1], algorithms=["RS384"], audience=TOKEN_URL)
    assert (header["alg"], header["typ"]) == ("RS384", "JWT")
    assert claims["iss"] == claims["sub"] == "client-1"
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["jti"]


def test_token_endpoint_is_discovered_from_smart_configuration() -> None:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/fhir/.well-known/smart-configuration":
            return httpx.Response(200, json={"token_endpoint": TOKEN_URL})
        if str(request.url) == TOKEN_URL:
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 300})
        return httpx.Response(200, json=observation("o1", "1", "2026-01-01T00:00:00Z"))

    result = make_client(httpx.MockTransport(route), token_url=None).read(ResourceRef("Observation", "o1"))
    assert result.resource is not None


def test_expired_token_is_renewed_once_and_the_same_url_retried() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        if request.headers["authorization"] == "Bearer tok-0":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(200, json=observation("o1", "1", "2026-01-01T00:00:00Z"))

    make_client(_with_token(handler)).read(ResourceRef("Observation", "o1"))
    assert calls == ["Bearer tok-0", "Bearer tok-1"]


def test_401_after_reauthentication_is_not_a_loop() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(401)

    with pytest.raises(EHRTokenExpired):
        make_client(_with_token(handler), attempts=2).read(ResourceRef("Observation", "o1"))
    assert len(calls) == 4  # 2 attempts x (request + one re-authenticated retry)


def test_rejected_credentials_are_permanent() -> None:
    def route(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_client"})

    with pytest.raises(EHRAuthRejected):
        make_client(httpx.MockTransport(route)).read(ResourceRef("Observation", "o1"))


def test_429_is_retried_after_retry_after_then_succeeds() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.Response(200, json=observation("o1", "1", "2026-01-01T00:00:00Z")),
        ]
    )
    result = make_client(_with_token(lambda _: next(answers))).read(ResourceRef("Observation", "o1"))
    assert result.resource is not None


def test_persistent_429_surfaces_retry_after_for_the_postgres_backoff() -> None:
    handler = lambda _: httpx.Response(429, headers={"Retry-After": "120"})  # noqa: E731
    with pytest.raises(EHRRateLimited) as info:
        make_client(_with_token(handler), attempts=1).read(ResourceRef("Observation", "o1"))
    assert info.value.retry_after == 120


def test_redirect_to_a_foreign_host_is_refused_without_following() -> None:
    followed: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        followed.append(str(request.url))
        return httpx.Response(302, headers={"Location": "https://evil.example/fhir/Observation/o1"})

    with pytest.raises(ForeignHostError):
        make_client(_with_token(handler)).read(ResourceRef("Observation", "o1"))
    assert followed == [f"{BASE}/Observation/o1"]


def test_404_and_410_mean_gone() -> None:
    client = make_client(_with_token(lambda _: httpx.Response(410)))
    assert client.read(ResourceRef("Observation", "o1")).resource is None


def test_a_discovered_token_endpoint_on_another_host_never_receives_our_credentials() -> None:
    posted: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/fhir/.well-known/smart-configuration":
            return httpx.Response(200, json={"token_endpoint": "https://collector.evil.example/token"})
        posted.append(str(request.url))
        return httpx.Response(200, json={"access_token": "tok", "expires_in": 300})

    with pytest.raises(EHRAuthRejected) as info:
        make_client(httpx.MockTransport(route), token_url=None).read(ResourceRef("Observation", "o1"))
    assert info.value.reason == "token_endpoint_untrusted"
    assert posted == []


def test_a_read_keeps_the_digits_of_every_decimal() -> None:
    raw = (
        b'{"resourceType": "Observation", "id": "o1", "valueQuantity": {"value": 1.00},'
        b' "referenceRange": [{"low": {"value": 66.899999999999991}}], "x": 1.000000000000000000E-245}'
    )
    client = make_client(_with_token(lambda request: httpx.Response(200, content=raw)))
    resource = client.read(ResourceRef("Observation", "o1")).resource
    assert resource is not None
    assert str(resource["valueQuantity"]["value"]) == "1.00"
    assert str(resource["referenceRange"][0]["low"]["value"]) == "66.899999999999991"
    assert str(resource["x"]) == "1.000000000000000000E-245"


def test_search_follows_hapi_next_links_that_name_the_base_itself() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/fhir/Observation":
            link = f"{BASE}?_getpages=0f3e&_getpagesoffset=1&_count=1&_bundletype=searchset"
            return httpx.Response(
                200, json={"resourceType": "Bundle", "link": [{"relation": "next", "url": link}]}
            )
        assert (request.url.path, request.url.params["_getpages"]) == ("/fhir", "0f3e")
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})

    bundles = make_client(_with_token(handler)).search("Observation", {"_count": "1"})
    assert len(bundles) == 2


@pytest.mark.parametrize("link", [None, 5, ["x"], {"relation": "next"}, [{"relation": "next", "url": 7}]])
def test_a_page_whose_link_is_malformed_ends_the_paging_instead_of_crashing(link: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "link": link})

    client = make_client(_with_token(handler))
    assert len(list(client.search_pages("Observation", {}))) == 1
    assert len(list(client.history_pages("Observation", {}))) == 1


def _epic_4113() -> httpx.Response:
    coding = {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369", "code": "4113"}
    issue = {"severity": "fatal", "code": "expired", "details": {"coding": [coding]}}
    return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [issue]})


def _paged(expired_pages: int) -> tuple[Handler, list[str]]:
    """Two pages; the link to the second answers 4113 the first ``expired_pages`` times."""
    requested: list[str] = []
    left = [expired_pages]

    def handler(request: httpx.Request) -> httpx.Response:
        session = request.url.params.get("session")
        requested.append(session or "first")
        if session is None:
            entry = {"resource": observation("o1", "1", "2026-01-01T00:00:00Z")}
            link = {"relation": "next", "url": f"{BASE}/Observation?session=s{len(requested)}"}
            return httpx.Response(200, json={"resourceType": "Bundle", "link": [link], "entry": [entry]})
        if left[0] > 0:
            left[0] -= 1
            return _epic_4113()
        entry = {"resource": observation("o2", "1", "2026-01-01T00:00:00Z")}
        return httpx.Response(200, json={"resourceType": "Bundle", "entry": [entry]})

    return handler, requested


def test_an_expired_epic_paging_session_reissues_the_query_from_its_first_page() -> None:
    handler, requested = _paged(expired_pages=1)
    bundles = make_client(_with_token(handler), vendor="epic").search("Observation", {"patient": "p1"})

    ids = [e["resource"]["id"] for b in bundles for e in b["entry"]]
    assert ids == ["o1", "o2"]  # the pages of the re-issued query only: nothing twice
    assert requested == ["first", "s1", "first", "s3"]


def test_paging_sessions_that_keep_expiring_end_transient_not_dead() -> None:
    handler, requested = _paged(expired_pages=100)
    with pytest.raises(PagingSessionExpired) as info:
        make_client(_with_token(handler), vendor="epic").search("Observation", {"patient": "p1"})
    assert not info.value.permanent
    assert requested.count("first") == 1 + MAX_QUERY_REISSUES


def test_4113_from_another_vendor_is_an_ordinary_rejection() -> None:
    handler, _ = _paged(expired_pages=1)
    with pytest.raises(EHRBadRequest):
        make_client(_with_token(handler), vendor="generic").search("Observation", {"patient": "p1"})


def _throttled_token_endpoint(retry_after: str, throttled: int) -> tuple[httpx.MockTransport, list[float]]:
    """A token endpoint answering 429 with ``retry_after`` ``throttled`` times; when it was asked."""
    asked: list[float] = []

    def route(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            asked.append(time.monotonic())
            if len(asked) <= throttled:
                return httpx.Response(429, headers={"Retry-After": retry_after}, json={"error": "rate"})
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 300})
        return httpx.Response(200, json=observation("o1", "1", "2026-01-01T00:00:00Z"))

    return httpx.MockTransport(route), asked


def test_a_throttled_token_endpoint_is_asked_again_after_its_retry_after() -> None:
    transport, asked = _throttled_token_endpoint("1", throttled=1)
    result = make_client(transport).read(ResourceRef("Observation", "o1"))
    assert result.resource is not None
    assert len(asked) == 2
    assert asked[1] - asked[0] >= 0.95  # whatever the jitter, never before the Retry-After


def test_a_token_retry_after_beyond_the_cap_goes_to_the_postgres_backoff() -> None:
    transport, asked = _throttled_token_endpoint("600", throttled=10)
    with pytest.raises(TokenEndpointThrottled) as info:
        make_client(transport).read(ResourceRef("Observation", "o1"))
    assert info.value.retry_after == 600
    assert len(asked) == 1  # not held in the worker
