"""The ledger's tables. Alembic (``migrations/``) is the only way they change.

- ``facilities``: one row per EHR we ingest from; secrets are *referenced*, never stored.
- ``inbox``: every accepted notification event, durable before the sender gets its 2xx. A row is
  ``pending`` until a worker marks it ``done`` or ``dead``; ``lease_until`` hides a claimed row from
  other workers and expires if the worker dies.
- ``resources``: the current version of every (facility, type, id); deletions are tombstones.
- ``resource_history``: every distinct version seen, once.
- ``blood_pressure_pairs``: blood-pressure readings paired at store time (``app.ingest.blood_pressure``),
  read by the ``blood_pressure_readings`` view; ``blood_pressure_members``: the group each paired
  Observation was last paired in.
- ``subscription_ledger``: per (facility, subscription) what the receiver saw of the event counter:
  highest number, epoch, open gaps, last notification and heartbeat. Written with the inbox rows.
- ``quarantine``: authenticated JSON bodies that are no recognizable notification, kept for a human.
- ``webhook_messages``: sender message ids committed, kept while a replay could still pass the signature.
- ``facility_capabilities``: the last probe of each facility's CapabilityStatement and SMART configuration
  (what it found, or why it failed); ``resource_capabilities``: per resource type, the search parameters
  that matter for change detection and the strategy chosen (``app.reconcile.capabilities``);
  ``capability_events``: a capability a later probe no longer found (the alerts page on them).
- ``facility_subscriptions``: the Subscription we keep at each facility's EHR, as the server accepted it.
- ``reconcile_requests``: time windows someone asked the reconciler to search again (a subscription found
  in ``error``/``off``); the engine consumes them.
- ``subscription_gaps``: each gap in a subscription's event numbers as the reconciler's gap pass first saw
  it in ``subscription_ledger``, until handled once (filled late, recovered by ``$events``, or a window
  reconcile requested), and each epoch reset; ``subscription_gap_watch``: what the last pass saw of each
  subscription (its epoch and last good event). ``app.reconcile.gaps`` writes both, never the ledger.
- ``alerts``: one row per incident of a (facility, source, kind), at most one live (open or acknowledged)
  per key; ``alert_events``: its history; ``alert_deliveries``: the outbox of sink sends
  (``app.alerts``).
- ``webhook_refusals``: a known facility's deliveries refused with 401, per minute and reason.
- ``feed_checks``: a source suspected quiet, the reconcile it asked for and what that found (``app.feeds``).
- ``reconcile_groups`` / ``reconcile_group_members``: the facility's cohort Group as last read, and its
  Patient members (part of the per-patient cohort); ``reconcile_bulk_jobs``: a facility's ``$export`` job a
  run left running, resumed by the next; ``reconcile_bulk_seen``: the ids a full one listed so far.
- ``adt_inbox``: HL7 v2 ADT messages, committed before their ``AA``, and the patient re-reads they ask
  for; ``adt_quarantine``: v2 messages answered ``AR``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Computed,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# An inbox row's life: pending (claimable once next_attempt_at is due) → done | dead. SQL everywhere
# names the statuses through these constants.
InboxStatus = Literal["pending", "done", "dead"]
INBOX_PENDING: InboxStatus = "pending"
INBOX_DONE: InboxStatus = "done"
INBOX_DEAD: InboxStatus = "dead"


# What made a tombstone one (``resources.deletion``): a 410; a 404 read twice a back-off apart; a 404 for
# a delete the EHR announced; a 404 from a vendor whose adapter says its 404 is final.
Deletion = Literal["gone", "not_found_confirmed", "not_found_announced", "not_found"]
DELETION_GONE: Deletion = "gone"
DELETION_NOT_FOUND_CONFIRMED: Deletion = "not_found_confirmed"
DELETION_NOT_FOUND_ANNOUNCED: Deletion = "not_found_announced"
DELETION_NOT_FOUND: Deletion = "not_found"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSONB}


class Facility(Base):
    __tablename__ = "facilities"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vendor: Mapped[str] = mapped_column(String(32))
    base_url: Mapped[str] = mapped_column(Text)
    # {"method": "private_key_jwt", "client_id": ..., "private_key": {"file"|"env": ...}, "algorithm": ...,
    #  "scopes": [...], "token_url": optional}
    auth: Mapped[dict[str, Any]]
    # {"header": "Authorization", "scheme": "Bearer"|None, "secret": {"file"|"env": ...}} or {}
    webhook: Mapped[dict[str, Any]]
    # {"requests_per_second": ..., "burst": ..., "concurrency": ...}; {} means the defaults
    limits: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    mrn_system: Mapped[str | None] = mapped_column(Text)  # this facility's MRN identifier system (an OID URI)
    # The HL7 v2 ADT feed (``Hl7v2Config`` as JSON) or {} when the facility sends none.
    hl7v2: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # {resource type or "*": strategy name}: the YAML's ``change_detection`` overrides; {} means none
    change_detection: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # The YAML's ``subscription`` block (app.facilities.schemas.SubscriptionConfig); {} means none
    subscription: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # the YAML's ``reconcile:`` block (``app.facilities.schemas.ReconcileConfig``); {} means the defaults
    reconcile: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # the YAML's ``alerts:`` block (``app.facilities.schemas.FacilityAlertsConfig``); {} means the defaults
    alerts: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    # the YAML's ``feed_health:`` block (``app.facilities.schemas.FeedHealthConfig``); {} means the defaults
    feed_health: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class InboxRow(Base):
    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("facility_id", "dedup_key"),
        # The queue scan: only live rows are indexed, so the index stays small however much is done.
        Index(
            "ix_inbox_claimable",
            "facility_id",
            "next_attempt_at",
            postgresql_where=text(f"status = '{INBOX_PENDING}'"),
        ),
        Index("ix_inbox_dead", "facility_id", "reason", postgresql_where=text(f"status = '{INBOX_DEAD}'")),
        Index("ix_inbox_received_at", "received_at"),  # feed health's time windows
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    dedup_key: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    subscription: Mapped[str | None] = mapped_column(Text)
    event_number: Mapped[int | None] = mapped_column(BigInteger)
    focus_type: Mapped[str | None] = mapped_column(String(64))
    focus_id: Mapped[str | None] = mapped_column(String(128))
    # "system|value" when the notification named its focus by identifier only (no Type/id to fetch)
    focus_identifier: Mapped[str | None] = mapped_column(Text)
    # create | update | delete | None (unknown: fetch tells)
    interaction: Mapped[str | None] = mapped_column(String(16))
    payload: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(16), server_default=text(f"'{INBOX_PENDING}'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    lease_until: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[datetime | None]
    claim_token: Mapped[str | None] = mapped_column(UUID(as_uuid=False))  # the current claim's owner
    # What the notification announced: the focus's version (``/_history/n``) and the event's time (when
    # precise). A read older than either is a lagging replica's: the row is read again (reason
    # ``older_than_notified``), not closed.
    notified_version: Mapped[str | None] = mapped_column(String(64))
    notified_at: Mapped[datetime | None]


class Resource(Base):
    __tablename__ = "resources"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[str | None] = mapped_column(String(128))
    last_updated: Mapped[datetime | None]
    content_hash: Mapped[str] = mapped_column(String(64))
    deleted: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    resource: Mapped[dict[str, Any] | None]
    fetched_at: Mapped[datetime]
    ingested_at: Mapped[datetime] = mapped_column(server_default=func.now())
    normalized: Mapped[dict[str, Any] | None]  # the vendor adapter's summary, read by the consumer views
    issues: Mapped[list[str] | None] = mapped_column(JSONB)
    # Why a tombstone is one (``Deletion``); NULL while live.
    deletion: Mapped[str | None] = mapped_column(String(32))
    # The body was sent by the EHR (a full-resource notification), not read from it.
    from_payload: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class ResourceVersion(Base):
    __tablename__ = "resource_history"
    __table_args__ = (
        UniqueConstraint(
            "facility_id", "resource_type", "resource_id", "version_key", name="uq_resource_history_version"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(128))
    # versionId when the server gives one, else the content hash: what makes a version distinct.
    version_key: Mapped[str] = mapped_column(String(160))
    version_id: Mapped[str | None] = mapped_column(String(128))
    last_updated: Mapped[datetime | None]
    content_hash: Mapped[str] = mapped_column(String(64))
    deleted: Mapped[bool] = mapped_column(Boolean)
    resource: Mapped[dict[str, Any] | None]
    fetched_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deletion: Mapped[str | None] = mapped_column(String(32))


class BloodPressurePair(Base):
    """One reading: which stored Observation gives each value (a panel gives both), replaced per
    (facility, subject, effective_key) group whenever one of its Observations is written."""

    __tablename__ = "blood_pressure_pairs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    subject: Mapped[str | None] = mapped_column(Text)
    effective_key: Mapped[str | None] = mapped_column(Text)
    effective: Mapped[str | None] = mapped_column(Text)
    encounter: Mapped[str | None] = mapped_column(Text)
    systolic_id: Mapped[str | None] = mapped_column(String(128))
    diastolic_id: Mapped[str | None] = mapped_column(String(128))
    unit: Mapped[str | None] = mapped_column(Text)
    source_ids: Mapped[list[str]] = mapped_column(postgresql.ARRAY(Text))


class BloodPressureMember(Base):
    """The (subject, effective_key) group a paired Observation was last paired in."""

    __tablename__ = "blood_pressure_members"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject: Mapped[str | None] = mapped_column(Text)
    effective_key: Mapped[str | None] = mapped_column(Text)


class TokenEvent(Base):
    """Token lifecycle (issued, renewed, rejected, expired_early), kept apart from application errors."""

    __tablename__ = "token_events"
    __table_args__ = (Index("ix_token_events_facility_at", "facility_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_in: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class ChangeFeedEntry(Base):
    """The consumers' change feed: one row per applied change, in commit-safe ``seq`` order, written by a
    trigger on ``resources`` and announced on the ``ehr_ingest_changes`` pg_notify channel (ids only)."""

    __tablename__ = "change_feed"
    __table_args__ = (Index("ix_change_feed_facility_seq", "facility_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(128))
    deleted: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime] = mapped_column(server_default=func.now())


class SubscriptionLedger(Base):
    __tablename__ = "subscription_ledger"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    # Subscription/id as notifications name it; "" for shapes that name none (legacy R4 rest-hooks).
    subscription: Mapped[str] = mapped_column(Text, primary_key=True)
    # A counter lower than before (server restart, re-created subscription) starts a new epoch.
    epoch: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    highest_event: Mapped[int | None] = mapped_column(BigInteger)
    highest_event_at: Mapped[datetime | None]
    epoch_started_at: Mapped[datetime | None]
    events_since_start: Mapped[int | None] = mapped_column(BigInteger)
    gaps_observed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Open gaps as [[first, last], ...]: event numbers not (yet) received in this epoch.
    missing: Mapped[list[list[int]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    last_status: Mapped[str | None] = mapped_column(String(16))
    notifications: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    last_notification_at: Mapped[datetime | None]
    last_heartbeat_at: Mapped[datetime | None]
    last_handshake_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class WebhookMessage(Base):
    """A sender's message id already committed (Standard Webhooks ``webhook-id``), until its replay
    window closes: written in the transaction of the message's inbox rows, so a replay (even to another
    receiver process) stores nothing, and a message whose commit failed is stored when resent."""

    __tablename__ = "webhook_messages"
    __table_args__ = (Index("ix_webhook_messages_expires_at", "expires_at"),)

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    message_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())


class QuarantinedNotification(Base):
    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("facility_id", "body_sha256"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(128))
    body_sha256: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any] | list[Any]] = mapped_column(JSONB)
    # The same body delivered again (sender retries) counts here instead of adding rows.
    deliveries: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_received_at: Mapped[datetime] = mapped_column(server_default=func.now())


class AdtMessage(Base):
    """One HL7 v2 ADT message, committed before its ``AA`` (``app.hl7v2``): the raw message as received,
    the fields consumers read (the ``adt_events`` view), and the work it asks for (re-read the patient
    over FHIR), claimed like inbox rows. Deduplicated per facility on MSH-10."""

    __tablename__ = "adt_inbox"
    __table_args__ = (
        UniqueConstraint("facility_id", "control_id"),
        Index(
            "ix_adt_inbox_claimable",
            "facility_id",
            "next_attempt_at",
            postgresql_where=text(f"status = '{INBOX_PENDING}'"),
        ),
        Index("ix_adt_inbox_patient", "facility_id", "mrn"),
        Index("ix_adt_inbox_received_at", "received_at"),  # feed health's time windows
        Index("ix_adt_inbox_unparsed", "facility_id", "id", postgresql_where=text("NOT parsed")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    control_id: Mapped[str] = mapped_column(Text)  # MSH-10
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    raw: Mapped[str] = mapped_column(Text)  # the message as received (Z-segments included)
    version: Mapped[str | None] = mapped_column(String(16))  # MSH-12
    message_type: Mapped[str | None] = mapped_column(String(16))  # MSH-9.1
    event_type: Mapped[str | None] = mapped_column(String(16))  # MSH-9.2 (or EVN-1)
    message_time: Mapped[datetime | None]  # MSH-7
    mrn: Mapped[str | None] = mapped_column(Text)  # PID-3 with the facility's assigning authority, trimmed
    prior_mrn: Mapped[str | None] = mapped_column(Text)  # A40: MRG-1, the non-surviving patient
    visit_number: Mapped[str | None] = mapped_column(Text)  # PV1-19
    patient_class: Mapped[str | None] = mapped_column(Text)  # PV1-2
    location: Mapped[str | None] = mapped_column(Text)  # PV1-3 as sent (components ^-joined)
    admit_time: Mapped[datetime | None]  # PV1-44
    discharge_time: Mapped[datetime | None]  # PV1-45
    # The PID/PV1/MRG columns above are filled: the listener commits after reading MSH alone, the worker
    # parses the rest before it claims the row (``app.hl7v2.service.parse_fields``).
    parsed: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    patient_id: Mapped[str | None] = mapped_column(String(128))  # the FHIR Patient id, once resolved
    merged_patient_id: Mapped[str | None] = mapped_column(String(128))  # A40: the non-surviving FHIR id
    status: Mapped[str] = mapped_column(String(16), server_default=text(f"'{INBOX_PENDING}'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    lease_until: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    claim_token: Mapped[str | None] = mapped_column(UUID(as_uuid=False))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[datetime | None]


class AdtQuarantined(Base):
    """An HL7 v2 message answered ``AR``: its MSH could not be parsed, its sender is no facility, it is no
    ADT message we take. Kept for a human; the same bytes again count ``deliveries``."""

    __tablename__ = "adt_quarantine"
    __table_args__ = (UniqueConstraint("raw_sha256"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str | None] = mapped_column(String(64))  # when the sender was recognised
    peer: Mapped[str] = mapped_column(String(64))  # the connecting address
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    raw_sha256: Mapped[str] = mapped_column(String(64))
    raw: Mapped[bytes] = mapped_column(postgresql.BYTEA)
    deliveries: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_received_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ReconcileWatermark(Base):
    """How far the reconciler has seen one facility's changes of one type by one strategy."""

    __tablename__ = "reconcile_watermarks"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    strategy: Mapped[str] = mapped_column(String(32), primary_key=True)
    watermark: Mapped[datetime | None]
    recrawled_at: Mapped[datetime | None]
    last_run_at: Mapped[datetime | None]
    last_outcome: Mapped[str | None] = mapped_column(String(16))
    last_reason: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ReconcileRun(Base):
    __tablename__ = "reconcile_runs"
    __table_args__ = (Index("ix_reconcile_runs_facility_id", "facility_id", "started_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    trigger: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    pages: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    resources: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    applied: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    recovered: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    reasons: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))


class RecoveredChange(Base):
    """A change the reconciler applied that no notification had delivered (the coverage ledger)."""

    __tablename__ = "reconcile_recovered"
    __table_args__ = (
        Index("ix_reconcile_recovered_facility_id", "facility_id", "resource_type"),
        Index("ix_reconcile_recovered_recovered_at", "facility_id", "recovered_at"),  # feed health's windows
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(128))
    deleted: Mapped[bool] = mapped_column(Boolean)
    strategy: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    recovered_at: Mapped[datetime] = mapped_column(server_default=func.now())


def sql_types(model: type[Base], columns: Iterable[str]) -> dict[str, str]:
    """Each column's Postgres type as SQL text (``BIGINT``, ``JSONB``, ``VARCHAR(16)``…), from the
    model: what statements that spell out a record type (``jsonb_to_recordset … AS r(col type, …)``)
    need, so that they never restate the schema."""
    table = model.__table__
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return {c: table.columns[c].type.compile(dialect=dialect) for c in columns}


def string_bounds(model: type[Base]) -> dict[str, int]:
    """Each bounded string column's length (``String(n)``), from the model: what a value from a sender
    must fit before it reaches the table, so that the bounds are stated once, here."""
    table = model.__table__
    return {
        column.name: column.type.length
        for column in table.columns
        if isinstance(column.type, String) and column.type.length is not None
    }


def truncated(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, ending in "…" when it was cut (visibly not the original)."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


class FacilityCapabilities(Base):
    """The last probe of a facility. ``capabilities`` is the last *successful* probe's finding
    (``Capabilities.to_json``): a failed probe records its reason and keeps what was known."""

    __tablename__ = "facility_capabilities"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    probed_at: Mapped[datetime]
    ok: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(64))  # the error's reason slug when not ok
    detail: Mapped[str | None] = mapped_column(Text)
    capabilities: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    last_ok_at: Mapped[datetime | None]


class ResourceCapabilities(Base):
    __tablename__ = "resource_capabilities"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    search_params: Mapped[list[str]] = mapped_column(JSONB)
    required_params: Mapped[list[str]] = mapped_column(JSONB)
    # {recorded name: the server's spelling} where they differ (Epic's "_lastupdated"): queries use these
    spellings: Mapped[dict[str, Any]]
    history: Mapped[bool] = mapped_column(Boolean)
    strategy: Mapped[str | None] = mapped_column(String(32))  # None: nothing allowed (see reason)
    strategy_source: Mapped[str] = mapped_column(String(32))
    strategy_reason: Mapped[str] = mapped_column(Text)
    probed_at: Mapped[datetime]


class CapabilityEvent(Base):
    """A capability that a probe found gone (``change='gone'``) or back (``'back'``) since the last one."""

    __tablename__ = "capability_events"
    __table_args__ = (Index("ix_capability_events_facility_at", "facility_id", "detected_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    capability: Mapped[str] = mapped_column(Text)  # a Capabilities.keys() key: "Observation:_lastUpdated"
    change: Mapped[str] = mapped_column(String(8))
    detected_at: Mapped[datetime]


class FacilitySubscription(Base):
    __tablename__ = "facility_subscriptions"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(Text)
    resource: Mapped[dict[str, Any]]  # the Subscription as the server last answered it
    requested: Mapped[dict[str, Any]]  # what we last asked for: an unchanged request is not sent again
    status: Mapped[str | None] = mapped_column(String(16))
    end: Mapped[datetime | None]
    heartbeat_s: Mapped[int | None] = mapped_column(Integer)
    last_checked_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    reactivations: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ReconcileRequest(Base):
    """A window ``[since, until)`` (``until`` None: up to now) of a facility to reconcile; ``consumed_at`` is
    set by the reconciler engine once a run covering it has committed."""

    __tablename__ = "reconcile_requests"
    __table_args__ = (
        Index(
            "ix_reconcile_requests_open",
            "facility_id",
            postgresql_where=text("consumed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    since: Mapped[datetime]
    until: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(String(64))
    subscription_id: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(server_default=func.now())
    consumed_at: Mapped[datetime | None]


class ReconcileGroup(Base):
    """The facility's ``reconcile.group`` as last read: when it last read well, how many Patient members it
    listed, and why the last attempt failed (None: it did not)."""

    __tablename__ = "reconcile_groups"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(64))
    read_at: Mapped[datetime | None]
    members: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    attempted_at: Mapped[datetime]
    last_reason: Mapped[str | None] = mapped_column(String(64))


class ReconcileGroupMember(Base):
    """A Patient the facility's cohort Group listed at its last good read (part of the cohort)."""

    __tablename__ = "reconcile_group_members"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class ReconcileBulkJob(Base):
    """The one ``$export`` job of a facility a run left running (its time budget, or killed), resumed by
    the next run: its status URL, what it asked, and how far its files are committed (every file before
    ``file_index``, and the first ``line`` lines of that one)."""

    __tablename__ = "reconcile_bulk_jobs"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16))
    group_id: Mapped[str | None] = mapped_column(String(64))
    since: Mapped[datetime | None]
    status_url: Mapped[str] = mapped_column(Text)
    kicked_off_at: Mapped[datetime]
    poll_after: Mapped[datetime | None]
    file_index: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    line: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ReconcileBulkSeen(Base):
    """An id of the kept job's type that a full export's committed pages listed (the whole export is
    compared with what is stored once it is read, over however many runs)."""

    __tablename__ = "reconcile_bulk_seen"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class SubscriptionGap(Base):
    """A gap (``kind`` gap: event numbers ``first_event..last_event`` of ``epoch`` missing) or an epoch reset
    (``kind`` epoch) of one subscription, as the gap pass first saw it; ``handled_at`` is set once, by
    the pass that claimed it (``claim_token``, ``lease_until``), with what became of it (``state``)."""

    __tablename__ = "subscription_gaps"
    __table_args__ = (
        UniqueConstraint(
            "facility_id",
            "subscription",
            "epoch",
            "kind",
            "first_event",
            "last_event",
            name="uq_subscription_gaps_range",
        ),
        Index("ix_subscription_gaps_open", "facility_id", postgresql_where=text("handled_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    subscription: Mapped[str] = mapped_column(Text)
    epoch: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # gap | epoch
    first_event: Mapped[int] = mapped_column(BigInteger)
    last_event: Mapped[int] = mapped_column(BigInteger)
    # open | handling (claimed) | filled (late events closed it) | recovered ($events) | requested (window)
    state: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[datetime] = mapped_column(server_default=func.now())
    window_since: Mapped[datetime]  # the subscription's last good event before the gap
    window_until: Mapped[datetime | None]
    missed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))  # still missing after grace
    recovered: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))  # numbers $events gave
    reason: Mapped[str | None] = mapped_column(String(64))  # why a window reconcile was requested
    claim_token: Mapped[str | None] = mapped_column(UUID(as_uuid=False))
    lease_until: Mapped[datetime | None]
    handled_at: Mapped[datetime | None]


class SubscriptionGapWatch(Base):
    """What the gap pass last saw of one subscription's ledger row: a later epoch is a reset, and a new
    gap's window starts at the last good event seen here."""

    __tablename__ = "subscription_gap_watch"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    subscription: Mapped[str] = mapped_column(Text, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    highest_event: Mapped[int | None] = mapped_column(BigInteger)
    highest_event_at: Mapped[datetime | None]
    checked_at: Mapped[datetime]


# An alert's life (``app.alerts.service``): open → acknowledged → resolved, and resolved → open again
# (reopened, same row and dedup key) within the cool-down. "Live" states hold the key's unique index.
AlertState = Literal["open", "acknowledged", "resolved"]
ALERT_LIVE_STATES: tuple[AlertState, ...] = ("open", "acknowledged")
LIVE_PREDICATE = "state IN ('open', 'acknowledged')"  # the live-key index's predicate (ON CONFLICT infers it)
DeliveryState = Literal["pending", "sent", "failed", "cancelled"]
DeliveryAction = Literal["trigger", "acknowledge", "resolve"]


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (
        Index(
            "ux_alerts_live",
            "facility_id",
            "source",
            "kind",
            unique=True,
            postgresql_where=text(LIVE_PREDICATE),
        ),
        Index("ix_alerts_key_resolved", "facility_id", "source", "kind", "resolved_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    source: Mapped[str] = mapped_column(String(160))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    dedup_key: Mapped[str] = mapped_column(
        Text, Computed("'ehri:' || facility_id || ':' || source || ':' || kind || ':' || id", persisted=True)
    )
    summary: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    opened_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    healthy_since: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    reopened: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class AlertEvent(Base):
    """One step of an alert's history: opened, seen (the condition came back before the resolve delay
    ran out), acknowledged, resolved, reopened; ``actor`` is ``auto`` or the operator."""

    __tablename__ = "alert_events"
    __table_args__ = (Index("ix_alert_events_alert_id", "alert_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"))
    event: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    details: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))


class AlertDelivery(Base):
    """One send of one alert action to one sink (the outbox), queued in the transaction of the state
    change; sent in ``id`` order per (alert, sink) by ``app.alerts.delivery``."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        Index("ix_alert_deliveries_due", "next_attempt_at", postgresql_where=text("state = 'pending'")),
        Index("ix_alert_deliveries_alert_id", "alert_id", "sink", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"))
    sink: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class FeedCheck(Base):
    """A source suspected quiet (``app.feeds.service``): the reconcile it asked for decides whether the
    silence hid changes (``leaking``: recovered > 0) or the data genuinely stopped changing (``quiet``)."""

    __tablename__ = "feed_checks"
    __table_args__ = (
        Index(
            "ix_feed_checks_open",
            "facility_id",
            "source",
            unique=True,
            postgresql_where=text("outcome IS NULL"),
        ),
        Index("ix_feed_checks_facility_id", "facility_id", "source", "suspected_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id"))
    source: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(32))
    suspected_at: Mapped[datetime]
    silent_since: Mapped[datetime | None]
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    outcome: Mapped[str | None] = mapped_column(String(16))
    recovered: Mapped[int | None] = mapped_column(Integer)
    decided_at: Mapped[datetime | None]


class WebhookRefusal(Base):
    """A known facility's deliveries refused with 401 (wrong secret, missing or bad signature), counted
    per minute and reason (``app.ingest.refusals``): feed health's signature failures."""

    __tablename__ = "webhook_refusals"
    __table_args__ = (Index("ix_webhook_refusals_minute", "minute"),)

    facility_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute: Mapped[datetime] = mapped_column(primary_key=True)
    refusals: Mapped[int] = mapped_column(BigInteger)
