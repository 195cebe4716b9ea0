"""``ehr-ingest feeds``: each facility's feed health, per source, and the conditions that hold now."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer

from app.cli import ledger, render


def _age(now: datetime, at: datetime | None) -> str:
    """How long ago, compactly (``42s``, ``5m``, ``3h``, ``2d``); ``-`` for never."""
    if at is None:
        return "-"
    seconds = max(0, int((now - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def feeds(
    facility: Annotated[str | None, typer.Option(help="only this facility")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
) -> None:
    """Feed health per facility and source (each subscription, the ADT feed): last event and heartbeat,
    events in the last hour, backlog and its oldest, failures in the error window (fetch, auth,
    signature), quarantined bodies,
    dead letters and what the reconciler recovered; then the conditions that hold now (read only: no
    quiet check is opened, no alert is sent)."""
    import json
    from datetime import UTC

    from app.feeds.detectors import detect
    from app.feeds.service import feed_health

    now = datetime.now(UTC)
    with ledger.session() as session:
        ledger.require_facility(session, facility)
        health = feed_health(session, now, facility=facility)
    conditions = detect(health, now).conditions
    if as_json:
        document = {
            "at": now.isoformat(),
            "facilities": [h.to_json() for h in health],
            "conditions": [
                {
                    "facility_id": c.facility_id,
                    "source": c.source,
                    "kind": c.kind,
                    "severity": c.effective_severity,
                    "summary": c.summary,
                    "details": c.details,
                }
                for c in conditions
            ],
        }
        render.line(json.dumps(document, sort_keys=True))
        return
    rows: list[tuple[str, ...]] = []
    for h in health:
        oldest = _age(now, h.backlog_oldest_at)
        rows.append(
            (
                h.facility_id,
                "facility" if h.enabled else "facility (disabled)",
                h.probe_reason or ("probe ok" if h.probe_ok else "-"),
                _age(now, h.last_event_at),
                "",
                str(h.events_last_hour),
                f"{h.backlog} ({oldest})" if h.backlog else "0",
                f"{h.fetch_failures}/{h.auth_failures}/{h.signature_failures}",
                f"{h.quarantined} (+{h.quarantined_recent})",
                f"{h.dead_letters} (+{h.dead_letters_new})",
                str(h.recovered_last_hour),
            )
        )
        for s in h.sources:
            check = s.check
            status = s.status or ("kept" if s.subscribed else "-")
            if check is not None:
                status += f", quiet check: {check.outcome or 'pending'}"
            if s.open_gaps:
                status += f", {s.open_gaps} events missing"
            heartbeat = _age(now, s.last_heartbeat_at)
            if s.heartbeat_s:
                heartbeat += f" (every {timedelta(seconds=s.heartbeat_s)})"
            rows.append(
                (
                    h.facility_id,
                    s.source,
                    status,
                    _age(now, s.last_event_at),
                    heartbeat,
                    str(s.events_last_hour),
                    "",
                    "",
                    "",
                    "",
                    "",
                )
            )
    render.table(
        (
            "facility",
            "source",
            "status",
            "last event",
            "last heartbeat",
            "events/h",
            "backlog (oldest)",
            "fetch/auth/sig fail",
            "quarantined",
            "dead letters",
            "recovered/h",
        ),
        rows,
        title=f"feed health at {now.isoformat(timespec='seconds')}",
    )
    if not conditions:
        render.line("conditions: none")
    for c in conditions:
        render.line(f"{c.effective_severity} {c.kind} {c.facility_id} {c.source}: {c.summary}")
