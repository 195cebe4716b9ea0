"""The YAML contract for ``ehr-ingest facilities apply FILE``.

```yaml
facilities:
  - id: general-hospital
    vendor: generic                       # epic | oracle | athena | meditech | medplum | hapi | generic
    base_url: https://ehr.example.org/fhir
    auth:
      method: private_key_jwt             # SMART Backend Services
      client_id: my-client
      private_key: {file: /run/secrets/general.pem}   # or {env: GENERAL_PRIVATE_KEY}
      algorithm: RS384                    # or ES384
      key_id: key-1                       # optional JWT `kid`
      scopes: [system/*.read]
      token_url: null                     # optional; discovered from .well-known/smart-configuration
    webhook:
      method: shared-secret               # shared-secret | x-signature | hub-signature | standard-webhooks
      header: Authorization               # where the EHR puts its shared secret (or signature)
      scheme: Bearer                      # optional prefix ("Bearer <secret>"); shared-secret only
      secret: {env: GENERAL_WEBHOOK_SECRET}
      previous_secret: {env: GENERAL_WEBHOOK_SECRET_OLD}   # optional: still accepted while rotating
      tolerance_s: 300                    # standard-webhooks: replay window around webhook-timestamp
      event_identity: null                # number | event-id; default by vendor (athena: event-id)
    subscription:                         # optional: what `ehr-ingest subscribe` keeps at the EHR
      style: backport-r4                  # backport-r4 | r4b | r5 (topic) | criteria (Medplum, HAPI)
      endpoint: https://ingest.example.org/hooks/general-hospital
      topic: http://example.org/topics/any-change        # backport-r4, r4b, r5
      criteria: Observation               # criteria: the R4 criteria; topics: an optional filter
      payload: id-only                    # id-only | full-resource | empty
      heartbeat_s: 60
      lifetime_days: 30                   # optional: Subscription.end, renewed `renew_before_days` before
    reconcile:                            # optional; every key has a default
      interval: PT5M                      # how often the reconciler polls this facility
      types: [Patient, Observation]       # default: the vendor adapter's reconcile types
      strategy: {Observation: last-updated}  # per type ("*": every type); default: what the probe
                                          # chose, else the vendor adapter's. (The top-level
                                          # `change_detection:` of before is a deprecated alias.)
      overlap: PT5M                       # re-read this much before the watermark (never below the vendor's)
      recrawl_interval: PT24H             # full re-crawl comparing content (finds deletions, silent edits)
      initial_since: 2026-01-01T00:00:00Z # a facility seen for the first time is backfilled from here
      group: g-general                    # bulk-since: Group/{id}/$export (default: Patient/$export)
    alerts:                               # optional: where this facility's alerts go (app.alerts)
      global_sinks: true                  # also the sinks of EHRI_ALERT_SINKS_FILE (default)
      sinks:                              # the same shape as that file's `sinks:` (AlertSinksFile)
        - {name: gh-oncall, type: pagerduty, routing_key: {env: GH_PD_KEY}, min_severity: error}
    feed_health:                          # optional; every key has a default (app.feeds.detectors)
      detection_latency: PT15M            # the window quiet without heartbeats is judged on
      heartbeat_slack: 2.0                # heartbeats: quiet once period x slack passed silent
      timezone: America/New_York          # where business hours are counted (default UTC)
      business_hours: {days: [1, 2, 3, 4, 5], start: 7, end: 19}   # ISO weekdays, local hours [start, end)
      expected_per_hour: null             # business hours: events per hour (null: learned)
      off_hours_expected_per_hour: null   # nights and weekends, likewise
      min_expected: 5                     # floor: a window expected to bring fewer events is not judged
      off_hours_min_expected: 20          # the floor at night and at weekends (sparse traffic is no signal)
      history_weeks: 4                    # the expected rate: the same hour of this many past weeks
      quiet_ratio: 0.1                    # quiet below ratio x the expected events
      error_window: PT15M                 # the window of error_rate
      error_rate: 0.2                     # failures / (events + failures) above this ...
      error_min: 5                        # ... with at least this many failures
      backlog_age: PT15M                  # the oldest undone inbox or ADT row older than this
      leak_window: PT1H                   # feed_leaking: the reconciler recovered, in this window ...
      leak_min: 3                         # ... at least this many changes while notifications arrived
      leak_settle: PT2M                   # a recovery counts once this passed without its notification
      subscription_down_after: PT10M      # error/off and nothing received this long after re-activation
```
Secrets are references (a file path or an environment variable name); their values never enter the database.

Sender authentication methods (the receiver checks them before parsing anything):

- ``shared-secret``: ``header`` equals ``scheme secret`` (constant-time compare).
- ``x-signature`` (Medplum): ``X-Signature`` is the hex HMAC-SHA256 of the raw body.
- ``hub-signature`` (athena): ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>``.
- ``standard-webhooks``: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64>`` over
  ``{id}.{timestamp}.{body}``; the secret is ``whsec_<base64 key>`` (or raw); the timestamp must lie within
  ``tolerance_s`` of now.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl, model_validator

from app.alerts.conditions import Severity
from app.reconcile import StrategyName

log = structlog.get_logger("facilities")

Vendor = Literal["epic", "oracle", "athena", "meditech", "medplum", "hapi", "generic"]


class SecretRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret reference names exactly one of `file` or `env`")
        return self

    def describe(self) -> str:
        return f"file:{self.file}" if self.file is not None else f"env:{self.env}"


class AuthConfig(BaseModel):
    """How we obtain access tokens: SMART Backend Services (``private_key_jwt``) or a client secret
    (``client_secret_basic`` / ``client_secret_post``, which Oracle, athena and Medplum also accept)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["private_key_jwt", "client_secret_basic", "client_secret_post"] = "private_key_jwt"
    client_id: str = Field(min_length=1)
    private_key: SecretRef | None = None
    client_secret: SecretRef | None = None
    algorithm: Literal["RS384", "ES384"] = "RS384"
    key_id: str | None = None
    jku: HttpUrl | None = None
    scopes: list[str] = Field(default_factory=lambda: ["system/*.read"])
    token_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _credential_for_method(self) -> AuthConfig:
        if self.method == "private_key_jwt" and self.private_key is None:
            raise ValueError("method private_key_jwt needs `private_key`")
        if self.method != "private_key_jwt" and self.client_secret is None:
            raise ValueError(f"method {self.method} needs `client_secret`")
        return self

    @property
    def credential(self) -> SecretRef:
        ref = self.private_key if self.method == "private_key_jwt" else self.client_secret
        assert ref is not None
        return ref


