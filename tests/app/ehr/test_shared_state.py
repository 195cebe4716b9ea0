"""Token cache and politeness shared across processes through real Redis (private key space)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import sessionmaker

from app.ehr.auth import SmartBackendAuth
from app.ehr.politeness import BACKGROUND, LIVE, Priority, RedisPoliteness
from app.ehr.token_cache import RedisTokenCache, Refusal
from app.ehr.token_events import TokenEventSink, database_sink, log_only
from app.errors import EHRAuthRejected, PolitenessThrottled, TokenEndpointFlaky, YieldedToLive
from app.facilities.schemas import AuthConfig, LimitsConfig
from tests.conftest import REDIS_URL
from tests.ehr_mocks import BASE, TOKEN_URL, keypair


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def _auth(
    transport: httpx.MockTransport,
    cache: RedisTokenCache,
    method: str = "private_key_jwt",
    events: TokenEventSink = log_only,
    clock: Callable[[], float] = time.time,
) -> SmartBackendAuth:
    config = AuthConfig.model_validate(
        {
            "method": method,
            "client_id": "c 1",
            "token_url": TOKEN_URL,
            "private_key": {"env": "X"},
            "client_secret": {"env": "X"},
        }
    )
    secret = keypair()[0] if method == "private_key_jwt" else "s3cr:et"
    return SmartBackendAuth(
        facility_id="fac-1",
        base_url=BASE,
        config=config,
        private_key=secret,
        http=httpx.Client(transport=transport),
        cache=cache,
        events=events,
        clock=clock,
    )


def _token_endpoint(requests: list[httpx.Request], expires_in: int = 300) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"access_token": f"tok-{len(requests)}", "expires_in": expires_in})

    return httpx.MockTransport(handler)


def test_processes_share_one_token_through_redis(rds: redis.Redis, redis_prefix: str) -> None:
    requests: list[httpx.Request] = []
    transport = _token_endpoint(requests)
    workers = [_auth(transport, RedisTokenCache(rds, redis_prefix)) for _ in range(4)]
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda a=a: tokens.append(a.token())) for a in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(requests) == 1
    assert set(tokens) == {"tok-1"}


def test_rejected_token_is_discarded_for_everyone_and_renewed_once(
    rds: redis.Redis, redis_prefix: str
) -> None:
    requests: list[httpx.Request] = []
    transport = _token_endpoint(requests)
    a, b = (_auth(transport, RedisTokenCache(rds, redis_prefix)) for _ in range(2))
    first = a.token()
    a.invalidate(first)
    b.invalidate(first)  # the second process learns the same thing: must not drop the renewed token
    assert b.token() == a.token() == "tok-2"
    assert len(requests) == 2


def test_token_lifecycle_is_recorded_apart_from_errors(
    rds: redis.Redis, redis_prefix: str, engine: Engine
) -> None:
    requests: list[httpx.Request] = []
    sink = database_sink(sessionmaker(engine))
    auth = _auth(_token_endpoint(requests), RedisTokenCache(rds, redis_prefix), events=sink)
    marker = "fac-1"
    with engine.begin() as conn:
        before = conn.execute(text("SELECT coalesce(max(id), 0) FROM token_events")).scalar_one()
    auth.invalidate(auth.token())
    auth.token()
    with engine.begin() as conn:
        events = (
            conn.execute(
                text("SELECT event FROM token_events WHERE id > :b AND facility_id = :f ORDER BY id"),
                {"b": before, "f": marker},
            )
            .scalars()
            .all()
        )
        conn.execute(text("DELETE FROM token_events WHERE id > :b"), {"b": before})
    assert events == ["issued", "expired_early", "renewed"]


def test_client_secret_basic_is_form_encoded_then_base64(rds: redis.Redis, redis_prefix: str) -> None:
    requests: list[httpx.Request] = []
    _auth(_token_endpoint(requests), RedisTokenCache(rds, redis_prefix), method="client_secret_basic").token()
    assert (
        requests[0].headers["authorization"]
        == "Basic " + __import__("base64").b64encode(b"c+1:s3cr%3Aet".replace(b"+", b"%20")).decode()
    )
    assert b"client_assertion" not in requests[0].content


def test_client_secret_post_sends_credentials_in_the_form(rds: redis.Redis, redis_prefix: str) -> None:
    requests: list[httpx.Request] = []
    _auth(_token_endpoint(requests), RedisTokenCache(rds, redis_prefix), method="client_secret_post").token()
    form = dict(httpx.QueryParams(requests[0].content.decode()))
    assert (form["client_id"], form["client_secret"]) == ("c 1", "s3cr:et")


def test_bare_400_from_the_token_endpoint_is_transient_but_invalid_client_is_not(
    rds: redis.Redis, redis_prefix: str
) -> None:
    bare = httpx.MockTransport(lambda _: httpx.Response(400, text="Bad Request"))
    with pytest.raises(TokenEndpointFlaky):
        _auth(bare, RedisTokenCache(rds, redis_prefix)).token()
    refused = httpx.MockTransport(lambda _: httpx.Response(400, json={"error": "invalid_client"}))
    with pytest.raises(EHRAuthRejected):
        _auth(refused, RedisTokenCache(rds, redis_prefix)).token()


def test_a_refusal_of_our_credentials_stops_every_process_asking_until_its_back_off_ran_out(
    rds: redis.Redis, redis_prefix: str
) -> None:
    requests: list[httpx.Request] = []
    answers = [httpx.Response(401, json={"error": "invalid_client"})] * 2 + [
        httpx.Response(200, json={"access_token": "tok-back", "expires_in": 300})
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answers[len(requests) - 1]

    now = [time.time()]
    a, b = (
        _auth(httpx.MockTransport(handler), RedisTokenCache(rds, redis_prefix), clock=lambda: now[0])
        for _ in range(2)
    )
    for auth in (a, b, a, b):  # every drain and reconcile run of every process wants a token
        with pytest.raises(EHRAuthRejected):
            auth.token()
    assert len(requests) == 1

    now[0] += 61  # the first back-off (60 s) ran out: one process asks once; refused, it doubles
    for auth in (b, a, b):
        with pytest.raises(EHRAuthRejected):
            auth.token()
    assert len(requests) == 2
    now[0] += 119
    with pytest.raises(EHRAuthRejected):
        a.token()
    assert len(requests) == 2

    now[0] += 2  # 120 s after the second refusal: credentials restored, the token is issued
    assert a.token() == b.token() == "tok-back"
    assert len(requests) == 3


def test_credentials_refused_for_weeks_still_back_off_at_the_cap(rds: redis.Redis, redis_prefix: str) -> None:
    """Revoked credentials left in place: one refusal every 15 min, consecutive for weeks (the count
    past a thousand). Its back-off stays the cap; it must not overflow and leave nothing recorded (every
    caller then asks the token endpoint again)."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(401, json={"error": "invalid_client"})

    now = [time.time()]
    cache = RedisTokenCache(rds, redis_prefix)
    a = _auth(httpx.MockTransport(handler), cache, clock=lambda: now[0])
    key = a._key
    cache.refuse(key, Refusal(now[0] - 1, 14 * 24 * 4, "401 invalid_client"), keep_s=900)  # two weeks

    for _ in range(3):
        with pytest.raises(EHRAuthRejected):
            a.token()

    assert len(requests) == 1
    refusal = cache.refusal(key)
    assert refusal is not None
    assert refusal.count == 14 * 24 * 4 + 1
    assert refusal.until == pytest.approx(now[0] + 900)  # the cap


