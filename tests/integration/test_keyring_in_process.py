"""The keyring slot in process with a plain-text backend, which crate refuses
unless told: a stand-in for keyrings.alt's file backend, which only a Python
install can load (a frozen crate cannot import a backend from PYTHONPATH).
The keyring slot against gnome-keyring, through the CLI and the binary, is
in tests/e2e/test_keyring_slot.py.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import keyring.core
import pytest

from crate_cli.errors import KeystoreError
from crate_cli.session import Session
from crate_cli.vault.slots.keyring import KeyringSlot
from tests.support.slots import slot_context

# A stand-in for keyrings.alt's plain-text file backend (not installed here).
PLAINTEXT_BACKEND = textwrap.dedent(
    """
    import json, os
    from keyring.backend import KeyringBackend

    class PlaintextKeyring(KeyringBackend):
        priority = 0.5

        def _load(self):
            try:
                with open(os.environ["TEST_PLAINTEXT_KEYRING"]) as f:
                    return json.load(f)
            except FileNotFoundError:
                return {}

        def _save(self, data):
            with open(os.environ["TEST_PLAINTEXT_KEYRING"], "w") as f:
                json.dump(data, f)

        def get_password(self, service, username):
            return self._load().get(f"{service}/{username}")

        def set_password(self, service, username, password):
            data = self._load()
            data[f"{service}/{username}"] = password
            self._save(data)

        def delete_password(self, service, username):
            data = self._load()
            data.pop(f"{service}/{username}", None)
            self._save(data)
    """
)

BACKEND = "keyrings.alt.file.PlaintextKeyring"


@pytest.fixture
def plaintext_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PYTHON_KEYRING_BACKEND names the plain-text backend, importable from
    sys.path; keyring chooses again, as a new process would. Its items go
    to the file returned."""
    plugins = tmp_path / "plugins"
    (plugins / "keyrings" / "alt").mkdir(parents=True)
    (plugins / "keyrings" / "alt" / "file.py").write_text(PLAINTEXT_BACKEND)
    store = tmp_path / "plaintext.json"
    modules = set(sys.modules)
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("TEST_PLAINTEXT_KEYRING", str(store))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", BACKEND)
    keyring.core.init_backend()
    try:
        yield store
    finally:
        monkeypatch.undo()
        for name in set(sys.modules) - modules:
            if name.split(".")[0] == "keyrings":
                del sys.modules[name]
        keyring.core.init_backend()


def test_a_plain_text_backend_needs_the_flag(tmp_path: Path, plaintext_store: Path) -> None:
    slot, key = KeyringSlot(), os.urandom(32)
    with pytest.raises(KeystoreError) as refused:
        slot.seal(slot_context(tmp_path), key, 1, "s1")
    assert f"{BACKEND} keeps secrets in plain text" in refused.value.message
    assert "--allow-insecure-keyring" in (refused.value.hint or "")
    assert not plaintext_store.exists()
    params = slot.seal(slot_context(tmp_path, allow_insecure_keyring=True), key, 1, "s1")
    assert (params["insecure"], params["backend"]) == (True, BACKEND)
    assert slot.unseal(slot_context(tmp_path), params, 1, "s1") == key
    assert len(json.loads(plaintext_store.read_text())) == 1


def test_a_home_on_a_plain_text_backend_stores_and_reads(
    tmp_path: Path, plaintext_store: Path
) -> None:
    environ = {"CRATE_HOME": str(tmp_path / "home")}
    s = Session(environ=environ)
    assert s.init("keyring", {"allow_insecure_keyring": True})[0]
    assert s.org() == "personal"  # implicit first use makes the org
    s.client("personal").store("dev", [("A", "value-a")])
    s.close()
    fresh = Session(environ=environ)  # unlocks through the keyring again
    try:
        assert [r.value for r in fresh.client("personal").retrieve("dev", ["A"])] == ["value-a"]
    finally:
        fresh.close()
    assert len(json.loads(plaintext_store.read_text())) == 1


def test_a_secure_slot_is_not_read_from_a_plain_text_backend(
    tmp_path: Path, plaintext_store: Path
) -> None:
    slot = KeyringSlot()
    params = slot.seal(slot_context(tmp_path, allow_insecure_keyring=True), os.urandom(32), 1, "s1")
    del params["insecure"]  # the record a slot sealed in a secure keyring keeps
    with pytest.raises(KeystoreError, match="plain text"):
        slot.unseal(slot_context(tmp_path), params, 1, "s1")