class LimitsConfig(BaseModel):
    """Politeness towards one facility, shared by every worker process (Redis)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_second: float = Field(default=20.0, gt=0)
    burst: int = Field(default=20, ge=1)
    concurrency: int = Field(default=8, ge=1)


WebhookMethod = Literal["shared-secret", "x-signature", "hub-signature", "standard-webhooks"]

DEFAULT_HEADERS: dict[str, str] = {
    "shared-secret": "Authorization",
    "x-signature": "X-Signature",
    "hub-signature": "X-Hub-Signature",
    "standard-webhooks": "webhook-signature",
}


# What a facility id may be: the receiver answers an id of another shape as unknown without a lookup.
FACILITY_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: WebhookMethod = "shared-secret"
    header: str | None = None  # default per method (DEFAULT_HEADERS)
    scheme: str | None = "Bearer"
    secret: SecretRef
    previous_secret: SecretRef | None = None
    tolerance_s: int = Field(default=300, ge=1, le=3600)
    event_identity: Literal["number", "event-id"] | None = None

    @property
    def effective_header(self) -> str:
        return self.header or DEFAULT_HEADERS[self.method]


SubscriptionStyle = Literal["backport-r4", "r4b", "r5", "criteria"]


class SubscriptionConfig(BaseModel):
    """The subscription ``ehr-ingest subscribe`` creates at the EHR (app.reconcile.subscriptions). Our
    authentication goes with it from the ``webhook`` block: a shared secret as a channel header, a signing
    secret as the subscription's secret."""

    model_config = ConfigDict(extra="forbid")

    style: SubscriptionStyle = "backport-r4"
    endpoint: HttpUrl
    topic: str | None = None
    criteria: str | None = None
    payload: Literal["id-only", "full-resource", "empty"] = "id-only"
    heartbeat_s: int | None = Field(default=60, ge=1)
    lifetime_days: int | None = Field(default=None, ge=1)
    renew_before_days: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _topic_or_criteria(self) -> SubscriptionConfig:
        if self.style == "criteria" and not self.criteria:
            raise ValueError("style criteria needs `criteria`")
        if self.style != "criteria" and not self.topic:
            raise ValueError(f"style {self.style} needs `topic`")
        if self.lifetime_days is not None and self.renew_before_days >= self.lifetime_days:
            raise ValueError("`renew_before_days` must be shorter than `lifetime_days`")
        return self


