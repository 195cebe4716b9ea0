"""``make demo``: the real receiver, workers and beat against simulated EHRs, then the ledger check.

It runs against the configured Postgres and Redis when they answer, else embedded ones kept in ``.demo/``
(``devstack.servers``), and says which first."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from app.settings import get_settings
from devstack.ledger import LedgerReport
from devstack.processes import ROOT
from devstack.scenario import Scenario, scenario_for
from devstack.servers import ServerError, Servers, dev_servers, stop_on_sigterm

FACILITIES = ["general-hospital", "valley-clinic"]
DATABASE = "ehr_ingest_demo"


def run_demo(*, changes: int = 200, timeout: float = 120.0) -> int:
    """0 when every change reached Postgres; 1 when one is lost or work is still pending at ``timeout``;
    2 when the configured servers cannot be used."""
    console = Console(width=None if sys.stdout.isatty() else 120)
    settings = get_settings()
    workdir = ROOT / ".demo"
    console.rule("[bold]ehr-ingest demo")
    stop_on_sigterm()
    maintenance = make_url(settings.database_url).set(database="postgres")
    try:
        with dev_servers(
            maintenance.render_as_string(hide_password=False), settings.redis_url, home=workdir
        ) as servers:
            for line in servers.lines:
                console.print(line, highlight=False)
            scenario = scenario_for(
                workdir,
                base_database_url=servers.database_url,
                redis_url=servers.redis_url,
                facilities=FACILITIES,
                name=DATABASE,
            )
            return _run(console, scenario, servers, changes=changes, timeout=timeout)
    except ServerError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2


def _run(console: Console, scenario: Scenario, servers: Servers, *, changes: int, timeout: float) -> int:
    console.print(f"database  {DATABASE}\nworkdir   {scenario.workdir} (keys, configs, process logs)")
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
        console.print(_table(scenario, reports, changes))
        failed = not all(r.ok for r in reports)
        console.print(_verdict(reports, elapsed, timeout), highlight=False)
        console.print(_query_hint(servers), highlight=False)
    finally:
        if failed and scenario.stack is not None:
            for proc in scenario.stack.procs:
                console.print(f"--- {proc.name} log tail\n{proc.log_tail(20)}")
        scenario.teardown(drop=False)
    return 1 if failed else 0


def _table(scenario: Scenario, reports: list[LedgerReport], changes: int) -> Table:
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
    for report in reports:
        sent = scenario.sender_counters(report.facility_id)
        table.add_row(
            report.facility_id,
            str(changes),
            str(sent.get("delivered", 0)),
            str(report.expected),
            str(report.matched),
            str(len(report.missing)),
            str(len(report.behind)),
            str(len(report.not_tombstoned)),
            str(report.inbox.get("done", 0)),
            str(report.inbox.get("dead", 0)),
            str(report.pending),
        )
    return table


def _verdict(reports: list[LedgerReport], elapsed: float, timeout: float) -> str:
    """Lost is only said of drained work: a deadline passed with work pending is its own failure."""
    pending = sum(r.pending for r in reports)
    if pending:
        undelivered = sum(r.undelivered for r in reports)
        unmatched = sum(r.unmatched for r in reports)
        return (
            f"[red]not drained in {timeout:.0f} s: {pending} pending[/red] "
            f"({undelivered} not yet delivered by the EHR, {pending - undelivered} in the inbox); "
            f"{unmatched} changes not yet in Postgres: check the worker and beat logs above"
        )
    lost = sum(r.lost for r in reports)
    if lost:
        dead = sum(r.inbox.get("dead", 0) for r in reports)
        return f"[red]lost = {lost}[/red]   drained in {elapsed:.1f}s, {dead} dead letters"
    return f"[green]lost = 0[/green]   every change reached Postgres in {elapsed:.1f}s"


def _query_hint(servers: Servers) -> str:
    query = f"psql {DATABASE} -c 'select resource_type, count(*) from current_resources group by 1'"  # noqa: S608 - a hint printed, not run
    if servers.embedded_postgres:
        return (
            "the embedded servers stop with the demo (data kept in .demo/); query it with\n"
            f"  .venv/bin/python -m devstack.servers -- {query}"
        )
    url = make_url(servers.database_url)
    return f"query it:  psql -h {url.host} -p {url.port or 5432} -U {url.username} {query[5:]}"
