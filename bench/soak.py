"""Soak benchmark: the whole stack under a steady trickle of changes and random faults (FAULTS.md "long
soak with random faults").

One local deployment with real processes (``devstack.scenario``: fresh database and Redis prefix, ehrsim
over HTTP sending notifications for 2 facilities, the receiver, 2 Celery workers, beat). For
``BENCH_SOAK_SECONDS`` (default 90) ehrsim makes ``BENCH_SOAK_RATE`` changes per second per facility
(default 2). The first quarter is a fault-free warm-up; after it, faults drawn from a seeded RNG
(``BENCH_SOAK_SEED``, printed; random when unset) follow each other, one at a time, with a few quiet
seconds between them: kill -9 of a worker node (parent and prefork children; nothing supervises the
stack's workers, so the bench starts a replacement at once, as a supervisor would), dropped notifications
for a while, a 429 storm with Retry-After, a 5xx burst. RSS (``VmRSS``, a process plus its descendants) of
the receiver and of every worker node is sampled every second. At the end the faults stop and the bench
polls the ledger check (``Scenario.wait_for_ledger``) until drained, with a deadline.

Figures (bench/results.json):
- soak.lost: changes not in Postgres at the EHR's version once drained (must be 0; the bench fails
  otherwise, after writing its figures, and when the ledger is not drained by the deadline).
- soak.rss_slope_mb_per_min.receiver / .worker: least-squares slope of RSS over the run's second half,
  one slope shared by the processes of the kind started with the stack, an intercept each. Replacement
  workers are left out of the fit (their first and last RSS are in the note): started mid-run, they fill
  up for minutes as their pool processes meet their first tasks, which is warm-up, not a leak; worker0 is
  never the one killed, so at least one worker spans the whole run. Baseline: the mean RSS of those
  processes from WARMUP_S to half-time, so the ratio is the share of its memory a process gains a minute
  (the slope's standard error is in the note; RSS moves in steps, so even a small steady creep is far
  outside the fit's noise in a short run, which made the t statistic a poor baseline).
- soak.p99_end_to_end_ms: ehrsim's ``meta.lastUpdated`` of each stored version (when the EHR made the
  change) → its ``resource_history.recorded_at`` (the writing transaction's ``now()``), for changes made
  after the warm-up outside any fault window (from FAULT_MARGIN_S before a fault begins until SETTLE_S
  after it ended: drops cleared, the 429/5xx budget spent, or every row pending at a kill done; a 429
  storm's window also spans its Retry-After, which the worker obeys after the last 429); baseline: the
  same p99 over the fault-free warm-up. The note gives the p99 over every change after the warm-up.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.results import Figure, write
from devstack.processes import Proc
from devstack.scenario import Scenario, scenario_for

BASE_DB = os.environ.get("EHRI_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EHRI_REDIS_URL", "redis://127.0.0.1:6379/0")
DURATION_S = float(os.environ.get("BENCH_SOAK_SECONDS", "90"))
RATE = float(os.environ.get("BENCH_SOAK_RATE", "2"))  # changes per second per facility
FACILITIES = ["soak-a", "soak-b"]
WORKERS = 2
CONCURRENCY = 2
WARMUP_S = 30.0  # a process's first seconds (imports, pools, caches): not in the RSS baseline
FAULT_MARGIN_S = 2.0  # changes made this long before a fault began may be caught in it (p99 ~0.2 s)
# A fault's window closes this long after it ended (plus a 429's Retry-After): backoffs and doorbells
# scheduled during it still run then.
SETTLE_S = 3.0
DRAIN_TIMEOUT_S = 90.0
KILL_RECOVERY_TIMEOUT_S = 60.0
# Short grace and tick so that dropped notifications are found (event-number gaps, $events) in seconds.
STACK_ENV = {"EHRI_EVENT_GAP_GRACE": "PT1S", "EHRI_RECONCILE_TICK": "PT1S", "EHRI_LOG_LEVEL": "WARNING"}


# Rows not done yet, and whether a worker holds them now (a live lease).
PENDING = "SELECT id, coalesce(lease_until > now(), false) AS claimed FROM inbox WHERE status = 'pending'"


# -- statistics (pure) -----------------------------------------------------


@dataclass(frozen=True)
class SlopeFit:
    slope: float  # y units per x unit
    stderr: float  # the slope's standard error (nan with too few points)
    points: int
    series: int


def pooled_slope(series: list[list[tuple[float, float]]]) -> SlopeFit:
    """One least-squares slope shared by every series, each with its own intercept (a fixed-effects
    fit): a process replaced mid-run contributes its trend, not the jump between the two levels."""
    sxx = sxy = 0.0
    centred: list[tuple[float, float]] = []
    used = n = 0
    for points in series:
        if len(points) < 2:
            continue
        used += 1
        n += len(points)
        mx = sum(x for x, _ in points) / len(points)
        my = sum(y for _, y in points) / len(points)
        for x, y in points:
            centred.append((x - mx, y - my))
            sxx += (x - mx) ** 2
            sxy += (x - mx) * (y - my)
    if sxx == 0:
        return SlopeFit(math.nan, math.nan, n, used)
    slope = sxy / sxx
    dof = n - used - 1
    if dof <= 0:
        return SlopeFit(slope, math.nan, n, used)
    residuals = sum((dy - slope * dx) ** 2 for dx, dy in centred)
    return SlopeFit(slope, math.sqrt(residuals / dof / sxx), n, used)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), linear between closest ranks (as Postgres' percentile_cont)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def outside(t: float, windows: list[tuple[float, float]]) -> bool:
    return all(not (start <= t <= end) for start, end in windows)


# -- memory --------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _descendants(int(child))
    return found


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` and its descendants (celery's prefork children), in MB; None once gone."""
    total = 0
    seen = False
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    seen = True
        except OSError:
            continue
    return total / 1024 if seen else None


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    facility: str | None
    started: float  # epoch seconds
    ended: float = math.nan
    detail: str = ""
    recovery_s: float | None = None
    settle_s: float = 0.0  # how long its effect outlives it (the last 429's Retry-After)


