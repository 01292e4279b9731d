"""End to end: what `crate run` must do alike whether it execs the command
or stays its parent, as one table run in both modes.

In the exec form (the default) the command replaces crate; supervised
(here with --mask, which also masks the output) crate starts the command,
relays signals and ends with its status. Either way the caller must see the
command's exit status, death by a signal, stdin, file descriptors, signal
dispositions and a closed pipe as without crate. tests/e2e/test_cli_run.py and
tests/e2e/test_run_mask.py hold what only one mode does.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support.crate_runner import CrateRunner, assert_clean_error
from tests.support.signals import IGNORING

pytestmark = pytest.mark.e2e

TOKEN = "sk_live_4f9a8c2e1b7d"
PASSWORD = "correct-horse-battery"
HIDDEN = (TOKEN, PASSWORD)
SHOW_SIGNALS = ["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"]


def standard_signals(status: str) -> dict[str, int]:
    """SigIgn and SigBlk of /proc/PID/status, signals 1-31 only: glibc's
    posix_spawn leaves its own internal signals (32, 33) ignored, as for any
    program started with it."""
    masks = dict(line.split(":") for line in status.splitlines())
    return {k: int(v, 16) & 0x7FFFFFFF for k, v in masks.items()}


def exactly(status: str) -> str:
    return status


class Mode(NamedTuple):
    flags: tuple[str, ...]  # what `crate run` is given before `--`
    token: str  # how TOKEN reaches the caller
    signals: Callable[[str], object]  # what of /proc/PID/status must match
    # The status the caller gets when signal N kills the command: in the exec
    # form the command dies of it itself (no wrapper turns it into an exit
    # code); supervised, crate outlives the command and exits 128+N, as a
    # shell reports a death.
    killed: Callable[[int], int]


MODES = {
    "exec": Mode((), TOKEN, exactly, lambda signum: -signum),
    "supervised": Mode(("--mask",), "***", standard_signals, lambda signum: 128 + signum),
}


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> Mode:
    return MODES[request.param]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    """A home with TOKEN and PASSWORD in personal/dev; tests must not change it."""
    runner = CrateRunner(tmp_path_factory.mktemp("run-modes") / "home")
    runner("secrets", "set", f"TOKEN={TOKEN}", f"PASSWORD={PASSWORD}", check=True)
    return runner


@pytest.mark.parametrize("code", [0, 1, 7, 126, 127, 255])
def test_exit_status_passes_through(home: CrateRunner, mode: Mode, code: int) -> None:
    done = home("run", *mode.flags, "--", "sh", "-c", f"echo $TOKEN; exit {code}")
    assert done.returncode == code
    assert done.stdout == f"{mode.token}\n"
    assert done.stderr == ""


@pytest.mark.parametrize(("sig", "status"), [("TERM", 143), ("KILL", 137), ("INT", 130)])
def test_a_signal_death_is_what_a_shell_reports(
    home: CrateRunner, mode: Mode, sig: str, status: int
) -> None:
    command = ["run", *mode.flags, "--", "sh", "-c", f"kill -{sig} $$"]
    direct = subprocess.run([*home.argv0, *command], env=home.env(), timeout=60, check=False)
    assert direct.returncode == mode.killed(getattr(signal, f"SIG{sig}"))
    via_shell = subprocess.run(
        ["bash", "-c", '"$@"; echo "status=$?"', "bash", *home.argv0, *command],
        capture_output=True,
        env=home.env(),
        timeout=60,
        check=False,
    )
    assert via_shell.stdout.decode().splitlines()[-1] == f"status={status}"


def test_command_not_found_exits_127(home: CrateRunner, mode: Mode, tmp_path: Path) -> None:
    done = home("run", *mode.flags, "--", "no-such-command-for-crate", "arg")
    assert_clean_error(done, 127, hidden=HIDDEN)
    assert done.stderr == "crate: error: command not found: no-such-command-for-crate\n"
    assert_clean_error(home("run", *mode.flags, "--", str(tmp_path / "missing.sh")), 127)


def test_not_executable_exits_126(home: CrateRunner, mode: Mode, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    done = home("run", *mode.flags, "--", str(script))
    assert_clean_error(done, 126, hidden=HIDDEN)
    assert "ran" not in done.stdout
    assert str(script) in done.stderr
    assert_clean_error(home("run", *mode.flags, "--", str(tmp_path)), 126)


def test_stdin_reaches_the_command(home: CrateRunner, mode: Mode) -> None:
    data = b"piped\n" + TOKEN.encode() + b"\ndata\x00\xff\xfe\n"
    done = home.run_bytes("run", *mode.flags, "--", "cat", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data.replace(TOKEN.encode(), mode.token.encode())


def test_a_closed_pipe_ends_the_command_as_without_crate(home: CrateRunner, mode: Mode) -> None:
    script = '"$@" | head -n 1; echo "status=${PIPESTATUS[0]}"'
    done = subprocess.run(
        ["bash", "-c", script, "bash", *home.argv0, "run", *mode.flags, "--", "yes", TOKEN],
        capture_output=True,
        env=home.env(),
        timeout=60,
        check=True,
    )
    assert done.stdout.decode().splitlines() == [mode.token, "status=141"]
    assert done.stderr == b""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("inherited", ["defaults", "int-and-quit-ignored"])
def test_signal_dispositions_are_the_same_as_without_crate(
    home: CrateRunner, mode: Mode, inherited: str
) -> None:
    """crate passes on the dispositions it was started with, as the command
    would have them without crate: the defaults (the suite's, see
    tests/support/signals.py), or SIGINT and SIGQUIT ignored, as a shell
    starts a background job."""
    launcher = IGNORING if inherited == "int-and-quit-ignored" else ()
    direct = subprocess.run([*launcher, *SHOW_SIGNALS], capture_output=True, check=True)
    wrapped = subprocess.run(
        [*launcher, *home.argv0, "run", *mode.flags, "--", *SHOW_SIGNALS],
        capture_output=True,
        env=home.env(),
        timeout=60,
        check=True,
    )
    assert mode.signals(wrapped.stdout.decode()) == mode.signals(direct.stdout.decode())
    ignored = standard_signals(direct.stdout.decode())["SigIgn"]
    int_and_quit = 1 << (signal.SIGINT - 1) | 1 << (signal.SIGQUIT - 1)
    assert ignored & int_and_quit == (int_and_quit if launcher else 0)


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs Linux /proc")
def test_no_file_descriptor_leaks_into_the_command(home: CrateRunner, mode: Mode) -> None:
    done = home("run", *mode.flags, "--", "sh", "-c", "ls /proc/$$/fd", check=True)
    assert done.stdout.split() == ["0", "1", "2"]
