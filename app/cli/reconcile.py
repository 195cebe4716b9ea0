"""``ehr-ingest reconcile status [FACILITY]``: watermarks, the last run and what was recovered."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli import ledger, render

cli = typer.Typer(help="The reconciler: what it has seen and recovered.", no_args_is_help=True)


@cli.command("status")
def status(facility: Annotated[str | None, typer.Argument(help="only this facility")] = None) -> None:
    """Per facility, type and strategy: the watermark, the last run's outcome, and recovered changes."""
    from app.reconcile.status import cohort_and_jobs, reconcile_status

    with ledger.session() as s:
        ledger.require_facility(s, facility)
        rows, runs = reconcile_status(s, facility)
        groups, jobs = cohort_and_jobs(s, facility)
    render.table(
        ("facility", "type", "strategy", "watermark", "last run", "outcome", "recovered"),
        (
            (
                r.facility_id,
                r.resource_type,
                r.strategy,
                r.watermark.isoformat(timespec="seconds") if r.watermark else "-",
                r.last_run_at.isoformat(timespec="seconds") if r.last_run_at else "-",
                r.last_reason or r.last_outcome or "-",
                str(r.recovered),
            )
            for r in rows
        ),
        title="reconcile watermarks",
    )
    for run in runs:
        render.line(
            f"{run.facility_id}: last run {run.started_at.isoformat(timespec='seconds')} ({run.trigger}) "
            f"{run.outcome or 'running or killed'}: {run.pages} pages, {run.applied} applied, "
            f"{run.recovered} recovered"
        )
    for group in groups:
        read = group.read_at.isoformat(timespec="seconds") if group.read_at else "never"
        failed = f"; last read failed ({group.last_reason})" if group.last_reason else ""
        render.line(
            f"{group.facility_id}: cohort Group {group.group_id}: {group.members} Patient members "
            f"(read {read}){failed}"
        )
    for job in jobs:
        render.line(
            f"{job.facility_id}: bulk export of {job.resource_type} kept for the next run (kicked off "
            f"{job.kicked_off_at.isoformat(timespec='seconds')}; committed up to file {job.file_index}, "
            f"line {job.line})"
        )
