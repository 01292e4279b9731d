"""Finding this home's agent: its socket in the user's private runtime
folder (crate_cli/server/agent.py starts and serves it).

Only the standard library is imported at module level: `running_transport`
runs on every local command.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crate_cli.errors import KeystoreError

if TYPE_CHECKING:
    from crate_cli.client.transport.http import HttpTransport
    from crate_cli.config import CrateHome


def runtime_dir(create: bool) -> Path | None:
    """The user's private runtime folder for crate (None if absent and not created).

    `$XDG_RUNTIME_DIR/crate` when the session has one, else a `crate-UID`
    folder in the temp dir. A folder that another user owns or that others
    can enter is refused: its socket could be someone else's.
    """
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base) and os.path.isdir(base):
        folder = Path(base) / "crate"
    else:
        folder = Path(_temp_dir()) / f"crate-{uid}"
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        if not create:
            return None
        old = os.umask(0o077)
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
        finally:
            os.umask(old)
        info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        raise KeystoreError(
            f"{folder} is not a private folder of uid {uid}; the agent will not use it",
            f"remove it, or fix it with: chmod 700 {folder}",
        )
    return folder


def _temp_dir() -> str:
    """tempfile.gettempdir() without importing tempfile (3 ms on every local
    command): TMPDIR, TEMP or TMP when it is a folder, else /tmp."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(name)
        if value and os.path.isdir(value):
            return os.path.abspath(value)
    if os.path.isdir("/tmp"):  # noqa: S108 - the same default as tempfile
        return "/tmp"  # noqa: S108
    import tempfile

    return tempfile.gettempdir()


def socket_path(home: CrateHome, create: bool = False) -> Path | None:
    folder = runtime_dir(create)
    if folder is None:
        return None
    from crate_cli.vault.crypto import sha256_hex

    digest = sha256_hex(str(home.data_dir).encode("utf-8"))[:16]
    return folder / f"agent-{digest}.sock"


def running_transport(home: CrateHome) -> HttpTransport | None:
    """A transport to this home's agent if its socket exists (a stat or a short
    listing when not: the socket's name is a hash)."""
    try:
        folder = runtime_dir(create=False)
        if folder is None or not any(n.endswith(".sock") for n in os.listdir(folder)):
            return None
        path = socket_path(home)
    except (KeystoreError, OSError):
        return None
    if path is None or not path.exists():
        return None
    from crate_cli.client.transport.http import HttpTransport

    return HttpTransport("http://agent", None, unix_socket=str(path))


def status(home: CrateHome) -> dict[str, Any] | None:
    """The running agent's status, or None when none answers."""
    from crate_cli.errors import ServerUnreachable

    transport = running_transport(home)
    if transport is None:
        return None
    try:
        return transport.request("GET", "/agent")
    except ServerUnreachable:
        return None
    finally:
        transport.close()
