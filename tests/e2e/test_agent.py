"""End to end: `crate agent`, the local background process that keeps the key unlocked.

`crate agent start` unlocks the master key in the foreground, then forks an
agent that serves the API on `<runtime>/agent-<hash of home>.sock` (a 0700
folder, a 0600 socket, a `.log` beside it). Local commands use it when its
socket answers and run the server role in-process otherwise, with the same
results. The agent forgets the key and exits after its idle timeout, on
`crate agent stop` and on SIGTERM.

Every test runs with its own short XDG_RUNTIME_DIR (unix socket paths are
limited to 107 bytes, and the tests must not touch a real user's runtime
folder), and stops every agent it started, killing it as a last resort.

Several tests use a home whose key is sealed by a passphrase: without
CRATE_PASSPHRASE and without a terminal, an in-process command fails with
exit 6, so a command that succeeds without them has gone through the agent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.crate_runner import CrateRunner, Result, assert_clean_error

pytestmark = pytest.mark.e2e

PASSPHRASE = "agent-test-passphrase-4b1e"
WITH_PASSPHRASE = {"CRATE_PASSPHRASE": PASSPHRASE}
NOT_RUNNING = 3
NOT_FOUND = 3
KEYSTORE_EXIT = 6


# -- helpers --------------------------------------------------------------------


def run(crate: CrateRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    """crate ARGS with an empty stdin: never a terminal, so never a prompt."""
    return crate(*args, input="", env=env)


def ok(crate: CrateRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    result = run(crate, *args, env=env)
    assert result.returncode == 0, f"crate {' '.join(args)}: {result}"
    return result


def process_gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts: PID 1 of a container may not reap)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return text.rpartition(")")[2].split()[0] in ("Z", "X")


def is_our_agent(pid: int) -> bool:
    """Whether `pid` still is a crate agent (its argv is the `crate agent start` it forked from)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"agent" in argv and b"start" in argv and not process_gone(pid)