def _polite(rds: redis.Redis, prefix: str, **limits: float) -> RedisPoliteness:
    return RedisPoliteness(rds, prefix, "fac-1", LimitsConfig.model_validate(limits), max_wait_s=0.3)


def test_rate_limit_is_shared_between_processes(rds: redis.Redis, redis_prefix: str) -> None:
    a = _polite(rds, redis_prefix, requests_per_second=0.01, burst=2)
    b = _polite(rds, redis_prefix, requests_per_second=0.01, burst=2)
    with a.slot():
        pass
    with b.slot():
        pass
    with pytest.raises(PolitenessThrottled) as info, a.slot():
        pass
    assert info.value.retry_after is not None
    assert info.value.retry_after > 1


def test_concurrency_cap_holds_across_processes(rds: redis.Redis, redis_prefix: str) -> None:
    a = _polite(rds, redis_prefix, concurrency=1, burst=10)
    b = _polite(rds, redis_prefix, concurrency=1, burst=10)
    with a.slot(), pytest.raises(PolitenessThrottled), b.slot():
        pass
    with b.slot():  # released: free again
        pass


def test_retry_after_pauses_the_whole_facility(rds: redis.Redis, redis_prefix: str) -> None:
    a = _polite(rds, redis_prefix, burst=10)
    b = _polite(rds, redis_prefix, burst=10)
    a.pause(30)
    with pytest.raises(PolitenessThrottled) as info, b.slot():
        pass
    assert 25 < (info.value.retry_after or 0) <= 30


SLOT_TTL_S = 0.3


def _capped(rds: redis.Redis, prefix: str, *, max_wait_s: float) -> RedisPoliteness:
    limits = LimitsConfig.model_validate({"concurrency": 1, "burst": 100, "requests_per_second": 100})
    return RedisPoliteness(rds, prefix, "fac-1", limits, max_wait_s=max_wait_s, slot_ttl_s=SLOT_TTL_S)


