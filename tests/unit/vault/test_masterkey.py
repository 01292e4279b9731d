"""MasterKeys over a RegistryStore (vault/masterkey.py): every change is a
load, change and save under the registry's lock, wherever the registry is
kept; the slots' own files and "last used" markers stay in the home.

The registry here is a real FileRegistry kept somewhere else than the home
(as a PostgreSQL store keeps it in the database)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crate_cli.config import CrateHome
from crate_cli.errors import KeystoreError
from crate_cli.vault.masterkey import MasterKeys
from crate_cli.vault.storage.registry_file import FileRegistry


def _homes(tmp_path: Path) -> tuple[CrateHome, FileRegistry]:
    home = CrateHome(tmp_path / "home", tmp_path / "home")
    elsewhere = CrateHome(tmp_path / "shared", tmp_path / "shared")
    return home, FileRegistry(elsewhere)


def _master(home: CrateHome, registry: FileRegistry) -> MasterKeys:
    return MasterKeys(home, environ={}, registry=registry)


def test_the_registry_goes_where_the_store_keeps_it(tmp_path: Path) -> None:
    home, registry = _homes(tmp_path)
    master = _master(home, registry)
    created, v1 = master.create_first("file", list_orgs=list)
    assert created and v1.version == 1
    assert not (home.keys_dir / "master.json").exists()
    doc = json.loads(registry.load() or b"")
    assert [v["version"] for v in doc["versions"]] == [1]
    # The file slot's key file is the home's, as before.
    (slot,) = v1.slots
    assert (home.keys_dir / slot.params["key_file"]).exists()

    again = _master(home, registry)
    assert again.unlock(1) == master.unlock(1)
    assert again.create_first("file", list_orgs=list) == (False, v1)


def test_every_change_saves_the_registry_as_it_is_in_the_store(tmp_path: Path) -> None:
    home, registry = _homes(tmp_path)
    one = _master(home, registry)
    one.create_first("file", list_orgs=list)
    other = _master(home, registry)
    other.versions()  # read before the change below: a stale copy
    slot = one.add_slot("file")
    two = one.rotate()
    # Another process's change is not lost under a stale in-memory copy.
    other.remove_slot(slot.id)
    versions = _master(home, registry).versions()
    assert [v.version for v in versions] == [1, 2]
    assert slot.id not in {s.id for v in versions for s in v.slots}
    assert _master(home, registry).current() == two
    removed = other.remove_version(1)
    assert removed.version == 1
    assert [v.version for v in _master(home, registry).versions()] == [2]
    # "Last used" stays in the home.
    assert _master(home, registry).unlock(2)
    assert not (tmp_path / "shared" / "keys" / "used").exists()


def test_messages_name_the_registry_where_it_is(tmp_path: Path) -> None:
    home, registry = _homes(tmp_path)
    master = _master(home, registry)
    master.create_first("file", list_orgs=list)
    assert master.location == registry.location
    with pytest.raises(KeystoreError) as e:
        master.unlock(9)
    assert registry.location in e.value.message
    registry.save(b"not json")
    with pytest.raises(KeystoreError) as damaged:
        _master(home, registry).versions()
    assert damaged.value.message == f"key registry {registry.location} is damaged"


def test_without_a_registry_it_is_the_homes_file(tmp_path: Path) -> None:
    home = CrateHome(tmp_path / "home", tmp_path / "home")
    master = MasterKeys(home, environ={})
    assert master.location == str(home.keys_dir / "master.json")
    master.create_first("file", list_orgs=list)
    assert FileRegistry(home).load() is not None
