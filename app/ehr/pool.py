"""One long-lived EHR client per facility and priority per process, rebuilt when the facility's config
changes. ``get`` is the live client (notification fetches); ``background`` the reconciler's and the
backfill's, which shares the facility's token and politeness budget but yields to live fetches
(``app.ehr.politeness``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

import httpx
import redis

from app.db.models import Facility
from app.ehr import token_events
from app.ehr.auth import SmartBackendAuth
from app.ehr.client import EHRClient
from app.ehr.politeness import BACKGROUND, LIVE, Politeness, Priority, RedisPoliteness, Unlimited
from app.ehr.token_cache import MemoryTokenCache, RedisTokenCache, TokenCache
from app.ehr.token_events import TokenEventSink
from app.facilities.schemas import AuthConfig, LimitsConfig
from app.facilities.secrets import resolve_secret
from app.vendors.registry import adapter_for


class EHRClientPool:
    """Clients share the process's Redis connection for the token cache and the politeness limits;
    without Redis (unit tests, the CLI) tokens are cached in memory and no shared limit applies."""

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        max_connections: int = 16,
        redis_client: redis.Redis | None = None,
        redis_prefix: str = "ehri:",
        token_sink: TokenEventSink = token_events.log_only,
        transport: httpx.BaseTransport | None = None,
        attempts: int = 4,
        max_delay_s: float = 30.0,
    ) -> None:
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._redis = redis_client
        self._prefix = redis_prefix
        self._token_sink = token_sink
        self._transport = transport
        self._attempts = attempts
        self._max_delay_s = max_delay_s
        self._memory_tokens = MemoryTokenCache()
        self._clients: dict[tuple[str, Priority], tuple[datetime, EHRClient]] = {}
        self._lock = threading.Lock()

    def get(self, facility: Facility) -> EHRClient:
        """The facility's live client: notification fetches, which go first."""
        return self._client(facility, LIVE)

    def background(self, facility: Facility) -> EHRClient:
        """The facility's background client (reconcile, backfill): same token and budget, lower priority."""
        return self._client(facility, BACKGROUND)

    def _client(self, facility: Facility, priority: Priority) -> EHRClient:
        key = (facility.id, priority)
        with self._lock:
            cached = self._clients.get(key)
            if cached is not None and cached[0] == facility.updated_at:
                return cached[1]
            if cached is not None:
                cached[1].close()
            client = self._build(facility, priority)
            self._clients[key] = (facility.updated_at, client)
            return client

    def _token_cache(self) -> TokenCache:
        return RedisTokenCache(self._redis, self._prefix) if self._redis is not None else self._memory_tokens

    def _politeness(self, facility: Facility, priority: Priority) -> Politeness:
        if self._redis is None:
            return Unlimited()
        limits = LimitsConfig.model_validate(facility.limits or {})
        return RedisPoliteness(self._redis, self._prefix, facility.id, limits, priority=priority)

    def _build(self, facility: Facility, priority: Priority) -> EHRClient:
        config = AuthConfig.model_validate(facility.auth)
        adapter = adapter_for(facility.vendor, mrn_system=facility.mrn_system)
        # Redirects are followed by EHRClient itself, and only inside the base URL.
        http = httpx.Client(
            timeout=self._timeout, limits=self._limits, follow_redirects=False, transport=self._transport
        )
        auth = SmartBackendAuth(
            facility_id=facility.id,
            base_url=facility.base_url,
            config=config,
            private_key=resolve_secret(config.credential),
            http=http,
            cache=self._token_cache(),
            events=self._token_sink,
        )
        return EHRClient(
            facility_id=facility.id,
            base_url=facility.base_url,
            auth=auth,
            http=http,
            politeness=self._politeness(facility, priority),
            attempts=self._attempts,
            max_delay_s=self._max_delay_s,
            server_error=adapter.server_error,
            paging_expired=adapter.paging_session_expired,
        )

    def close(self) -> None:
        with self._lock:
            for _, client in self._clients.values():
                client.close()
            self._clients.clear()


ClientFactory = Callable[[Facility], EHRClient]
