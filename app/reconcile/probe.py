"""Probing a facility: read its CapabilityStatement and SMART configuration, record what they say and the
strategy chosen per resource type, and record every capability a later probe no longer finds.

Services flush; the caller owns the transaction. A probe that fails (EHR unreachable, a body that is no
CapabilityStatement, a secret that cannot be read) is recorded with its reason and keeps what the last
successful probe found: the strategies stay as they were rather than vanishing with a maintenance window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import structlog
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.db.models import CapabilityEvent, Facility, FacilityCapabilities, ResourceCapabilities
from app.db.upsert import upsert
from app.ehr.client import EHRClient
from app.ehr.pool import EHRClientPool
from app.errors import EHRRejected, IngestError, UnparseableResource
from app.reconcile import StrategyName
from app.reconcile.capabilities import (
    Capabilities,
    StrategyChoice,
    explain_strategies,
    gone,
    parse_capabilities,
)
from app.reconcile.plan import strategy_overrides
from app.vendors.registry import adapter_for

log = structlog.get_logger("reconcile.probe")


@dataclass(frozen=True)
class ProbeOutcome:
    facility_id: str
    ok: bool
    reason: str | None = None
    detail: str | None = None
    capabilities: Capabilities | None = None
    choices: dict[str, StrategyChoice] | None = None
    gone: tuple[str, ...] = ()


def fetch_capabilities(client: EHRClient) -> Capabilities:
    """GET ``metadata`` and ``.well-known/smart-configuration`` (both public: no token is sent). A SMART
    configuration the server refuses (4xx) is recorded as absent, not a failure: the token URL may be
    configured."""
    statement = client.get_json("metadata", authenticated=False)
    if statement.get("resourceType") != "CapabilityStatement":
        raise UnparseableResource("metadata did not return a CapabilityStatement")
    smart: dict[str, Any] | None
    try:
        smart = client.get_json(".well-known/smart-configuration", authenticated=False)
    except (EHRRejected, UnparseableResource) as exc:
        # Refused or not JSON: the server has none. A transient failure fails the probe instead, so that
        # a blip is never recorded as a capability gone.
        log.info("reconcile.probe.no_smart_configuration", facility_id=client.facility_id, reason=exc.reason)
        smart = None
    return parse_capabilities(statement, smart)


def overrides_of(facility: Facility) -> dict[str, StrategyName]:
    """The YAML's overrides, the same the engine runs (``reconcile.strategy``, its deprecated alias)."""
    return strategy_overrides(facility)


def probe_facility(session: Session, facility: Facility, client: EHRClient, *, now: datetime) -> ProbeOutcome:
    """Probe ``facility`` through ``client`` and record the outcome (see the module docstring)."""
    try:
        capabilities = fetch_capabilities(client)
    except IngestError as exc:
        return record_failure(session, facility.id, exc, now=now)
    return record_capabilities(session, facility, capabilities, now=now)


def record_failure(session: Session, facility_id: str, exc: IngestError, *, now: datetime) -> ProbeOutcome:
    detail = (exc.detail or exc.reason)[:500]
    values = {
        "facility_id": facility_id,
        "probed_at": now,
        "ok": False,
        "reason": exc.reason,
        "detail": detail,
    }
    stmt = insert(FacilityCapabilities).values(**values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[FacilityCapabilities.facility_id],
            set_={k: stmt.excluded[k] for k in ("probed_at", "ok", "reason", "detail")},
        )
    )
    session.flush()
    log.warning("reconcile.probe.failed", facility_id=facility_id, reason=exc.reason)
    return ProbeOutcome(facility_id, ok=False, reason=exc.reason, detail=detail)


