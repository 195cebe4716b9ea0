"""One long-lived EHR client per facility per process, rebuilt when the facility's config changes."""

from __future__ import annotations

import threading
from datetime import datetime

import httpx

from app.db.models import Facility
from app.ehr.auth import SmartBackendAuth
from app.ehr.client import EHRClient
from app.facilities.schemas import AuthConfig
from app.facilities.secrets import resolve_secret


class EHRClientPool:
    def __init__(self, *, timeout_s: float = 30.0, max_connections: int = 16) -> None:
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._clients: dict[str, tuple[datetime, EHRClient]] = {}
        self._lock = threading.Lock()

    def get(self, facility: Facility) -> EHRClient:
        with self._lock:
            cached = self._clients.get(facility.id)
            if cached is not None and cached[0] == facility.updated_at:
                return cached[1]
            if cached is not None:
                cached[1].close()
            client = self._build(facility)
            self._clients[facility.id] = (facility.updated_at, client)
            return client

    def _build(self, facility: Facility) -> EHRClient:
        config = AuthConfig.model_validate(facility.auth)
        # Redirects are followed by EHRClient itself, only inside the base URL.
        http = httpx.Client(timeout=self._timeout, limits=self._limits, follow_redirects=False)
        auth = SmartBackendAuth(
            facility_id=facility.id,
            base_url=facility.base_url,
            config=config,
            private_key=resolve_secret(config.private_key),
            http=http,
        )
        return EHRClient(facility_id=facility.id, base_url=facility.base_url, auth=auth, http=http)

    def close(self) -> None:
        with self._lock:
            for _, client in self._clients.values():
                client.close()
            self._clients.clear()
