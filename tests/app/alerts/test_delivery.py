"""The outbox sender against local fake PagerDuty, Slack and webhook servers over real HTTP: what each
sink receives, the order per alert, retries with back-off, the bound, and two senders at once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from app.alerts.conditions import Condition
from app.alerts.delivery import DeliveryPolicy, DeliveryReport, deliver_due
from app.alerts.service import AlertPolicy, acknowledge, observe, resolve
from app.alerts.sinks import SinkDirectory
from app.db.engine import make_engine, make_sessionmaker
from app.db.models import AlertDelivery
from app.facilities.schemas import AlertSinksFile, WebhookConfig
from app.facilities.senders import sender_check
from tests.app.alerts.conftest import T0, alerts_of, condition, deliveries_of
from tests.app.alerts.fake_sinks import FakeSink, fake_sink

POLICY = AlertPolicy(resolve_delay=timedelta(minutes=5), cooldown=timedelta(minutes=30))
SEND = DeliveryPolicy(max_attempts=5, retry_base=timedelta(seconds=30), retry_cap=timedelta(minutes=15))
WHSEC = "whsec_" + base64.b64encode(b"alert-webhook-signing-key-32byte").decode()
STATUS_PAGE = "https://status.example.org/ehr-ingest"


@pytest.fixture
def pagerduty() -> Iterator[FakeSink]:
    with fake_sink("pagerduty") as sink:
        yield sink


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSink]:
    with fake_sink("slack") as sink:
        monkeypatch.setenv(
            "EHRI_TEST_SLACK_URL", sink.url + "/services/T000/B000/XXXX"
        )  # the URL is the secret
        yield sink


@pytest.fixture
def webhook() -> Iterator[FakeSink]:
    with fake_sink("webhook") as sink:
        yield sink


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHRI_TEST_PD_KEY", "pd-routing-key-0123456789abcdef")
    monkeypatch.setenv("EHRI_TEST_WHSEC", WHSEC)


def directory(**sinks: FakeSink) -> SinkDirectory:
    configs: list[dict[str, Any]] = []
    for name, fake in sinks.items():
        if fake.flavour == "pagerduty":
            configs.append(
                {
                    "name": name,
                    "type": "pagerduty",
                    "routing_key": {"env": "EHRI_TEST_PD_KEY"},
                    "url": fake.url + "/v2/enqueue",
                }
            )
        elif fake.flavour == "slack":
            configs.append({"name": name, "type": "slack", "webhook_url": {"env": "EHRI_TEST_SLACK_URL"}})
        else:
            configs.append(
                {
                    "name": name,
                    "type": "webhook",
                    "url": fake.url + "/alerts",
                    "secret": {"env": "EHRI_TEST_WHSEC"},
                }
            )
    parsed = AlertSinksFile.model_validate({"sinks": configs})
    return SinkDirectory({s.name: s for s in parsed.sinks}, STATUS_PAGE)


def _observe(
    sessions: sessionmaker[Session], sinks: SinkDirectory, facility: str, minutes: float, *, holds: bool
) -> None:
    key = (facility, "facility", "feed_quiet")
    with sessions.begin() as session:
        router = sinks.router(session, {facility})
        conditions = [condition(facility, recovered=3)] if holds else []
        observe(session, conditions, {key}, T0 + timedelta(minutes=minutes), policy=POLICY, router=router)


def _deliver(
    sessions: sessionmaker[Session],
    sinks: SinkDirectory,
    http: httpx.Client,
    minutes: float,
    policy: DeliveryPolicy = SEND,
) -> DeliveryReport:
    return deliver_due(sessions, T0 + timedelta(minutes=minutes), http, policy=policy, sinks=sinks)


def _open_and_deliver(
    sessions: sessionmaker[Session], facility: str, http: httpx.Client, **sinks: FakeSink
) -> None:
    directory_ = directory(**sinks)
    _observe(sessions, directory_, facility, 0, holds=True)
    _deliver(sessions, directory_, http, 0)


def test_pagerduty_gets_one_trigger_and_one_resolve_with_the_same_dedup_key(
    sessions: sessionmaker[Session], committed_facility: str, pagerduty: FakeSink, http: httpx.Client
) -> None:
    sinks = directory(pd=pagerduty)
    _observe(sessions, sinks, committed_facility, 0, holds=True)
    _deliver(sessions, sinks, http, 0)
    _observe(sessions, sinks, committed_facility, 1, holds=True)  # held: nothing new to send
    _deliver(sessions, sinks, http, 1)
    _observe(sessions, sinks, committed_facility, 2, holds=False)
    _observe(sessions, sinks, committed_facility, 7, holds=False)  # resolved
    report = _deliver(sessions, sinks, http, 7)

    with sessions() as session:
        [alert] = alerts_of(session, committed_facility)
    events = [r.json() for r in pagerduty.received]
    assert [e["event_action"] for e in events] == ["trigger", "resolve"]
    assert {e["dedup_key"] for e in events} == {alert.dedup_key}
    assert {r.path for r in pagerduty.received} == {"/v2/enqueue"}
    assert all(e["routing_key"] == "pd-routing-key-0123456789abcdef" for e in events)
    payload = events[0]["payload"]
    assert payload["severity"] == "critical"
    assert payload["source"] == f"ehr-ingest/{committed_facility}"
    assert payload["component"] == "facility"
    assert payload["custom_details"]["alert_id"] == alert.id
    assert payload["custom_details"]["details"] == {"recovered": 3}
    assert "payload" not in events[1]
    assert (events[0]["client"], events[0]["client_url"]) == ("ehr-ingest", STATUS_PAGE)
    assert report.sent == 1


def test_a_sink_answering_500_for_a_while_is_retried_and_delivered_later_in_order(
    sessions: sessionmaker[Session], committed_facility: str, pagerduty: FakeSink, http: httpx.Client
) -> None:
    sinks = directory(pd=pagerduty)
    pagerduty.fail(3, 500)
    _observe(sessions, sinks, committed_facility, 0, holds=True)
    assert _deliver(sessions, sinks, http, 0).retried == 1
    with sessions.begin() as session:
        [alert] = alerts_of(session, committed_facility)
        resolve(session, alert.id, "alice", T0 + timedelta(seconds=10))  # queued behind the unsent trigger

    # Not due yet (30 s back-off), and the resolve must not overtake its trigger.
    assert _deliver(sessions, sinks, http, 0.25).sent == 0
    assert len(pagerduty.received) == 1
    _deliver(sessions, sinks, http, 0.5)  # 2nd attempt: 500, then 60 s
    _deliver(sessions, sinks, http, 1.5)  # 3rd attempt: 500, then 120 s
    report = _deliver(sessions, sinks, http, 3.5)

    assert report.sent == 2
    assert len(pagerduty.received) == 5
    assert [r.json()["event_action"] for r in pagerduty.accepted()] == ["trigger", "resolve"]
    with sessions() as session:
        states = session.execute(
            select(AlertDelivery.action, AlertDelivery.state, AlertDelivery.attempts)
            .where(AlertDelivery.alert_id == alert.id)
            .order_by(AlertDelivery.id)
        ).all()
    assert [tuple(s) for s in states] == [("trigger", "sent", 4), ("resolve", "sent", 1)]


def test_after_the_bound_a_delivery_fails_and_its_sink_is_reported_to_the_other_sinks(
    sessions: sessionmaker[Session],
    committed_facility: str,
    pagerduty: FakeSink,
    webhook: FakeSink,
    http: httpx.Client,
) -> None:
    sinks = directory(pd=pagerduty, hook=webhook)
    pagerduty.fail(100, 503)
    bound = DeliveryPolicy(max_attempts=2, retry_base=timedelta(seconds=30))
    _observe(sessions, sinks, committed_facility, 0, holds=True)
    first = _deliver(sessions, sinks, http, 0, bound)
    report = _deliver(sessions, sinks, http, 1, bound)

    assert (first.retried, first.sent) == (1, 1)  # the webhook got its trigger meanwhile
    assert report.failed == 1
    [failing] = report.conditions
    assert failing.key == (committed_facility, "sink:pd", "sink_failing")
    assert failing.details["reason"] == "sink_unavailable"
    with sessions.begin() as session:
        result = observe(
            session,
            report.conditions,
            report.evaluated,
            T0 + timedelta(minutes=1),
            policy=POLICY,
            router=sinks.router(session, {committed_facility}),
        )
        [sink_alert_id] = result.opened
        assert deliveries_of(session, sink_alert_id) == [("hook", "trigger", "pending")]  # never to pd itself


def test_a_refusal_fails_the_delivery_at_once(
    sessions: sessionmaker[Session], committed_facility: str, pagerduty: FakeSink, http: httpx.Client
) -> None:
    sinks = directory(pd=pagerduty)
    pagerduty.fail(1, 400)  # PagerDuty's "invalid event": sending it again cannot help
    _observe(sessions, sinks, committed_facility, 0, holds=True)

    report = _deliver(sessions, sinks, http, 0)

    assert report.failed == 1
    assert report.conditions[0].details["reason"] == "sink_rejected"
    assert len(pagerduty.received) == 1


def test_an_acknowledge_reaches_pagerduty_under_the_same_dedup_key(
    sessions: sessionmaker[Session], committed_facility: str, pagerduty: FakeSink, http: httpx.Client
) -> None:
    sinks = directory(pd=pagerduty)
    _observe(sessions, sinks, committed_facility, 0, holds=True)
    with sessions.begin() as session:
        [alert] = alerts_of(session, committed_facility)
        dedup_key = alert.dedup_key
        acknowledge(session, alert.id, "alice", T0)
    _deliver(sessions, sinks, http, 0)

    assert [(e["event_action"], e["dedup_key"]) for e in (r.json() for r in pagerduty.received)] == [
        ("trigger", dedup_key),
        ("acknowledge", dedup_key),
    ]


def test_slack_gets_a_readable_block_kit_message_linking_the_status_page(
    sessions: sessionmaker[Session], committed_facility: str, slack: FakeSink, http: httpx.Client
) -> None:
    _open_and_deliver(sessions, committed_facility, http, ops=slack)

    [request] = slack.received
    assert request.path == "/services/T000/B000/XXXX"
    message = request.json()
    header = message["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["text"] == f"Alert: feed_quiet at {committed_facility} (critical)"
    text = json.dumps(message["blocks"])
    assert f"<{STATUS_PAGE}|Open the status page>" in text
    assert "ehri:" in text  # the dedup key, for whoever looks it up
    assert message["text"].startswith("Alert: feed_quiet")


def test_the_webhook_is_signed_the_standard_webhooks_way(
    sessions: sessionmaker[Session], committed_facility: str, webhook: FakeSink, http: httpx.Client
) -> None:
    _open_and_deliver(sessions, committed_facility, http, hook=webhook)

    [request] = webhook.received
    msg_id, stamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
    version, _, signature = request.headers["webhook-signature"].partition(",")
    # An independent check, from the specification: HMAC-SHA256 over "{id}.{timestamp}.{body}" with the
    # base64-decoded part of the whsec_ secret, base64 encoded, under version v1.
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{stamp}.".encode() + request.body, hashlib.sha256).digest()
    )
    assert version == "v1"
    assert hmac.compare_digest(signature.encode(), expected)
    assert abs(int(stamp) - time.time()) < 60  # signed when sent, whatever the pass's due time
    assert (
        msg_id == f"ehri-delivery-{_delivery_ids(sessions, committed_facility)[0]}"
    )  # stable across retries
    # ... and our own receiver accepts it.
    check = sender_check(
        WebhookConfig.model_validate({"method": "standard-webhooks", "secret": {"env": "EHRI_TEST_WHSEC"}})
    )
    assert check.check(request.headers, request.body, now=time.time()) is None
    document = request.json()
    assert document["type"] == "alert.trigger"
    assert document["data"]["facility_id"] == committed_facility


def _delivery_ids(sessions: sessionmaker[Session], facility: str) -> list[int]:
    with sessions() as session:
        [alert] = alerts_of(session, facility)
        return list(
            session.scalars(
                select(AlertDelivery.id).where(AlertDelivery.alert_id == alert.id).order_by(AlertDelivery.id)
            )
        )


def test_two_senders_at_once_send_each_delivery_once(
    sessions: sessionmaker[Session], engine: Engine, committed_facility: str, pagerduty: FakeSink
) -> None:
    sinks = directory(pd=pagerduty)
    with sessions.begin() as session:
        conditions = [condition(committed_facility, source=f"subscription:{i}") for i in range(20)]
        observe(
            session, conditions, set(), T0, policy=POLICY, router=sinks.router(session, {committed_facility})
        )
    reports: list[DeliveryReport] = []

    def sender() -> None:
        with httpx.Client() as client:
            reports.append(_deliver(sessions, sinks, client, 0))

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    keys = [r.json()["dedup_key"] for r in pagerduty.received]
    assert len(keys) == 20
    assert len(set(keys)) == 20
    assert sum(r.sent for r in reports) == 20


def test_a_delivery_to_a_sink_no_longer_configured_fails_as_unconfigured(
    sessions: sessionmaker[Session], committed_facility: str, pagerduty: FakeSink, http: httpx.Client
) -> None:
    _observe(sessions, directory(pd=pagerduty), committed_facility, 0, holds=True)

    report = _deliver(sessions, directory(), http, 0)

    assert report.conditions[0].details["reason"] == "sink_unconfigured"
    assert pagerduty.received == []


def test_a_failing_sink_that_delivers_again_is_healthy_for_every_facility(
    sessions: sessionmaker[Session],
    commit_facility: Callable[[str], str],
    pagerduty: FakeSink,
    webhook: FakeSink,
    http: httpx.Client,
) -> None:
    committed_facility, other = commit_facility("alerts-failed-at"), commit_facility("alerts-sent-at")
    sinks = directory(pd=pagerduty, hook=webhook)
    once = DeliveryPolicy(max_attempts=1)
    pagerduty.fail(1, 503)
    _observe(sessions, sinks, committed_facility, 0, holds=True)
    failed = _deliver(sessions, sinks, http, 0, once)
    with sessions.begin() as session:
        router = sinks.router(session, {committed_facility})
        observe(session, failed.conditions, failed.evaluated, T0, policy=POLICY, router=router)
    _observe(sessions, sinks, other, 1, holds=True)  # another facility's alert, to pd

    delivered = _deliver(sessions, sinks, http, 1, once)

    assert (committed_facility, "sink:pd", "sink_failing") in delivered.evaluated
    assert delivered.conditions == []


def test_a_failing_sink_that_delivered_again_resolves_after_the_delay_with_nothing_more_to_send(
    sessions: sessionmaker[Session],
    commit_facility: Callable[[str], str],
    pagerduty: FakeSink,
    webhook: FakeSink,
    http: httpx.Client,
) -> None:
    """Evaluated healthy only when it delivers, a sink that delivered once again would wait for another
    delivery, the resolve delay later, to resolve its sink_failing: on a calm night, never."""
    committed_facility, other = commit_facility("alerts-failed-at"), commit_facility("alerts-sent-at")
    sinks = directory(pd=pagerduty, hook=webhook)
    once = DeliveryPolicy(max_attempts=1)
    pagerduty.fail(1, 503)
    _observe(sessions, sinks, committed_facility, 0, holds=True)

    def cycle(minutes: float) -> list[int]:
        report = _deliver(sessions, sinks, http, minutes, once)
        with sessions.begin() as session:
            router = sinks.router(session, {committed_facility, other})
            now = T0 + timedelta(minutes=minutes)
            return observe(
                session, report.conditions, report.evaluated, now, policy=POLICY, router=router
            ).resolved

    assert cycle(0) == []  # pd failed: sink_failing opened
    _observe(sessions, sinks, other, 1, holds=True)  # another alert, to pd: delivered
    assert cycle(1) == []  # healthy since minute 1
    resolved = cycle(7)  # nothing left to send

    with sessions.begin() as session:
        [sink_alert] = [a for a in alerts_of(session, committed_facility) if a.kind == "sink_failing"]
        assert resolved == [sink_alert.id]
        assert sink_alert.state == "resolved"


def test_a_failing_sink_with_a_delivery_backing_off_again_does_not_resolve(
    sessions: sessionmaker[Session],
    commit_facility: Callable[[str], str],
    pagerduty: FakeSink,
    webhook: FakeSink,
    http: httpx.Client,
) -> None:
    committed_facility, other = commit_facility("alerts-failed-at"), commit_facility("alerts-sent-at")
    sinks = directory(pd=pagerduty, hook=webhook)
    patient = DeliveryPolicy(max_attempts=3, retry_base=timedelta(hours=1))
    pagerduty.fail(1, 503)
    _observe(sessions, sinks, committed_facility, 0, holds=True)

    def cycle(minutes: float, policy: DeliveryPolicy) -> list[int]:
        report = _deliver(sessions, sinks, http, minutes, policy)
        with sessions.begin() as session:
            router = sinks.router(session, {committed_facility, other})
            now = T0 + timedelta(minutes=minutes)
            return observe(
                session, report.conditions, report.evaluated, now, policy=POLICY, router=router
            ).resolved

    cycle(0, DeliveryPolicy(max_attempts=1))  # pd failed: sink_failing opened
    _observe(sessions, sinks, other, 1, holds=True)
    cycle(1, patient)  # delivered to pd: healthy since minute 1
    _observe(sessions, sinks, other, 2, holds=False)
    _observe(sessions, sinks, other, 8, holds=False)  # resolved: its resolve goes to pd
    pagerduty.fail(1, 503)
    cycle(8, patient)  # pd refuses it: backing off for an hour

    assert cycle(9, patient) == []  # not due, not sent, still refused: no resolve


def test_an_unexpected_error_of_one_delivery_does_not_stop_the_others(
    sessions: sessionmaker[Session], committed_facility: str, pagerduty: FakeSink, webhook: FakeSink
) -> None:
    real = httpx.HTTPTransport()

    def transport(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/alerts":  # the webhook sink: something no sink error covers
            raise RuntimeError("unexpected")
        response = real.handle_request(request)
        response.read()
        return response

    sinks = directory(pd=pagerduty, hook=webhook)
    _observe(sessions, sinks, committed_facility, 0, holds=True)
    with httpx.Client(transport=httpx.MockTransport(transport)) as client:
        report = _deliver(sessions, sinks, client, 0)

    assert (report.sent, report.retried) == (1, 1)
    assert len(pagerduty.received) == 1
    with sessions() as session:
        errors = session.scalars(select(AlertDelivery.last_error).where(AlertDelivery.sink == "hook")).all()
    assert errors == ["internal_error"]


@pytest.fixture
def process_sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on an engine as the processes build it (``app.db.engine``: jsonb read back with exact
    decimals), not the test suite's plain one."""
    engine = make_engine(database_url, pool_size=1)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def test_details_with_fractions_read_back_from_postgres_reach_pagerduty_and_the_webhook(
    process_sessions: sessionmaker[Session],
    committed_facility: str,
    pagerduty: FakeSink,
    webhook: FakeSink,
    http: httpx.Client,
) -> None:
    # jsonb is read back with exact decimals (app.db.engine): error_rate's rate and window are Decimals by
    # the time the sender, in another process, builds the bodies.
    sinks = directory(pd=pagerduty, hook=webhook)
    error_rate = Condition(
        committed_facility,
        "facility",
        "error_rate",
        "8 failures against 9 events",
        details={"failures": 8, "rate": 0.471, "window_s": 900.0},
    )
    with process_sessions.begin() as session:
        observe(
            session,
            [error_rate],
            set(),
            T0,
            policy=POLICY,
            router=sinks.router(session, {committed_facility}),
        )
    report = _deliver(process_sessions, sinks, http, 0)

    assert (report.sent, report.retried, report.failed) == (2, 0, 0)
    [trigger] = [r.json() for r in pagerduty.received]
    [hook] = [r.json() for r in webhook.received]
    expected = {"failures": 8, "rate": 0.471, "window_s": 900.0}
    assert trigger["payload"]["custom_details"]["details"] == expected
    assert hook["data"]["details"] == expected
