"""Per-facility politeness shared by every worker process: a request rate (token bucket), a cap on
requests in flight, and a facility-wide pause when the EHR says ``Retry-After``.

Everything lives in Redis under ``{prefix}polite:{facility_id}:*`` and is manipulated by Lua scripts, so
the limits hold across processes and machines. A wait longer than ``MAX_WAIT_S`` raises
PolitenessThrottled (FacilityPaused, ConcurrencyCapped: our own limit, not the EHR's), so the work goes
back to the Postgres back-off instead of holding a worker. If Redis is unreachable the limiter fails
open with a warning: politeness must not stop ingestion (the EHR's own 429s still apply).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Protocol

import redis
import structlog

from app.errors import ConcurrencyCapped, FacilityPaused
from app.facilities.schemas import LimitsConfig

log = structlog.get_logger("ehr.politeness")

MAX_WAIT_S = 60.0
# A slot held by a process that died is free again after this; a live holder renews its slots every
# third of it, however long its request takes (a killed worker must not block a concurrency-1 facility).
SLOT_TTL_S = 10.0

# Token bucket. Returns milliseconds to wait (0: a token was taken).
_TAKE = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return pause - now end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
if tokens >= 1 then
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'ts', now)
  redis.call('PEXPIRE', KEYS[1], 60000)
  return 0
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], 60000)
return math.ceil((1 - tokens) * 1000 / rate)
"""

# Counting semaphore in a sorted set scored by expiry. Returns 1 when the slot was taken.
_ACQUIRE = """
local now, limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
return 0
"""

# Extend a facility-wide pause (never shorten one another process set).
_PAUSE = """
local pause_until = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < pause_until then
  redis.call('SET', KEYS[1], pause_until, 'PX', math.max(1, pause_until - tonumber(ARGV[2])))
end
return 1
"""


class Politeness(Protocol):
    def slot(self) -> contextlib.AbstractContextManager[None]: ...
    def pause(self, seconds: float) -> None: ...


class Unlimited:
    """No shared limits (unit tests, one-off CLI reads)."""

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        yield

    def pause(self, seconds: float) -> None:
        return None


class RedisPoliteness:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        facility_id: str,
        limits: LimitsConfig,
        *,
        max_wait_s: float = MAX_WAIT_S,
        slot_ttl_s: float = SLOT_TTL_S,
    ) -> None:
        self._limits = limits
        self._max_wait_s = max_wait_s
        self._slot_ttl_ms = int(slot_ttl_s * 1000)
        self._redis = client
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        base = f"{prefix}polite:{facility_id}"
        self._bucket, self._pause_key, self._slots = f"{base}:bucket", f"{base}:pause", f"{base}:slots"
        self._facility_id = facility_id
        self._take = client.register_script(_TAKE)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.zrem
        self._set_pause = client.register_script(_PAUSE)

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Wait for a rate token and a concurrency slot (bounded by MAX_WAIT_S), hold it for one request."""
        member = uuid.uuid4().hex
        acquired = False
        try:
            acquired = self._wait_for_slot(member)
        except redis.RedisError as exc:
            log.warning("ehr.politeness.unavailable", facility_id=self._facility_id, error=type(exc).__name__)
        if acquired:
            self._hold(member)
        try:
            yield
        finally:
            if acquired:
                with self._held_lock:
                    self._held.discard(member)
                with contextlib.suppress(redis.RedisError):
                    self._release(self._slots, member)

    def _hold(self, member: str) -> None:
        with self._held_lock:
            self._held.add(member)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_slots, name="slot-renewer", daemon=True)
                self._renewer.start()

    def _renew_slots(self) -> None:
        """While this process holds slots, push their expiry forward; the thread ends when none is held."""
        while True:
            time.sleep(self._slot_ttl_ms / 3000)
            with self._held_lock:
                members = list(self._held)
                if not members:
                    self._renewer = None
                    return
            expires = self._now_ms() + self._slot_ttl_ms
            try:
                self._redis.zadd(self._slots, dict.fromkeys(members, expires), xx=True)
                self._redis.pexpire(self._slots, self._slot_ttl_ms)
            except redis.RedisError as exc:
                log.warning(
                    "ehr.politeness.unavailable", facility_id=self._facility_id, error=type(exc).__name__
                )

    def _wait_for_slot(self, member: str) -> bool:
        deadline = time.monotonic() + self._max_wait_s
        while True:
            wait_ms = int(
                self._take(
                    keys=[self._bucket, self._pause_key],
                    args=[self._limits.requests_per_second, self._limits.burst, self._now_ms()],
                )
            )
            if wait_ms == 0:
                break
            if time.monotonic() + wait_ms / 1000 > deadline:
                # A long facility-wide pause: hand the work back to the Postgres back-off.
                raise FacilityPaused("facility paused by Retry-After", retry_after=wait_ms / 1000)
            time.sleep(min(wait_ms / 1000, 1.0))
        ttl_ms = self._slot_ttl_ms
        while time.monotonic() < deadline:
            if int(
                self._acquire(
                    keys=[self._slots], args=[self._now_ms(), self._limits.concurrency, ttl_ms, member]
                )
            ):
                return True
            time.sleep(0.01)
        raise ConcurrencyCapped("no request slot free for the facility", retry_after=5.0)

    def pause(self, seconds: float) -> None:
        """The EHR asked us to back off (429/503 with Retry-After): every process of the facility waits."""
        now = self._now_ms()
        try:
            self._set_pause(keys=[self._pause_key], args=[now + int(seconds * 1000), now])
        except redis.RedisError as exc:
            log.warning("ehr.politeness.unavailable", facility_id=self._facility_id, error=type(exc).__name__)
        log.info("ehr.politeness.paused", facility_id=self._facility_id, seconds=round(seconds, 3))
