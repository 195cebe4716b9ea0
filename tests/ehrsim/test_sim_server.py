"""The simulator behind a real uvicorn, notifying a real receiver over HTTP."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ehrsim.server import create_app

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.ehrsim.conftest import MakeConfig, Serve


def test_token_search_and_notifications_over_real_http(
    make_config: MakeConfig, private_key: rsa.RSAPrivateKey, server: Serve
) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> Response:
        received.append(json.loads(await request.body()))
        return Response(status_code=200)

    receiver = Starlette(routes=[Route("/hooks/general", hook, methods=["POST"])])
    with server(receiver) as receiver_origin:
        config = make_config(webhook={"url": f"{receiver_origin}/hooks/general", "subscription_id": "s1"})
        app = create_app(config, public_base_url="http://ehr.example")
        with server(app) as origin, httpx.Client(base_url=origin) as client:
            token_url = client.get("/general/fhir/.well-known/smart-configuration").json()["token_endpoint"]
            assert token_url == f"{origin}/general/oauth2/token"
            claims = {
                "iss": "ingest",
                "sub": "ingest",
                "aud": token_url,
                "exp": int(time.time()) + 120,
                "jti": str(uuid.uuid4()),
            }
            token = client.post(
                token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": jwt.encode(claims, private_key, algorithm="RS384"),
                    "scope": "system/Patient.read",
                },
            ).json()["access_token"]
            bundle = client.get("/general/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).json()
            assert bundle["total"] == 5

            client.post("/_admin/general/activity", json={"changes": 20})
            deadline = time.monotonic() + 5
            while client.get("/_admin/general/notifications").json()["pending"]:
                assert time.monotonic() < deadline, "notifications still pending"
                time.sleep(0.01)
    assert len(received) == 20
    focus = received[0]["entry"][1]["fullUrl"]
    assert focus.startswith("http://ehr.example/general/fhir/")
