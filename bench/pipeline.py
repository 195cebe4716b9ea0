"""Pipeline benchmark: notification → committed row, end to end with real processes.

Figures (bench/results.json):
- pipeline.resources_per_s: notification events turned into committed rows per second (id-only backport
  notifications of ehrsim's changes, 20 events a bundle → receiver → Redis → 1 celery worker with 2
  prefork processes fetching from ehrsim over HTTP → Postgres);
  baseline: a raw loop fetching the same resources over HTTP, json-parsing and COPYing them into Postgres.
- pipeline.p99_ms / pipeline.p50_ms: inbox received_at → done_at (the database's clock).
- pipeline.worker_rss_mb: memory of the worker's processes (parent + children) after the run, as PSS.
- celery.noop_tasks_per_s: bare Celery no-op tasks on the same broker and concurrency (context).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.engine import make_engine
from app.ehr.auth import SmartBackendAuth
from app.facilities.schemas import AuthConfig
from bench.results import Figure, write
from devstack.processes import Stack, wait_until
from devstack.scenario import Scenario, scenario_for

CHANGES = int(os.environ.get("BENCH_PIPELINE_CHANGES", "15000"))
# ehrsim's sender posts one event per notification (~650/s here), slower than the pipeline: the measured
# run announces ehrsim's changes itself, several events per backport bundle, as a busy EHR would.
EVENTS_PER_BUNDLE = int(os.environ.get("BENCH_EVENTS_PER_BUNDLE", "20"))
FACILITY = "bench-fac"
BASE_DB = os.environ.get("EHRI_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EHRI_REDIS_URL", "redis://127.0.0.1:6379/0")


def _memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process and its children, in MB. PSS splits the pages prefork children share with
    their parent, so it is what the worker really costs; RSS counts shared pages in every process."""
    rss = pss = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def _bundle(base: str, subscription: str, events: list[tuple[int, str, str]]) -> bytes:
    """An R4 backport id-only notification carrying several events (the IG allows any number)."""
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/{subscription}"}},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": "event-notification"},
    ]
    entries: list[dict[str, Any]] = []
    for number, rtype, rid in events:
        params.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(number)},
                    {"name": "focus", "valueReference": {"reference": f"{base}/{rtype}/{rid}"}},
                ],
            }
        )
        entries.append(
            {"fullUrl": f"{base}/{rtype}/{rid}", "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}
        )
    status = {"resourceType": "Parameters", "parameter": params}
    bundle = {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}, *entries]}
    return json.dumps(bundle).encode()


async def _post_all(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int) -> None:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        queue = list(reversed(bodies))

        async def worker() -> None:
            while queue:
                body = queue.pop()
                response = await client.post(url, content=body, headers=headers)
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _pipeline(sc: Scenario) -> tuple[float, float, float, tuple[float, float]]:
    sc.start(workers=1, concurrency=2, beat=True)
    assert sc.stack is not None
    # Warm up through ehrsim's own sender: token, connections, imports.
    sc.make_changes(FACILITY, 50)
    sc.wait_for_ledger(FACILITY, timeout=120)
    engine = make_engine(sc.database_url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM inbox"))
    # The changes happen with ehrsim's feed stopped; we announce them ourselves, EVENTS_PER_BUNDLE at a time.
    httpx.post(
        f"{sc.sim_url}/_admin/{FACILITY}/faults", json={"feed_stopped": True}, timeout=10
    ).raise_for_status()
    sc.make_changes(FACILITY, CHANGES)
    truth = sc.truth(FACILITY)
    base = f"{sc.sim_url}/{FACILITY}/fhir"
    events = [(10_000 + n, r["resourceType"], r["id"]) for n, r in enumerate(truth)]
    bodies = [
        _bundle(base, "bench", events[i : i + EVENTS_PER_BUNDLE])
        for i in range(0, len(events), EVENTS_PER_BUNDLE)
    ]
    headers = {
        "Content-Type": "application/fhir+json",
        "Authorization": f"Bearer {sc.webhook_secret(FACILITY)}",
    }
    started = time.monotonic()
    asyncio.run(_post_all(f"{sc.receiver_url}/hooks/{FACILITY}", headers, bodies, concurrency=8))
    acked = time.monotonic() - started
    report = sc.wait_for_ledger(FACILITY, timeout=600)
    elapsed = time.monotonic() - started
    if not report.ok:
        raise SystemExit(f"pipeline bench lost data: {report}")
    print(
        f"  {len(events)} events in {len(bodies)} notifications acknowledged in {acked:.1f}s, "
        f"all committed after {elapsed:.1f}s",
        flush=True,
    )
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*) AS n,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - received_at)) p50,"
                " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - received_at)) p99"
                " FROM inbox WHERE status = 'done'"
            )
        ).one()
    engine.dispose()
    worker = next(p for p in sc.stack.procs if p.name == "worker0")
    return row.n / elapsed, row.p50 * 1000, row.p99 * 1000, _memory_mb(worker.popen.pid)


