"""Real processes on loopback: start, wait until ready (polled, with a deadline), stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or 'condition'}")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """The processes of one run; ``stop()`` ends them all, newest first."""

    workdir: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` with the stack's environment, plus ``env`` for this process only."""
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(  # noqa: S603 - argv is built here, not from input
                argv,
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_ehrsim(self, config: Path, port: int) -> Proc:
        proc = self.start(
            "ehrsim", [sys.executable, "-m", "ehrsim", "--config", str(config), "--port", str(port)]
        )
        self._wait_ready(proc, f"http://127.0.0.1:{port}/_admin/healthz")
        return proc

    def start_receiver(self, port: int) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.api.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        proc = self.start("receiver", argv)
        self._wait_ready(proc, f"http://127.0.0.1:{port}/readyz")
        return proc

    def start_worker(
        self,
        name: str = "worker",
        concurrency: int = 2,
        *,
        metrics_port: int | None = None,
        queues: tuple[str, ...] = ("ingest", "periodic", "reconcile", "alerts"),
    ) -> Proc:
        """A celery worker node (prefork); with ``metrics_port`` its parent serves every process's metrics
        on ``http://127.0.0.1:{metrics_port}/metrics``. ``queues`` by their role (``ingest``: drains and
        ADT, ``periodic``: beat's, ``reconcile``: reconcile runs, ``alerts``: the alerting cycle), every
        one by default, as a worker without -Q consumes (app.queue)."""
        names = {
            "ingest": self.env.get("EHRI_QUEUE", "ingest"),
            "periodic": self.env.get("EHRI_PERIODIC_QUEUE", "periodic"),
            "reconcile": self.env.get("EHRI_RECONCILE_QUEUE", "reconcile"),
            "alerts": self.env.get("EHRI_ALERTS_QUEUE", "alerts"),
        }
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "--loglevel",
            "INFO",  # as production runs it (docker-compose.yml); EHRI_LOG_LEVEL decides (app.logging)
            "-Q",
            ",".join(names[q] for q in queues),
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{name}@%h",
        ]
        env = {"EHRI_WORKER_METRICS_PORT": str(metrics_port)} if metrics_port is not None else {}
        return self.start(name, argv, env=env)

    def start_beat(self, name: str = "beat") -> Proc:
        """A celery beat; a second one needs a ``name`` of its own: its log and its schedule file (beat's
        state, which two processes must not share) are named after it."""
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "beat",
            "--loglevel",
            "INFO",  # as production runs it (docker-compose.yml); EHRI_LOG_LEVEL decides (app.logging)
            "--schedule",
            str(self.workdir / f"{name}-schedule"),
        ]
        return self.start(name, argv)

    def _wait_ready(self, proc: Proc, url: str, timeout: float = 30.0) -> None:
        check = http_ok(url)

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
            return check()

        wait_until(ready, timeout=timeout, what=f"{proc.name} at {url}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
