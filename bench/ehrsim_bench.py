"""ehrsim benchmark: how many reads and notifications per second the simulator sustains on this machine,
so that other benchmarks can show it is not their bottleneck.

Figures (bench/results.json):
- ehrsim.reads_per_s: authenticated ``GET /{fac}/fhir/Observation/{id}`` against ``python -m ehrsim``;
  baseline: a bare Starlette endpoint returning a same-sized JSON body, served by the same uvicorn.
  Load by ``wrk`` when present (installed with apt-get when possible), else a bounded httpx loop.
- ehrsim.notifications_per_s: id-only notifications delivered to a trivial local receiver (200 to
  every POST); baseline: raw httpx POSTs of a same-sized body to that receiver at the same concurrency.

Everything runs on 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.results import Figure, write
from devstack.processes import Stack, free_port, http_ok, wait_until

FACILITY = "bench"
READ_SECONDS = float(os.environ.get("BENCH_EHRSIM_READ_SECONDS", "5"))
READ_CONNECTIONS = int(os.environ.get("BENCH_EHRSIM_CONNECTIONS", "32"))
NOTIFICATIONS = int(os.environ.get("BENCH_EHRSIM_NOTIFICATIONS", "5000"))
SENDER_CONCURRENCY = int(os.environ.get("BENCH_EHRSIM_SENDER_CONCURRENCY", "32"))
TIMEOUT_S = 120.0

_BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

BODY = open({body_path!r}, "rb").read()


async def resource(request):
    return Response(BODY, media_type="application/fhir+json")


async def hook(request):
    await request.body()
    return Response(b"", 200)


app = Starlette(routes=[Route("/resource", resource), Route("/hook", hook, methods=["POST"])])
"""


def _wrk() -> str | None:
    """The wrk binary; installed with apt-get when missing and this process may (root, apt present)."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    print("installing wrk with apt-get ...", flush=True)
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"],
            check=False,
            capture_output=True,
            timeout=180,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("wrk")


def _wrk_rate(wrk: str, url: str, token: str | None) -> float:
    argv = [wrk, "-t2", f"-c{READ_CONNECTIONS}", f"-d{READ_SECONDS:.0f}s"]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*argv, url], check=True, capture_output=True, text=True, timeout=READ_SECONDS + 60)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if match is None:
        raise RuntimeError(f"unexpected wrk output: {out.stdout}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
    if non_2xx is not None:
        raise RuntimeError(f"{non_2xx.group(1)} failed reads: {out.stdout}")
    return float(match.group(1))


async def _httpx_rate(url: str, token: str | None) -> float:
    """Requests per second from ``READ_CONNECTIONS`` concurrent loops for ``READ_SECONDS``."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    limits = httpx.Limits(max_connections=READ_CONNECTIONS, max_keepalive_connections=READ_CONNECTIONS)
    done = 0
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=10) as client:
        deadline = time.monotonic() + READ_SECONDS

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                (await client.get(url)).raise_for_status()
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(READ_CONNECTIONS)))
        return done / (time.monotonic() - started)


def _read_rate(wrk: str | None, url: str, token: str | None) -> float:
    return _wrk_rate(wrk, url, token) if wrk else asyncio.run(_httpx_rate(url, token))


async def _raw_posts(url: str, body: bytes, count: int) -> float:
    """Notifications per second a bare httpx sender reaches against the receiver (the baseline)."""
    queue = iter(range(count))
    async with httpx.AsyncClient(timeout=10) as client:

        async def loop() -> None:
            for _ in queue:
                (
                    await client.post(url, content=body, headers={"Content-Type": "application/fhir+json"})
                ).raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(SENDER_CONCURRENCY)))
        return count / (time.monotonic() - started)


