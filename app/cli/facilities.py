"""``ehr-ingest facilities``: the EHR endpoints we ingest from, declared in YAML, stored in Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli import ledger, render
from app.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.db.models import Facility
    from app.reconcile.capabilities import Capabilities
    from app.reconcile.plan import TypePlan
    from app.reconcile.probe import ProbeOutcome

cli = typer.Typer(help="Facilities: the EHRs we ingest from.", no_args_is_help=True)


@cli.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="YAML file with a `facilities:` list")],
    no_probe: Annotated[
        bool, typer.Option("--no-probe", help="do not probe the facilities' EHRs after applying")
    ] = False,
) -> None:
    """Create or update the facilities declared in FILE (idempotent), then probe each one's EHR
    (``facilities probe``). An EHR that cannot be probed does not fail the apply: the failure is recorded
    and printed, and ``facilities probe`` runs it again.

    The file is validated as a whole before anything is written: an invalid file changes nothing."""
    from app.facilities.service import apply_facilities, load_facilities_file

    try:
        parsed = load_facilities_file(file)
    except ConfigurationError as exc:
        render.fail(exc.detail)
    with ledger.session(write=True) as session:
        result = apply_facilities(session, parsed)
    render.line(
        f"created {len(result.created)}, updated {len(result.updated)}, unchanged {len(result.unchanged)}"
    )
    for fid in result.created:
        render.line(f"  + {fid}")
    for fid in result.updated:
        render.line(f"  ~ {fid}")
    if no_probe:
        return
    ids = [f.id for f in parsed.facilities]
    for outcome in _probe_ids(ids, attempts=APPLY_PROBE_ATTEMPTS, timeout_s=APPLY_PROBE_TIMEOUT_S):
        render.line(_probe_line(outcome))


@cli.command("list")
def list_() -> None:
    """List facilities with their vendor, base URL and client id (secrets are references, never shown)."""
    from app.facilities.service import list_facilities

    with ledger.session() as session:
        rows = [
            (f.id, f.vendor, f.base_url, str(f.auth.get("client_id", "")), "yes" if f.enabled else "no")
            for f in list_facilities(session)
        ]
    render.table(("id", "vendor", "base url", "client", "enabled"), rows)


# -- capabilities (app.reconcile.probe) -------------------------------------------------------------------

#: A probe run by ``apply`` must not hold the apply for long when an EHR is down.
APPLY_PROBE_ATTEMPTS = 2
APPLY_PROBE_TIMEOUT_S = 10.0


def _probe_ids(facility_ids: list[str], *, attempts: int, timeout_s: float) -> list[ProbeOutcome]:
    from datetime import UTC, datetime

    from app.ehr.pool import EHRClientPool
    from app.facilities.service import get_facility
    from app.reconcile.probe import probe

    pool = EHRClientPool(timeout_s=timeout_s, attempts=attempts, max_delay_s=timeout_s)
    outcomes: list[ProbeOutcome] = []
    try:
        for facility_id in facility_ids:
            # One transaction per facility: one EHR's outcome is recorded whatever the next one does.
            with ledger.session(write=True) as session:
                ledger.require_facility(session, facility_id)
                facility = get_facility(session, facility_id)
                assert facility is not None
                outcomes.append(probe(session, facility, pool, now=datetime.now(UTC)))
    finally:
        pool.close()
    return outcomes


def _probe_line(outcome: ProbeOutcome) -> str:
    if not outcome.ok:
        return f"probe {outcome.facility_id}: failed ({outcome.reason}) {outcome.detail or ''}".rstrip()
    choices = outcome.choices or {}
    chosen = sum(1 for c in choices.values() if c.strategy is not None)
    line = f"probe {outcome.facility_id}: ok, {len(choices)} types, {chosen} with a strategy"
    if outcome.gone:
        line += f"; gone since the last probe: {', '.join(outcome.gone)}"
    return line


@cli.command("probe")
def probe_(
    facility_id: Annotated[str, typer.Argument(metavar="FACILITY", help="facility id")],
) -> None:
    """Read FACILITY's CapabilityStatement and SMART configuration; record what they offer per resource
    type and the change-detection strategy chosen for each. Exit 1 when the EHR could not be probed (the
    failure is recorded; the last successful probe's strategies stay)."""
    outcome = _probe_ids([facility_id], attempts=4, timeout_s=30.0)[0]
    render.line(_probe_line(outcome))
    if not outcome.ok:
        raise typer.Exit(render.EXIT_FAILED)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@cli.command("show")
def show(
    facility_id: Annotated[str, typer.Argument(metavar="FACILITY", help="facility id")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
) -> None:
    """What the last probe of FACILITY found and which strategy was chosen per resource type (and why)."""
    import json

    from app.facilities.service import get_facility
    from app.reconcile.probe import (
        capability_events,
        facility_probe,
        load_capabilities,
        resource_capabilities,
    )

    with ledger.session() as session:
        ledger.require_facility(session, facility_id)
        facility = get_facility(session, facility_id)
        assert facility is not None
        probe_row = facility_probe(session, facility_id)
        caps = load_capabilities(session, facility_id)
        rows = resource_capabilities(session, facility_id)
        events = capability_events(session, facility_id)
        subscription = _subscription_state(session, facility_id)
        plan, plan_error = _plan(facility, caps)
        document = {
            "facility": facility_id,
            "vendor": facility.vendor,
            "probe": probe_row,
            "capabilities": caps.to_json() if caps else None,
            "strategies": {
                r.resource_type: {
                    "strategy": r.strategy,
                    "source": r.strategy_source,
                    "reason": r.strategy_reason,
                    "search_params": r.search_params,
                    "required_params": r.required_params,
                    "spellings": r.spellings,
                    "history": r.history,
                }
                for r in rows
            },
            "capability_events": [
                {"capability": e.capability, "change": e.change, "detected_at": e.detected_at.isoformat()}
                for e in events
            ],
            "subscription": subscription,
            "plan": {
                t.resource_type: {
                    "strategy": t.strategy,
                    "source": t.source,
                    "probed": t.probed,
                    "reason": t.reason,
                }
                for t in plan
            },
            "plan_error": plan_error,
        }
    if as_json:
        render.line(json.dumps(document, sort_keys=True))
        return
    if probe_row is None:
        render.line(f"{facility_id}: never probed; run `ehr-ingest facilities probe {facility_id}`")
        return
    status = "ok" if probe_row["ok"] else f"failed ({probe_row['reason']}) {probe_row['detail'] or ''}"
    render.line(f"{facility_id} ({facility.vendor}): last probe {probe_row['probed_at']} {status}".rstrip())
    if caps is not None:
        export = ", ".join(sorted(caps.export)) or "no"
        render.line(
            f"  software {caps.software or '?'}, FHIR {caps.fhir_version or '?'}, SMART {_yes(caps.smart)}, "
            f"$export {export}, system _history {_yes(caps.history_system)}, "
            f"Subscription {_yes(caps.subscription)} ($status {_yes(caps.subscription_status)}, "
            f"$events {_yes(caps.subscription_events)})"
        )
    render.table(
        ("type", "strategy", "source", "search parameters", "_history", "why"),
        [
            (
                r.resource_type,
                r.strategy or "NONE",
                r.strategy_source,
                " ".join(f"{p}(required)" if p in r.required_params else p for p in r.search_params),
                _yes(r.history),
                r.strategy_reason,
            )
            for r in rows
        ],
        title="change detection",
    )
    if plan_error is not None:
        render.line(f"  reconcile plan: {plan_error}")
    render.table(
        ("type", "probe chose", "runs", "because", "why"),
        [
            (t.resource_type, t.probed or "-", t.strategy, _SOURCE_LABELS[t.source], t.reason or "")
            for t in plan
        ],
        title="reconcile plan",
    )
    if subscription is not None:
        sub = subscription
        render.line(
            f"  Subscription/{sub['id']}: {sub['status']}, heartbeat {sub['heartbeat_s'] or 'none'} s, "
            f"end {sub['end'] or 'none'}, last checked {sub['last_checked_at'] or 'never'}, "
            f"re-activated {sub['reactivations']} times"
            + (f", last error {sub['last_error']}" if sub["last_error"] else "")
        )
    if events:
        render.table(
            ("detected", "capability", "change"),
            [(e.detected_at.isoformat(), e.capability, e.change) for e in events],
            title="capability changes",
        )


_SOURCE_LABELS = {
    "override": "yaml override",
    "probe": "probe",
    "probe-fallback": "probe (fallback)",
    "adapter-default": "adapter default",
}


def _plan(facility: Facility, caps: Capabilities | None) -> tuple[tuple[TypePlan, ...], str | None]:
    """The plan the reconciler runs (``app.reconcile.plan``), or why it cannot be made."""
    from app.errors import ConfigInvalid
    from app.reconcile.plan import plan_for
    from app.vendors.registry import adapter_for

    try:
        plan = plan_for(facility, adapter_for(facility.vendor), capabilities=caps)
    except ConfigInvalid as exc:
        return (), exc.detail
    return plan.types, None


def _subscription_state(session: Session, facility_id: str) -> dict[str, Any] | None:
    from app.db.models import FacilitySubscription

    row = session.get(FacilitySubscription, facility_id)
    if row is None:
        return None
    return {
        "id": row.subscription_id,
        "status": row.status,
        "heartbeat_s": row.heartbeat_s,
        "end": row.end.isoformat() if row.end else None,
        "last_checked_at": row.last_checked_at.isoformat() if row.last_checked_at else None,
        "last_error": row.last_error,
        "reactivations": row.reactivations,
    }