#: The ADT events that announce "this patient changed" (A40 merges one patient into another).
ADT_EVENTS = ("A01", "A02", "A03", "A04", "A05", "A08", "A11", "A12", "A13", "A28", "A31", "A40")


class Hl7v2Config(BaseModel):
    """The facility's HL7 v2 ADT feed (``ehr-ingest mllp serve``): who it is on the wire, where it may
    connect from, and what a "patient changed" event makes us re-read over FHIR.

    ```yaml
    hl7v2:
      sending_application: EPIC           # MSH-3 (namespace id, compared case-sensitively, trimmed)
      sending_facility: GENHOSP           # MSH-4; null: any facility of that application
      allowed_peers: [10.1.2.0/24, 127.0.0.1]   # addresses or networks the engine connects from
      mrn_authority: GENHOSP              # PID-3.4: which repetition is the MRN (FHIR system: mrn_system)
      refresh: [Patient, Encounter]       # FHIR types re-read on every event ({type}?patient={id})
      refresh_by_event: {A08: [Patient]}  # per event, instead of ``refresh``
      visit_is_encounter_id: false        # PV1-19.1 is the FHIR Encounter's id (as the engine maps it)
    ```

    ``visit_is_encounter_id``: an announced Encounter that the patient's search no longer lists (deleted
    before we read it) is then read by that id, and a 404/410 makes it a tombstone; otherwise only the
    Encounters we stored before are read when the search drops them.
    """

    model_config = ConfigDict(extra="forbid")

    sending_application: str = Field(min_length=1, max_length=180)
    sending_facility: str | None = Field(default=None, max_length=180)
    allowed_peers: list[str] = Field(min_length=1)
    mrn_authority: str = Field(min_length=1, max_length=180)
    refresh: list[str] = Field(default_factory=lambda: ["Patient", "Encounter"])
    refresh_by_event: dict[str, list[str]] = Field(default_factory=dict)
    visit_is_encounter_id: bool = False

    @model_validator(mode="after")
    def _valid(self) -> Hl7v2Config:
        import ipaddress

        for peer in self.allowed_peers:
            try:
                ipaddress.ip_network(peer, strict=False)
            except ValueError as exc:
                raise ValueError(f"allowed_peers: {peer!r} is no address or network") from exc
        unknown = sorted(set(self.refresh_by_event) - set(ADT_EVENTS))
        if unknown:
            raise ValueError(f"refresh_by_event: unknown events {', '.join(unknown)}")
        for types in [self.refresh, *self.refresh_by_event.values()]:
            for t in types:
                if not t.isalpha() or not t[:1].isupper():
                    raise ValueError(f"refresh: {t!r} is no FHIR resource type")
        return self

    def types_for(self, event: str) -> list[str]:
        return self.refresh_by_event.get(event, self.refresh)


class ReconcileConfig(BaseModel):
    """The reconciler's settings for one facility; unset keys take the vendor adapter's defaults."""

    model_config = ConfigDict(extra="forbid")

    interval: timedelta = Field(default=timedelta(minutes=5), gt=timedelta(0))
    types: list[str] | None = None
    strategy: dict[str, StrategyName] = Field(default_factory=dict)
    overlap: timedelta | None = Field(default=None, ge=timedelta(0))
    recrawl_interval: timedelta = Field(default=timedelta(hours=24), gt=timedelta(0))
    initial_since: AwareDatetime | None = None
    #: The EHR's Group of this facility's patients: ``bulk-since`` exports ``Group/{id}/$export`` (else
    #: ``Patient/$export``).
    group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9\-.]{1,64}$")


