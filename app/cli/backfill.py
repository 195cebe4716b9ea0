"""``ehr-ingest backfill FACILITY``: the reconciler's run, on demand (the same code the beat runs).

Resumable: pages are committed as they come and a type's watermark moves only once all of its pages
are in, so a backfill interrupted anywhere is simply run again. ``--since`` searches from that instant
instead of the watermark (which still only moves forward)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli import ledger, render
from app.reconcile import StrategyName

if TYPE_CHECKING:
    from app.reconcile.service import RunReport


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        since = datetime.fromisoformat(value)
    except ValueError:
        render.fail(f"--since {value!r} is not an ISO 8601 instant (2026-01-01T00:00:00Z)")
    if since.tzinfo is None:
        render.fail("--since needs a time zone (Z or +hh:mm)")
    return since


def _report_dict(report: RunReport) -> dict[str, object]:
    return {
        "facility": report.facility_id,
        "run_id": report.run_id,
        "outcome": report.outcome,
        "types": [
            {
                "resource_type": t.resource_type,
                "strategy": t.strategy,
                "outcome": t.outcome,
                "reason": t.reason,
                "pages": t.pages,
                "resources": t.resources,
                "applied": t.applied,
                "recovered": t.recovered,
                "watermark": t.watermark.isoformat() if t.watermark else None,
            }
            for t in report.types
        ],
    }


def backfill(
    facility: Annotated[str, typer.Argument(help="the facility id")],
    since: Annotated[str | None, typer.Option(help="search from this instant, not the watermark")] = None,
    types: Annotated[
        str | None, typer.Option(help="comma-separated resource types (default: the facility's)")
    ] = None,
    strategy: Annotated[StrategyName | None, typer.Option(help="the strategy for every type")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON, no progress")] = False,
) -> None:
    """Find and store everything the facility's EHR changed (since the watermark or --since)."""
    import redis
    from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    from app.db.engine import make_engine, make_sessionmaker
    from app.ehr import token_events
    from app.ehr.pool import EHRClientPool
    from app.errors import ConfigurationError
    from app.reconcile.service import TypeReport, reconcile_facility
    from app.settings import get_settings

    started_since = _parse_since(since)
    wanted = [t.strip() for t in types.split(",") if t.strip()] if types else None
    settings = get_settings()
    with ledger.session() as s:
        ledger.require_facility(s, facility)
    engine = make_engine(settings.database_url, pool_size=2)
    shared = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    sessions = make_sessionmaker(engine)
    clients = EHRClientPool(
        timeout_s=settings.http_timeout.total_seconds(),
        redis_client=shared,
        redis_prefix=settings.redis_prefix,
        token_sink=token_events.database_sink(sessions),
    )
    # A backfill is run by hand: it may take as long as it needs.
    run_settings = settings.model_copy(update={"reconcile_time_budget": settings.http_timeout * 10**6})
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn(
                "{task.fields[pages]} pages, {task.completed:.0f} resources, {task.fields[applied]} applied"
            ),
            TimeElapsedColumn(),
            disable=as_json,
        ) as progress:
            tasks: dict[str, TaskID] = {}

            def show(result: TypeReport) -> None:
                key = result.resource_type
                if key not in tasks:
                    tasks[key] = progress.add_task(
                        f"{key} ({result.strategy})", total=None, pages=0, applied=0
                    )
                progress.update(
                    tasks[key],
                    completed=result.resources,
                    pages=result.pages,
                    applied=result.applied,
                )

            try:
                report = reconcile_facility(
                    sessions,
                    clients.background,
                    facility,
                    run_settings,
                    trigger="backfill",
                    types=wanted,
                    strategy=strategy,
                    since=started_since,
                    progress=show,
                )
            except ConfigurationError as exc:
                render.fail(str(exc))
    finally:
        clients.close()
        shared.close()
        engine.dispose()
    if report.failure is not None:
        render.fail(f"{facility}: cannot reconcile ({report.failure}): {report.failure_detail}")
    if not report.locked:
        render.fail(
            f"{facility}: another reconcile of this facility is running; try again", render.EXIT_FAILED
        )
    if as_json:
        typer.echo(json.dumps(_report_dict(report)))
    else:
        render.table(
            ("type", "strategy", "outcome", "pages", "resources", "applied", "recovered", "watermark"),
            (
                (
                    t.resource_type,
                    t.strategy,
                    t.reason or t.outcome,
                    str(t.pages),
                    str(t.resources),
                    str(t.applied),
                    str(t.recovered),
                    t.watermark.isoformat(timespec="seconds") if t.watermark else "-",
                )
                for t in report.types
            ),
            title=f"backfill {facility}: {report.outcome}",
        )
    if report.outcome == "failed":
        raise typer.Exit(render.EXIT_FAILED)
