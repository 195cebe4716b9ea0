"""The subscription lifecycle against ehrsim over real HTTP: subscribe and unsubscribe are idempotent on
the HAPI, Medplum and generic (backport) profiles; a subscription forced to ``error`` is re-activated (a
handshake follows) and the window since its last good event is recorded for the reconciler."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Facility, FacilitySubscription, ReconcileRequest, SubscriptionLedger
from app.ehr.client import EHRClient
from app.reconcile.subscriptions import check_subscription, subscribe, unsubscribe
from tests.conftest import make_facility
from tests.integration.conftest import Sim

SECRET = "s3cret-for-subscriptions"
SCOPES = ["system/*.read", "system/Subscription.cruds"]


class _Receiver(BaseHTTPRequestHandler):
    """Our receiver's stand-in: answers 200 to every delivery and keeps what it was sent."""

    received: list[tuple[str, dict[str, str]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_PUT(self) -> None:  # HAPI with a payload PUTs {endpoint}/{Type}/{id}
        self.do_POST()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    finally:
        server.shutdown()


def _facility(
    db: Session, sim: Sim, profile: str, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Facility:
    monkeypatch.setenv("EHRI_TEST_WEBHOOK_SECRET", SECRET)
    facility = make_facility(db, profile, base_url=sim.base(profile))
    facility.vendor = profile
    if profile == "medplum":
        facility.webhook = {"method": "x-signature", "secret": {"env": "EHRI_TEST_WEBHOOK_SECRET"}}
    if profile in ("medplum", "hapi"):
        facility.subscription = {
            "style": "criteria",
            "criteria": "Observation",
            "endpoint": f"{endpoint}/{profile}",
        }
    else:
        facility.subscription = {
            "style": "backport-r4",
            "topic": "http://example.org/fhir/SubscriptionTopic/all-changes",
            "endpoint": f"{endpoint}/{profile}",
            "heartbeat_s": 1,  # the server raises it to its minimum
            "lifetime_days": 30,
        }
    db.flush()
    return facility


def _at_ehr(sim: Sim, profile: str) -> list[dict[str, Any]]:
    subscriptions: list[dict[str, Any]] = sim.admin(profile, "subscriptions")["subscriptions"]
    return subscriptions


def _poll(condition: Callable[[], bool], what: str, deadline_s: float = 15.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _client(sim: Sim, profile: str) -> EHRClient:
    return sim.client(profile, scopes=SCOPES)


@pytest.mark.parametrize("profile", ["hapi", "medplum", "generic"])
def test_subscribe_twice_keeps_one_subscription_and_unsubscribe_twice_removes_it(
    db: Session, sim: Sim, endpoint: str, monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    facility = _facility(db, sim, profile, endpoint, monkeypatch)
    client = _client(sim, profile)
    now = datetime.now(UTC)

    first = subscribe(db, facility, client, now=now)
    again = subscribe(db, facility, client, now=now)

    assert (first.result, again.result) == ("created", "unchanged")
    assert again.subscription_id == first.subscription_id
    at_ehr = _at_ehr(sim, profile)
    assert [s["id"] for s in at_ehr] == [first.subscription_id]
    row = db.get(FacilitySubscription, profile)
    assert row is not None
    if profile == "generic":
        assert row.heartbeat_s == 10  # what the server accepted, not the 1 s we asked for
        assert row.end is not None
        assert row.end > now + timedelta(days=29)
        header = at_ehr[0]["channel"]["header"]
        assert header == [f"Authorization: Bearer {SECRET}"]
        assert row.resource["channel"]["header"] == ["Authorization: ***"]  # never stored in the clear
    if profile == "medplum":
        assert SECRET not in str(row.resource)
    assert unsubscribe(db, facility, client) is True
    assert unsubscribe(db, facility, client) is False
    assert _at_ehr(sim, profile) == []


def test_a_changed_subscription_block_updates_the_same_subscription(
    db: Session, sim: Sim, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    facility = _facility(db, sim, "hapi", endpoint, monkeypatch)
    client = _client(sim, "hapi")
    first = subscribe(db, facility, client, now=datetime.now(UTC))
    facility.subscription = {**facility.subscription, "criteria": "Condition"}

    updated = subscribe(db, facility, client, now=datetime.now(UTC))

    try:
        assert updated.result == "updated"
        assert [(s["id"], s["criteria"]) for s in _at_ehr(sim, "hapi")] == [
            (first.subscription_id, "Condition")
        ]
    finally:
        unsubscribe(db, facility, client)


def test_a_subscription_forced_to_error_is_reactivated_and_its_window_recorded(
    db: Session, sim: Sim, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    facility = _facility(db, sim, "generic", endpoint, monkeypatch)
    client = _client(sim, "generic")
    from app.reconcile.probe import probe_facility

    probe_facility(db, facility, client, now=datetime.now(UTC))  # generic advertises $status
    subscribed = subscribe(db, facility, client, now=datetime.now(UTC))
    try:
        _poll(lambda: _at_ehr(sim, "generic")[0]["status"] == "active", "the handshake")
        last_good = datetime.now(UTC) - timedelta(minutes=3)
        db.add(
            SubscriptionLedger(
                facility_id="generic",
                subscription=f"{sim.base('generic')}/Subscription/{subscribed.subscription_id}",
                highest_event=7,
                highest_event_at=last_good,
                last_heartbeat_at=last_good - timedelta(minutes=1),
            )
        )
        db.flush()
        healthy = check_subscription(db, facility, client, now=datetime.now(UTC))
        sim.admin("generic", "faults", {"actions": ["subscription-error"]})

        checked = check_subscription(db, facility, client, now=datetime.now(UTC))

        assert healthy.action == "ok"
        assert checked.action == "reactivated"
        assert checked.window_since == last_good
        requests = db.scalars(select(ReconcileRequest).where(ReconcileRequest.facility_id == "generic")).all()
        assert [(r.since, r.until, r.reason, r.consumed_at) for r in requests] == [
            (last_good, None, "subscription_error", None)
        ]
        row = db.get(FacilitySubscription, "generic")
        assert row is not None
        assert (row.reactivations, row.last_error) == (1, "subscription_error")
        # Re-activation is a PUT status=requested: the server handshakes, and the subscription is active.
        _poll(lambda: _at_ehr(sim, "generic")[0]["status"] == "active", "the re-activation handshake")
        assert [s["id"] for s in _at_ehr(sim, "generic")] == [subscribed.subscription_id]
    finally:
        unsubscribe(db, facility, client)


def test_a_subscription_near_its_end_is_renewed_by_the_check(
    db: Session, sim: Sim, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    facility = _facility(db, sim, "medplum", endpoint, monkeypatch)
    facility.subscription = {**facility.subscription, "lifetime_days": 5, "renew_before_days": 3}
    client = _client(sim, "medplum")
    now = datetime.now(UTC).replace(microsecond=0)
    first = subscribe(db, facility, client, now=now)
    later = now + timedelta(days=2, hours=1)

    soon = check_subscription(db, facility, client, now=now + timedelta(days=1))
    renewed = check_subscription(db, facility, client, now=later)

    try:
        assert soon.action == "ok"
        assert renewed.action == "renewed"
        row = db.get(FacilitySubscription, "medplum")
        assert row is not None
        assert first.end == now + timedelta(days=5)
        assert row.end == later + timedelta(days=5)
        assert [s["end"] for s in _at_ehr(sim, "medplum")] == [row.end.strftime("%Y-%m-%dT%H:%M:%SZ")]
    finally:
        unsubscribe(db, facility, client)