def wait_until(condition: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


class Agents:
    """Starts agents for tests and stops every one of them at teardown."""

    def __init__(self) -> None:
        self.started: list[tuple[CrateRunner, dict[str, str] | None]] = []
        self.pids: set[int] = set()

    def start(
        self, crate: CrateRunner, *args: str, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """`crate agent start ARGS --json`; returns its JSON."""
        self.started.append((crate, env))
        result = ok(crate, "agent", "start", *args, "--json", env=env)
        info: dict[str, Any] = json.loads(result.stdout)
        self.pids.add(int(info["pid"]))
        return info

    def status(self, crate: CrateRunner) -> dict[str, Any] | None:
        result = run(crate, "agent", "status", "--json")
        if result.returncode == NOT_RUNNING:
            assert json.loads(result.stdout) == {"running": False}
            return None
        assert result.returncode == 0, result
        info: dict[str, Any] = json.loads(result.stdout)
        self.pids.add(int(info["pid"]))
        return info

    def cleanup(self) -> None:
        for crate, env in self.started:
            with contextlib.suppress(Exception):
                run(crate, "agent", "stop", env=env)
            with contextlib.suppress(Exception):
                self.status(crate)  # records a pid that still answers
        for pid in self.pids:
            if not wait_until(lambda pid=pid: process_gone(pid), 5.0) and is_our_agent(pid):
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda pid=pid: process_gone(pid), 5.0)


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR for this test's crate processes (short: socket paths)."""
    folder = Path(tempfile.mkdtemp(prefix="crt-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def agents(runtime: Path) -> Iterator[Agents]:
    tracker = Agents()
    try:
        yield tracker
    finally:
        tracker.cleanup()


def expected_socket(runtime: Path, home: str) -> Path:
    digest = hashlib.sha256(home.encode("utf-8")).hexdigest()[:16]
    return runtime / "crate" / f"agent-{digest}.sock"


def make_passphrase_home(crate: CrateRunner) -> None:
    """A home sealed by a passphrase slot, with org personal and a secret."""
    result = ok(crate, "init", "--keystore", "passphrase", env=WITH_PASSPHRASE)
    assert "passphrase" in result.stderr
    ok(crate, "secrets", "set", "GREETING", "hello", env=WITH_PASSPHRASE)


def elsewhere(runtime: Path) -> dict[str, str]:
    """Env for a crate process that cannot see the agent: it runs in-process."""
    folder = runtime / "elsewhere"
    folder.mkdir(mode=0o700, exist_ok=True)
    return {"XDG_RUNTIME_DIR": str(folder)}


# -- 1. lifecycle -----------------------------------------------------------------


def test_start_status_stop_lifecycle(crate: CrateRunner, agents: Agents, runtime: Path) -> None:
    none = run(crate, "agent", "status")
    assert none.returncode == NOT_RUNNING, none
    assert "no agent runs" in none.stdout
    assert agents.status(crate) is None

    info = agents.start(crate, "--idle-timeout", "15m")
    assert info["already_running"] is False
    assert info["idle_timeout"] == 900.0
    assert Path(info["home"]) == crate.home
    assert Path(info["socket"]) == expected_socket(runtime, info["home"])
    pid = int(info["pid"])
    assert pid != os.getpid() and not process_gone(pid)

    status = agents.status(crate)
    assert status is not None
    assert {"pid", "socket", "idle_timeout", "idle_for", "started_at", "home"} <= set(status)
    assert status["pid"] == pid
    assert status["socket"] == info["socket"]
    assert status["idle_timeout"] == 900.0
    assert status["started_at"] == info["started_at"]
    human = run(crate, "agent", "status")
    assert human.returncode == 0, human
    assert f"agent runs (pid {pid})" in human.stdout
    assert info["socket"] in human.stdout

    again = run(crate, "agent", "start")
    assert again.returncode == 0, again
    assert f"already runs (pid {pid})" in again.stderr
    again_json = agents.start(crate)
    assert again_json["already_running"] is True
    assert again_json["pid"] == pid

    stopped = run(crate, "agent", "stop")
    assert stopped.returncode == 0, stopped
    assert f"agent (pid {pid}) stopped" in stopped.stderr
    assert not Path(info["socket"]).exists()
    assert wait_until(lambda: process_gone(pid), 10.0)
    after = run(crate, "agent", "status")
    assert after.returncode == NOT_RUNNING, after
    twice = run(crate, "agent", "stop")
    assert twice.returncode == 0, twice
    assert "no agent runs" in twice.stderr


def test_socket_is_0600_in_a_0700_folder_with_a_0600_log(
    crate: CrateRunner, agents: Agents, runtime: Path
) -> None:
    info = agents.start(crate)
    sock = Path(info["socket"])
    folder = os.lstat(sock.parent)
    assert stat.S_ISDIR(folder.st_mode)
    assert stat.S_IMODE(folder.st_mode) == 0o700
    assert folder.st_uid == os.getuid()
    entry = os.lstat(sock)
    assert stat.S_ISSOCK(entry.st_mode)
    assert stat.S_IMODE(entry.st_mode) == 0o600
    assert entry.st_uid == os.getuid()
    log = os.lstat(sock.with_suffix(".log"))
    assert stat.S_ISREG(log.st_mode)
    assert stat.S_IMODE(log.st_mode) == 0o600
    assert "Application startup complete" in sock.with_suffix(".log").read_text()


def test_runtime_folder_falls_back_to_the_temp_dir(
    crate: CrateRunner, agents: Agents, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without XDG_RUNTIME_DIR the folder is `crate-UID` in the temp dir (here TMPDIR)."""
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("TMPDIR", str(runtime))
    info = agents.start(crate)
    folder = runtime / f"crate-{os.getuid()}"
    assert Path(info["socket"]).parent == folder
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(info["socket"]).st_mode) == 0o600


def test_an_agent_serves_only_its_own_home(
    crate: CrateRunner, agents: Agents, tmp_path: Path
) -> None:
    ok(crate, "secrets", "set", "ONLY_HERE", "a")
    agents.start(crate)
    other = CrateRunner(tmp_path / "other-home")
    assert run(other, "agent", "status").returncode == NOT_RUNNING
    missing = run(other, "secrets", "get", "ONLY_HERE")
    assert missing.returncode == NOT_FOUND, missing  # its own, empty vault: not found


def test_sigterm_stops_the_agent_and_removes_its_socket(crate: CrateRunner, agents: Agents) -> None:
    info = agents.start(crate)
    pid, sock = int(info["pid"]), Path(info["socket"])
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not sock.exists(), 15.0), "the socket outlived SIGTERM"
    assert wait_until(lambda: process_gone(pid), 10.0)
    assert run(crate, "agent", "status").returncode == NOT_RUNNING
    log = sock.with_suffix(".log").read_text()
    assert "Finished server process" in log
    assert "Traceback" not in log


def test_two_starts_at_once_make_one_agent(crate: CrateRunner, agents: Agents) -> None:
    """The second start waits for the first (a lock), then finds its agent."""
    ok(crate, "secrets", "set", "A", "1")
    argv = [*crate.argv0, "agent", "start", "--json"]
    procs = [
        subprocess.Popen(
            argv, env=crate.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    agents.started.append((crate, None))
    answers = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        answers.append(json.loads(out))
    agents.pids.update(int(a["pid"]) for a in answers)
    assert answers[0]["pid"] == answers[1]["pid"]
    assert sorted(a["already_running"] for a in answers) == [False, True]
    assert agents.status(crate) is not None


# -- 2. same results with and without the agent -----------------------------------

READS: list[tuple[str, ...]] = [
    ("secrets", "get", "DB_URL"),
    ("secrets", "get", "MULTILINE"),
    ("secrets", "get", "UNICODE"),
    ("secrets", "list", "--json"),
    ("secrets", "list", "--json", "--env", "prod"),
    ("secrets", "list", "--json", "--tags", "db"),
    ("secrets", "fetch", "--format", "json"),
    ("secrets", "fetch", "--format", "env"),
    ("secrets", "fetch", "--format", "dotenv", "--tags", "db"),
    ("secrets", "fetch", "--format", "json", "--raw", "REF"),
    ("secrets", "history", "DB_URL", "--json"),
    ("env", "list"),
    ("run", "--", "sh", "-c", 'printf "%s|%s|%s" "$DB_URL" "$API_KEY" "$REF"'),
    ("run", "--env", "prod", "--", "sh", "-c", 'printf "%s" "$DB_URL"'),
    ("run", "--only", "API_KEY", "--", "sh", "-c", 'printf "%s|%s" "$API_KEY" "${DB_URL-unset}"'),
    # Errors must be the same too: exit code and message.
    ("secrets", "get", "NO_SUCH_SECRET"),
    ("secrets", "fetch", "--env", "no-such-env"),
    ("run", "--only", "NO_SUCH_SECRET", "--", "true"),
]


@pytest.fixture
def seeded(crate: CrateRunner) -> CrateRunner:
    """A passphrase home with secrets in dev and prod, tags, a reference, odd values."""
    make_passphrase_home(crate)
    ok(crate, "secrets", "set", "DB_URL", "postgres://dev", "--tag", "db", env=WITH_PASSPHRASE)
    ok(crate, "secrets", "set", "DB_URL", "postgres://dev-2", env=WITH_PASSPHRASE)
    ok(crate, "secrets", "set", "API_KEY=k-123", "REF=${API_KEY}-suffix", env=WITH_PASSPHRASE)
    ok(crate, "secrets", "set", "UNICODE", "päss wörd ✓", env=WITH_PASSPHRASE)
    multiline = "line one\nline two\n"
    crate(
        "secrets",
        "set",
        "MULTILINE",
        "-",
        "--keep-newline",
        input=multiline,
        env=WITH_PASSPHRASE,
        check=True,
    )
    ok(crate, "secrets", "set", "DB_URL", "postgres://prod", "--env", "prod", env=WITH_PASSPHRASE)
    return crate


def outputs(crate: CrateRunner, env: dict[str, str] | None) -> list[tuple[int, str, str]]:
    results = []
    for args in READS:
        result = run(crate, *args, env=env)
        # Only the error lines: an in-process first use could add notices.
        errors = [line for line in result.stderr.splitlines() if line.startswith("crate: error")]
        results.append((result.returncode, result.stdout, "\n".join(errors)))
    return results


def test_reads_and_runs_give_the_same_results_with_and_without_the_agent(
    seeded: CrateRunner, agents: Agents
) -> None:
    crate = seeded
    in_process = outputs(crate, WITH_PASSPHRASE)
    assert in_process[0] == (0, "postgres://dev-2", "")
    assert in_process[-3][0] == NOT_FOUND and in_process[-3][2].startswith("crate: error:")
    assert sum(code == 0 for code, _, _ in in_process) == len(READS) - 3

    agents.start(crate, env=WITH_PASSPHRASE)
    # No passphrase from here: only the agent can answer.
    through_agent = outputs(crate, None)
    for args, want, got in zip(READS, in_process, through_agent, strict=True):
        assert got == want, f"crate {' '.join(args)} differs through the agent"


def test_writes_through_the_agent_and_in_process_see_each_other(
    seeded: CrateRunner, agents: Agents, runtime: Path
) -> None:
    crate = seeded
    agents.start(crate, env=WITH_PASSPHRASE)
    ok(crate, "secrets", "set", "FROM_AGENT", "written-by-agent", "--tag", "t1")
    ok(crate, "secrets", "set", "DB_URL", "postgres://via-agent")
    ok(crate, "secrets", "delete", "API_KEY", "--yes")
    ok(crate, "env", "create", "review")
    ok(crate, "secrets", "set", "IN_REVIEW", "s", "--env", "review")
    ok(crate, "agent", "stop")

    assert ok(crate, "secrets", "get", "FROM_AGENT", env=WITH_PASSPHRASE).stdout == (
        "written-by-agent"
    )
    assert ok(crate, "secrets", "get", "DB_URL", env=WITH_PASSPHRASE).stdout == (
        "postgres://via-agent"
    )
    gone = run(crate, "secrets", "get", "API_KEY", env=WITH_PASSPHRASE)
    assert gone.returncode == NOT_FOUND, gone
    staged = ok(crate, "secrets", "get", "IN_REVIEW", "--env", "review", env=WITH_PASSPHRASE)
    assert staged.stdout == "s"
    rows = json.loads(ok(crate, "secrets", "list", "--json", env=WITH_PASSPHRASE).stdout)
    by_name = {row["name"]: row for row in rows}
    assert by_name["FROM_AGENT"]["tags"] == ["t1"]
    assert by_name["DB_URL"]["version"] == 3
    # The agent records the same actor as an in-process write.
    assert by_name["FROM_AGENT"]["actor"] == by_name["GREETING"]["actor"]

    # And the other way: in-process writes while the agent runs, read through it.
    agents.start(crate, env=WITH_PASSPHRASE)
    assert ok(crate, "secrets", "get", "DB_URL").stdout == "postgres://via-agent"  # warm it
    local = {**WITH_PASSPHRASE, **elsewhere(runtime)}
    ok(crate, "secrets", "set", "FROM_LOCAL", "written-in-process", env=local)
    ok(crate, "secrets", "set", "DB_URL", "postgres://in-process", env=local)
    ok(crate, "secrets", "delete", "FROM_AGENT", "--yes", env=local)
    ok(crate, "env", "create", "qa", env=local)
    assert run(crate, "agent", "status").returncode == 0, "the agent should still run"

    assert ok(crate, "secrets", "get", "FROM_LOCAL").stdout == "written-in-process"
    assert ok(crate, "secrets", "get", "DB_URL").stdout == "postgres://in-process"
    assert run(crate, "secrets", "get", "FROM_AGENT").returncode == NOT_FOUND
    envs = ok(crate, "env", "list").stdout
    assert "qa" in envs and "review" in envs
    seen = ok(crate, "run", "--only", "FROM_LOCAL", "--", "sh", "-c", 'printf "%s" "$FROM_LOCAL"')
    assert seen.stdout == "written-in-process"


# -- 3. evidence that commands use the agent ---------------------------------------


def test_a_passphrase_vault_needs_no_passphrase_while_the_agent_runs(
    crate: CrateRunner, agents: Agents
) -> None:
    make_passphrase_home(crate)
    before = run(crate, "secrets", "get", "GREETING")
    assert_clean_error(before, KEYSTORE_EXIT)
    assert "passphrase" in before.stderr

    # Without CRATE_PASSPHRASE and no terminal, the agent itself cannot start.
    refused = run(crate, "agent", "start")
    assert_clean_error(refused, KEYSTORE_EXIT)
    assert agents.status(crate) is None

    agents.start(crate, env=WITH_PASSPHRASE)
    got = run(crate, "secrets", "get", "GREETING")
    assert got.returncode == 0, got
    assert got.stdout == "hello"
    ran = run(crate, "run", "--", "sh", "-c", 'printf "%s" "$GREETING"')
    assert ran.returncode == 0, ran
    assert ran.stdout == "hello"
    stored = run(crate, "secrets", "set", "LATER", "v")
    assert stored.returncode == 0, stored

    ok(crate, "agent", "stop")
    for args in (
        ("secrets", "get", "GREETING"),
        ("run", "--", "sh", "-c", 'printf "%s" "$GREETING"'),
        ("secrets", "set", "AFTER", "v"),
    ):
        assert_clean_error(run(crate, *args), KEYSTORE_EXIT, hidden=("hello",))
    assert ok(crate, "secrets", "get", "LATER", env=WITH_PASSPHRASE).stdout == "v"


# -- 4. idle timeout ----------------------------------------------------------------


def test_the_agent_stops_after_its_idle_timeout(crate: CrateRunner, agents: Agents) -> None:
    ok(crate, "secrets", "set", "IDLE", "value")
    info = agents.start(crate, "--idle-timeout", "2s")
    assert info["idle_timeout"] == 2.0
    sock, pid = Path(info["socket"]), int(info["pid"])
    started = time.monotonic()
    assert ok(crate, "secrets", "get", "IDLE").stdout == "value"
    # Watch the file, not `agent status`: a status request is a request too.
    assert wait_until(lambda: not sock.exists(), 12.0), "the agent outlived its idle timeout"
    assert time.monotonic() - started >= 1.5, "the agent stopped before its idle timeout"
    assert wait_until(lambda: process_gone(pid), 10.0)
    status = run(crate, "agent", "status")
    assert status.returncode == NOT_RUNNING, status
    assert ok(crate, "secrets", "get", "IDLE").stdout == "value"
    assert ok(crate, "run", "--", "sh", "-c", 'printf "%s" "$IDLE"').stdout == "value"
    assert "Finished server process" in sock.with_suffix(".log").read_text()


def test_a_passphrase_key_is_forgotten_after_the_idle_timeout(
    crate: CrateRunner, agents: Agents
) -> None:
    make_passphrase_home(crate)
    info = agents.start(crate, "--idle-timeout", "1s", env=WITH_PASSPHRASE)
    assert wait_until(lambda: not Path(info["socket"]).exists(), 10.0)
    assert_clean_error(run(crate, "secrets", "get", "GREETING"), KEYSTORE_EXIT)


def test_requests_keep_the_agent_alive(crate: CrateRunner, agents: Agents) -> None:
    ok(crate, "secrets", "set", "BUSY", "value")
    info = agents.start(crate, "--idle-timeout", "3s")
    sock = Path(info["socket"])
    deadline = time.monotonic() + 5.0  # longer than the idle timeout
    while time.monotonic() < deadline:
        assert sock.exists(), "the agent stopped although requests kept coming"
        assert ok(crate, "secrets", "get", "BUSY").stdout == "value"
        time.sleep(0.3)
    assert wait_until(lambda: not sock.exists(), 12.0)


def test_status_reports_the_idle_time(crate: CrateRunner, agents: Agents) -> None:
    agents.start(crate, "--idle-timeout", "1m")
    time.sleep(1.5)
    status = agents.status(crate)
    assert status is not None
    assert status["idle_for"] >= 1.0, status


# -- 5. another uid ------------------------------------------------------------------


def nobody() -> pwd.struct_passwd:
    if os.getuid() != 0:
        pytest.skip("needs root to act as another uid (setuid to nobody)")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no user nobody")


def as_other_uid(user: pwd.struct_passwd, action: Any, timeout: float = 20.0) -> str:
    """Run `action()` (returning a str) in a forked child that is `user`; its result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            answer = action()
        except BaseException as e:
            answer = f"child failed: {type(e).__name__}: {e}"
            code = 1
        finally:
            with contextlib.suppress(BaseException):
                os.write(write_end, answer.encode("utf-8", "replace"))
            os._exit(code)
    os.close(write_end)
    try:
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.2)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode("utf-8", "replace")


def test_the_agent_refuses_a_connection_from_another_uid(
    crate: CrateRunner, agents: Agents, runtime: Path
) -> None:
    user = nobody()
    ok(crate, "secrets", "set", "PRIVATE", "for-root-only")
    info = agents.start(crate)
    sock = Path(info["socket"])
    modes = {p: stat.S_IMODE(os.lstat(p).st_mode) for p in (runtime, sock.parent, sock)}

    def connect() -> str:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(10)
        try:
            conn.connect(str(sock))
        except OSError as e:
            return f"connect failed: {type(e).__name__}"
        try:
            conn.sendall(b"GET /agent HTTP/1.1\r\nHost: x\r\n\r\n")
            data = conn.recv(65536)
        except ConnectionResetError:
            return "reset"
        except BrokenPipeError:
            return "reset"
        except OSError as e:
            return f"error: {type(e).__name__}: {e}"
        finally:
            conn.close()
        return "closed" if data == b"" else "answered: " + data.decode("latin-1")

    try:
        for path in (runtime, sock.parent, sock):
            path.chmod(0o777)
        answer = as_other_uid(user, connect)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert answer in ("closed", "reset"), answer
    assert "for-root-only" not in answer
    log = sock.with_suffix(".log").read_text()
    assert f"refused a connection from uid {user.pw_uid}" in log
    # The agent still serves its own user, modes restored.
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    assert ok(crate, "agent", "status").returncode == 0
    assert ok(crate, "secrets", "get", "PRIVATE").stdout == "for-root-only"


def test_the_client_refuses_a_socket_of_another_uid(
    crate: CrateRunner, agents: Agents, runtime: Path
) -> None:
    """An impostor listening on the agent's socket path gets not one byte from crate."""
    user = nobody()
    ok(crate, "secrets", "set", "PRIVATE", "never-to-the-impostor")
    # Where this home's agent would listen.
    info = agents.start(crate)
    sock = Path(info["socket"])
    ok(crate, "agent", "stop")
    assert not sock.exists()
    folder_mode = stat.S_IMODE(os.lstat(sock.parent).st_mode)
    runtime_mode = stat.S_IMODE(os.lstat(runtime).st_mode)
    ready_r, ready_w = os.pipe()

    def impostor() -> str:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock))
        listener.listen(8)
        os.write(ready_w, b"r")
        listener.settimeout(15)
        received = b""
        connections = 0
        try:
            while True:
                conn, _ = listener.accept()
                connections += 1
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(65536):
                        received += chunk
                conn.close()
                listener.settimeout(3)
        except TimeoutError:
            pass
        return json.dumps({"connections": connections, "received": received.decode("latin-1")})

    result: list[Result] = []
    try:
        runtime.chmod(0o711)
        sock.parent.chmod(0o777)
        outcome: list[str] = []
        child = threading.Thread(target=lambda: outcome.append(as_other_uid(user, impostor)))
        child.start()
        ready, _, _ = select.select([ready_r], [], [], 10)
        assert ready, "the impostor did not start listening"
        # crate refuses a folder others can write to; make it private again.
        sock.parent.chmod(folder_mode)
        runtime.chmod(runtime_mode)
        assert os.lstat(sock).st_uid == user.pw_uid
        result.append(run(crate, "secrets", "get", "PRIVATE"))
        result.append(run(crate, "agent", "status"))
        child.join(30)
    finally:
        os.close(ready_r)
        os.close(ready_w)
        sock.parent.chmod(folder_mode)
        runtime.chmod(runtime_mode)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
    got, status = result
    # The command ran in-process, and the status says no agent runs.
    assert got.returncode == 0, got
    assert got.stdout == "never-to-the-impostor"
    assert status.returncode == NOT_RUNNING, status
    report = json.loads(outcome[0])
    assert report["connections"] >= 1, "crate never tried the socket"
    assert report["received"] == "", f"crate sent bytes to another uid: {report}"


# -- 6. a stale socket ---------------------------------------------------------------


@pytest.mark.parametrize("stale", ["killed agent", "plain file"])
def test_a_stale_socket_does_not_break_commands(
    crate: CrateRunner, agents: Agents, stale: str
) -> None:
    ok(crate, "secrets", "set", "STALE", "still-here")
    info = agents.start(crate)
    sock, pid = Path(info["socket"]), int(info["pid"])
    if stale == "killed agent":
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: process_gone(pid), 10.0)
        assert stat.S_ISSOCK(os.lstat(sock).st_mode), "SIGKILL should leave the socket behind"
    else:
        ok(crate, "agent", "stop")
        sock.write_text("not a socket")
        sock.chmod(0o600)

    assert ok(crate, "secrets", "get", "STALE").stdout == "still-here"
    assert ok(crate, "run", "--", "sh", "-c", 'printf "%s" "$STALE"').stdout == "still-here"
    ok(crate, "secrets", "set", "WRITTEN", "in-process")
    assert run(crate, "agent", "status").returncode == NOT_RUNNING
    assert run(crate, "agent", "stop").returncode == 0

    restarted = agents.start(crate)
    assert restarted["already_running"] is False
    assert restarted["pid"] != pid
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert ok(crate, "secrets", "get", "WRITTEN").stdout == "in-process"
    ok(crate, "agent", "stop")
    assert not sock.exists()
