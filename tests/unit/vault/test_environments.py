"""An org's environments and its allowed steering names
(crate_cli/vault/environments.py), against the storage interface's rows."""

from __future__ import annotations

import json

import pytest

from crate_cli.errors import Conflict, Forbidden, IntegrityError, InvalidInput, NotFound
from crate_cli.vault import environments
from crate_cli.vault.keys import OrgKeys
from crate_cli.vault.storage.interface import AllowedNameRow
from tests.support.org_keys import TESTER, newest_entry, store


def test_an_org_starts_with_the_default_environments(keys: OrgKeys) -> None:
    assert environments.list_envs(keys) == ["dev", "prod", "staging"]


def test_creating_an_environment_adds_it_once_and_records_it(keys: OrgKeys) -> None:
    environments.create_env(keys, "qa", TESTER)
    assert keys.store.direct.has_environment("qa")
    assert "qa" in environments.list_envs(keys)
    entry = newest_entry(keys)
    assert (entry.action, entry.env) == ("env-create", "qa")
    with pytest.raises(Conflict, match="'qa' already exists"):
        environments.create_env(keys, "qa", TESTER)
    assert newest_entry(keys).seq == entry.seq


def test_deleting_an_environment_deletes_its_secrets_and_counts_them(keys: OrgKeys) -> None:
    store(keys, "staging", {"A": "1", "B": "2"})
    assert environments.delete_env(keys, "staging", TESTER) == 2
    assert not keys.store.direct.has_environment("staging")
    assert keys.store.direct.heads("staging") == []
    assert keys.store.direct.count_secrets("staging") == 0
    entry = newest_entry(keys)
    assert (entry.action, json.loads(entry.details)) == ("env-delete", {"secrets_deleted": 2})
    with pytest.raises(NotFound):
        environments.delete_env(keys, "staging", TESTER)


def test_an_allowance_is_a_maced_row_and_is_recorded(keys: OrgKeys) -> None:
    assert environments.allow_name(keys, "LD_PRELOAD", TESTER) is True
    (row,) = keys.store.direct.allowed_names()
    assert (row.name, row.actor) == ("LD_PRELOAD", "tester@unit")
    assert row.mac == keys.allowed_name_mac(row.name, row.allowed_at, row.actor)
    assert [a["name"] for a in environments.allowed_names(keys)] == ["LD_PRELOAD"]
    entry = newest_entry(keys)
    assert (entry.action, json.loads(entry.names)) == ("name-allow", ["LD_PRELOAD"])
    assert environments.allow_name(keys, "LD_PRELOAD", TESTER) is False  # nothing changed


def test_an_ended_allowance_stays_ended_when_its_row_is_put_back(keys: OrgKeys) -> None:
    environments.allow_name(keys, "LD_PRELOAD", TESTER)
    (allowed,) = keys.store.direct.allowed_names()
    assert environments.allow_name(keys, "LD_PRELOAD", TESTER, allow=False) is True
    assert keys.store.direct.allowed_names() == []
    (ended,) = keys.store.direct.ended_allowances()
    assert (ended.name, ended.allowed_at) == ("LD_PRELOAD", allowed.allowed_at)
    assert ended.mac == keys.allowance_end_mac(
        ended.name, ended.allowed_at, ended.ended_at, ended.actor
    )
    with keys.store.write() as db:  # the authentic row, copied back from a backup
        db.allow_name(allowed)
    assert environments.allowed_names(keys) == []
    with pytest.raises(Forbidden, match="LD_PRELOAD is refused"):
        store(keys, "dev", {"LD_PRELOAD": "/tmp/evil.so"})


def test_a_forged_allowance_is_an_integrity_error(keys: OrgKeys) -> None:
    with keys.store.write() as db:
        db.allow_name(AllowedNameRow("PATH", "2026-01-01T00:00:00.000000Z", "x@y", b"\x00" * 32))
    with pytest.raises(IntegrityError):
        environments.allowed_names(keys)
    with pytest.raises(IntegrityError):
        store(keys, "dev", {"PATH": "/tmp/evil"})
    assert keys.store.direct.heads("dev") == []


@pytest.mark.parametrize("name", ["DATABASE_URL", "API_KEY"])
def test_only_a_steering_name_can_be_allowed(keys: OrgKeys, name: str) -> None:
    with pytest.raises(InvalidInput, match="nothing to allow"):
        environments.allow_name(keys, name, TESTER)
    assert keys.store.direct.allowed_names() == []


def test_the_steering_check_refuses_a_name_and_says_who_can_allow_it(keys: OrgKeys) -> None:
    with keys.store.read() as db:
        environments.check_steering(db, keys, ["DATABASE_URL", "API_KEY"])  # none steers
        with pytest.raises(Forbidden, match="NODE_OPTIONS is refused: it loads code") as refused:
            environments.check_steering(db, keys, ["API_KEY", "NODE_OPTIONS"])
    assert (
        refused.value.hint == "an admin of 'acme' can allow it: crate org allow-name NODE_OPTIONS"
    )
