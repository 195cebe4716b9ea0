"""Where access tokens live between requests: in Redis, shared by every worker process of a facility,
so N processes do not each ask the token endpoint (athena allows 50 token requests a minute, Medplum 160).

Keys: ``{prefix}token:{facility_id}:{fingerprint}`` (the fingerprint changes when the facility's auth
config does), expiring with the token; ``…:lock`` while one process renews; ``…:refused`` while the
token endpoint's refusal of these credentials stands (``app.ehr.auth``: no process asks again before it
runs out). Token values never reach a
log line. If Redis is unreachable, tokens are kept in the process's memory meanwhile: each process may
then ask for a token of its own, but fetches go on (the politeness limiter fails open the same way).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis
import structlog

log = structlog.get_logger("ehr.token_cache")


@dataclass(frozen=True)
class CachedToken:
    value: str
    expires_at: float  # wall-clock epoch seconds at which we stop using it (renewal margin applied)


@dataclass(frozen=True)
class Refusal:
    """The token endpoint refused our credentials: not asked again before ``until``."""

    until: float  # wall-clock epoch seconds
    count: int  # consecutive refusals (the back-off doubles with each)
    detail: str  # status and OAuth error, e.g. "401 invalid_client"


class TokenCache(Protocol):
    def get(self, key: str) -> CachedToken | None: ...
    def put(self, key: str, token: CachedToken) -> None: ...
    def discard(self, key: str, value: str) -> None: ...
    def renewal_lock(self, key: str, ttl_s: float) -> bool: ...
    def release_lock(self, key: str) -> None: ...
    def refusal(self, key: str) -> Refusal | None: ...
    def refuse(self, key: str, refusal: Refusal, *, keep_s: float) -> None: ...
    def clear_refusal(self, key: str) -> None: ...


class MemoryTokenCache:
    """One process only (tests, the CLI)."""

    def __init__(self) -> None:
        self._tokens: dict[str, CachedToken] = {}
        self._refusals: dict[str, tuple[Refusal, float]] = {}  # with the time it is forgotten
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedToken | None:
        token = self._tokens.get(key)
        return token if token is not None and token.expires_at > time.time() else None

    def put(self, key: str, token: CachedToken) -> None:
        self._tokens[key] = token

    def discard(self, key: str, value: str) -> None:
        if (token := self._tokens.get(key)) is not None and token.value == value:
            del self._tokens[key]

    def renewal_lock(self, key: str, ttl_s: float) -> bool:
        return self._lock.acquire(blocking=False)

    def release_lock(self, key: str) -> None:
        if self._lock.locked():
            self._lock.release()

    def refusal(self, key: str) -> Refusal | None:
        kept = self._refusals.get(key)
        return kept[0] if kept is not None and kept[1] > time.time() else None

    def refuse(self, key: str, refusal: Refusal, *, keep_s: float) -> None:
        self._refusals[key] = (refusal, time.time() + keep_s)

    def clear_refusal(self, key: str) -> None:
        self._refusals.pop(key, None)


# Delete the token only if it is still the one that was rejected (another process may have renewed it).
_DISCARD = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['value'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisTokenCache:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._discard = client.register_script(_DISCARD)
        self._fallback = MemoryTokenCache()
        self._local_locks: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self._prefix}token:{key}"

    @staticmethod
    def _unavailable(exc: redis.RedisError) -> None:
        log.warning("ehr.token_cache.unavailable", error=type(exc).__name__)

    def get(self, key: str) -> CachedToken | None:
        try:
            raw = self._redis.get(self._key(key))
        except redis.RedisError as exc:
            self._unavailable(exc)
            return self._fallback.get(key)
        if raw is None:
            return None
        data = json.loads(raw)
        token = CachedToken(str(data["value"]), float(data["expires_at"]))
        return token if token.expires_at > time.time() else None

    def put(self, key: str, token: CachedToken) -> None:
        ttl_ms = max(1, int((token.expires_at - time.time()) * 1000))
        payload = json.dumps({"value": token.value, "expires_at": token.expires_at})
        try:
            self._redis.set(self._key(key), payload, px=ttl_ms)
        except redis.RedisError as exc:
            self._unavailable(exc)
            self._fallback.put(key, token)

    def discard(self, key: str, value: str) -> None:
        self._fallback.discard(key, value)
        try:
            self._discard(keys=[self._key(key)], args=[value])
        except redis.RedisError as exc:
            self._unavailable(exc)

    def renewal_lock(self, key: str, ttl_s: float) -> bool:
        try:
            return bool(self._redis.set(f"{self._key(key)}:lock", "1", nx=True, px=int(ttl_s * 1000)))
        except redis.RedisError as exc:
            self._unavailable(exc)
        if self._fallback.renewal_lock(key, ttl_s):
            self._local_locks.add(key)
            return True
        return False

    def release_lock(self, key: str) -> None:
        if key in self._local_locks:
            self._local_locks.discard(key)
            self._fallback.release_lock(key)
            return
        try:
            self._redis.delete(f"{self._key(key)}:lock")
        except redis.RedisError as exc:
            self._unavailable(exc)  # the lock expires on its own

    def refusal(self, key: str) -> Refusal | None:
        try:
            raw = self._redis.get(f"{self._key(key)}:refused")
        except redis.RedisError as exc:
            self._unavailable(exc)
            return self._fallback.refusal(key)
        if raw is None:
            return None
        data = json.loads(raw)
        return Refusal(float(data["until"]), int(data["count"]), str(data["detail"]))

    def refuse(self, key: str, refusal: Refusal, *, keep_s: float) -> None:
        self._fallback.refuse(key, refusal, keep_s=keep_s)
        payload = json.dumps({"until": refusal.until, "count": refusal.count, "detail": refusal.detail})
        try:
            self._redis.set(f"{self._key(key)}:refused", payload, px=max(1, int(keep_s * 1000)))
        except redis.RedisError as exc:
            self._unavailable(exc)

    def clear_refusal(self, key: str) -> None:
        self._fallback.clear_refusal(key)
        try:
            self._redis.delete(f"{self._key(key)}:refused")
        except redis.RedisError as exc:
            self._unavailable(exc)
