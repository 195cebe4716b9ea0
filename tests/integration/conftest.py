"""ehrsim as a real process over HTTP, one facility per vendor profile, and our EHR clients for each."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.ehr.auth import SmartBackendAuth
from app.ehr.client import EHRClient
from app.ehr.token_cache import MemoryTokenCache
from app.facilities.schemas import AuthConfig
from app.vendors import adapter_for
from devstack.keys import write_keypair
from devstack.processes import Stack, free_port
from tests.integration.reconcile_world import World, reconcile_world

PROFILES = ["epic", "oracle", "athena", "meditech", "medplum", "hapi", "generic"]


@dataclass
class Sim:
    url: str
    private_key: str

    def base(self, facility: str) -> str:
        return f"{self.url}/{facility}/fhir"

    def admin(self, facility: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.url}/_admin/{facility}/{path}"
        response = httpx.post(url, json=body, timeout=30) if body is not None else httpx.get(url, timeout=30)
        response.raise_for_status()
        return response.json()

    def client(
        self,
        facility: str,
        *,
        events: list[str] | None = None,
        http: httpx.Client | None = None,
        attempts: int = 4,
        scopes: list[str] | None = None,
    ) -> EHRClient:
        http = http or httpx.Client(timeout=10)
        config = AuthConfig.model_validate(
            {
                "client_id": "ehr-ingest",
                "private_key": {"env": "UNUSED"},
                "scopes": scopes or ["system/*.read"],
            }
        )

        def sink(facility_id: str, event: str, **_: object) -> None:
            if events is not None:
                events.append(event)

        auth = SmartBackendAuth(
            facility_id=facility,
            base_url=self.base(facility),
            config=config,
            private_key=self.private_key,
            http=http,
            cache=MemoryTokenCache(),
            events=sink,
        )
        adapter = adapter_for(facility)  # each facility is named after its profile's vendor
        return EHRClient(
            facility_id=facility,
            base_url=self.base(facility),
            auth=auth,
            http=http,
            attempts=attempts,
            max_delay_s=20,
            server_error=adapter.server_error,
            paging_expired=adapter.paging_session_expired,
        )


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    workdir: Path = tmp_path_factory.mktemp("ehrsim")
    private, public = write_keypair(workdir, "client")
    facilities = [
        {
            "id": p,
            "profile": p,
            "seed": 11,
            "patients": 3,
            # Epic's token endpoint answers a bare 400 now and then: keep it, the client must cope.
            "clients": [
                {
                    "client_id": "ehr-ingest",
                    "public_key_file": str(public),
                    # Subscription writes: `ehr-ingest subscribe` (tests/integration/test_subscriptions...).
                    "scopes": ["system/*.read", "system/*.rs", "system/Subscription.cruds"],
                }
            ],
        }
        for p in PROFILES
    ]
    port = free_port()
    config = workdir / "ehrsim.yaml"
    config.write_text(
        yaml.safe_dump({"public_base_url": f"http://127.0.0.1:{port}", "facilities": facilities})
    )
    stack = Stack(workdir, dict(__import__("os").environ))
    stack.start_ehrsim(config, port)
    try:
        yield Sim(f"http://127.0.0.1:{port}", private.read_text())
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The reconciler's own ehrsim and database (``tests.integration.reconcile_world``)."""
    with reconcile_world(tmp_path_factory.mktemp("reconcile")) as w:
        yield w
