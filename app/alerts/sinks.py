"""Where alerts go: PagerDuty Events API v2, a Slack incoming webhook, a JSON webhook signed the Standard
Webhooks way. Configured globally (``EHRI_ALERT_SINKS_FILE``) and per facility (its ``alerts:`` block),
each sink taking alerts from ``min_severity`` up.

A sink's ``send`` makes one HTTP request (bounded by the sink's ``timeout_s``) and raises what the outbox
sender records: ``SinkUnavailable`` (no connection, timeout, 429, 5xx: sent again later, bounded) or
``SinkRefused`` (another answer: the delivery fails at once); an unresolvable secret raises the
ConfigurationError of ``resolve_secret`` (tried again later, bounded, so a secret mounted late heals).

What leaves here is ids, counts, reason slugs and timestamps (``AlertMessage``); never patient data.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.alerts.conditions import Severity
from app.db.models import Alert, DeliveryAction, Facility
from app.errors import SinkRefused, SinkUnavailable
from app.facilities.schemas import (
    AlertSinksFile,
    FacilityAlertsConfig,
    PagerDutySinkConfig,
    SinkConfig,
    SlackSinkConfig,
    WebhookSinkConfig,
)
from app.facilities.secrets import resolve_secret
from app.facilities.senders import standard_webhooks_key, standard_webhooks_signature
from app.facilities.service import load_yaml_file
from app.fhir import jsonwire

if TYPE_CHECKING:
    from app.alerts.service import Router

SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}
SINK_SOURCE_PREFIX = "sink:"  # the source of a sink_failing condition: sink:{name}
USER_AGENT = "ehr-ingest-alerts/1"

MessageAction = DeliveryAction | Literal["test"]


@dataclass(frozen=True)
class AlertMessage:
    """What a sink is told about one action on one alert."""

    message_id: str  # stable across retries of one delivery: the webhook's ``webhook-id``
    action: MessageAction
    alert_id: int
    dedup_key: str
    facility_id: str
    source: str
    kind: str
    severity: Severity
    state: str
    summary: str
    opened_at: datetime
    details: Mapping[str, Any] = field(default_factory=dict)
    reopened: int = 0

    @property
    def test(self) -> bool:
        return self.action == "test"

    @classmethod
    def of(cls, alert: Alert, action: DeliveryAction, delivery_id: int) -> AlertMessage:
        return cls(
            message_id=f"ehri-delivery-{delivery_id}",
            action=action,
            alert_id=alert.id,
            dedup_key=alert.dedup_key,
            facility_id=alert.facility_id,
            source=alert.source,
            kind=alert.kind,
            severity=alert.severity,  # type: ignore[arg-type]  # written from Severity only
            state=alert.state,
            summary=alert.summary,
            opened_at=alert.opened_at,
            details=dict(alert.details),
            reopened=alert.reopened,
        )

    @classmethod
    def test_event(cls, sink: str, now: datetime) -> AlertMessage:
        """A clearly marked test (``alerts test-sink``): severity info, a dedup key of its own."""
        token = uuid.uuid4().hex[:12]
        return cls(
            message_id=f"ehri-test-{token}",
            action="test",
            alert_id=0,
            dedup_key=f"ehri:test:{sink}:{token}",
            facility_id="test",
            source=f"{SINK_SOURCE_PREFIX}{sink}",
            kind="test",
            severity="info",
            state="test",
            summary=f"TEST from ehr-ingest: sink {sink} works. No action needed.",
            opened_at=now,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "dedup_key": self.dedup_key,
            "facility_id": self.facility_id,
            "source": self.source,
            "kind": self.kind,
            "severity": self.severity,
            "state": self.state,
            "summary": self.summary,
            "opened_at": self.opened_at.isoformat(),
            "reopened": self.reopened,
            "details": dict(self.details),
            "test": self.test,
        }


class Sink(Protocol):
    @property
    def name(self) -> str: ...

    def send(self, http: httpx.Client, message: AlertMessage, now: datetime) -> None: ...


def _post(
    http: httpx.Client, url: str, body: bytes, timeout_s: float, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    """One POST; the answer translated into the sink error tree (2xx returns)."""
    try:
        response = http.post(
            url,
            content=body,
            headers={"content-type": "application/json", "user-agent": USER_AGENT, **(headers or {})},
            timeout=timeout_s,
        )
    except httpx.InvalidURL:  # a URL secret that is no URL: sending again cannot help
        raise SinkRefused("sink_unconfigured", "invalid URL") from None
    except httpx.HTTPError as exc:  # transport errors and timeouts: the URL (a secret for Slack) is not kept
        raise SinkUnavailable("sink_transport", type(exc).__name__) from None
    status = response.status_code
    if 200 <= status < 300:
        return response
    if status == 429:
        raise SinkUnavailable("sink_rate_limited", "429")
    if status >= 500:
        raise SinkUnavailable("sink_unavailable", str(status))
    raise SinkRefused("sink_rejected", str(status))


def _dumps(document: Mapping[str, Any]) -> bytes:
    # An alert's details come back from jsonb through the product's decoder: a count with a fraction
    # (a rate, a window in seconds) is a Decimal, which the standard encoder refuses.
    return jsonwire.dumps(dict(document), canonical=True).encode()


PAGERDUTY_DEDUP_KEY_MAX = 255


def pagerduty_dedup_key(dedup_key: str) -> str:
    """Ours when PagerDuty takes it (at most 255 characters), else a digest of it: the same alert always
    maps to the same key, and no two alerts share one."""
    if len(dedup_key) <= PAGERDUTY_DEDUP_KEY_MAX:
        return dedup_key
    return f"ehri:sha256:{hashlib.sha256(dedup_key.encode()).hexdigest()}"


@dataclass(frozen=True)
class PagerDutySink:
    """Events API v2: ``trigger`` carries the payload; ``acknowledge`` and ``resolve`` name the dedup key
    only. A test event is a trigger (severity info, summary marked TEST) followed by its resolve."""

    config: PagerDutySinkConfig
    status_page_url: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def events(self, message: AlertMessage, routing_key: str) -> list[dict[str, Any]]:
        action: DeliveryAction = "trigger" if message.test else message.action  # type: ignore[assignment]
        dedup_key = pagerduty_dedup_key(message.dedup_key)
        event: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key}
        if action == "trigger":
            event["client"] = "ehr-ingest"
            if self.status_page_url:
                event["client_url"] = self.status_page_url
            event["payload"] = {
                "summary": message.summary[:1024],
                "severity": message.severity,
                "source": f"ehr-ingest/{message.facility_id}",
                "component": message.source,
                "group": message.facility_id,
                "class": message.kind,
                "custom_details": message.as_json(),
            }
        events = [event]
        if message.test:
            events.append(
                {"routing_key": routing_key, "event_action": "resolve", "dedup_key": message.dedup_key}
            )
        return events

    def send(self, http: httpx.Client, message: AlertMessage, now: datetime) -> None:
        routing_key = resolve_secret(self.config.routing_key).strip()
        for event in self.events(message, routing_key):
            _post(http, str(self.config.url), _dumps(event), self.config.timeout_s)


SLACK_TEXT_MAX = 2900  # a section's text takes 3000 characters (escapes and the emoji included)
_SLACK_VERB = {"trigger": "Alert", "acknowledge": "Acknowledged", "resolve": "Resolved", "test": "Test"}
_SLACK_EMOJI = {
    "trigger": ":rotating_light:",
    "acknowledge": ":eyes:",
    "resolve": ":white_check_mark:",
    "test": ":test_tube:",
}


def _mrkdwn(text: str) -> str:
    """Slack's three control characters escaped: a value cannot become a link or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class SlackSink:
    """An incoming webhook: one Block Kit message per action (header, summary, the alert's fields, its dedup
    key, a link to the status page)."""

    config: SlackSinkConfig
    status_page_url: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def message(self, message: AlertMessage) -> dict[str, Any]:
        verb = _SLACK_VERB[message.action]
        title = f"{verb}: {message.kind} at {message.facility_id} ({message.severity})"
        if message.test:
            title = f"TEST message from ehr-ingest (sink {self.name})"
        fields = [
            ("Facility", message.facility_id),
            ("Source", message.source),
            ("Kind", message.kind),
            ("Severity", message.severity),
            ("Alert", str(message.alert_id)),
            ("Opened", message.opened_at.isoformat(timespec="seconds")),
        ]
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{_SLACK_EMOJI[message.action]} {_mrkdwn(message.summary[:SLACK_TEXT_MAX])}",
                },
            },
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_mrkdwn(v)}"} for k, v in fields],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"dedup key `{_mrkdwn(message.dedup_key)}`"}],
            },
        ]
        if self.status_page_url:
            link = f"<{_mrkdwn(self.status_page_url)}|Open the status page>"
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": link}})
        return {"text": f"{title}: {message.summary}", "blocks": blocks}

    def send(self, http: httpx.Client, message: AlertMessage, now: datetime) -> None:
        url = resolve_secret(self.config.webhook_url).strip()
        _post(http, url, _dumps(self.message(message)), self.config.timeout_s)