@dataclass
class Run:
    sc: Scenario
    rng: random.Random
    t0: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)  # the run is over
    abort: threading.Event = field(default_factory=threading.Event)  # and no fault waits for recovery
    faults: list[Fault] = field(default_factory=list)
    rss: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # proc name → (t, MB)
    changes: int = 0
    change_errors: int = 0
    replacements: int = 0
    error: BaseException | None = None  # what stopped the fault injector, if anything did
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admin(self, facility: str, body: dict[str, Any] | None) -> dict[str, Any]:
        url = f"{self.sc.sim_url}/_admin/{facility}/faults"
        response = httpx.post(url, json=body, timeout=10) if body is not None else httpx.get(url, timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    # Changes at a steady rate, each facility its own clock tick.
    def drive(self) -> None:
        interval = 1.0 / RATE
        next_at = time.monotonic()
        while not self.stop.is_set():
            for facility in FACILITIES:
                try:
                    self.sc.make_changes(facility, 1)
                    self.changes += 1
                except httpx.HTTPError:
                    self.change_errors += 1
            next_at += interval
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def sample(self) -> None:
        assert self.sc.stack is not None
        while not self.stop.is_set():
            now = time.time() - self.t0
            with self.lock:
                procs = list(self.sc.stack.procs)
            for proc in procs:
                if proc.name == "receiver" or proc.name.startswith("worker"):
                    mb = rss_mb(proc.popen.pid) if proc.alive() else None
                    if mb is not None:
                        self.rss.setdefault(proc.name, []).append((now, mb))
            self.stop.wait(1.0)

    def inject(self, until: float) -> None:
        """Faults one at a time until ``until`` (epoch), each followed by a few quiet seconds."""
        kinds: list[tuple[str, Callable[[], Fault]]] = [
            ("kill", self._kill),
            ("drops", self._drops),
            ("throttle", self._throttle),
            ("error_burst", self._burst),
        ]
        while not self.stop.wait(self.rng.uniform(4.0, 10.0)) and time.time() < until - 5:
            kind, action = self.rng.choice(kinds)
            fault = action()
            self.faults.append(fault)
            print(
                f"  +{fault.started - self.t0:5.1f}s {kind} {fault.facility or ''} {fault.detail}"
                f" ({fault.ended - fault.started:.1f}s)",
                flush=True,
            )

    def _kill(self) -> Fault:
        assert self.sc.stack is not None
        with self.lock:
            # worker0 is never killed: one worker's memory spans the whole run (the RSS slope's witness)
            workers = [p for p in self.sc.stack.procs if p.name.startswith("worker") and p.name != "worker0"]
            workers = [p for p in workers if p.alive()]
        victim: Proc = self.rng.choice(workers)
        # Mid-batch when the trickle allows: wait a little for a claimed row (which worker holds it is not
        # known here; the victim is drawn anyway).
        deadline = time.monotonic() + 3.0
        rows = self.sc.sql(PENDING)
        while time.monotonic() < deadline and not any(r.claimed for r in rows):
            time.sleep(0.02)
            rows = self.sc.sql(PENDING)
        pending = {int(r.id) for r in rows}
        detail = f"{victim.name}, {sum(bool(r.claimed) for r in rows)} of {len(rows)} pending rows claimed"
        fault = Fault("kill", None, time.time(), detail=detail)
        victim.kill()  # SIGKILL to the node's process group: the parent and its prefork children
        self.replacements += 1
        with self.lock:
            self.sc.stack.procs.remove(victim)
            self.sc.stack.start_worker(f"worker-r{self.replacements}", CONCURRENCY)
        deadline = time.monotonic() + KILL_RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline and not self.abort.is_set():
            left = pending & {int(r.id) for r in self.sc.sql(PENDING)}
            if not left:
                fault.recovery_s = time.time() - fault.started
                break
            time.sleep(0.2)
        fault.ended = time.time()
        return fault

    def _drops(self) -> Fault:
        facility = self.rng.choice(FACILITIES)
        rate = round(self.rng.uniform(0.1, 0.5), 2)
        seconds = self.rng.uniform(4.0, 10.0)
        fault = Fault("drops", facility, time.time(), detail=f"drop_rate {rate} for {seconds:.0f}s")
        self.admin(facility, {"drop_rate": rate})
        self.stop.wait(seconds)
        self.admin(facility, {"drop_rate": 0.0})
        fault.ended = time.time()
        return fault

    def _spent(self, facility: str, which: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.admin(facility, None)["remaining"][which] > 0:
            time.sleep(0.2)

    def _throttle(self) -> Fault:
        facility = self.rng.choice(FACILITIES)
        requests = self.rng.randint(5, 20)
        retry_after = self.rng.randint(1, 3)
        fault = Fault(
            "throttle", facility, time.time(), detail=f"{requests} x 429 Retry-After {retry_after}s"
        )
        self.admin(facility, {"throttle": {"requests": requests, "retry_after_s": retry_after}})
        self._spent(facility, "throttle", 30.0)
        self.admin(facility, {"throttle": {"requests": 0}})
        fault.ended = time.time()
        return fault

    def _burst(self) -> Fault:
        facility = self.rng.choice(FACILITIES)
        requests = self.rng.randint(10, 40)
        status = self.rng.choice([500, 502, 503, 504])
        fault = Fault("error_burst", facility, time.time(), detail=f"{requests} x {status}")
        self.admin(facility, {"error_burst": {"requests": requests, "status": status}})
        self._spent(facility, "error_burst", 30.0)
        self.admin(facility, {"error_burst": {"requests": 0}})
        fault.ended = time.time()
        return fault


def _probe(sc: Scenario) -> None:
    """What ``facilities apply`` does against a live EHR: find $events, so the gap pass can fetch the
    events of dropped notifications (the scenario registers the facilities before ehrsim runs)."""
    from app.db.engine import make_engine, make_sessionmaker
    from app.db.models import Facility
    from app.ehr.pool import EHRClientPool
    from app.reconcile.probe import probe_facility

    engine = make_engine(sc.database_url, pool_size=1)
    pool = EHRClientPool()
    try:
        for fid in FACILITIES:
            with make_sessionmaker(engine).begin() as session:
                facility = session.get(Facility, fid)
                assert facility is not None
                probe_facility(session, facility, pool.get(facility), now=datetime.now(UTC))
    finally:
        pool.close()
        engine.dispose()


def _latencies(sc: Scenario) -> list[tuple[float, float]]:
    """(changed at ehrsim, epoch s; end to end, ms) of every stored live version."""
    rows = sc.sql(
        "SELECT extract(epoch FROM last_updated) AS changed,"
        " extract(epoch FROM recorded_at - last_updated) * 1000 AS ms"
        " FROM resource_history WHERE last_updated IS NOT NULL AND NOT deleted"
    )
    return [(float(r.changed), float(r.ms)) for r in rows]


def _is(kind: str, name: str) -> bool:
    return (name == "receiver") == (kind == "receiver")


def _slope_figure(run: Run, kind: str, half: float) -> Figure:
    """The fit takes the processes started with the stack (before any fault), over the run's second half:
    a replacement worker fills up for minutes after it starts (its pool processes import and cache as
    their first tasks come), which says nothing about a leak; its first and last RSS go in the note."""
    series: list[list[tuple[float, float]]] = []
    warm: list[float] = []
    replacements: list[str] = []
    last: list[str] = []
    for name, points in run.rss.items():
        if not _is(kind, name):
            continue
        last.append(f"{points[-1][1]:.0f}")
        if name.startswith("worker-r"):  # a replacement, started mid-run
            replacements.append(
                f"{name} {points[0][1]:.0f}→{points[-1][1]:.0f} MB in {points[-1][0] - points[0][0]:.0f}s"
            )
            continue
        # minutes on x: the slope comes out in MB per minute
        series.append([(t / 60, mb) for t, mb in points if t >= half])
        warm += [mb for t, mb in points if WARMUP_S <= t < half]
    fit = pooled_slope(series)
    start_mb = sum(warm) / len(warm) if warm else math.nan
    return Figure(
        f"soak.rss_slope_mb_per_min.{kind}",
        round(fit.slope, 3),
        "MB/min",
        baseline=None if math.isnan(start_mb) else round(start_mb, 1),
        target="flat: ratio ~ 0 (/min)",
        note=(
            f"VmRSS (process + children) 1/s, least squares over the second half: {fit.points} samples of "
            f"{fit.series} process(es) started with the stack, one slope, an intercept each; slope stderr "
            f"{fit.stderr:.3f} MB/min; baseline: their mean RSS (MB) from {WARMUP_S:.0f}s to half-time, so "
            f"ratio = share of a process's memory gained a minute; {', '.join(last)} MB at the end"
            + (f"; replacements left out: {'; '.join(replacements)}" if replacements else "")
        ),
    )


def _trajectories(run: Run) -> None:
    """Every process's RSS every 10 s, to see what the fit saw."""
    for name, points in run.rss.items():
        marks = " ".join(f"{mb:.0f}@{t:.0f}s" for t, mb in points[::10])
        print(f"  rss {name}: {marks} (MB@s)", flush=True)


def main() -> None:
    seed = int(os.environ.get("BENCH_SOAK_SEED") or random.SystemRandom().randrange(1_000_000))
    print(f"  seed {seed} (BENCH_SOAK_SEED={seed} repeats the fault schedule), {DURATION_S:.0f}s", flush=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM cleans up as Ctrl-C does
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        sc = scenario_for(Path(tmp), base_database_url=BASE_DB, redis_url=REDIS_URL, facilities=FACILITIES)
        try:
            sc.prepare()
            sc.start(workers=WORKERS, concurrency=CONCURRENCY, beat=True, env=STACK_ENV)
            _probe(sc)
            _soak(sc, seed)
        finally:
            stack = sc.stack
            tails = {p.name: p.log_tail(15) for p in (stack.procs if stack else [])}
            sc.teardown()
            signal.signal(signal.SIGTERM, previous)
            if sys.exc_info()[0] is not None:
                for name, tail in tails.items():
                    print(f"--- {name}\n{tail}", flush=True)


def _soak(sc: Scenario, seed: int) -> None:
    run = Run(sc, random.Random(seed))
    end = run.t0 + DURATION_S
    warmup_end = run.t0 + DURATION_S / 4
    threads = [
        threading.Thread(target=run.drive, daemon=True),
        threading.Thread(target=run.sample, daemon=True),
    ]
    for t in threads:
        t.start()

    def inject() -> None:
        try:
            run.inject(end)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread, after cleaning up
            run.error = exc

    injector = threading.Thread(target=inject, daemon=True)
    try:
        run.stop.wait(max(0.0, warmup_end - time.time()))
        injector.start()
        injector.join()  # it stops drawing faults near the end, and lets the last one finish
    finally:
        run.abort.set()  # only set early when this is an exception or Ctrl-C
        run.stop.set()
        for t in [*threads, injector]:
            if t.ident is not None:
                t.join(timeout=30)
    if run.error is not None:
        raise SystemExit(f"soak: the fault injector failed: {run.error!r}")
    soaked = time.time() - run.t0
    for facility in FACILITIES:  # nothing left standing
        httpx.delete(f"{sc.sim_url}/_admin/{facility}/faults", timeout=10).raise_for_status()
    drain_started = time.monotonic()
    reports = [
        sc.wait_for_ledger(f, timeout=max(1.0, DRAIN_TIMEOUT_S - (time.monotonic() - drain_started)))
        for f in FACILITIES
    ]
    drain_s = time.monotonic() - drain_started
    drained = all(r.drained for r in reports)
    lost = sum(r.unmatched for r in reports)
    print(
        f"  {run.changes} changes in {soaked:.0f}s ({run.change_errors} admin errors), "
        f"{len(run.faults)} faults; drained {drained} after {drain_s:.1f}s, unmatched {lost}",
        flush=True,
    )
    _trajectories(run)

    windows = [(f.started - FAULT_MARGIN_S, f.ended + SETTLE_S + f.settle_s) for f in run.faults]
    latencies = _latencies(sc)
    calm = [ms for t, ms in latencies if t >= warmup_end and t < end and outside(t, windows)]
    slowest = sorted(((ms, t) for t, ms in latencies if t >= warmup_end and t < end and outside(t, windows)))
    print(
        "  slowest outside fault windows: "
        + ", ".join(f"{ms:.0f} ms at +{t - run.t0:.1f}s" for ms, t in slowest[-5:]),
        flush=True,
    )
    warm = [ms for t, ms in latencies if run.t0 + 5 <= t < warmup_end]
    every = [ms for t, ms in latencies if t >= warmup_end]
    counts: dict[str, int] = {}
    for f in run.faults:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    recoveries = [
        f"{f.recovery_s:.1f}s" if f.recovery_s is not None else "not recovered"
        for f in run.faults
        if f.kind == "kill"
    ]
    kinds = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "none"
    fault_note = (
        f"seed {seed}; faults {kinds}; recovery after each kill (every row pending at the kill done): "
        + (", ".join(recoveries) or "no kill drawn")
    )
    expected = sum(r.expected for r in reports)
    if drained:
        drain_note = f"drained {drain_s:.1f}s after the faults stopped"
    else:
        pending = [r.pending for r in reports]
        drain_note = f"NOT drained after {drain_s:.0f}s (pending {pending}), unmatched counted as lost"
    half = soaked / 2
    write(
        [
            Figure(
                "soak.lost",
                float(lost),
                "changes",
                target="0",
                note=(
                    f"ledger check over {expected} resources of {len(FACILITIES)} facilities, "
                    f"{run.changes} changes in {soaked:.0f}s; {drain_note}; {fault_note}"
                ),
            ),
            _slope_figure(run, "receiver", half),
            _slope_figure(run, "worker", half),
            Figure(
                "soak.p99_end_to_end_ms",
                round(percentile(calm, 0.99), 1),
                "ms",
                baseline=round(percentile(warm, 0.99), 1) if warm else None,
                target=None,
                note=(
                    f"ehrsim lastUpdated → resource_history.recorded_at, {len(calm)} versions made "
                    f"outside fault windows ({FAULT_MARGIN_S:.0f}s before a fault to {SETTLE_S:.0f}s "
                    f"after it, + Retry-After for 429s) (p50 {percentile(calm, 0.5):.0f} ms); baseline: "
                    f"p99 of {len(warm)} in the fault-free warm-up (p50 {percentile(warm, 0.5):.0f} ms); all "
                    f"{len(every)} after warm-up, faults included: p99 {percentile(every, 0.99):.0f} ms"
                ),
            ),
        ]
    )
    if not drained or lost:
        detail = [(r.missing[:5], r.behind[:5], r.not_tombstoned[:5], r.inbox) for r in reports]
        raise SystemExit(f"soak: lost {lost}, drained {drained}: {detail}")


if __name__ == "__main__":
    main()
