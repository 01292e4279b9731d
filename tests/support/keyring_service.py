"""A real Secret Service for the tests: gnome-keyring-daemon on a private D-Bus.

The bus has no service activation, so a daemon that is stopped stays
stopped and nothing can be started behind the test's back; the daemon gets
a `login` collection unlocked by a password on stdin, in temporary HOME and
XDG directories. Used by the keyring slot's tests and by `init --keystore
auto`'s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.support.tools import require_tool

LOGIN_PASSWORD = "login-password"
SECRETS_NAME = "org.freedesktop.secrets"
# gnome-keyring asks this D-Bus name to show its unlock prompts (gcr's system prompter).
PROMPTER_NAME = "org.gnome.keyring.SystemPrompter"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# Owns the prompter's name and never answers: any unlock prompt would hang on it
# (gnome-keyring gives up after D-Bus's 25 s). Prints what it is asked.
SILENT_PROMPTER = textwrap.dedent(
    """
    import sys
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection
    conn = open_dbus_connection(sys.argv[1])
    conn.send_and_get_reply(message_bus.RequestName(sys.argv[2], 4))
    print("ready", flush=True)
    while True:
        msg = conn.receive()
        print("asked", msg.header.fields.get(3), flush=True)
    """
)


class SecretService:
    """A private session bus with gnome-keyring-daemon serving the Secret Service."""

    def __init__(self) -> None:
        self.dbus_daemon = require_tool("dbus-daemon")
        self.keyring_daemon = require_tool("gnome-keyring-daemon")
        # Short: a unix socket path must fit in 108 bytes.
        short = "/tmp" if os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="crate-kr-", dir=short))
        for name in ("home", "run", "data", "config"):
            (self.root / name).mkdir(mode=0o700)
        self.address = f"unix:path={self.root / 'run' / 'bus'}"
        self._bus: subprocess.Popen[bytes] | None = None
        self._keyring: subprocess.Popen[bytes] | None = None
        self._helpers: list[subprocess.Popen[bytes]] = []

    def xdg(self) -> dict[str, str]:
        """Where keyring, D-Bus and gnome-keyring look: all inside the temp root."""
        return {
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "XDG_DATA_HOME": str(self.root / "data"),
            "XDG_CONFIG_HOME": str(self.root / "config"),
        }

    def env(self) -> dict[str, str]:
        """What a crate subprocess needs to reach this keyring."""
        return {**self.xdg(), "DBUS_SESSION_BUS_ADDRESS": self.address}

    def _daemon_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            **self.env(),
        }

    def start(self) -> None:
        conf = self.root / "bus.conf"
        conf.write_text(BUS_CONFIG.format(socket=self.root / "run" / "bus"))
        self._bus = subprocess.Popen(
            [self.dbus_daemon, f"--config-file={conf}", "--nofork", "--print-address=1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self._daemon_env(),
        )
        assert self._bus.stdout is not None
        if not self._bus.stdout.readline().strip():
            pytest.fail("dbus-daemon did not start")
        self.start_keyring()

    def start_keyring(self) -> None:
        # --unlock reads the login password from stdin and creates/unlocks the
        # `login` collection (the default alias) with it; --foreground keeps it
        # our child, so that the test can stop it.
        with (self.root / "gnome-keyring.log").open("ab") as log:
            self._keyring = subprocess.Popen(
                [self.keyring_daemon, "--foreground", "--unlock", "--components=secrets"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                env=self._daemon_env(),
            )
        assert self._keyring.stdin is not None
        self._keyring.stdin.write(LOGIN_PASSWORD.encode())
        self._keyring.stdin.close()
        deadline = time.monotonic() + 10
        while not self._default_collection_ready():
            if self._keyring.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "gnome-keyring-daemon did not serve an unlocked login keyring: "
                    + (self.root / "gnome-keyring.log").read_text(errors="replace")
                )
            time.sleep(0.05)

    def _default_collection_ready(self) -> bool:
        try:
            with self.connection() as conn:
                return not self.collection(conn).is_locked()
        except Exception:
            return False

    def stop_keyring(self) -> None:
        if self._keyring is not None:
            self._keyring.terminate()
            self._keyring.wait(timeout=10)
            self._keyring = None

    def silent_prompter(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", SILENT_PROMPTER, self.address, PROMPTER_NAME],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._helpers.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        return proc

    def close(self) -> None:
        for proc in [*self._helpers, self._keyring, self._bus]:
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- talking to the Secret Service the way a user's tools would ---------------------

    def connection(self) -> closing[Any]:
        from jeepney.io.blocking import open_dbus_connection

        return closing(open_dbus_connection(self.address))

    def collection(self, conn: Any) -> Any:
        import secretstorage

        return secretstorage.Collection(conn)  # the `default` alias: login

    def items(self, conn: Any) -> list[Any]:
        return list(self.collection(conn).search_items({"service": "crate"}))

    def crate_items(self) -> dict[str, str]:
        """username -> secret of every item crate keeps."""
        with self.connection() as conn:
            return {
                item.get_attributes()["username"]: item.get_secret().decode()
                for item in self.items(conn)
            }