@dataclass(frozen=True)
class WebhookSink:
    """``{"type": "alert.<action>", "timestamp", "data": {...}}`` signed per Standard Webhooks: the
    ``webhook-id`` is the delivery's (a receiver deduplicates retries on it)."""

    config: WebhookSinkConfig

    @property
    def name(self) -> str:
        return self.config.name

    def request(self, message: AlertMessage, now: datetime, secret: str) -> tuple[bytes, dict[str, str]]:
        body = _dumps(
            {"type": f"alert.{message.action}", "timestamp": now.isoformat(), "data": message.as_json()}
        )
        stamp = str(int(now.timestamp()))
        signature = standard_webhooks_signature(
            standard_webhooks_key(secret), message.message_id, stamp, body
        )
        headers = {
            "webhook-id": message.message_id,
            "webhook-timestamp": stamp,
            "webhook-signature": f"v1,{signature.decode()}",
        }
        return body, headers

    def send(self, http: httpx.Client, message: AlertMessage, now: datetime) -> None:
        body, headers = self.request(message, now, resolve_secret(self.config.secret).strip())
        _post(http, str(self.config.url), body, self.config.timeout_s, headers)


def make_sink(config: SinkConfig, *, status_page_url: str | None = None) -> Sink:
    if isinstance(config, PagerDutySinkConfig):
        return PagerDutySink(config, status_page_url)
    if isinstance(config, SlackSinkConfig):
        return SlackSink(config, status_page_url)
    return WebhookSink(config)


