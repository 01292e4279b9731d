"""End to end: the reserve of ephemeral RSA keys, through real crate processes.

What is tested: a retrieving command (`crate run`) starts a refill that fills
the reserve (XDG_RUNTIME_DIR/crate-keys) with private key files, and the next
one uses a key from it; the refill process is detached (its own session, no
child of crate or of the command, stdin/stdout/stderr on /dev/null, no
inherited pipes, working folder /, no credentials in its environment); the
command's output pipe closes when the command ends, not when the refill does;
CRATE_KEY_RESERVE=off makes no reserve. The processes are found through /proc
by a marker variable unique to each test, and killed (by PID) at its end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crate_cli.client import keyreserve
from crate_cli.config import Settings, resolve_home
from tests.support.crate_runner import CrateRunner

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc"),
]

PYTHON = sys.executable
REFILL_ARG = "__refill-key-reserve"
DEADLINE = 30.0
SECRET = "hello-from-the-vault"


@dataclass
class ReserveHome:
    crate: CrateRunner
    reserve: Path  # XDG_RUNTIME_DIR/crate-keys
    env: dict[str, str]  # what each crate of the test gets (XDG_RUNTIME_DIR, a marker)
    marker: str  # the test's own XDG_RUNTIME_DIR: it reaches the refill too


@pytest.fixture
def home(crate_home: Path, memory_dir: Path) -> Iterator[ReserveHome]:
    """A home with one secret (NAME) and an empty reserve of its own (in memory)."""
    runtime = memory_dir
    marker = str(runtime)
    # CRATE_TEST_MARKER reaches crate, not its refill (tested below).
    env = {"XDG_RUNTIME_DIR": marker, "CRATE_TEST_MARKER": uuid.uuid4().hex}
    crate = CrateRunner(crate_home)
    crate("secrets", "set", f"NAME={SECRET}", env=env, check=True)  # retrieves nothing
    try:
        yield ReserveHome(crate, runtime / "crate-keys", env, marker)
    finally:
        for pid in marked_pids(marker):  # this test's refills, if still running
            kill(pid)


@pytest.fixture(scope="module")
def key_4096() -> bytes:
    """A 4096-bit key in the reserve's format (made once: it takes a while)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return keyreserve.dump_key(rsa.generate_private_key(public_exponent=65537, key_size=4096))


def slow_refill(home: ReserveHome, key_4096: bytes) -> None:
    """Make the home ask for 4096-bit keys, so that its refill runs for a while
    (three of them), and put one in the reserve for the foreground, so that
    crate itself is quick: it ends while the refill is still at work."""
    Settings.update(
        resolve_home({"CRATE_HOME": str(home.crate.home)}), "crypto.ephemeral_rsa_bits", 4096
    )
    home.reserve.mkdir(mode=0o700)
    home.reserve.chmod(0o700)
    path = home.reserve / f"rsa4096-{uuid.uuid4().hex[:16]}.key"
    path.write_bytes(key_4096)
    path.chmod(0o600)


# -- /proc -------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or not ours
        return b""


def marked_pids(marker: str) -> list[int]:
    """Live processes started with this test's XDG_RUNTIME_DIR in their environment."""
    wanted = f"XDG_RUNTIME_DIR={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if (
            entry.isdigit()
            and int(entry) != os.getpid()
            and wanted in _read(f"/proc/{entry}/environ").split(b"\0")
        ):
            found.append(int(entry))
    return found


def refill_pids(marker: str) -> list[int]:
    """This test's refill processes, once they have exec'd crate's refill."""
    return [
        pid
        for pid in marked_pids(marker)
        if REFILL_ARG.encode() in _read(f"/proc/{pid}/cmdline").split(b"\0")
    ]