# -- alert sinks (app.alerts.sinks) -------------------------------------------------------------------------

SINK_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class _SinkBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=f"^{SINK_NAME}$")
    #: the least severe alert this sink receives (critical > error > warning > info)
    min_severity: Severity = "warning"
    timeout_s: float = Field(default=10.0, gt=0, le=60)


class PagerDutySinkConfig(_SinkBase):
    """PagerDuty Events API v2: trigger, acknowledge and resolve under the alert's ``dedup_key``."""

    type: Literal["pagerduty"]
    routing_key: SecretRef  # the integration key of a PagerDuty service
    url: HttpUrl = HttpUrl(PAGERDUTY_EVENTS_URL)


class SlackSinkConfig(_SinkBase):
    """A Slack incoming webhook (its URL is the credential, hence a secret reference)."""

    type: Literal["slack"]
    webhook_url: SecretRef


class WebhookSinkConfig(_SinkBase):
    """A JSON POST signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature: v1,<base64 HMAC-SHA256>``) with a ``whsec_`` secret."""

    type: Literal["webhook"]
    url: HttpUrl
    secret: SecretRef


SinkConfig = Annotated[PagerDutySinkConfig | SlackSinkConfig | WebhookSinkConfig, Field(discriminator="type")]


def _unique_sink_names(sinks: list[SinkConfig]) -> None:
    names = [s.name for s in sinks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"duplicate sink names: {', '.join(duplicated)}")