def load_sinks_file(path: Path) -> AlertSinksFile:
    return load_yaml_file(path, AlertSinksFile)


def facility_alerts(raw: Mapping[str, Any] | None) -> FacilityAlertsConfig:
    """A facility row's ``alerts`` column (validated when applied) as its config."""
    return FacilityAlertsConfig.model_validate(dict(raw or {}))


@dataclass(frozen=True)
class SinkDirectory:
    """The global sinks and the routing rule: a facility's alerts go to its own sinks and (unless it says
    ``global_sinks: false``) the global ones, a facility sink shadowing a global one of the same name; each
    sink takes alerts from its ``min_severity`` up; a ``sink_failing`` alert never goes to that sink."""

    global_sinks: Mapping[str, SinkConfig] = field(default_factory=dict)
    status_page_url: str | None = None

    @classmethod
    def load(cls, settings: Any) -> SinkDirectory:
        """From ``Settings``: raises ConfigurationError when the sinks file cannot be read or is invalid."""
        path = settings.alert_sinks_file
        sinks = load_sinks_file(Path(path)).sinks if path else []
        return cls({s.name: s for s in sinks}, settings.alert_status_page_url)

    def sinks_for(self, alerts: FacilityAlertsConfig) -> dict[str, SinkConfig]:
        found = dict(self.global_sinks) if alerts.global_sinks else {}
        found.update({s.name: s for s in alerts.sinks})
        return found

    def route(self, alerts: FacilityAlertsConfig, source: str, severity: Severity) -> list[str]:
        rank = SEVERITY_RANK[severity]
        return sorted(
            name
            for name, cfg in self.sinks_for(alerts).items()
            if rank >= SEVERITY_RANK[cfg.min_severity] and source != f"{SINK_SOURCE_PREFIX}{name}"
        )

    def router(self, session: Session, facility_ids: set[str]) -> Router:
        """A ``Router`` over the facilities' configs read now (one query)."""
        configs = {
            fid: facility_alerts(raw)
            for fid, raw in session.execute(
                select(Facility.id, Facility.alerts).where(Facility.id.in_(facility_ids))
            )
        }

        def route(facility_id: str, source: str, kind: str, severity: Severity) -> list[str]:
            return self.route(configs.get(facility_id, FacilityAlertsConfig()), source, severity)

        return route

    def sink(self, alerts: FacilityAlertsConfig, name: str) -> Sink | None:
        config = self.sinks_for(alerts).get(name)
        return make_sink(config, status_page_url=self.status_page_url) if config else None
