"""End to end: `crate run --mask` against output written to get around it.

Two ways a command (or what it runs) could get a secret past the filter:

- Write the value slowly, one byte at a time with pauses: a filter that gave
  up on a held start after a while would show it. These tests step the
  command byte by byte and read what crate has written after each pause,
  on a pipe and on a pseudo-terminal: no byte of the value may show.
- Write half the value to stdout and half to stderr: where crate's stdout
  and stderr go to the same place (a terminal, `2>&1`, one file), the two
  halves show as one value unless the two streams share one filter. Where
  they go to different places, each has its own (the control: the halves
  show, in two different files, as documented).

crate runs on real pipes, files and pseudo-terminals (os.openpty), started
through its CLI only, so these tests also run against the frozen binary.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.crate_runner import CrateRunner

pytestmark = pytest.mark.e2e

PYTHON = sys.executable
VALUE = "s1ow-Hk2Wq"  # starts like words do: `s` alone must not show
OTHER = "unrelated-9f3e"  # a second secret: the filter has more than one value
PAUSE = 0.15  # between two bytes: three times the 50 ms after which crate once gave up
DEADLINE = 30.0


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    runner = CrateRunner(tmp_path_factory.mktemp("mask-attacks") / "home")
    runner("secrets", "set", f"VALUE={VALUE}", f"OTHER={OTHER}", check=True)
    return runner


class Reader:
    """What crate writes to one destination (a pipe, or a pty's master), read
    as it comes, without waiting for crate to end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = b""
        self.ended = False

    def read_now(self, wait: float = 0.0) -> bytes:
        """Everything written so far (waiting up to `wait` for the first of it)."""
        while not self.ended:
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                break
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:  # EIO: the pty's other side is closed
                chunk = b""
            if not chunk:
                self.ended = True
            self.data += chunk
            wait = 0.0
        return self.data

    def read_to_end(self) -> bytes:
        deadline = time.monotonic() + DEADLINE
        while not self.ended:
            assert time.monotonic() < deadline, f"no end of output: {self.data!r}"
            self.read_now(0.1)
        return self.data


class Crate:
    """crate run --mask on pipes or a pty, its outputs read as they come."""

    def __init__(self, home: CrateRunner, command: list[str], stdout: str, stderr: str) -> None:
        """`stdout`: "pipe" or "pty"; `stderr`: "same" (the same terminal through
        a second open of its device), "dup" (2>&1) or "apart" (a pipe of its own)."""
        given: list[int] = []  # crate's ends: closed here once it has them
        self.readers: list[int] = []
        self.err: Reader | None = None
        stdin: int = subprocess.DEVNULL
        if stdout == "pty":
            master, out_fd = os.openpty()
            stdin = out_fd
            self.readers.append(master)
        else:
            master, out_fd = os.pipe()
            self.readers.append(master)
        given.append(out_fd)
        self.out = Reader(master)
        if stderr == "same":
            err_fd = os.open(os.ttyname(out_fd), os.O_RDWR | os.O_NOCTTY)
            given.append(err_fd)
        elif stderr == "dup":
            err_fd = out_fd
        else:
            read, err_fd = os.pipe()
            self.readers.append(read)
            given.append(err_fd)
            self.err = Reader(read)
        try:
            self.proc = subprocess.Popen(
                [*home.argv0, "run", "--mask", "--", *command],
                stdin=stdin,
                stdout=out_fd,
                stderr=err_fd,
                env=home.env(),
                start_new_session=True,
            )
        finally:
            for fd in given:  # only crate holds them now: its end is our end of file
                os.close(fd)

    def finish(self) -> int:
        self.out.read_to_end()
        if self.err is not None:
            self.err.read_to_end()
        return self.proc.wait(timeout=DEADLINE)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in self.readers:
            with contextlib.suppress(OSError):
                os.close(fd)


Start = Callable[[list[str], str, str], Crate]


@pytest.fixture
def start(home: CrateRunner) -> Iterator[Start]:
    """start(command, stdout, stderr): a Crate, killed at teardown if still running."""
    started: list[Crate] = []

    def run(command: list[str], stdout: str, stderr: str) -> Crate:
        crate = Crate(home, command, stdout, stderr)
        started.append(crate)
        return crate

    yield run
    for crate in started:
        crate.close()


def wait_for(path: Path, crate: Crate) -> None:
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        assert crate.proc.poll() is None, f"crate ended early: {crate.out.read_now()!r}"
        assert time.monotonic() < deadline, f"the command never wrote {path.name}"
        time.sleep(0.005)


def shown(data: bytes) -> bytes:
    """Output as a terminal shows it, without its carriage returns."""
    return data.replace(b"\r", b"")


# -- a value written one byte at a time --------------------------------------------

# argv: CONTROL FD. Writes "before ", then the value one byte at a time to FD:
# after byte i it creates CONTROL/wrote-i and waits for CONTROL/next-i.
SLOW = """
import os, sys, time
value = os.environ["VALUE"].encode()
control, fd = sys.argv[1], int(sys.argv[2])
os.write(fd, b"before ")
for i in range(len(value)):
    os.write(fd, value[i : i + 1])
    open(os.path.join(control, f"wrote-{i}"), "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(control, f"next-{i}")):
        if time.monotonic() > deadline:
            sys.exit(9)
        time.sleep(0.005)
os.write(fd, b" after\\n")
"""


@pytest.mark.parametrize(
    ("stdout", "stderr", "fd"),
    [("pipe", "apart", 1), ("pipe", "apart", 2), ("pty", "same", 1), ("pty", "same", 2)],
    ids=["pipe-stdout", "pipe-stderr", "pty-stdout", "pty-stderr"],
)
def test_a_value_written_byte_by_byte_never_shows_a_byte_of_itself(
    start: Start, tmp_path: Path, stdout: str, stderr: str, fd: int
) -> None:
    """After each byte and a pause (longer than any hold crate could give up
    after), what crate has written is exactly what came before the value."""
    control = tmp_path / "control"
    control.mkdir()
    crate = start([PYTHON, "-c", SLOW, str(control), str(fd)], stdout, stderr)
    reader = crate.err if fd == 2 and crate.err is not None else crate.out
    value = VALUE.encode()
    for i in range(len(value) - 1):  # every proper prefix of the value
        wait_for(control / f"wrote-{i}", crate)
        time.sleep(PAUSE)
        assert reader.read_now() == b"before ", f"{value[: i + 1]!r} written, and shown"
        (control / f"next-{i}").touch()
    wait_for(control / f"wrote-{len(value) - 1}", crate)
    (control / f"next-{len(value) - 1}").touch()
    assert crate.finish() == 0
    assert shown(reader.data) == b"before *** after\n"
    if crate.err is not None and reader is not crate.err:
        assert crate.err.data == b""


# -- a value split across stdout and stderr ------------------------------------------

# Writes a whole value to each stream, then half of VALUE to stdout, closes
# its stdout (a filter of stdout alone would release the half at that end),
# and writes the other half to stderr.
SPLIT = """
import os, time
value = os.environ["VALUE"].encode()
half = len(value) // 2
os.write(1, b"whole " + os.environ["OTHER"].encode() + b"\\n")
os.write(2, b"whole " + os.environ["OTHER"].encode() + b"\\n")
os.write(1, b"before " + value[:half])
time.sleep(0.2)
os.close(1)
time.sleep(0.2)
os.write(2, value[half:] + b" after\\n")
"""


@pytest.mark.parametrize(
    ("stdout", "stderr"),
    [("pipe", "dup"), ("pty", "same")],
    ids=["pipe-2>&1", "same-terminal"],
)
def test_a_value_split_across_stdout_and_stderr_is_masked_where_they_merge(
    start: Start, stdout: str, stderr: str
) -> None:
    crate = start([PYTHON, "-c", SPLIT], stdout, stderr)
    assert crate.finish() == 0
    assert shown(crate.out.data) == b"whole ***\nwhole ***\nbefore *** after\n"


def test_a_value_split_across_stdout_and_stderr_in_one_file_is_masked(
    home: CrateRunner, tmp_path: Path
) -> None:
    """stdout and stderr opened separately on the same file (`>f 2>f`): one
    destination by its inode, so one filter, and one writer (no overwrites)."""
    path = tmp_path / "out"
    with path.open("wb") as out, path.open("wb") as err:
        done = subprocess.run(
            [*home.argv0, "run", "--mask", "--", PYTHON, "-c", SPLIT],
            stdout=out,
            stderr=err,
            env=home.env(),
            timeout=DEADLINE,
            check=False,
        )
    assert done.returncode == 0
    assert path.read_bytes() == b"whole ***\nwhole ***\nbefore *** after\n"


@pytest.mark.parametrize("stdout", ["pipe", "pty"])
def test_with_different_destinations_each_stream_is_masked_alone(start: Start, stdout: str) -> None:
    """The control: stdout and stderr go to two different places, each with
    its own filter. A whole value in either is masked; the two halves of one
    show, each in its own file, as documented (neither file holds the value)."""
    crate = start([PYTHON, "-c", SPLIT], stdout, "apart")
    assert crate.finish() == 0
    assert crate.err is not None
    value = VALUE.encode()
    half = len(value) // 2
    assert shown(crate.out.data) == b"whole ***\nbefore " + value[:half]
    assert crate.err.data == b"whole ***\n" + value[half:] + b" after\n"
