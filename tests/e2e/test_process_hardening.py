"""End to end: the processes that hold the master key cannot be dumped and keep no credential.

`crate server` and the agent make themselves undumpable (RLIMIT_CORE 0,
PR_SET_DUMPABLE 0) before they unlock the master key, and once it is
unlocked they drop CRATE_PASSPHRASE, CRATE_MASTER_KEY and the other
credential variables: from their environment, from what their children
inherit, and from the environment block /proc/PID/environ shows.

The attack: start them as a careless user would, with core dumps allowed
(`ulimit -c unlimited`) in a working directory of their own, then crash
them with SIGSEGV or SIGABRT once they serve. A control process (`sleep`)
crashed the same way in the same setting must leave a core file there, or
the machine does not write cores where we look and the test skips.

Also: CRATE_PASSPHRASE_FD, the passphrase read from a file descriptor.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from crate_cli.config import CREDENTIAL_VARIABLES
from tests.support.crate_runner import CrateRunner, crate_executable

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: prctl, /proc"),
]

PASSPHRASE = "hardening-passphrase-5c31e7d2"
CREDENTIALS = CREDENTIAL_VARIABLES


def allow_core_dumps() -> None:
    """preexec_fn: `ulimit -c unlimited` (as far as the hard limit allows)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        return
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def cores(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("core"))


def gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts: nothing reaps the agent here)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} did not exit"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cores_land_in_cwd(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The control: a plain process crashed under `ulimit -c unlimited` in a
    folder of its own leaves a core file there. Else this machine writes cores
    elsewhere (a pipe to systemd-coredump or apport, an absolute pattern), or
    not at all, and what the tests below look for cannot be seen here."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or pattern.startswith("/"):
        pytest.skip(f"core_pattern is {pattern!r}: cores are not written to the working folder")
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("the hard RLIMIT_CORE is 0 here: no process can dump")
    folder = tmp_path_factory.mktemp("control")
    for sig in (signal.SIGSEGV, signal.SIGABRT):
        sleep = subprocess.Popen(
            ["sleep", "60"],
            cwd=folder,
            preexec_fn=allow_core_dumps,
        )
        time.sleep(0.1)
        sleep.send_signal(sig)
        assert sleep.wait(30) == -sig
        if not cores(folder):
            pytest.skip(f"a control process killed by {sig.name} left no core in its folder")
        for core in cores(folder):
            core.unlink()


