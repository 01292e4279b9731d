"""A real `crate server` process for tests: 127.0.0.1 on a free port, or a unix socket.

server = CrateServer(home)            # a home with a vault (crate secrets set ...)
server.start()                        # waits for "crate: serving ... on URL"
token = server.token("ci", "admin")   # crate token create, in the server's home
...
server.stop()                         # SIGTERM, waits, returns the exit code
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.support.crate_runner import CrateRunner, crate_executable

_SERVING = re.compile(r"crate: serving .* on (\S+) \(")


class CrateServer:
    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.args = list(args)
        self.runner = CrateRunner(home)
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log: list[str] = []
        self._reader: threading.Thread | None = None

    def crate(self, *args: str, **kwargs: object) -> object:
        """Run a crate command in the server's home (for tokens, seeding secrets)."""
        return self.runner(*args, **kwargs)  # type: ignore[arg-type]

    def token(self, name: str, role: str = "admin", *options: str) -> str:
        result = self.runner("token", "create", name, "--role", role, *options, check=True)
        return result.stdout.strip()

    def start(self, timeout: float = 30.0) -> str:
        argv = [*crate_executable(), "server", *self.args]
        if not any(a.startswith(("--listen", "--socket")) for a in self.args):
            argv += ["--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.runner.env(self.extra_env),
        )
        started = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.log.append(line)
                match = _SERVING.search(line)
                if match:
                    self.url = match.group(1)
                    started.set()
            started.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self.url and time.monotonic() < deadline:
            started.wait(0.05)
            if self.proc.poll() is not None and not self.url:
                break
        if not self.url:
            self.stop()
            raise AssertionError("crate server did not start:\n" + "\n".join(self.log))
        return self.url

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the server and wait; returns its exit code (None if not started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def output(self) -> str:
        return "\n".join(self.log)

    def __enter__(self) -> CrateServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