def fd_targets(pid: int) -> dict[int, str]:
    targets = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    for fd in fds:
        try:
            targets[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return targets


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses):
    [0] state, [1] ppid, [2] pgrp, [3] session."""
    text = _read(f"/proc/{pid}/stat").decode()
    return text[text.rindex(")") + 2 :].split()


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def key_names(reserve: Path, bits: int = 2048) -> set[str]:
    try:
        names = os.listdir(reserve)
    except FileNotFoundError:
        return set()
    return {n for n in names if n.startswith(f"rsa{bits}-") and n.endswith(".key")}


def full(reserve: Path, bits: int = 2048) -> Callable[[], bool]:
    return lambda: len(key_names(reserve, bits)) >= keyreserve.TARGET


# -- the reserve fills and is used ------------------------------------------------------


def test_a_run_fills_the_reserve_with_private_key_files(home: ReserveHome) -> None:
    done = home.crate("run", "--", "true", env=home.env)
    assert done.returncode == 0, done
    assert done.stderr == ""
    wait_for("a full reserve", full(home.reserve))
    assert stat.S_IMODE(home.reserve.lstat().st_mode) == 0o700
    names = key_names(home.reserve)
    assert len(names) == keyreserve.TARGET
    for name in names:
        st = (home.reserve / name).lstat()
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        assert keyreserve.parse_key((home.reserve / name).read_bytes(), 2048) is not None


def test_the_next_run_uses_a_reserved_key(home: ReserveHome) -> None:
    home.crate("run", "--", "true", env=home.env, check=True)
    wait_for("a full reserve", full(home.reserve))
    wait_for("the first refill to end", lambda: not refill_pids(home.marker))
    before = key_names(home.reserve)

    done = home.crate("run", "--", "sh", "-c", 'echo "$NAME"', env=home.env)
    assert done.returncode == 0, done
    assert done.stdout == f"{SECRET}\n"
    assert before - key_names(home.reserve), "no reserved key was taken"
    wait_for("the reserve to be refilled", full(home.reserve))


# -- the refill is detached ---------------------------------------------------------------


def test_the_refill_process_is_detached(home: ReserveHome, tmp_path: Path, key_4096: bytes) -> None:
    slow_refill(home, key_4096)
    env = home.crate.env({**home.env, "CRATE_PASSPHRASE": "not-for-the-refill"})
    # crate inherits a pipe beyond stdin/stdout/stderr (as from make's jobserver):
    # the refill must not keep it open.
    read_end, write_end = os.pipe()
    try:
        done = subprocess.run(
            [*home.crate.argv0, "run", "--", "true"],
            env=env,
            pass_fds=(write_end,),
            capture_output=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
        os.close(read_end)
    assert done.returncode == 0, done

    lock = str(home.reserve / ".lock")
    pids: list[int] = []

    def refilling() -> bool:
        pids[:] = [p for p in refill_pids(home.marker) if lock in fd_targets(p).values()]
        return bool(pids)

    wait_for("a refill process holding the lock", refilling)
    assert len(pids) == 1
    pid = pids[0]
    try:
        fds = fd_targets(pid)
        fields = stat_fields(pid)
        environ = _read(f"/proc/{pid}/environ").split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
        assert refill_pids(home.marker) == [pid]  # still the same process
    finally:
        kill(pid)

    assert [fds.get(fd) for fd in (0, 1, 2)] == [os.devnull] * 3, fds
    for fd, target in fds.items():
        assert not target.startswith(("pipe:", "socket:")), (fd, target, fds)
        if target.startswith(str(tmp_path)):
            assert target.startswith(str(home.reserve) + os.sep), (fd, target, fds)
    session, parent, tty = int(fields[3]), int(fields[1]), int(fields[4])
    # In a session of its own (whose leader, its first process, has exited),
    # without a terminal.
    assert session != os.getsid(0)
    assert tty == 0
    assert parent != os.getpid()
    assert cwd == "/"
    assert not [v for v in environ if v.startswith(b"CRATE_PASSPHRASE=")]
    assert not [v for v in environ if v.startswith(b"CRATE_TEST_MARKER=")]  # only what it needs
    assert f"CRATE_HOME={home.crate.home}".encode() in environ


CHILDREN = """
import os, time
time.sleep(1)
try:
    print("child", os.waitpid(-1, os.WNOHANG))
except ChildProcessError:
    print("no children")
"""


def test_the_refill_is_no_child_of_the_command(home: ReserveHome) -> None:
    done = home.crate("run", "--", PYTHON, "-c", CHILDREN, env=home.env)
    assert done.returncode == 0, done
    assert done.stdout == "no children\n"
    wait_for("a full reserve", full(home.reserve))  # a refill did run


def test_the_output_pipe_closes_when_the_command_ends(home: ReserveHome, key_4096: bytes) -> None:
    # Eight 4096-bit keys, two at a time, take seconds: the refill outlives the command.
    slow_refill(home, key_4096)
    env = home.crate.env(home.env)
    started = time.monotonic()
    proc = subprocess.Popen(
        [*home.crate.argv0, "run", "--", "echo", "hi"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    refilling = refill_pids(home.marker)
    assert proc.returncode == 0, err
    assert out == b"hi\n"
    assert elapsed < 5.0, f"the pipes closed after {elapsed:.1f} s"
    assert refilling, "the refill should still be running (the test proves nothing)"


# -- no reserve ---------------------------------------------------------------------------


def test_reserve_off_makes_no_folder(home: ReserveHome) -> None:
    env = {**home.env, "CRATE_KEY_RESERVE": "off"}
    done = home.crate("run", "--", "sh", "-c", 'echo "$NAME"', env=env)
    assert done.returncode == 0, done
    assert done.stdout == f"{SECRET}\n"
    assert marked_pids(home.marker) == []  # no refill was started
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # nor does a folder appear later
        assert not os.path.lexists(home.reserve)
        time.sleep(0.05)
    assert os.listdir(home.reserve.parent) == []
