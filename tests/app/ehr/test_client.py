"""The EHR client at the network edge (httpx.MockTransport): auth, retries, the base-URL guard."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import jwt
import pytest

from app.errors import EHRAuthRejected, EHRRateLimited, EHRTokenExpired, ForeignHostError
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
