"""The keyring slot against a real gnome-keyring-daemon on a private D-Bus session.

Each test gets its own session bus (no service activation, so a daemon that is
stopped stays stopped and nothing can be started behind the test's back) and
its own gnome-keyring-daemon with a `login` collection unlocked by a password
on stdin, in temporary HOME/XDG directories. The tests drive the real CLI.
A plain-text backend, which only a Python install can load, is tried in
process in tests/integration/test_keyring_in_process.py.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner, assert_clean_error
from tests.support.keyring_service import (
    SecretService,
)

pytestmark = pytest.mark.e2e

# A locked keyring must fail in much less than this (the slot's own deadline is 10 s).
FAST = 8.0


class SealedTemplate(NamedTuple):
    home: Path
    keyrings: Path  # gnome-keyring's files, the login keyring holding the slot's item


@pytest.fixture(scope="module")
def sealed_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SealedTemplate]:
    """Made once per module: creating an org costs an RSA key, and most tests
    start from the same state. Each test gets copies (the slot record keeps the
    item's name, so a copied home finds it)."""
    root = tmp_path_factory.mktemp("keyring-template")
    service = SecretService()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("PYTHON_KEYRING_BACKEND", raising=False)
            service.start()
            crate = CrateRunner(root / "home")
            done = crate("init", "--keystore", "keyring", env=service.env(), check=True)
            assert "sealed by a keyring slot" in done.stderr
            crate("secrets", "set", "API_KEY", "keyring-guarded", env=service.env(), check=True)
            service.stop_keyring()
        shutil.copytree(service.root / "data" / "keyrings", root / "keyrings")
        yield SealedTemplate(root / "home", root / "keyrings")
    finally:
        service.close()


@pytest.fixture
def sealed(
    crate: CrateRunner, keyring_service: SecretService, sealed_template: SealedTemplate
) -> CrateRunner:
    """A home whose master key is sealed by the keyring only, holding API_KEY."""
    keyring_service.stop_keyring()
    shutil.copytree(
        sealed_template.keyrings, keyring_service.root / "data" / "keyrings", dirs_exist_ok=True
    )
    keyring_service.start_keyring()
    shutil.copytree(sealed_template.home, crate.home)
    return crate


def registry(crate: CrateRunner) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((crate.home / "keys" / "master.json").read_text())
    return doc


def slots_of(crate: CrateRunner) -> list[dict[str, Any]]:
    slots: list[dict[str, Any]] = registry(crate)["versions"][0]["slots"]
    return slots


def test_init_set_get_in_fresh_processes(
    crate: CrateRunner, keyring_service: SecretService
) -> None:
    env = keyring_service.env()
    done = crate("init", "--keystore", "keyring", env=env, check=True)
    assert "sealed by a keyring slot" in done.stderr
    crate("secrets", "set", "API_KEY", "from-the-keyring", env=env, check=True)
    got = crate("secrets", "get", "API_KEY", env=env)
    assert (got.returncode, got.stdout) == (0, "from-the-keyring")


def test_the_keyring_unlocks_in_a_fresh_process(
    sealed: CrateRunner, keyring_service: SecretService
) -> None:
    got = sealed("secrets", "get", "API_KEY", env=keyring_service.env())
    assert (got.returncode, got.stdout) == (0, "keyring-guarded")
    (slot,) = slots_of(sealed)
    assert slot["type"] == "keyring"
    params = slot["params"]
    assert params["service"] == "crate"
    assert params["username"].startswith(f"master-key-slot:{slot['id']}:")
    assert params["backend"] == "keyring.backends.SecretService.Keyring"
    assert "insecure" not in params
    # The key-encryption key is in the keyring, under the recorded name; no key file.
    assert list(keyring_service.crate_items()) == [params["username"]]
    assert list((sealed.home / "keys").glob("slot-*.key")) == []


def test_the_keyring_item_is_not_the_master_key(
    sealed: CrateRunner, keyring_service: SecretService
) -> None:
    exported = sealed("keys", "export-env", "--yes", env=keyring_service.env(), check=True)
    version, _, encoded = exported.stdout.strip().partition(":")
    assert version == "v1"
    master = base64.b64decode(encoded)
    (stored,) = keyring_service.crate_items().values()
    kek = base64.b64decode(stored)
    assert len(kek) == len(master) == 32
    assert kek != master
    # Neither the KEK nor the master key is in the registry in clear.
    text = (sealed.home / "keys" / "master.json").read_text()
    assert stored not in text and encoded not in text


def test_a_deleted_keyring_item(sealed: CrateRunner, keyring_service: SecretService) -> None:
    with keyring_service.connection() as conn:
        (item,) = keyring_service.items(conn)
        item.delete()
    result = sealed("secrets", "get", "API_KEY", env=keyring_service.env())
    assert_clean_error(result, ExitCode.KEYSTORE, hidden=("keyring-guarded",))
    assert "no longer holds the key of keyring slot" in result.stderr
    assert "crate keys slots list" in result.stderr


def test_a_replaced_keyring_item_does_not_unlock(
    sealed: CrateRunner, keyring_service: SecretService
) -> None:
    with keyring_service.connection() as conn:
        (item,) = keyring_service.items(conn)
        item.set_secret(base64.b64encode(os.urandom(32)))
    result = sealed("secrets", "get", "API_KEY", env=keyring_service.env())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "does not unlock master key v1" in result.stderr


def test_a_locked_keyring_fails_fast_and_never_prompts(
    sealed: CrateRunner, keyring_service: SecretService
) -> None:
    both = {**keyring_service.env(), "CRATE_PASSPHRASE": "correct horse battery"}
    sealed("keys", "slots", "add", "passphrase", env=both, check=True)
    # Any unlock prompt would now wait 25 s on a prompter that never answers.
    prompter = keyring_service.silent_prompter()
    with keyring_service.connection() as conn:
        keyring_service.collection(conn).lock()
    started = time.monotonic()
    result = sealed("secrets", "get", "API_KEY", env=keyring_service.env())
    assert time.monotonic() - started < FAST
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "the OS keyring is locked" in result.stderr
    # Adding a keyring slot to a locked keyring (unlocking with the passphrase)
    # fails as fast and changes nothing.
    before = (sealed.home / "keys" / "master.json").read_bytes()
    started = time.monotonic()
    added = sealed("keys", "slots", "add", "keyring", env=both)
    assert time.monotonic() - started < FAST
    assert_clean_error(added, ExitCode.KEYSTORE)
    assert "locked" in added.stderr and "nothing was created" in added.stderr
    assert (sealed.home / "keys" / "master.json").read_bytes() == before
    # The probe says why `auto` would pass the keyring over.
    assert "locked" in str(probe(keyring_service.env()))
    # Nobody asked for a prompt, and the keyring is still locked.
    prompter.terminate()
    assert prompter.stdout is not None
    assert b"asked" not in prompter.stdout.read()
    with keyring_service.connection() as conn:
        assert keyring_service.collection(conn).is_locked()


def test_the_keyring_daemon_gone(sealed: CrateRunner, keyring_service: SecretService) -> None:
    keyring_service.stop_keyring()
    result = sealed("secrets", "get", "API_KEY", env=keyring_service.env())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "no secure OS keyring is available" in result.stderr
    assert "no Secret Service daemon on the D-Bus session" in result.stderr


def test_no_session_bus(
    sealed: CrateRunner, keyring_service: SecretService, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = {**keyring_service.xdg(), "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    result = sealed("secrets", "get", "API_KEY", env=nowhere)
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "cannot connect to the D-Bus session" in result.stderr
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    result = sealed("secrets", "get", "API_KEY", env=keyring_service.xdg())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "no D-Bus session" in result.stderr


def test_recovery_through_a_passphrase_slot(
    sealed: CrateRunner, keyring_service: SecretService
) -> None:
    passphrase = {"CRATE_PASSPHRASE": "correct horse battery"}
    sealed("keys", "slots", "add", "passphrase", env={**keyring_service.env(), **passphrase})
    keyring_service.stop_keyring()
    # The keyring slot fails first; the passphrase slot unlocks.
    got = sealed("secrets", "get", "API_KEY", env={**keyring_service.env(), **passphrase})
    assert (got.returncode, got.stdout) == (0, "keyring-guarded")
    # Without the passphrase, the message names both failures.
    failed = sealed("secrets", "get", "API_KEY", env=keyring_service.env())
    assert_clean_error(failed, ExitCode.KEYSTORE)
    assert "keyring slot" in failed.stderr and "passphrase slot" in failed.stderr


def test_a_keyring_slot_beside_a_file_slot(
    crate: CrateRunner, keyring_service: SecretService
) -> None:
    env = keyring_service.env()
    crate("secrets", "set", "A", "value-a", env=env, check=True)  # first use: a file slot
    crate("keys", "slots", "add", "keyring", env=env, check=True)
    assert [s["type"] for s in slots_of(crate)] == ["file", "keyring"]
    # The keyring slot alone unlocks.
    (key_file,) = (crate.home / "keys").glob("slot-*.key")
    saved = key_file.read_bytes()
    key_file.unlink()
    got = crate("secrets", "get", "A", env=env)
    assert (got.returncode, got.stdout) == (0, "value-a")
    # The keyring slot comes first in keys.unlock_order; when it fails, the file slot unlocks.
    key_file.write_bytes(saved)
    key_file.chmod(0o600)
    with keyring_service.connection() as conn:
        (item,) = keyring_service.items(conn)
        item.delete()
    got = crate("secrets", "get", "A", env=env)
    assert (got.returncode, got.stdout) == (0, "value-a")


def test_removing_the_slot_deletes_its_keyring_item(
    sealed: CrateRunner, keyring_service: SecretService
) -> None:
    env = {**keyring_service.env(), "CRATE_PASSPHRASE": "correct horse battery"}
    sealed("keys", "slots", "add", "passphrase", env=env, check=True)
    keyring_slot = next(s for s in slots_of(sealed) if s["type"] == "keyring")
    sealed("keys", "slots", "remove", keyring_slot["id"], env=env, check=True)
    assert keyring_service.crate_items() == {}
    got = sealed("secrets", "get", "API_KEY", env=env)
    assert (got.returncode, got.stdout) == (0, "keyring-guarded")


def test_two_homes_keep_apart(
    sealed: CrateRunner, keyring_service: SecretService, tmp_path: Path
) -> None:
    other = CrateRunner(tmp_path / "other-home")
    other("init", "--keystore", "keyring", env=keyring_service.env(), check=True)
    assert len(keyring_service.crate_items()) == 2
    for runner in (sealed, other):
        got = runner("keys", "export-env", "--yes", env=keyring_service.env())
        assert got.returncode == 0, got


def test_the_fail_backend_is_refused(crate: CrateRunner, keyring_service: SecretService) -> None:
    env = {**keyring_service.env(), "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    result = crate("init", "--keystore", "keyring", env=env)
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "no secure OS keyring is available" in result.stderr
    assert "keyring.backends.fail.Keyring" in result.stderr
    assert not (crate.home / "keys" / "master.json").exists()
    # It keeps nothing at all, so even --allow-insecure-keyring cannot use it.
    result = crate("init", "--keystore", "keyring", "--allow-insecure-keyring", env=env)
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert not (crate.home / "keys" / "master.json").exists()
    assert keyring_service.crate_items() == {}


# -- the probe behind `crate init --keystore auto` -------------------------------------

PROBE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from crate_cli.config import CrateHome
    from crate_cli.vault.slots import provider
    from crate_cli.vault.slots.base import SlotContext
    home = Path(sys.argv[1])
    ctx = SlotContext(home=CrateHome(home, home), environ=dict(os.environ))
    print(repr(provider("keyring").probe(ctx)))
    """
)


def probe(env: dict[str, str], drop: tuple[str, ...] = ()) -> str | None:
    """KeyringSlot.probe in a fresh process (keyring caches its backend per process)."""
    child = {k: v for k, v in os.environ.items() if k not in drop}
    child.update(env)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, tempfile.gettempdir()],
        capture_output=True,
        env=child,
        timeout=30,
        check=True,
    )
    assert time.monotonic() - started < FAST
    answer: str | None = ast.literal_eval(done.stdout.decode())
    return answer


def test_the_probe(keyring_service: SecretService) -> None:
    assert probe(keyring_service.env()) is None
    no_bus = probe(keyring_service.xdg(), drop=("DBUS_SESSION_BUS_ADDRESS",))
    assert no_bus is not None and "no D-Bus session" in no_bus
    failing = probe(
        {**keyring_service.env(), "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    )
    assert failing is not None and "keyring.backends.fail.Keyring" in failing
    # An empty PYTHON_KEYRING_BACKEND counts as unset (keyring would fail to import "").
    assert probe({**keyring_service.env(), "PYTHON_KEYRING_BACKEND": ""}) is None
    keyring_service.stop_keyring()
    gone = probe(keyring_service.env())
    assert gone is not None and "no Secret Service daemon" in gone
