"""A real PostgreSQL for the tests: a throwaway cluster in a temp folder.

`initdb` runs once per test run, into a template folder that every cluster
copies (`cp -a`: a tenth of an initdb); `pg_ctl start -w` runs a cluster on
127.0.0.1 (a free TCP port, kept across restarts so that the URLs handed out
stay valid) and on a unix socket in its folder, logging to a file there.
The folders are in /dev/shm when it has room: initdb's thousand small files
took 1.1 s to copy on this machine's disk, 0.06 s in memory. initdb refuses
to run as root: as root the folders belong to the `postgres` user and every
server program runs through `runuser -u postgres --`; as anyone else they
run directly.

Local and 127.0.0.1 connections of the superuser `postgres` are `trust`ed;
every other role must give its password over TCP (scram-sha-256), so a test
can show that a URL with a password works and one without does not. The
role crate would be given, `crate_app`, has a password and owns the
databases `fresh_database` makes (the public schema of a database belongs to
its owner in PostgreSQL 15, so it can create tables there).

The shared cluster of a test run trades durability for speed (`FAST`: fsync
and full_page_writes off): a commit survives kill() but not a power cut. A
test of what survives a crash starts its own cluster (`make_postgres`, with
`DURABLE` if it cares), and stops or kills that one, never the shared one.

Measured here (Debian 12, 2 cores shared with other test runs, PostgreSQL
15, as root, in /dev/shm): the first cluster 0.6-0.9 s (initdb), every
other 0.06 s; start 0.13 s (the first also creates crate_app); a fresh
database 0.02 s and its DROP 0.015 s; stop -m fast or immediate 0.11 s;
kill 0.03 s and the start that recovers 0.13 s; close 0.13 s.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import quote, urlsplit

import pytest

from tests.support.tools import IN_CI

SUPERUSER = "postgres"
APP_USER = "crate_app"

# The shared cluster: nothing a test checks depends on surviving a power cut.
# synchronous_commit stays on: with fsync off it costs a write(2) per commit
# (47 us against 43 here), and off, kill() lost the last 37 of 2,000 commits.
FAST: dict[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
}
# For a test of what a commit promises: PostgreSQL's own defaults.
DURABLE: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
BASE: dict[str, str] = {
    # Several crate servers with a pool each, plus the tests' own connections.
    "max_connections": "200",
    "listen_addresses": "127.0.0.1",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}

HBA = f"""\
local all all trust
local replication {SUPERUSER} trust
host all {SUPERUSER} 127.0.0.1/32 trust
host replication {SUPERUSER} 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""

TIMEOUT = 60  # seconds pg_ctl gets to start or stop a server
MEMORY = "/dev/shm"
MEMORY_NEEDED = 1 << 30  # a cluster is 40 MB, and each database 7.5 MB more
_names = itertools.count(1)


def fail_or_skip(reason: str) -> NoReturn:
    """What require_tool does: fail in CI (scripts/test installs it), else skip."""
    if IN_CI:
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