def _raw_loop(sc: Scenario) -> float:
    """Fetch every live resource ehrsim has, json-parse, COPY into a scratch table: the floor of the work."""
    refs = [(r["resourceType"], r["id"]) for r in sc.truth(FACILITY) if not r["deleted"]]
    base = f"{sc.sim_url}/{FACILITY}/fhir"
    config = AuthConfig.model_validate({"client_id": "ehr-ingest", "private_key": {"env": "UNUSED"}})
    http = httpx.Client(limits=httpx.Limits(max_connections=16))
    key = (sc.workdir / f"{FACILITY}.key.pem").read_text()
    auth = SmartBackendAuth(facility_id=FACILITY, base_url=base, config=config, private_key=key, http=http)
    token = auth.token()
    conninfo = make_url(sc.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    rounds = max(1, CHANGES // max(1, len(refs)))
    work = refs * rounds

    def fetch(ref: tuple[str, str]) -> tuple[str, str, str]:
        response = http.get(f"{base}/{ref[0]}/{ref[1]}", headers={"Authorization": f"Bearer {token}"})
        body = json.loads(response.content)
        return ref[0], ref[1], json.dumps(body)

    started = time.monotonic()
    with psycopg.connect(conninfo) as conn, ThreadPoolExecutor(16) as pool:
        conn.execute("CREATE TEMP TABLE raw_copy (t text, id text, body jsonb)")
        for start in range(0, len(work), 100):
            rows = list(pool.map(fetch, work[start : start + 100]))
            with conn.cursor().copy("COPY raw_copy (t, id, body) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
    http.close()
    return len(work) / (time.monotonic() - started)


def _noop_baseline(sc: Scenario, tasks: int = 3000) -> float:
    stack = Stack(sc.workdir, sc.env())
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.celery_noop",
        "worker",
        "--loglevel",
        "WARNING",
        "-Q",
        sc.env()["EHRI_QUEUE"],
        "--concurrency",
        "2",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    stack.start("noop-worker", argv)
    try:
        from bench.celery_noop import celery_app

        client = redis.Redis.from_url(sc.redis_url)
        counter = f"{sc.redis_prefix}noop_done"
        client.delete(counter)
        celery_app.send_task("bench.noop", queue=sc.env()["EHRI_QUEUE"])
        wait_until(lambda: int(client.get(counter) or 0) >= 1, timeout=60, what="noop worker")
        client.delete(counter)
        started = time.monotonic()
        for _ in range(tasks):
            celery_app.send_task("bench.noop", queue=sc.env()["EHRI_QUEUE"])
        wait_until(
            lambda: int(client.get(counter) or 0) >= tasks, timeout=300, interval=0.05, what="noop tasks"
        )
        return tasks / (time.monotonic() - started)
    finally:
        stack.stop()


UNLIMITED = {"requests_per_second": 100_000, "burst": 10_000, "concurrency": 64}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        sc = scenario_for(Path(tmp), base_database_url=BASE_DB, redis_url=REDIS_URL, facilities=[FACILITY])
        # The bench measures our cost, not a facility's request budget: the politeness limits (20 req/s by
        # default, enforced since the worker's wiring has Redis) are lifted for the simulated EHR.
        sc.limits = UNLIMITED
        sc.prepare()
        try:
            per_s, p50, p99, (rss, pss) = _pipeline(sc)
            raw = _raw_loop(sc)
            if sc.stack is not None:
                sc.stack.stop()
            os.environ.update({k: v for k, v in sc.env().items() if k.startswith("EHRI_")})
            from app.settings import get_settings

            get_settings.cache_clear()
            noop = _noop_baseline(sc)
        finally:
            sc.teardown()
    write(
        [
            Figure(
                "pipeline.resources_per_s",
                round(per_s, 1),
                "resources/s",
                round(raw, 1),
                ">= 1000, ratio >= 0.3",
                f"{CHANGES} changes, 1 worker x 2 processes; baseline: raw fetch+parse+COPY loop",
            ),
            Figure("pipeline.p50_ms", round(p50, 1), "ms", None, None, "inbox received → done"),
            Figure(
                "pipeline.p99_ms",
                round(p99, 1),
                "ms",
                None,
                None,
                "inbox received → done; burst load: includes queueing",
            ),
            Figure(
                "pipeline.worker_rss_mb",
                round(pss, 1),
                "MB",
                None,
                "<= 250",
                f"PSS of celery parent + 2 children (RSS counting shared pages in each: {rss:.0f} MB)",
            ),
            Figure(
                "celery.noop_tasks_per_s",
                round(noop, 1),
                "tasks/s",
                None,
                None,
                "bare Celery, same broker, concurrency 2",
            ),
        ]
    )


if __name__ == "__main__":
    main()