def _token(origin: str, key: rsa.RSAPrivateKey) -> str:
    token_url = f"{origin}/{FACILITY}/oauth2/token"
    assertion = jwt.encode(
        {
            "iss": "bench",
            "sub": "bench",
            "aud": token_url,
            "exp": int(time.time()) + 240,
            "jti": str(uuid.uuid4()),
        },
        key,
        algorithm="RS384",
        headers={"kid": "bench", "typ": "JWT"},
    )
    response = httpx.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            "scope": "system/*.read",
        },
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ehrsim-bench-") as tmp:
        workdir = Path(tmp)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        sim_port, bare_port = free_port(), free_port()
        (workdir / "bare_body.json").write_bytes(b"{}")
        stack = Stack(workdir, dict(os.environ))
        try:
            bare_origin = f"http://127.0.0.1:{bare_port}"
            config = {
                "facilities": [
                    {
                        "id": FACILITY,
                        "profile": "generic",
                        "patients": 200,
                        "token_lifetime_s": 3600,
                        "clients": [{"client_id": "bench", "public_key_pem": public.decode()}],
                        "webhook": {
                            "url": f"{bare_origin}/hook",
                            "subscription_id": "sub-bench",
                            "concurrency": SENDER_CONCURRENCY,
                        },
                    }
                ]
            }
            (workdir / "ehrsim.yaml").write_text(yaml.safe_dump(config))
            stack.start_ehrsim(workdir / "ehrsim.yaml", sim_port)
            origin = f"http://127.0.0.1:{sim_port}"
            token = _token(origin, key)
            read_url = f"{origin}/{FACILITY}/fhir/Observation/obs-1"
            body = httpx.get(read_url, headers={"Authorization": f"Bearer {token}"}, timeout=10).content
            (workdir / "bare_body.json").write_bytes(body)
            (workdir / "bare.py").write_text(_BARE_APP.format(body_path=str(workdir / "bare_body.json")))
            argv = [
                sys.executable,
                "-m",
                "uvicorn",
                "bare:app",
                "--app-dir",
                str(workdir),
                "--port",
                str(bare_port),
            ]
            stack.start("bare", [*argv, "--no-access-log", "--log-level", "warning"])
            wait_until(http_ok(f"{bare_origin}/resource"), timeout=30, what="bare starlette")

            wrk = _wrk()
            tool = "wrk" if wrk else "httpx"
            print(f"reads with {tool}, {READ_CONNECTIONS} connections, {READ_SECONDS:.0f} s each", flush=True)
            bare_reads = _read_rate(wrk, f"{bare_origin}/resource", None)
            sim_reads = _read_rate(wrk, read_url, token)

            # A notification is about 1 KB; the baseline posts that size to the same receiver.
            sample = b"x" * 1024
            raw_posts = asyncio.run(_raw_posts(f"{bare_origin}/hook", sample, min(NOTIFICATIONS, 2000)))
            started = time.monotonic()
            httpx.post(f"{origin}/_admin/{FACILITY}/activity", json={"changes": NOTIFICATIONS}, timeout=60)

            def drained() -> bool:
                counters = httpx.get(f"{origin}/_admin/{FACILITY}/notifications", timeout=10).json()
                return bool(counters["pending"] == 0)

            wait_until(drained, timeout=TIMEOUT_S, interval=0.05, what="ehrsim sender")
            elapsed = time.monotonic() - started
            counters = httpx.get(f"{origin}/_admin/{FACILITY}/notifications", timeout=10).json()
            if counters["dropped"]:
                raise RuntimeError(f"ehrsim dropped notifications: {counters}")
        finally:
            stack.stop()
    write(
        [
            Figure(
                name="ehrsim.reads_per_s",
                value=round(sim_reads, 1),
                unit="reads/s",
                baseline=round(bare_reads, 1),
                note=f"authenticated read vs bare Starlette, uvicorn, {tool} c={READ_CONNECTIONS}",
            ),
            Figure(
                name="ehrsim.notifications_per_s",
                value=round(counters["delivered"] / elapsed, 1),
                unit="notifications/s",
                baseline=round(raw_posts, 1),
                note=f"id-only to a bare receiver, {SENDER_CONCURRENCY} in flight vs raw httpx POSTs",
            ),
        ]
    )


if __name__ == "__main__":
    main()