def server_bindir() -> Path | None:
    """The folder of the server's programs (initdb, pg_ctl, postgres), if any.

    Debian keeps them out of PATH, in /usr/lib/postgresql/VERSION/bin;
    `pg_config --bindir` names that folder, but pg_config comes with libpq-dev
    too, without a server. Elsewhere initdb is on PATH.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(p) for p in debian), key=_major_version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    return next((c for c in candidates if (c / "initdb").is_file()), None)


def _major_version(bindir: Path) -> int:
    return int(bindir.parent.name) if bindir.parent.name.isdigit() else 0


def require_postgres() -> Path:
    """The server's bindir and psycopg, or a failure in CI and a skip elsewhere."""
    bindir = server_bindir()
    if bindir is None:
        fail_or_skip("the PostgreSQL server (initdb) is not installed")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            fail_or_skip(f"no user {SUPERUSER} to run the PostgreSQL server as (not root)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        fail_or_skip("psycopg is not installed (pip install '.[postgres]')")
    return bindir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_name(url: str) -> str:
    """The database a `postgresql://` URL names."""
    return urlsplit(url).path.lstrip("/")


def _conf_line(name: str, value: str) -> str:
    return f"{name} = '{value.replace(chr(39), chr(39) * 2)}'\n"


def server_folder(prefix: str, parent: Path | None = None) -> Path:
    """A new temp folder the server's user owns (0700), in parent or else in
    memory (see MEMORY). Short: a unix socket path must fit in 108 bytes."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent or default_parent()))
    if os.geteuid() == 0:
        shutil.chown(folder, SUPERUSER, SUPERUSER)
    return folder


def default_parent() -> Path | None:
    """/dev/shm when it has room, else the temp folder: initdb writes a
    thousand small files, which took 1.1 s on this machine's disk and 0.05 s
    in memory. (A container's /dev/shm is often 64 MB: too small.)"""
    if os.path.isdir(MEMORY):
        stats = os.statvfs(MEMORY)
        if stats.f_bavail * stats.f_frsize >= MEMORY_NEEDED:
            return Path(MEMORY)
    return None


def as_server(argv: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run argv as the server's user: `postgres` when we are root (initdb refuses
    root), else ourselves; in a clean environment (no PGDATA, PGPORT, ... of
    the developer's), from a folder that user can read."""
    if os.geteuid() == 0:
        argv = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", SUPERUSER, "--", *argv]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


# bindir -> a data folder made by initdb once per run, which every cluster copies.
_templates: dict[Path, Path] = {}


def template_data(bindir: Path) -> Path:
    """initdb's output, made on first use: copying it takes a tenth of an initdb."""
    if bindir not in _templates:
        folder = server_folder("crate-pg-template-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        # --no-sync: a throwaway cluster need not reach the disk before it starts.
        as_server(
            [
                str(bindir / "initdb"),
                *("-D", str(folder / "data"), "-U", SUPERUSER, "-E", "UTF8"),
                *("--no-locale", "--no-sync", "--auth=trust"),
            ],
            folder,
        )
        _templates[bindir] = folder / "data"
    return _templates[bindir]


class PostgresCluster:
    """One PostgreSQL server on its own data folder; `close()` removes it all.

    `settings` are postgresql.conf settings over `FAST` (pass `DURABLE` for a
    cluster that keeps its commits through a crash of the machine). The
    cluster lives in memory when it can; `parent` puts it in another folder
    (a disk, for a test of what fsync costs).
    """

    def __init__(
        self, settings: Mapping[str, str] | None = None, parent: Path | None = None
    ) -> None:
        self.bindir = require_postgres()
        self.settings = {**BASE, **FAST, **(settings or {})}
        self.password = secrets.token_hex(16)
        self.dir = server_folder("crate-pg-", parent)
        atexit.register(self.close)
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "socket"
        self.log = self.dir / "postgres.log"
        self.port = 0
        self.running = False
        as_server(["mkdir", "-m", "0700", str(self.socket_dir)], self.dir)
        as_server(["cp", "-a", str(template_data(self.bindir)), str(self.data)], self.dir)
        self._configure()

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return as_server([str(self.bindir / program), *args], self.dir, check=False)

    def _check(self, program: str, *args: str) -> None:
        done = self._run(program, *args)
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n--- {self.log}:\n{self.log_tail()}"
            )

    def _configure(self) -> None:
        (self.data / "pg_hba.conf").write_text(HBA)
        conf = {**self.settings, "unix_socket_directories": str(self.socket_dir)}
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# tests/support/postgres.py\n")
            f.writelines(_conf_line(name, value) for name, value in conf.items())

    def _set_port(self, port: int) -> None:
        # The last line of postgresql.conf that sets a name wins.
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(_conf_line("port", str(port)))
        self.port = port

    # -- the server's life ----------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it accepts connections; on the first
        start, on a free port (another is tried if it was taken meanwhile)."""
        assert not self.running, "PostgreSQL is already running"
        first = self.port == 0
        for _attempt in range(3):
            if first:
                self._set_port(free_port())
            done = self._run("pg_ctl", "start", "-w", "-t", str(TIMEOUT), *self._ctl_args())
            if done.returncode == 0:
                self.running = True
                break
            if not (first and "Address already in use" in self.log_tail()):
                raise RuntimeError(
                    f"pg_ctl start failed:\n{done.stdout}{done.stderr}\n--- {self.log}:\n"
                    + self.log_tail()
                )
        else:
            raise RuntimeError(f"PostgreSQL found no free port:\n{self.log_tail()}")
        if first:
            self._create_app_role()

    def _ctl_args(self) -> list[str]:
        return ["-D", str(self.data), "-l", str(self.log)]

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """`pg_ctl stop -m MODE`: fast rolls back open transactions and checkpoints;
        immediate quits without a checkpoint, so the next start recovers from WAL."""
        assert self.running, "PostgreSQL is not running"
        self._check("pg_ctl", "stop", "-w", "-t", str(TIMEOUT), "-m", mode, "-D", str(self.data))
        self.running = False

    def restart(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL to the postmaster and every process it started, at once, as
        the OOM killer would: nothing is flushed, no checkpoint. The next
        start() recovers from the WAL."""
        assert self.running, "PostgreSQL is not running"
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        victims = [postmaster, *_children(postmaster)]
        segments = _shared_memory_files(victims)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in victims):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL processes outlived SIGKILL: {victims}")
            time.sleep(0.01)
        # The lock files name the dead postmaster. Where PID 1 never reaps
        # orphans (some containers, this CI's), it stays a zombie, which still
        # counts as running, and the next start would refuse: a reboot would
        # not have left one.
        for lock in (self.data / "postmaster.pid", self.socket_dir / f".s.PGSQL.{self.port}.lock"):
            lock.unlink(missing_ok=True)
        # A start on the same port would free these, but a test may close now.
        for segment in segments:
            segment.unlink(missing_ok=True)
        self.running = False

    def standby(self, synchronous: bool = True) -> PostgresCluster:
        """A streaming standby of this running cluster on a port of its own
        (pg_basebackup -R), started. `synchronous`: this cluster's commits
        then wait until the standby has them (set after the copy, so that the
        standby does not inherit the setting: promoted with no standby of its
        own, it would wait forever)."""
        replica = PostgresCluster(self.settings)
        as_server(["rm", "-rf", str(replica.data)], replica.dir)
        replica._check(
            "pg_basebackup",
            *("-D", str(replica.data), "-h", str(self.socket_dir), "-p", str(self.port)),
            *("-U", SUPERUSER, "-R", "-X", "stream", "--no-sync"),
        )
        replica._configure()
        replica.password = self.password
        replica._set_port(free_port())
        done = replica._run("pg_ctl", "start", "-w", "-t", str(TIMEOUT), *replica._ctl_args())
        if done.returncode != 0:
            raise RuntimeError(f"the standby did not start:\n{replica.log_tail()}")
        replica.running = True
        if synchronous:
            self.admin_sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
            self.admin_sql("SELECT pg_reload_conf()")
            deadline = time.monotonic() + TIMEOUT
            while not self.admin_sql("SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the standby never became synchronous")
                time.sleep(0.05)
        return replica

    def promote(self) -> None:
        """Make this standby a primary (pg_ctl promote waits until it is)."""
        self._check("pg_ctl", "promote", "-w", "-t", str(TIMEOUT), "-D", str(self.data))

    def close(self) -> None:
        """Stop the server (immediate: nothing in it is kept) and remove its folder."""
        atexit.unregister(self.close)
        if self.running:
            try:
                self.stop("immediate")
            except RuntimeError:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- connections and databases -------------------------------------------

    def dsn(self, dbname: str, user: str = APP_USER, password: str | None = None) -> str:
        """A `postgresql://` URL over TCP; crate_app's carries its password."""
        if password is None and user == APP_USER:
            password = self.password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def admin_sql(
        self, sql: str, params: Sequence[Any] | None = None, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """One statement as the superuser, in autocommit (CREATE DATABASE needs
        it); the rows it returns, if any."""
        import psycopg

        with psycopg.connect(
            self.dsn(dbname, user=SUPERUSER), autocommit=True, connect_timeout=10
        ) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def _create_app_role(self) -> None:
        # PASSWORD takes no parameter: the password is hex, safe in a literal.
        assert re.fullmatch(r"[0-9a-f]+", self.password)
        self.admin_sql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{self.password}'")

    def create_database(
        self, name: str, template: str | None = None, owner: str = APP_USER
    ) -> None:
        """CREATE DATABASE, copying the template's files: WAL_LOG (the default)
        would write its 7.5 MB into the WAL for every test's database, and
        was no faster here."""
        sql = f'CREATE DATABASE "{name}" OWNER "{owner}" STRATEGY FILE_COPY'
        if template is not None:
            sql += f' TEMPLATE "{template}"'
        self.admin_sql(sql)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE, ending any session still connected to it."""
        self.admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def fresh_database(self) -> str:
        """A new, empty database with a name no other test has; its crate_app URL."""
        name = f"crate_test_{next(_names)}_{secrets.token_hex(4)}"
        self.create_database(name)
        return self.dsn(name)


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (from /proc; none found elsewhere)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(Path(stat).parent.name))
    return found


def _shared_memory_files(pids: list[int]) -> set[Path]:
    """The POSIX shared memory files (/dev/shm/PostgreSQL.N) the processes map,
    which nobody removes after a SIGKILL."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                path = line.split(maxsplit=5)[5:]
                if path and path[0].startswith("/dev/shm/PostgreSQL."):
                    found.add(Path(path[0]))
    return found


def _alive(pid: int) -> bool:
    """Whether pid runs: a zombie does not (PID 1 of some containers never reaps
    the orphans a killed postmaster leaves)."""
    if not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
