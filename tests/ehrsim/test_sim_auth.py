from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from ehrsim.server import create_app

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.ehrsim.conftest import Assertions, FakeClock, Form, MakeConfig, Run

pytestmark = pytest.mark.anyio
TOKEN_URL = "/general/oauth2/token"


async def test_smart_configuration_advertises_the_token_endpoint(sim: httpx.AsyncClient) -> None:
    body = (await sim.get("/general/fhir/.well-known/smart-configuration")).json()
    assert body["token_endpoint"] == "http://testserver/general/oauth2/token"
    assert body["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert set(body["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}


async def test_valid_rs384_assertion_gets_a_bearer_token(
    sim: httpx.AsyncClient, assertion: Assertions, form: Form
) -> None:
    response = await sim.post(TOKEN_URL, data=form(assertion()))
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/*.read"
    assert len(body["access_token"]) >= 32
    assert response.headers["cache-control"] == "no-store"


def _error(response: httpx.Response, status: int = 401, error: str = "invalid_client") -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    description: str = response.json()["error_description"]
    return description


async def test_assertion_signed_with_another_key_is_rejected(
    sim: httpx.AsyncClient, assertion: Assertions, form: Form, other_private_key: rsa.RSAPrivateKey
) -> None:
    response = await sim.post(TOKEN_URL, data=form(assertion(key=other_private_key)))
    assert "signature" in _error(response)


async def test_assertion_for_another_audience_is_rejected(
    sim: httpx.AsyncClient, assertion: Assertions, form: Form
) -> None:
    response = await sim.post(TOKEN_URL, data=form(assertion(aud="http://elsewhere/general/oauth2/token")))
    assert "aud" in _error(response)


async def test_assertion_expiring_more_than_300_s_ahead_is_rejected(
    sim: httpx.AsyncClient, assertion: Assertions, form: Form
) -> None:
    assert "exp" in _error(await sim.post(TOKEN_URL, data=form(assertion(exp_in=600))))


async def test_expired_assertion_is_rejected(
    sim: httpx.AsyncClient, assertion: Assertions, form: Form
) -> None:
    assert "expired" in _error(await sim.post(TOKEN_URL, data=form(assertion(exp_in=-60))))


async def test_replayed_jti_is_rejected(sim: httpx.AsyncClient, assertion: Assertions, form: Form) -> None:
    assert (await sim.post(TOKEN_URL, data=form(assertion(jti="once")))).status_code == 200
    assert "jti" in _error(await sim.post(TOKEN_URL, data=form(assertion(jti="once"))))


async def test_unknown_client_is_rejected(sim: httpx.AsyncClient, assertion: Assertions, form: Form) -> None:
    assert "unknown client" in _error(await sim.post(TOKEN_URL, data=form(assertion(iss="stranger"))))


async def test_other_grant_types_are_unsupported(
    sim: httpx.AsyncClient, assertion: Assertions, form: Form
) -> None:
    data = {**form(assertion()), "grant_type": "password"}
    _error(await sim.post(TOKEN_URL, data=data), 400, "unsupported_grant_type")


async def test_scope_beyond_the_registration_is_refused(
    sim: httpx.AsyncClient, assertion: Assertions, form: Form
) -> None:
    response = await sim.post(TOKEN_URL, data=form(assertion(), scope="system/*.write"))
    _error(response, 400, "invalid_scope")


async def test_v2_scope_limits_the_token_to_its_types(
    sim: httpx.AsyncClient, assertion: Assertions, form: Form
) -> None:
    response = await sim.post(TOKEN_URL, data=form(assertion(), scope="system/Observation.rs"))
    assert response.json()["scope"] == "system/Observation.rs"
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert (await sim.get("/general/fhir/Observation/obs-1", headers=headers)).status_code == 200
    assert (await sim.get("/general/fhir/Patient/pat-1", headers=headers)).status_code == 403


def _assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer realm="ehrsim", error="invalid_token", '
        'error_description="Token has expired or signature is invalid"'
    )
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "login"


async def test_fhir_request_without_a_valid_token_gets_invalid_token(sim: httpx.AsyncClient) -> None:
    _assert_invalid_token(await sim.get("/general/fhir/Patient/pat-1"))
    _assert_invalid_token(await sim.get("/general/fhir/Patient", headers={"Authorization": "Bearer nope"}))


async def test_expired_token_gets_invalid_token(authed: httpx.AsyncClient, clock: FakeClock) -> None:
    assert (await authed.get("/general/fhir/Patient/pat-1")).status_code == 200
    clock.advance(301)
    _assert_invalid_token(await authed.get("/general/fhir/Patient/pat-1"))


async def test_token_is_only_valid_for_its_facility(
    make_config: MakeConfig, clock: FakeClock, assertion: Assertions, form: Form, run: Run
) -> None:
    config = make_config()
    north = config.facilities[0].model_copy(update={"id": "north"})
    app = create_app(config.model_copy(update={"facilities": [*config.facilities, north]}), clock=clock)
    async with run(app) as client:
        token = (await client.post(TOKEN_URL, data=form(assertion()))).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/general/fhir/Patient/pat-1", headers=headers)).status_code == 200
        _assert_invalid_token(await client.get("/north/fhir/Patient/pat-1", headers=headers))


async def test_es384_assertion_from_an_ec_p384_client_is_accepted(
    make_config: MakeConfig, clock: FakeClock, run: Run
) -> None:
    import uuid

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    config = make_config(clients=[{"client_id": "ec", "public_key_pem": pem.decode()}])
    claims = {
        "iss": "ec",
        "sub": "ec",
        "aud": "http://testserver/general/oauth2/token",
        "exp": int(clock() + 60),
        "jti": str(uuid.uuid4()),
    }
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": jwt.encode(claims, key, algorithm="ES384"),
    }
    async with run(create_app(config, clock=clock)) as client:
        response = await client.post(TOKEN_URL, data=data)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/*.read"
