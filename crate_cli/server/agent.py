"""The local agent: the server role on a unix socket, with the master key unlocked.

`crate agent start` unlocks the master key once (asking for what its slots
need), then forks a background process that serves the API core on a unix
socket in the user's runtime folder: a 0700 folder, a 0600 socket, and a
peer-credential check that refuses any other uid. Local commands find the
socket and use it instead of unlocking the vault themselves; with no agent
they run the server role in-process, with the same result.

The agent forgets the key (drops every cached key and exits) after
`--idle-timeout` without a request, on `crate agent stop`, and on SIGTERM.
It cannot be dumped (server/hardening.py: set before the key is unlocked)
and drops the credential variables once it has the key.

The agent is handed the session that starts it (`AgentSession`: what it
needs of crate_cli/session.py's Session), not the session module: the
server sits below the session. Local commands find the agent through
crate_cli/client/agent.py.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from crate_cli.client.agent import socket_path, status
from crate_cli.errors import CrateError

if TYPE_CHECKING:
    from crate_cli.config import CrateHome
    from crate_cli.vault.masterkey import MasterKeys
    from crate_cli.vault.service import VaultService


class AgentSession(Protocol):
    """What the agent needs of the session that starts it."""

    environ: dict[str, str]

    @property
    def home(self) -> CrateHome: ...
    @property
    def master(self) -> MasterKeys: ...
    def init(self) -> object: ...
    def new_service(self, client: str = "cli") -> VaultService: ...


START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def start(session: AgentSession, idle_timeout: float) -> dict[str, Any]:
    """Start the agent for `session.home`; returns its status."""
    import fcntl

    path = socket_path(session.home, create=True)
    assert path is not None
    # Two `agent start` at once: the second waits, then finds the first's agent.
    # (The agent closes its copy of this descriptor: a lock inherited across
    # the fork would otherwise be held for the agent's whole life.)
    lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _start_locked(session, idle_timeout, path, lock)
    finally:
        os.close(lock)


def _start_locked(
    session: AgentSession, idle_timeout: float, path: Path, lock: int
) -> dict[str, Any]:
    import signal
    import sys

    running = status(session.home)
    if running is not None:
        return {**running, "already_running": True}
    path.unlink(missing_ok=True)  # a stale socket: nothing answered on it
    from crate_cli.server import hardening

    # Before any key is in memory (the agent inherits both across the fork).
    hardening.make_undumpable()
    session.init()
    # Unlock here, where a passphrase or PIN prompt can still be answered.
    session.master.unlock(session.master.current().version)
    log_path = path.with_suffix(".log")
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the agent
        os.close(lock)
        os.close(read_end)
        code = 0
        try:
            os.setsid()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            hardening.make_undumpable()
            # Unlocked: the credentials leave the agent's environment, the
            # Session's copy and the block /proc/PID/environ shows; nothing the
            # agent starts gets them.
            hardening.drop_credentials(session.environ, session.master.environ)
            _detach(log_path)
            _serve(session, path, idle_timeout, write_end)
        except BaseException as e:
            message = e.message if isinstance(e, CrateError) else type(e).__name__
            with contextlib.suppress(OSError):
                os.write(write_end, b"E" + message.encode("utf-8", "replace"))
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    import select

    ready, _, _ = select.select([read_end], [], [], START_TIMEOUT)
    answer = os.read(read_end, 4096) if ready else b""
    os.close(read_end)
    if answer != b"ok":
        detail = answer[1:].decode("utf-8", "replace") if answer else "no answer"
        raise CrateError(f"the agent did not start ({detail})", f"see {log_path}")
    found = status(session.home)
    if found is None:
        raise CrateError("the agent started but does not answer", f"see {log_path}")
    return {**found, "already_running": False}


def _detach(log_path: Path) -> None:
    """Leave the terminal and the caller's pipes: stdin from /dev/null,
    stdout and stderr to a 0600 log."""
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


class _Idle:
    """When the agent last served a request, and a watcher thread that stops
    the server once it has been idle for `timeout` seconds."""

    def __init__(self, timeout: float) -> None:
        import threading
        import time

        self.timeout = timeout
        self.last = time.monotonic()
        self.servers: list[Any] = []  # uvicorn's server, once it runs
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="crate-agent-idle", daemon=True)

    def touch(self) -> None:
        import time

        self.last = time.monotonic()

    def idle_for(self) -> float:
        import time

        return time.monotonic() - self.last

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(0.5):
            if self.idle_for() > self.timeout and self.servers:
                self.servers[0].should_exit = True
                return


def _serve(session: AgentSession, path: Path, idle_timeout: float, ready_fd: int) -> None:
    from crate_cli.clock import utc_now
    from crate_cli.server.app import CrateApp, Limits
    from crate_cli.server.serve import bind_unix, run_uvicorn
    from crate_cli.vault.api import ApiCore, Principal
    from crate_cli.vault.keys import local_actor

    idle = _Idle(idle_timeout)
    started_at = utc_now()

    def describe() -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "home": str(session.home.data_dir),
            "socket": str(path),
            "started_at": started_at,
            "idle_timeout": idle_timeout,
            "idle_for": round(idle.idle_for(), 1),
        }

    def make_core() -> ApiCore:
        return ApiCore(session.new_service("agent"))

    def started() -> None:
        os.write(ready_fd, b"ok")
        os.close(ready_fd)

    app = CrateApp(
        make_core,
        Limits(workers=2),
        principal=Principal(actor=local_actor(), client="agent"),
        on_request=idle.touch,
        extra={"/agent": describe},
    )
    sock = bind_unix(path)
    idle.start()
    try:
        run_uvicorn(
            app,
            sock,
            same_uid_only=True,
            access_log=False,
            started=started,
            server_hook=idle.servers.append,
        )
    finally:
        idle.stop()
        path.unlink(missing_ok=True)
        session.master.forget()


def stop(home: CrateHome) -> int | None:
    """Stop this home's agent; returns its pid, or None if none ran."""
    import signal
    import time

    found = status(home)
    if found is None:
        return None
    pid = int(found["pid"])
    path = Path(str(found["socket"]))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if path.exists():
        raise CrateError(f"the agent (pid {pid}) did not stop within {STOP_TIMEOUT:g} s")
    return pid
