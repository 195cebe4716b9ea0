"""Per-facility politeness shared by every worker process: a request rate (token bucket), a cap on
requests in flight, and a facility-wide pause when the EHR says ``Retry-After``.

Everything lives in Redis under ``{prefix}polite:{facility_id}:*`` and is manipulated by Lua scripts, so
the limits hold across processes and machines. A wait longer than ``MAX_WAIT_S`` raises
PolitenessThrottled (FacilityPaused, ConcurrencyCapped: our own limit, not the EHR's), so the work goes
back to the Postgres back-off instead of holding a worker. If Redis is unreachable the limiter fails
open with a warning: politeness must not stop ingestion (the EHR's own 429s still apply).

Two priorities share the facility's budget (DESIGN.md: a backfill must never starve the live feed).
``LIVE`` requests (notification fetches) that have to wait register in ``{base}:live``, a sorted set
scored by expiry. While any is registered, ``BACKGROUND`` requests (reconcile and backfill reads) take
neither a token nor a slot; and even with none waiting, a background request leaves a share of the
burst (``LIVE_RESERVE_SHARE``, at least one token when the burst allows) in the bucket and one
concurrency slot free (when the facility allows more than one), so a notification that arrives
mid-backfill finds its token and slot at once. A background request kept waiting past ``MAX_WAIT_S``
raises ``YieldedToLive`` (its reconcile type stops there and continues next run).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Literal, Protocol

import redis
import structlog

from app.errors import ConcurrencyCapped, FacilityPaused, YieldedToLive
from app.facilities.schemas import LimitsConfig

log = structlog.get_logger("ehr.politeness")

MAX_WAIT_S = 60.0
# A slot held by a process that died is free again after this; a live holder renews its slots every
# third of it, however long its request takes (a killed worker must not block a concurrency-1 facility).
SLOT_TTL_S = 10.0
# A waiting live request re-registers on every try (at most a second apart); one that died is forgotten
# after this, so background reads resume.
LIVE_WAITER_TTL_MS = 2500
# The share of the burst that background reads leave in the bucket for live fetches.
LIVE_RESERVE_SHARE = 0.25

Priority = Literal["live", "background"]
LIVE: Priority = "live"
BACKGROUND: Priority = "background"

# Token bucket with priorities. Returns milliseconds to wait (0: a token was taken).
# KEYS: bucket, pause, live waiters. ARGV: rate, burst, now, background (0|1), member, reserve, waiter ttl.
_TAKE = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local background, member = ARGV[4] == '1', ARGV[5]
local reserve, waiter_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return pause - now end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local need = 1
if background then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) > 0 then
    need = burst + 1  -- live fetches are waiting: yield to them
  else
    need = 1 + reserve
  end
end
if tokens >= need then
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'ts', now)
  redis.call('PEXPIRE', KEYS[1], 60000)
  if not background then redis.call('ZREM', KEYS[3], member) end
  return 0
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], 60000)
if not background then
  redis.call('ZADD', KEYS[3], now + waiter_ttl, member)
  redis.call('PEXPIRE', KEYS[3], waiter_ttl)
end
if need > burst then return math.max(5, math.ceil(1000 / rate)) end
return math.max(1, math.ceil((need - tokens) * 1000 / rate))
"""

# Counting semaphore in a sorted set scored by expiry. Returns 1 when the slot was taken.
# KEYS: slots, live waiters. ARGV: now, limit, ttl, member, background (0|1), waiter ttl. A background
# request takes a slot only when no live request waits and ``limit`` (already lowered by the caller to
# leave live a slot) allows; a live request that finds none registers as waiting.
_ACQUIRE = """
local now, limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local background, waiter_ttl = ARGV[5] == '1', tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if background then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ttl)
  if not background then redis.call('ZREM', KEYS[2], ARGV[4]) end
  return 1
end
if not background then
  redis.call('ZADD', KEYS[2], now + waiter_ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], waiter_ttl)
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
        priority: Priority = LIVE,
    ) -> None:
        self._limits = limits
        self._background = priority == BACKGROUND
        # What background reads leave to live fetches: some tokens, and one slot when there are several.
        self._reserve = min(limits.burst - 1, max(1, int(limits.burst * LIVE_RESERVE_SHARE)))
        self._slot_limit = limits.concurrency
        if self._background and limits.concurrency > 1:
            self._slot_limit = limits.concurrency - 1
        self._max_wait_s = max_wait_s
        self._slot_ttl_ms = int(slot_ttl_s * 1000)
        self._redis = client
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        base = f"{prefix}polite:{facility_id}"
        self._bucket, self._pause_key, self._slots = f"{base}:bucket", f"{base}:pause", f"{base}:slots"
        self._live = f"{base}:live"
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
        finally:
            if not acquired and not self._background:  # gave up waiting: background reads may go on
                with contextlib.suppress(redis.RedisError):
                    self._redis.zrem(self._live, member)
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
        background = "1" if self._background else "0"
        while True:
            wait_ms = int(
                self._take(
                    keys=[self._bucket, self._pause_key, self._live],
                    args=[
                        self._limits.requests_per_second,
                        self._limits.burst,
                        self._now_ms(),
                        background,
                        member,
                        self._reserve,
                        LIVE_WAITER_TTL_MS,
                    ],
                )
            )
            if wait_ms == 0:
                break
            if time.monotonic() + wait_ms / 1000 > deadline:
                if self._background and not self._paused():
                    raise YieldedToLive("background read waited behind live fetches", retry_after=5.0)
                # A long facility-wide pause: hand the work back to the Postgres back-off.
                raise FacilityPaused("facility paused by Retry-After", retry_after=wait_ms / 1000)
            time.sleep(min(wait_ms / 1000, 1.0))
        ttl_ms = self._slot_ttl_ms
        while time.monotonic() < deadline:
            if int(
                self._acquire(
                    keys=[self._slots, self._live],
                    args=[self._now_ms(), self._slot_limit, ttl_ms, member, background, LIVE_WAITER_TTL_MS],
                )
            ):
                return True
            time.sleep(0.01)
        if self._background:
            raise YieldedToLive("no request slot left to background reads", retry_after=5.0)
        raise ConcurrencyCapped("no request slot free for the facility", retry_after=5.0)

    def _paused(self) -> bool:
        return int(self._redis.get(self._pause_key) or 0) > self._now_ms()

    def pause(self, seconds: float) -> None:
        """The EHR asked us to back off (429/503 with Retry-After): every process of the facility waits."""
        now = self._now_ms()
        try:
            self._set_pause(keys=[self._pause_key], args=[now + int(seconds * 1000), now])
        except redis.RedisError as exc:
            log.warning("ehr.politeness.unavailable", facility_id=self._facility_id, error=type(exc).__name__)
        log.info("ehr.politeness.paused", facility_id=self._facility_id, seconds=round(seconds, 3))