def record_capabilities(
    session: Session, facility: Facility, capabilities: Capabilities, *, now: datetime
) -> ProbeOutcome:
    """Store a successful probe's finding and choices; a capability the last successful probe had and this
    one lacks is a ``gone`` event (one that comes back, a ``back`` event)."""
    previous_row = session.get(FacilityCapabilities, facility.id)
    previous = (
        Capabilities.from_json(previous_row.capabilities)
        if previous_row is not None and previous_row.capabilities is not None
        else None
    )
    lost: list[str] = []
    if previous is not None:
        lost = gone(previous.keys(), capabilities.keys())
        back = gone(capabilities.keys(), previous.keys())
        session.add_all(
            [
                CapabilityEvent(facility_id=facility.id, capability=k, change="gone", detected_at=now)
                for k in lost
            ]
            + [
                CapabilityEvent(facility_id=facility.id, capability=k, change="back", detected_at=now)
                for k in back
            ]
        )
        if lost:
            log.warning("reconcile.capability.gone", facility_id=facility.id, capabilities=lost)
    values = {
        "facility_id": facility.id,
        "probed_at": now,
        "ok": True,
        "reason": None,
        "detail": None,
        "capabilities": capabilities.to_json(),
        "last_ok_at": now,
    }
    session.execute(upsert(FacilityCapabilities, values))
    adapter = adapter_for(facility.vendor, mrn_system=facility.mrn_system)
    choices = explain_strategies(capabilities, adapter, overrides_of(facility))
    session.execute(delete(ResourceCapabilities).where(ResourceCapabilities.facility_id == facility.id))
    for rtype, choice in choices.items():
        caps = capabilities.types.get(rtype)
        session.add(
            ResourceCapabilities(
                facility_id=facility.id,
                resource_type=rtype,
                search_params=sorted(caps.search_params) if caps else [],
                required_params=sorted(caps.required_params) if caps else [],
                spellings=dict(caps.spellings) if caps else {},
                history=bool(caps and caps.history) or capabilities.history_system,
                strategy=choice.strategy,
                strategy_source=choice.source,
                strategy_reason=choice.reason,
                probed_at=now,
            )
        )
    session.flush()
    log.info("reconcile.probe.recorded", facility_id=facility.id, types=len(choices), gone=len(lost))
    return ProbeOutcome(facility.id, ok=True, capabilities=capabilities, choices=choices, gone=tuple(lost))


def load_strategies(session: Session, facility_id: str) -> dict[str, StrategyName]:
    """The strategy per resource type chosen by the last successful probe (types with none are left out):
    what the reconciler engine runs."""
    rows = session.execute(
        select(ResourceCapabilities.resource_type, ResourceCapabilities.strategy).where(
            ResourceCapabilities.facility_id == facility_id, ResourceCapabilities.strategy.is_not(None)
        )
    ).all()
    return {rtype: cast(StrategyName, strategy) for rtype, strategy in rows}


def load_capabilities(session: Session, facility_id: str) -> Capabilities | None:
    row = session.get(FacilityCapabilities, facility_id)
    if row is None or row.capabilities is None:
        return None
    return Capabilities.from_json(row.capabilities)


def capability_events(session: Session, facility_id: str, limit: int = 50) -> list[CapabilityEvent]:
    return list(
        session.scalars(
            select(CapabilityEvent)
            .where(CapabilityEvent.facility_id == facility_id)
            .order_by(CapabilityEvent.detected_at.desc(), CapabilityEvent.id.desc())
            .limit(limit)
        )
    )


def probe(session: Session, facility: Facility, pool: EHRClientPool, *, now: datetime) -> ProbeOutcome:
    """Build the facility's client from ``pool`` and probe; a client that cannot be built (a secret that
    cannot be read) is a recorded failure like an unreachable EHR."""
    try:
        client = pool.get(facility)
    except IngestError as exc:
        return record_failure(session, facility.id, exc, now=now)
    return probe_facility(session, facility, client, now=now)


def resource_capabilities(session: Session, facility_id: str) -> list[ResourceCapabilities]:
    return list(
        session.scalars(
            select(ResourceCapabilities)
            .where(ResourceCapabilities.facility_id == facility_id)
            .order_by(ResourceCapabilities.resource_type)
        )
    )


def facility_probe(session: Session, facility_id: str) -> dict[str, Any] | None:
    """The last probe's outcome (not what it found) as plain values, or None when never probed."""
    row = session.get(FacilityCapabilities, facility_id)
    if row is None:
        return None
    return {
        "probed_at": row.probed_at.isoformat(),
        "ok": row.ok,
        "reason": row.reason,
        "detail": row.detail,
        "last_ok_at": row.last_ok_at.isoformat() if row.last_ok_at else None,
    }