class Home(NamedTuple):
    path: Path
    master_key: str  # CRATE_MASTER_KEY for it (the env slot)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home whose master key is sealed by a passphrase only, with a secret."""
    path = tmp_path_factory.mktemp("hardening") / "crate-home"
    crate = CrateRunner(path)
    env = {"CRATE_PASSPHRASE": PASSPHRASE}
    crate("init", "--keystore", "passphrase", env=env, check=True)
    crate("secrets", "set", "GREETING", "hello", env=env, check=True)
    exported = crate("keys", "export-env", "--yes", env=env, check=True).stdout.strip()
    master_key = exported.rpartition("CRATE_MASTER_KEY=")[2].strip("'\"")
    assert master_key.startswith("v1:"), exported
    return Home(path, master_key)


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A private, short XDG_RUNTIME_DIR for the agent (unix socket paths are short)."""
    folder = Path(tempfile.mkdtemp(prefix="crh-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def credentials_for(home: Home, how: str) -> dict[str, str]:
    """What the process is started with: the unlocking credential, and the others
    a user might have exported in the same shell."""
    unlock = (
        {"CRATE_PASSPHRASE": PASSPHRASE}
        if how == "passphrase"
        else {"CRATE_MASTER_KEY": home.master_key}
    )
    return {**unlock, "CRATE_PKCS11_PIN": "pkcs11-pin-8e21", "CRATE_TPM2_PIN": "tpm2-pin-44a0"}


class Started(NamedTuple):
    pid: int
    proc: subprocess.Popen[bytes] | None  # None: the agent, not our child
    log: list[str]


def start_server(home: Home, env: dict[str, str], cwd: Path, **popen: object) -> Started:
    runner = CrateRunner(home.path)
    proc = subprocess.Popen(
        [*crate_executable(), "server", "--listen", "127.0.0.1:0"],
        cwd=cwd,
        env=runner.env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=allow_core_dumps,
        **popen,  # type: ignore[call-overload]
    )
    log: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            log.append(raw.decode("utf-8", "replace"))
            if "crate: serving" in log[-1]:
                serving.set()
        serving.set()

    threading.Thread(target=read, daemon=True).start()
    serving.wait(60)
    if proc.poll() is not None or not any("crate: serving" in line for line in log):
        proc.kill()
        proc.wait()
        pytest.fail("crate server did not start:\n" + "".join(log))
    return Started(proc.pid, proc, log)


def start_agent(home: Home, env: dict[str, str], cwd: Path, runtime: Path) -> Started:
    runner = CrateRunner(home.path)
    result = subprocess.run(
        [*crate_executable(), "agent", "start", "--json"],
        cwd=cwd,
        env=runner.env({**env, "XDG_RUNTIME_DIR": str(runtime)}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        preexec_fn=allow_core_dumps,
        timeout=60,
    )
    assert result.returncode == 0, result
    return Started(int(json.loads(result.stdout)["pid"]), None, [])


def assert_holds_no_credential(pid: int, values: list[str]) -> None:
    """/proc/PID/environ shows no credential, and the process may not dump."""
    try:
        block = Path(f"/proc/{pid}/environ").read_bytes()
    except PermissionError:
        block = b""  # undumpable: only root may read it (we are not root here)
    assert b"CRATE_HOME=" in block or not block  # the rest of the block is intact
    for name in CREDENTIALS:
        assert f"{name}=".encode() not in block, name
    for value in values:
        assert value.encode() not in block, "a credential value in /proc/PID/environ"
    limits = Path(f"/proc/{pid}/limits").read_text()
    (core_line,) = [line for line in limits.splitlines() if line.startswith("Max core file size")]
    assert core_line.split()[4:6] == ["0", "0"], core_line


@pytest.mark.parametrize(
    ("kind", "how", "sig"),
    [
        ("server", "passphrase", signal.SIGSEGV),
        ("server", "master-key", signal.SIGABRT),
        ("agent", "passphrase", signal.SIGABRT),
        ("agent", "master-key", signal.SIGSEGV),
    ],
    ids=["server-passphrase-segv", "server-key-abrt", "agent-passphrase-abrt", "agent-key-segv"],
)
def test_a_crash_after_unlocking_leaves_no_core_and_no_credential(
    cores_land_in_cwd: None,
    home: Home,
    runtime: Path,
    tmp_path: Path,
    kind: str,
    how: str,
    sig: signal.Signals,
) -> None:
    env = credentials_for(home, how)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    started = (
        start_server(home, env, cwd) if kind == "server" else start_agent(home, env, cwd, runtime)
    )
    try:
        assert_holds_no_credential(started.pid, list(env.values()))
        # It did unlock: a read through it works without any credential.
        if kind == "agent":
            runner = CrateRunner(home.path)
            got = runner("secrets", "get", "GREETING", env={"XDG_RUNTIME_DIR": str(runtime)})
            assert (got.returncode, got.stdout) == (0, "hello"), got
        os.kill(started.pid, sig)
        if started.proc is not None:
            assert started.proc.wait(30) == -sig
        else:
            wait_gone(started.pid)
    finally:
        if not gone(started.pid):
            os.kill(started.pid, signal.SIGKILL)
            wait_gone(started.pid)
    time.sleep(0.2)  # the kernel has finished any dump once the process is a zombie
    assert cores(cwd) == [], f"{kind} left a core file after {sig.name}"


def test_a_child_of_a_hardened_process_sees_no_credential(tmp_path: Path) -> None:
    """The hardening itself, in a fresh interpreter started with every credential:
    what it spawns, its C environment and its own /proc/self/environ."""
    values = {name: f"value-of-{name.lower()}-9d1f" for name in CREDENTIALS}
    script = textwrap.dedent(
        """
        import ctypes, json, os, resource, subprocess, sys
        from crate_cli.server.hardening import drop_credentials, make_undumpable

        session_copy = dict(os.environ)
        make_undumpable()
        dropped = drop_credentials(session_copy)
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        print(json.dumps({
            "dropped": sorted(dropped),
            "child": subprocess.run(["env"], capture_output=True, text=True).stdout,
            "shell": subprocess.run("env", shell=True, capture_output=True, text=True).stdout,
            "getenv": [libc.getenv(n.encode()) is not None for n in json.loads(sys.argv[1])],
            "copy": sorted(k for k in session_copy if k in json.loads(sys.argv[1])),
            "proc": open("/proc/self/environ", "rb").read().decode("latin-1"),
            "dumpable": libc.prctl(3, 0, 0, 0, 0),
            "core": resource.getrlimit(resource.RLIMIT_CORE),
        }))
        """
    )
    env = {**os.environ, **values, "KEEP_ME": "still-here-31"}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(list(CREDENTIALS))],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=allow_core_dumps,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["dropped"] == sorted(CREDENTIALS)
    for where in ("child", "shell", "proc"):
        for name, value in values.items():
            assert name not in seen[where], (where, name)
            assert value not in seen[where], (where, name)
        assert "KEEP_ME=still-here-31" in seen[where], where  # the rest is untouched
    assert seen["getenv"] == [False] * len(CREDENTIALS)
    assert seen["copy"] == []
    assert seen["dumpable"] == 0
    assert seen["core"] == [0, 0]


# -- CRATE_PASSPHRASE_FD ---------------------------------------------------------------


def run_with_fd(
    home: Home,
    args: list[str],
    data: bytes | None,
    fd_env: str | None = None,
    extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """crate ARGS with CRATE_PASSPHRASE_FD naming a pipe that holds `data`."""
    read_end, write_end = os.pipe()
    try:
        if data is not None:
            os.write(write_end, data)
        os.close(write_end)
        write_end = -1
        env = CrateRunner(home.path).env(
            {**(extra or {}), "CRATE_PASSPHRASE_FD": fd_env or str(read_end)}
        )
        return subprocess.run(
            [*crate_executable(), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            pass_fds=(read_end,),
            timeout=60,
        )
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_the_passphrase_can_come_from_a_file_descriptor(home: Home) -> None:
    # Up to the newline: what follows it is not part of the passphrase.
    got = run_with_fd(home, ["secrets", "get", "GREETING"], PASSPHRASE.encode() + b"\nrest\n")
    assert (got.returncode, got.stdout) == (0, "hello"), got
    got = run_with_fd(home, ["secrets", "get", "GREETING"], PASSPHRASE.encode())  # EOF ends it
    assert (got.returncode, got.stdout) == (0, "hello"), got
    # It comes before CRATE_PASSPHRASE (here the right one), and a wrong one is wrong.
    wrong = run_with_fd(
        home,
        ["secrets", "get", "GREETING"],
        b"not-the-passphrase\n",
        extra={"CRATE_PASSPHRASE": PASSPHRASE},
    )
    assert wrong.returncode == 6 and "wrong passphrase" in wrong.stderr, wrong
    assert "not-the-passphrase" not in wrong.stderr
    # Nothing on it, or no such descriptor: said so, exit 6.
    empty = run_with_fd(home, ["secrets", "get", "GREETING"], b"")
    assert empty.returncode == 6 and "CRATE_PASSPHRASE_FD" in empty.stderr, empty
    closed = run_with_fd(home, ["secrets", "get", "GREETING"], b"x\n", fd_env="97")
    assert closed.returncode == 6 and "CRATE_PASSPHRASE_FD=97" in closed.stderr, closed
    bad = run_with_fd(home, ["secrets", "get", "GREETING"], b"x\n", fd_env="three")
    assert bad.returncode == 2 and "CRATE_PASSPHRASE_FD" in bad.stderr, bad


def test_crate_run_does_not_pass_the_descriptor_on(home: Home) -> None:
    """A command crate runs does not inherit the descriptor the passphrase came from."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, PASSPHRASE.encode() + b"\n")
        os.close(write_end)
        check = f"ls /proc/self/fd; test -e /proc/self/fd/{read_end} && echo INHERITED; env"
        result = subprocess.run(
            [*crate_executable(), "run", "--", "sh", "-c", check],
            env=CrateRunner(home.path).env({"CRATE_PASSPHRASE_FD": str(read_end)}),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            pass_fds=(read_end,),
            timeout=60,
        )
    finally:
        os.close(read_end)
    assert result.returncode == 0, result
    assert "GREETING=hello" in result.stdout
    assert "INHERITED" not in result.stdout


def test_the_server_unlocks_from_a_descriptor_and_keeps_neither(home: Home, tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, PASSPHRASE.encode() + b"\n")
    os.close(write_end)
    try:
        started = start_server(
            home, {"CRATE_PASSPHRASE_FD": str(read_end)}, tmp_path, pass_fds=(read_end,)
        )
    finally:
        os.close(read_end)
    assert started.proc is not None
    try:
        assert_holds_no_credential(started.pid, [PASSPHRASE])
    finally:
        started.proc.terminate()
        assert started.proc.wait(30) == 0
