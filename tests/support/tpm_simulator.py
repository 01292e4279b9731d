"""A real TPM 2.0 for the tests: swtpm on a unix socket in a temp folder.

swtpm runs as a child process of the test (not --daemon) so that it can be
stopped, restarted on the same state (a reboot) or started on a fresh state
(a TPM that was cleared or replaced). Tests reach it with the TCTI
`swtpm:path=SOCKET`, which also uses `SOCKET.ctrl`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.tools import IN_CI, require_tool


def require_tpm2_pytss() -> None:
    """tpm2-pytss is the optional `[tpm2]` extra: required in CI, skipped elsewhere."""
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("tpm2-pytss is required in CI but is not installed (the [tpm2] extra)")
        pytest.skip("tpm2-pytss is not installed (pip install '.[tpm2]')")


class Swtpm:
    def __init__(self) -> None:
        require_tool("swtpm")
        require_tpm2_pytss()
        # A short folder: a unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="swtpm-"))
        self.state = self.dir / "state"
        self.state.mkdir()
        self.socket = self.dir / "sock"
        self.log = self.dir / "swtpm.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"

    def env(self) -> dict[str, str]:
        return {"CRATE_TPM2_TCTI": self.tcti}

    def start(self) -> None:
        assert self.proc is None, "swtpm is already running"
        for stale in (self.socket, Path(f"{self.socket}.ctrl")):
            stale.unlink(missing_ok=True)
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state}",
                "--server",
                f"type=unixio,path={self.socket}",
                "--ctrl",
                f"type=unixio,path={self.socket}.ctrl",
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            # A file, not a pipe: swtpm writes a line per connection, and a
            # pipe nobody reads would block it after 64 KiB.
            stderr=log,
        )
        log.close()  # swtpm has its own copy
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"swtpm exited at start: {self.log.read_text()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("swtpm did not open its socket within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """An orderly shutdown, then a start on the same state, as after a reboot.

        (Stopping without TPM2_Shutdown counts as an unclean shutdown, which
        the TPM's dictionary-attack logic treats like a failed PIN.)
        """
        subprocess.run(
            [require_tool("tpm2_shutdown"), "-T", self.tcti],
            check=True,
            capture_output=True,
            env={"PATH": "/usr/bin:/bin", "TSS2_LOG": "all+NONE"},
        )
        self.stop()
        self.start()

    def replace(self) -> None:
        """Start on a fresh state: the TPM was cleared or the machine's board replaced."""
        self.stop()
        shutil.rmtree(self.state)
        self.state.mkdir()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
