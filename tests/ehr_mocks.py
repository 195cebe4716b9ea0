"""A facility's EHR client wired to an httpx.MockTransport: the network edge, nothing of ours mocked."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx

from app.ehr.auth import SmartBackendAuth
from app.ehr.client import EHRClient
from app.ehr.politeness import Politeness
from app.facilities.schemas import AuthConfig
from app.vendors import adapter_for
from devstack.keys import write_keypair

BASE = "https://ehr.test/fhir"
TOKEN_URL = "https://ehr.test/oauth2/token"
_KEYS: dict[str, tuple[str, str]] = {}


def keypair() -> tuple[str, str]:
    """(private PEM, public PEM), generated once per test session."""
    if "rsa" not in _KEYS:
        private, public = write_keypair(Path(tempfile.mkdtemp()), "client")
        _KEYS["rsa"] = (private.read_text(), public.read_text())
    return _KEYS["rsa"]


def make_client(
    transport: httpx.MockTransport,
    *,
    attempts: int = 4,
    token_url: str | None = TOKEN_URL,
    facility_id: str = "fac-1",
    vendor: str = "generic",
    politeness: Politeness | None = None,
) -> EHRClient:
    """The client as the pool builds it for ``vendor`` (its adapter's error policies)."""
    http = httpx.Client(transport=transport, follow_redirects=False)
    config = AuthConfig.model_validate(
        {
            "client_id": "client-1",
            "private_key": {"env": "UNUSED"},
            "token_url": token_url,
        }
    )
    auth = SmartBackendAuth(
        facility_id=facility_id, base_url=BASE, config=config, private_key=keypair()[0], http=http
    )
    adapter = adapter_for(vendor)
    return EHRClient(
        facility_id=facility_id,
        base_url=BASE,
        auth=auth,
        http=http,
        politeness=politeness,
        attempts=attempts,
        max_delay_s=5,
        server_error=adapter.server_error,
        paging_expired=adapter.paging_session_expired,
    )