def test_the_slot_of_a_process_that_died_mid_request_is_free_again_within_seconds(
    rds: redis.Redis, redis_prefix: str
) -> None:
    dead = _capped(rds, redis_prefix, max_wait_s=1)
    # What a worker killed mid-request leaves: a slot taken (the acquire path of slot()), never released
    # nor renewed.
    dead._wait_for_slot("killed-mid-request")
    survivor = _capped(rds, redis_prefix, max_wait_s=5 * SLOT_TTL_S)

    with survivor.slot():  # would raise ConcurrencyCapped if the dead slot were held for long
        pass


def test_a_live_request_keeps_its_slot_however_long_it_takes(rds: redis.Redis, redis_prefix: str) -> None:
    holder = _capped(rds, redis_prefix, max_wait_s=1)
    other = _capped(rds, redis_prefix, max_wait_s=4 * SLOT_TTL_S)

    with holder.slot(), pytest.raises(PolitenessThrottled), other.slot():  # waits past several TTLs
        pass


def test_tokens_are_kept_in_process_while_redis_is_unreachable(redis_prefix: str) -> None:
    """Redis is the doorbell and a cache: losing it must not fail fetches (politeness fails open too)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from devstack.processes import free_port

    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    requests: list[httpx.Request] = []
    auth = _auth(_token_endpoint(requests), RedisTokenCache(unreachable, redis_prefix))

    first = auth.token()
    assert auth.token() == first
    auth.invalidate(first)
    assert auth.token() == "tok-2"
    assert len(requests) == 2


# -- live fetches before background reads (a backfill never starves the live feed) ------------------


def _prioritized(
    rds: redis.Redis, prefix: str, priority: Priority, *, max_wait_s: float = 0.3, **limits: float
) -> RedisPoliteness:
    config = LimitsConfig.model_validate(limits)
    return RedisPoliteness(rds, prefix, "fac-1", config, max_wait_s=max_wait_s, priority=priority)


def test_a_live_fetch_waits_at_most_one_token_while_background_readers_keep_the_budget_busy(
    rds: redis.Redis, redis_prefix: str
) -> None:
    limits = {"requests_per_second": 10, "burst": 1, "concurrency": 10}
    stop = threading.Event()
    taken = [0]

    def backfill() -> None:
        reader = _prioritized(rds, redis_prefix, BACKGROUND, max_wait_s=30, **limits)
        while not stop.is_set():
            with reader.slot():
                taken[0] += 1

    readers = [threading.Thread(target=backfill, daemon=True) for _ in range(4)]
    for reader in readers:
        reader.start()
    live = _prioritized(rds, redis_prefix, LIVE, max_wait_s=30, **limits)
    waits = []
    try:
        time.sleep(0.3)  # the backfill has the budget to itself: not a synchronisation
        for _ in range(6):
            started = time.monotonic()
            with live.slot():
                waits.append(time.monotonic() - started)
            time.sleep(0.15)
    finally:
        stop.set()
        for reader in readers:
            reader.join(5)
    print(
        f"\nlive waits with 4 background readers at 10/s: {[round(w, 3) for w in waits]};"
        f" background took {taken[0]}"
    )
    assert max(waits) < 0.2  # one token interval (0.1 s) plus scheduling, never behind the readers
    assert taken[0] > 0  # the backfill still progressed


def test_background_reads_leave_a_reserve_of_tokens_for_live_fetches(
    rds: redis.Redis, redis_prefix: str
) -> None:
    limits = {"requests_per_second": 0.01, "burst": 4, "concurrency": 10}
    background = _prioritized(rds, redis_prefix, BACKGROUND, **limits)
    for _ in range(3):
        with background.slot():
            pass
    with pytest.raises(YieldedToLive), background.slot():
        pass
    with _prioritized(rds, redis_prefix, LIVE, **limits).slot():  # the reserved token, at once
        pass


def test_background_reads_leave_one_request_slot_to_live_fetches(rds: redis.Redis, redis_prefix: str) -> None:
    limits = {"requests_per_second": 100, "burst": 100, "concurrency": 2}
    background = _prioritized(rds, redis_prefix, BACKGROUND, **limits)
    with background.slot():
        with pytest.raises(YieldedToLive), _prioritized(rds, redis_prefix, BACKGROUND, **limits).slot():
            pass
        with _prioritized(rds, redis_prefix, LIVE, **limits).slot():
            pass


def test_a_live_fetch_that_gave_up_waiting_no_longer_holds_background_reads_back(
    rds: redis.Redis, redis_prefix: str
) -> None:
    limits = {"requests_per_second": 100, "burst": 100, "concurrency": 1}
    holder = _prioritized(rds, redis_prefix, BACKGROUND, **limits)
    with (
        holder.slot(),
        pytest.raises(PolitenessThrottled),
        _prioritized(rds, redis_prefix, LIVE, **limits).slot(),
    ):
        pass
    with _prioritized(rds, redis_prefix, BACKGROUND, max_wait_s=0.05, **limits).slot():
        pass
