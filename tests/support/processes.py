"""Processes the e2e tests start and watch: crate in the background, a wait
for a condition (with a generous deadline, never a timing), and a command
that records the SIGTERM it gets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.support.crate_runner import CrateRunner

DEADLINE = 20.0  # seconds any awaited condition gets
CRATE_TIMEOUT = 60.0  # seconds a whole crate run gets

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """Poll `condition` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Running:
    """crate started in the background, in its own process group."""

    def __init__(
        self,
        runner: CrateRunner,
        args: list[str],
        folder: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        folder.mkdir(parents=True)
        self.stdout_path = folder / "stdout"
        self.stderr_path = folder / "stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*runner.argv0, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=runner.env(env),
                start_new_session=True,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()

    def check_running(self) -> None:
        code = self.proc.poll()
        assert code is None, f"crate ended early with {code}; stderr:\n{self.stderr}"

    def wait(self, timeout: float = CRATE_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"crate still running after {timeout:g} s; stderr:\n{self.stderr}"
            ) from None

    def close(self) -> None:
        """Kill crate and whatever is left in its process group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


# Records SIGTERM in argv[1] and exits 42; writes its pid to argv[2] when ready.
TRAP_SIGTERM = """
import os, signal, sys, time
marker, ready = sys.argv[1], sys.argv[2]
def on_term(signum, frame):
    with open(marker, "a") as f:
        f.write("TERM\\n")
    sys.exit(42)
signal.signal(signal.SIGTERM, on_term)
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(0.05)
"""
