"""Secret values never reach the disk in clear, nor any error output (DESIGN §2, §7),
when crate runs as a command.

After `crate secrets set` of a distinctive value, every file under
CRATE_HOME is searched for it in several encodings. Then failing commands,
with and without `--debug`, must not print it. The same search while a
vault is open in process is in tests/integration/test_secret_leaks.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from tests.support.vault_state import files_holding

pytestmark = pytest.mark.e2e


VALUE = "Zq7-leak-canary-4f1e9b2d-do-not-print"
LEAKED = "second-canary-8c3a51e0-never-shown"


def test_no_plaintext_on_disk_after_cli_use(personal_home: Path, crate) -> None:
    assert crate("secrets", "set", "CANARY", "-", input=VALUE).returncode == 0
    assert crate("secrets", "set", f"MULTI={VALUE}", "B=2").returncode == 0
    assert crate("secrets", "get", "CANARY").stdout == VALUE
    assert files_holding(personal_home, VALUE) == []


def test_files_are_private(personal_home: Path, crate) -> None:
    assert crate("secrets", "set", "CANARY", "-", input=VALUE).returncode == 0
    for path in [personal_home, *personal_home.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_listing_and_history_show_no_value(personal_home: Path, crate) -> None:
    assert crate("secrets", "set", "CANARY", "-", input=VALUE).returncode == 0
    for argv in (
        ["secrets", "list"],
        ["secrets", "list", "--json"],
        ["secrets", "history", "CANARY"],
        ["secrets", "history", "CANARY", "--json"],
    ):
        result = crate(*argv)
        assert result.returncode == 0
        assert VALUE not in result.stdout + result.stderr


# -- error paths ------------------------------------------------------------------------


@pytest.fixture
def stored(personal_home: Path, crate) -> Path:
    assert crate("secrets", "set", "CANARY", "-", input=VALUE).returncode == 0
    return personal_home


def assert_silent_failure(result, code: ExitCode) -> None:
    assert result.returncode == code, result
    for secret in (VALUE, LEAKED):
        assert secret not in result.stdout
        assert secret not in result.stderr


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
def test_missing_secret_with_and_without_debug(stored: Path, crate, debug: list[str]) -> None:
    result = crate(*debug, "secrets", "get", "MISSING")
    assert_silent_failure(result, ExitCode.NOT_FOUND)
    assert ("Traceback" in result.stderr) == bool(debug)


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
@pytest.mark.parametrize(
    ("argv", "stdin", "code"),
    [
        (["secrets", "set", "NEW", "-"], LEAKED + "\x00", ExitCode.USAGE),
        (["secrets", "set", "NEW", "-"], LEAKED.encode() + b"\xff", ExitCode.USAGE),
        (["secrets", "set", "NEW", "-"], LEAKED * 2000, ExitCode.USAGE),
        (["secrets", "set", "NEW", LEAKED, "--env", "qa"], None, ExitCode.NOT_FOUND),
        (["secrets", "set", "bad-name", LEAKED], None, ExitCode.USAGE),
        (["secrets", "set", f"bad-name={LEAKED}"], None, ExitCode.USAGE),
        (["secrets", "set", "A", LEAKED, "extra"], None, ExitCode.USAGE),
        (["secrets", "set", "NEW", LEAKED, "--tag", "BAD"], None, ExitCode.USAGE),
        (["secrets", "set", "NEW", LEAKED, "--org", "nobody"], None, ExitCode.NOT_FOUND),
    ],
    ids=[
        "nul",
        "not-utf8",
        "too-large",
        "unknown-env",
        "bad-name",
        "bad-name-pair",
        "bad-arity",
        "bad-tag",
        "unknown-org",
    ],
)
def test_refused_set_never_echoes_the_value(
    stored: Path, crate, debug: list[str], argv: list[str], stdin: str | bytes | None, code
) -> None:
    result = crate(*debug, *argv, input=stdin if stdin is not None else b"")
    assert_silent_failure(result, code)


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
def test_integrity_failure_never_shows_the_value(stored: Path, crate, debug: list[str]) -> None:
    vault = stored / "orgs" / "personal.vault"
    db = sqlite3.connect(vault)
    ((blob,),) = db.execute("SELECT ciphertext FROM secret_versions").fetchall()
    db.execute("UPDATE secret_versions SET ciphertext = ?", (blob[:-1] + bytes([blob[-1] ^ 1]),))
    db.commit()
    db.close()
    for argv in (["secrets", "get", "CANARY"], ["secrets", "fetch"], ["run", "--", "env"]):
        assert_silent_failure(crate(*debug, *argv), ExitCode.INTEGRITY)


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
def test_keystore_failure_never_shows_the_value(stored: Path, crate, debug: list[str]) -> None:
    (key_file,) = (stored / "keys").glob("slot-*.key")
    key_file.unlink()
    assert_silent_failure(crate(*debug, "secrets", "get", "CANARY"), ExitCode.KEYSTORE)
    result = crate(*debug, "secrets", "set", "NEW", "-", input=LEAKED)
    assert_silent_failure(result, ExitCode.KEYSTORE)
