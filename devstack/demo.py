"""``make demo``: the real receiver, workers and beat against simulated EHRs, then the ledger check."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.table import Table

from app.settings import get_settings
from devstack.processes import ROOT
from devstack.scenario import scenario_for

FACILITIES = ["general-hospital", "valley-clinic"]


def run_demo(*, changes: int = 200, timeout: float = 120.0) -> int:
    console = Console(width=None if sys.stdout.isatty() else 120)
    settings = get_settings()
    workdir = ROOT / ".demo"
    scenario = scenario_for(
        workdir,
        base_database_url=settings.database_url,
        redis_url=settings.redis_url,
        facilities=FACILITIES,
        name="ehr_ingest_demo",
    )
    console.rule("[bold]ehr-ingest demo")
    console.print(f"database  {scenario.database_url}\nworkdir   {workdir} (keys, configs, process logs)")
    scenario.prepare()
    failed = True
    try:
        scenario.start(workers=1, concurrency=2, beat=True)
        console.print(
            f"ehrsim {scenario.sim_url}  receiver {scenario.receiver_url}  worker (2 processes)  beat"
        )
        started = time.monotonic()
        for fid in FACILITIES:
            scenario.make_changes(fid, changes)
            console.print(f"made {changes} changes in {fid}")
        reports = [scenario.wait_for_ledger(fid, timeout=timeout) for fid in FACILITIES]
        elapsed = time.monotonic() - started
        table = Table(
            "facility",
            "changes",
            "notified",
            "in EHR",
            "ingested",
            "missing",
            "behind",
            "not deleted",
            "done",
            "dead",
            "pending",
            title="ledger check: EHR ground truth vs Postgres",
        )
        for fid, report in zip(FACILITIES, reports, strict=True):
            sent = scenario.sender_counters(fid)
            table.add_row(
                fid,
                str(changes),
                str(sent.get("delivered", 0)),
                str(report.expected),
                str(report.matched),
                str(len(report.missing)),
                str(len(report.behind)),
                str(len(report.not_tombstoned)),
                str(report.inbox.get("done", 0)),
                str(report.inbox.get("dead", 0)),
                str(report.inbox.get("pending", 0)),
            )
        console.print(table)
        lost = sum(r.lost for r in reports)
        failed = not all(r.ok for r in reports)
        verdict = "[green]lost = 0[/green]" if not failed else f"[red]lost = {lost}[/red]"
        console.print(f"{verdict}   every change reached Postgres in {elapsed:.1f}s")
        console.print(
            "query it:  psql -h 127.0.0.1 -U postgres ehr_ingest_demo "
            "-c 'select resource_type, count(*) from current_resources group by 1'"
        )
    finally:
        if failed and scenario.stack is not None:
            for proc in scenario.stack.procs:
                console.print(f"--- {proc.name} log tail\n{proc.log_tail(20)}")
        scenario.teardown(drop=False)
    return 1 if failed else 0