class AlertSinksFile(BaseModel):
    """The global sinks (``EHRI_ALERT_SINKS_FILE``): every facility's alerts go to them unless the
    facility says ``global_sinks: false``."""

    model_config = ConfigDict(extra="forbid")

    sinks: list[SinkConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> AlertSinksFile:
        _unique_sink_names(self.sinks)
        return self


class FacilityAlertsConfig(BaseModel):
    """A facility's own sinks (a facility sink shadows a global one of the same name) and whether the
    global ones get its alerts too."""

    model_config = ConfigDict(extra="forbid")

    global_sinks: bool = True
    sinks: list[SinkConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> FacilityAlertsConfig:
        _unique_sink_names(self.sinks)
        return self


class BusinessHours(BaseModel):
    """When a clinic is open, in the facility's ``timezone``: ISO weekdays (1 Monday … 7 Sunday) and local
    hours ``[start, end)``. Outside them (nights, weekends) quiet detection uses its own floor."""

    model_config = ConfigDict(extra="forbid")

    days: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    start: int = Field(default=7, ge=0, le=23)
    end: int = Field(default=19, ge=1, le=24)

    @model_validator(mode="after")
    def _valid(self) -> BusinessHours:
        if any(d < 1 or d > 7 for d in self.days):
            raise ValueError("business_hours.days are ISO weekdays, 1 (Monday) to 7 (Sunday)")
        if self.end <= self.start:
            raise ValueError("business_hours.end must be after start")
        return self


class FeedHealthConfig(BaseModel):
    """The feed-health detectors' thresholds for one facility (``app.feeds.detectors``); every key has a
    default, documented in README's alert catalogue.

    Quiet detection: a source with heartbeats is suspected quiet once ``heartbeat_s x heartbeat_slack``
    passed with nothing from it. Without heartbeats, the facility is suspected quiet when the last
    ``detection_latency`` brought fewer than ``quiet_ratio`` x the events expected in such a window at
    this time of the week (``expected_per_hour`` when configured, else learned from the same hour of
    the last ``history_weeks`` weeks), and only when at least the floor (``min_expected``, at night and at
    weekends ``off_hours_min_expected``) was expected: a closed clinic at night expects nothing, so
    nothing is suspected. A suspected quiet feed asks for a reconcile at once; its outcome decides."""

    model_config = ConfigDict(extra="forbid")

    detection_latency: timedelta = Field(default=timedelta(minutes=15), gt=timedelta(0))
    heartbeat_slack: float = Field(default=2.0, ge=1.0)
    timezone: str = "UTC"
    business_hours: BusinessHours = Field(default_factory=BusinessHours)
    expected_per_hour: float | None = Field(default=None, ge=0)
    off_hours_expected_per_hour: float | None = Field(default=None, ge=0)
    min_expected: float = Field(default=5.0, ge=0)
    off_hours_min_expected: float = Field(default=20.0, ge=0)
    quiet_ratio: float = Field(default=0.1, gt=0, le=1)
    history_weeks: int = Field(default=4, ge=1, le=12)
    error_window: timedelta = Field(default=timedelta(minutes=15), gt=timedelta(0))
    error_rate: float = Field(default=0.2, gt=0, le=1)
    error_min: int = Field(default=5, ge=1)
    backlog_age: timedelta = Field(default=timedelta(minutes=15), gt=timedelta(0))
    leak_window: timedelta = Field(default=timedelta(hours=1), gt=timedelta(0))
    leak_min: int = Field(default=3, ge=1)
    #: a change the reconciler stored first counts as recovered once this passed: a notification of it
    #: arriving meanwhile (late, not lost) withdraws it (app.reconcile.coverage.retract_delivered)
    leak_settle: timedelta = Field(default=timedelta(minutes=2), ge=timedelta(0), le=timedelta(minutes=15))
    #: a subscription in error/off (or gone) whose source delivered nothing for this long after the
    #: check tried to re-activate it
    subscription_down_after: timedelta = Field(default=timedelta(minutes=10), ge=timedelta(0))

    @model_validator(mode="after")
    def _known_timezone(self) -> FeedHealthConfig:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"feed_health.timezone: unknown time zone {self.timezone!r}") from exc
        return self


class FacilityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=f"^{FACILITY_ID}$")
    vendor: Vendor = "generic"
    base_url: HttpUrl
    auth: AuthConfig
    webhook: WebhookConfig | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    mrn_system: str | None = Field(default=None, description="identifier system of this facility's MRNs")
    hl7v2: Hl7v2Config | None = None
    enabled: bool = True
    #: Deprecated alias of ``reconcile.strategy`` (folded into it on load).
    change_detection: dict[str, StrategyName] = Field(default_factory=dict)
    subscription: SubscriptionConfig | None = None

    @model_validator(mode="after")
    def _hl7v2_needs_mrn_system(self) -> FacilityConfig:
        if self.hl7v2 is not None and self.mrn_system is None:
            raise ValueError("hl7v2 needs `mrn_system`: the FHIR identifier system of PID-3's MRN")
        return self

    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    alerts: FacilityAlertsConfig = Field(default_factory=FacilityAlertsConfig)
    feed_health: FeedHealthConfig = Field(default_factory=FeedHealthConfig)

    @model_validator(mode="after")
    def _fold_change_detection(self) -> FacilityConfig:
        """The deprecated top-level ``change_detection:`` is ``reconcile.strategy`` (which wins per type):
        one override mechanism, read by the probe and the engine alike."""
        if self.change_detection:
            log.warning("facilities.deprecated_key", facility_id=self.id, key="change_detection")
            self.reconcile.strategy = {**self.change_detection, **self.reconcile.strategy}
            self.change_detection = {}
        return self


class FacilitiesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    facilities: list[FacilityConfig]

    @model_validator(mode="after")
    def _unique_ids(self) -> FacilitiesFile:
        ids = [f.id for f in self.facilities]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"duplicate facility ids: {', '.join(duplicated)}")
        senders = [
            (f.hl7v2.sending_application, f.hl7v2.sending_facility) for f in self.facilities if f.hl7v2
        ]
        clashing = sorted({f"{a}/{f or '*'}" for a, f in senders if senders.count((a, f)) > 1})
        if clashing:
            raise ValueError(f"two facilities declare the same HL7 v2 sender: {', '.join(clashing)}")
        return self
