"""``ehr-ingest alerts``: the alerts the feed-health detectors opened, acknowledging and resolving them by
hand, and a test event to a sink."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from app.cli import ledger, render
from app.errors import ConfigurationError
from app.fhir import jsonwire

cli = typer.Typer(help="Alerts: feed health incidents, their state and their sinks.", no_args_is_help=True)

By = Annotated[str | None, typer.Option("--by", help="who does it (default: the login name)")]


def _actor(by: str | None) -> str:
    if by is None:
        try:
            by = getpass.getuser()
        except (OSError, KeyError):
            by = "operator"
    return by.strip()[:64] or "operator"


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


@cli.command("list")
def list_(
    live: Annotated[bool, typer.Option("--open", help="only open and acknowledged alerts")] = False,
    facility: Annotated[str | None, typer.Option(help="only this facility")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
    limit: int = 200,
) -> None:
    """Alerts, newest first: id, facility, source, kind, severity, state, opened, summary (ids and counts
    only, never patient data)."""
    from app.alerts.service import list_alerts

    with ledger.session() as session:
        ledger.require_facility(session, facility)
        alerts = list_alerts(session, live_only=live, facility=facility, limit=limit)
        documents: list[dict[str, Any]] = [
            {
                "id": a.id,
                "facility_id": a.facility_id,
                "source": a.source,
                "kind": a.kind,
                "severity": a.severity,
                "state": a.state,
                "dedup_key": a.dedup_key,
                "summary": a.summary,
                "details": a.details,
                "opened_at": _when(a.opened_at),
                "last_seen_at": _when(a.last_seen_at),
                "acknowledged_at": _when(a.acknowledged_at) or None,
                "acknowledged_by": a.acknowledged_by,
                "resolved_at": _when(a.resolved_at) or None,
                "resolved_by": a.resolved_by,
                "reopened": a.reopened,
            }
            for a in alerts
        ]
    if as_json:
        render.line(jsonwire.dumps({"alerts": documents}, canonical=True))  # details may hold Decimals
        return
    render.table(
        ("id", "facility", "source", "kind", "severity", "state", "opened", "summary"),
        (
            (
                str(d["id"]),
                d["facility_id"],
                d["source"],
                d["kind"],
                d["severity"],
                d["state"] + (f" (reopened {d['reopened']})" if d["reopened"] else ""),
                d["opened_at"],
                d["summary"],
            )
            for d in documents
        ),
    )
    live_count = sum(1 for d in documents if d["state"] != "resolved")
    render.line(f"{len(documents)} alerts, {live_count} open or acknowledged")


@cli.command("show")
def show(alert_id: Annotated[int, typer.Argument(help="the alert's id (alerts list)")]) -> None:
    """One alert: its history (who did what when) and its deliveries to each sink (state, attempts, the
    last error's reason)."""
    from app.alerts.service import alert_deliveries, alert_history

    with ledger.session() as session:
        from app.db.models import Alert

        alert = session.get(Alert, alert_id)
        if alert is None:
            render.fail(f"no alert {alert_id}")
        render.line(
            f"alert {alert.id} {alert.state}: {alert.kind} at {alert.facility_id} ({alert.source},"
            f" {alert.severity}) dedup key {alert.dedup_key}"
        )
        render.line(alert.summary)
        render.table(
            ("at", "event", "by"),
            ((_when(e.at), e.event, e.actor) for e in alert_history(session, alert_id)),
            title="history",
        )
        render.table(
            ("sink", "action", "state", "attempts", "last error", "next attempt", "sent"),
            (
                (
                    d.sink,
                    d.action,
                    d.state,
                    str(d.attempts),
                    d.last_error or "",
                    _when(d.next_attempt_at) if d.state == "pending" else "",
                    _when(d.sent_at),
                )
                for d in alert_deliveries(session, alert_id)
            ),
            title="deliveries",
        )


def _transition(alert_id: int, by: str | None, action: str) -> None:
    from app.alerts.service import acknowledge, resolve

    step = acknowledge if action == "acknowledge" else resolve
    actor = _actor(by)
    with ledger.session(write=True) as session:
        outcome = step(session, alert_id, actor, datetime.now(UTC))
    if outcome == "not_found":
        render.fail(f"no alert {alert_id}")
    if outcome == "unchanged":
        already = "acknowledged or resolved" if action == "acknowledge" else "resolved"
        render.line(f"alert {alert_id}: already {already}")
        return
    render.line(f"alert {alert_id}: {action}d by {actor}; the sinks that got its trigger are told")


@cli.command("ack")
def ack(alert_id: Annotated[int, typer.Argument(help="the alert's id (alerts list)")], by: By = None) -> None:
    """Acknowledge an open alert (PagerDuty: the incident is acknowledged). Idempotent."""
    _transition(alert_id, by, "acknowledge")


@cli.command("resolve")
def resolve(
    alert_id: Annotated[int, typer.Argument(help="the alert's id (alerts list)")], by: By = None
) -> None:
    """Resolve a live alert by hand. Should its condition still hold, it reopens at the next evaluation."""
    _transition(alert_id, by, "resolve")


@cli.command("test-sink")
def send_test_event(
    name: Annotated[str, typer.Argument(help="a sink of EHRI_ALERT_SINKS_FILE or of --facility")],
    facility: Annotated[
        str | None, typer.Option(help="look the sink up among this facility's sinks too")
    ] = None,
) -> None:
    """Send a clearly marked test event (severity info, summary "TEST"; PagerDuty: a trigger resolved at
    once) to one sink, now, outside the outbox. Exit 1 when the sink refuses it."""
    import httpx

    from app.alerts.sinks import AlertMessage, SinkDirectory, facility_alerts
    from app.errors import AlertSinkError
    from app.facilities.schemas import FacilityAlertsConfig
    from app.settings import get_settings

    try:
        directory = SinkDirectory.load(get_settings())
    except ConfigurationError as exc:
        render.fail(exc.detail)
    alerts = FacilityAlertsConfig()
    if facility is not None:
        with ledger.session() as session:
            ledger.require_facility(session, facility)
            from app.facilities.service import get_facility

            row = get_facility(session, facility)
            alerts = facility_alerts(row.alerts if row else None)
    sink = directory.sink(alerts, name)
    if sink is None:
        known = ", ".join(sorted(directory.sinks_for(alerts))) or "none"
        render.fail(f"unknown sink {name!r} (known: {known})")
    now = datetime.now(UTC)
    message = AlertMessage.test_event(name, now)
    try:
        with httpx.Client() as http:
            sink.send(http, message, now)
    except ConfigurationError as exc:
        render.fail(exc.detail)
    except AlertSinkError as exc:
        render.fail(f"sink {name} refused the test event: {exc.reason} ({exc.detail})", render.EXIT_FAILED)
    render.line(f"sink {name}: test event {message.dedup_key} delivered")
