"""The operations on secrets (crate_cli/vault/secrets.py), against the storage
interface: each test runs an operation on an open org and reads back the
typed rows it left (HeadRow, VersionRow, ValueRow, audit entries), or
writes a row through OrgWriter as someone with the file could, on the
SQLite implementation in a temp home."""

from __future__ import annotations

import json

import pytest

from crate_cli.errors import Forbidden, IntegrityError, InvalidInput, NotFound, PayloadTooLarge
from crate_cli.vault import environments, jwe, secrets
from crate_cli.vault.keys import OrgKeys
from crate_cli.vault.secrets import Limits, Scope
from crate_cli.vault.storage.interface import HeadFields, VersionRewrap
from tests.support.org_keys import TESTER, head, newest_entry, store, versions


def values(keys: OrgKeys, env: str = "dev", names: list[str] | None = None) -> dict[str, str]:
    return {v.name: v.value for v in secrets.read_values(keys, env, names or [], [])}


# -- store ----------------------------------------------------------------------------------


def test_a_store_writes_a_head_and_one_version_row_per_value(keys: OrgKeys) -> None:
    records = store(keys, "dev", {"A": "alpha", "B": "beta"}, tags=["db"])
    assert [(r.name, r.version, r.tags, r.deleted) for r in records] == [
        ("A", 1, ["db"], False),
        ("B", 1, ["db"], False),
    ]
    dek = keys.current_dek_version(keys.store.direct)
    assert [h.name for h in keys.store.direct.heads("dev")] == ["A", "B"]
    for name in ("A", "B"):
        row = head(keys, "dev", name)
        assert (row.version, row.deleted, json.loads(row.tags), row.newest) == (1, 0, ["db"], 1)
        keys.check_head("dev", row)
        (version,) = versions(keys, "dev", name)
        assert (version.version, version.action, version.dek_version) == (1, "set", dek)
        assert (version.deleted, json.loads(version.tags), version.actor) == (
            0,
            ["db"],
            "tester@unit",
        )
        keys.check_version("dev", name, version)
    assert keys.store.direct.heads("prod") == []
    assert values(keys) == {"A": "alpha", "B": "beta"}


def test_values_are_encrypted_each_under_its_own_key(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "the-same-value", "B": "the-same-value"})
    rows = keys.store.direct.values("dev", [], {})
    assert [r.name for r in rows] == ["A", "B"]
    for row in rows:
        assert row.ciphertext is not None and b"the-same-value" not in row.ciphertext
    assert rows[0].wrapped_dek != rows[1].wrapped_dek
    assert rows[0].ciphertext != rows[1].ciphertext


def test_storing_again_appends_a_version_and_keeps_the_tags(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "one"}, tags=["db"])
    (record,) = store(keys, "dev", {"A": "two"})
    assert (record.version, record.tags) == (2, ["db"])
    assert [(v.version, v.action) for v in versions(keys, "dev", "A")] == [(1, "set"), (2, "set")]
    assert head(keys, "dev", "A").version == 2
    assert values(keys) == {"A": "two"}
    (old,) = secrets.read_values(keys, "dev", ["A"], [], {"A": 1})
    assert (old.version, old.value) == (1, "one")


def test_a_store_is_recorded_with_its_versions(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "1"})
    store(keys, "dev", {"A": "2", "B": "1"})
    entry = newest_entry(keys)
    assert (entry.action, entry.env, entry.actor, entry.outcome) == (
        "store",
        "dev",
        "tester@unit",
        "ok",
    )
    assert json.loads(entry.names) == ["A", "B"]
    assert json.loads(entry.details) == {"versions": [2, 1]}


def test_a_batch_with_a_steering_name_stores_nothing(keys: OrgKeys) -> None:
    with pytest.raises(Forbidden, match="LD_PRELOAD is refused"):
        store(keys, "dev", {"A": "fine", "LD_PRELOAD": "/tmp/evil.so"})
    assert keys.store.direct.heads("dev") == []
    assert newest_entry(keys).action == "org-create"


def test_a_steering_name_an_admin_allowed_is_stored(keys: OrgKeys) -> None:
    assert environments.allow_name(keys, "LD_PRELOAD", TESTER) is True
    (record,) = store(keys, "dev", {"LD_PRELOAD": "/opt/lib/trace.so"})
    assert record.version == 1
    assert values(keys) == {"LD_PRELOAD": "/opt/lib/trace.so"}


def test_a_value_over_the_limit_stores_nothing(keys: OrgKeys) -> None:
    with pytest.raises(PayloadTooLarge):
        store(keys, "dev", {"A": "short", "B": "x" * 9}, limits=Limits(max_value_bytes=8))
    assert keys.store.direct.heads("dev") == []


def test_a_store_into_an_environment_that_does_not_exist_is_not_found(keys: OrgKeys) -> None:
    with pytest.raises(NotFound, match="environment 'qa' does not exist"):
        store(keys, "qa", {"A": "1"})
    assert not keys.store.direct.has_environment("qa")


def test_a_reference_cycle_stores_nothing(keys: OrgKeys) -> None:
    with pytest.raises(InvalidInput, match="cycle"):
        store(keys, "dev", {"A": "${B}", "B": "x-${A}"})
    assert keys.store.direct.heads("dev") == []


def test_a_reference_to_nothing_yet_is_stored_with_a_warning(keys: OrgKeys) -> None:
    (record,) = store(keys, "dev", {"URL": "postgres://${DB_HOST}/app"})
    assert record.version == 1
    assert len(record.warnings) == 1
    assert "DB_HOST" in record.warnings[0] and "does not exist" in record.warnings[0]


# -- delete and rollback ----------------------------------------------------------------------


def test_a_delete_writes_a_tombstone_version(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "alpha", "B": "beta"})
    record = secrets.delete(keys, "dev", "A", TESTER)
    assert (record.version, record.deleted) == (2, True)
    row = head(keys, "dev", "A")
    assert (row.version, row.deleted, row.newest) == (2, 1, 2)
    keys.check_head("dev", row)
    tombstone = versions(keys, "dev", "A")[-1]
    assert (tombstone.action, tombstone.dek_version, tombstone.deleted) == ("delete", None, 1)
    keys.check_version("dev", "A", tombstone)
    (value_row,) = keys.store.direct.values("dev", ["A"], {"A": 2})
    assert (value_row.wrapped_dek, value_row.ciphertext) == (None, None)
    assert values(keys) == {"B": "beta"}
    with pytest.raises(NotFound):
        secrets.read_values(keys, "dev", ["A"], [])
    with pytest.raises(NotFound):
        secrets.delete(keys, "dev", "A", TESTER)
    assert len(versions(keys, "dev", "A")) == 2


def test_a_rollback_writes_a_new_version_with_the_old_value(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "one"})
    store(keys, "dev", {"A": "two"})
    record = secrets.rollback(keys, "dev", "A", 1, TESTER)
    assert record.version == 3
    rows = versions(keys, "dev", "A")
    assert [(v.version, v.action) for v in rows] == [(1, "set"), (2, "set"), (3, "rollback")]
    for row in rows:
        keys.check_version("dev", "A", row)
    assert values(keys) == {"A": "one"}
    (two,) = secrets.read_values(keys, "dev", ["A"], [], {"A": 2})
    assert two.value == "two"
    (first,) = keys.store.direct.values("dev", ["A"], {"A": 1})
    (third,) = keys.store.direct.values("dev", ["A"], {"A": 3})
    assert first.wrapped_dek != third.wrapped_dek  # a fresh data key, not a copy
    entry = newest_entry(keys)
    assert (entry.action, json.loads(entry.details)) == ("rollback", {"to": 1, "version": 3})


def test_a_rollback_to_a_deletion_writes_nothing(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "one"})
    secrets.delete(keys, "dev", "A", TESTER)
    with pytest.raises(NotFound, match="is a deletion"):
        secrets.rollback(keys, "dev", "A", 2, TESTER)
    with pytest.raises(NotFound, match="has no version 9"):
        secrets.rollback(keys, "dev", "A", 9, TESTER)
    assert len(versions(keys, "dev", "A")) == 2


def test_a_rollback_to_a_steering_name_is_refused_once_disallowed(keys: OrgKeys) -> None:
    environments.allow_name(keys, "PYTHONPATH", TESTER)
    store(keys, "dev", {"PYTHONPATH": "/opt/one"})
    store(keys, "dev", {"PYTHONPATH": "/opt/two"})
    environments.allow_name(keys, "PYTHONPATH", TESTER, allow=False)
    with pytest.raises(Forbidden, match="PYTHONPATH is refused"):
        secrets.rollback(keys, "dev", "PYTHONPATH", 1, TESTER)
    assert head(keys, "dev", "PYTHONPATH").version == 2


# -- tag scopes -------------------------------------------------------------------------------


def test_a_tag_scoped_delete_outside_the_scope_is_refused(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "alpha"}, tags=["backend"])
    with pytest.raises(Forbidden, match="would not carry one of this token's tags"):
        secrets.delete(keys, "dev", "A", TESTER, tag_scope=frozenset({"frontend"}))
    row = head(keys, "dev", "A")
    assert (row.version, row.deleted) == (1, 0)
    assert len(versions(keys, "dev", "A")) == 1
    assert secrets.delete(keys, "dev", "A", TESTER, tag_scope=frozenset({"backend"})).deleted


def test_a_tag_scoped_store_cannot_move_a_secret_out_of_its_scope(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "alpha"}, tags=["backend"])
    scope = Scope(tags=frozenset({"backend"}))
    with pytest.raises(Forbidden):
        store(keys, "dev", {"A": "beta"}, tags=["other"], scope=scope)
    with pytest.raises(Forbidden):
        store(keys, "dev", {"B": "new"}, scope=scope)  # untagged: outside the scope
    assert head(keys, "dev", "A").version == 1
    assert keys.store.direct.head("dev", "B") is None
    (record,) = store(keys, "dev", {"A": "gamma"}, scope=scope)
    assert (record.version, record.tags) == (2, ["backend"])


def test_a_tag_scoped_read_skips_what_it_cannot_see_and_refuses_it_by_name(
    keys: OrgKeys,
) -> None:
    store(keys, "dev", {"API": "a"}, tags=["backend"])
    store(keys, "dev", {"WEB": "w"}, tags=["frontend"])
    scope = frozenset({"backend"})
    listed = secrets.list_secrets(keys, "dev", [], TESTER, tag_scope=scope)
    assert [r.name for r in listed] == ["API"]
    read = secrets.read_values(keys, "dev", [], [], tag_scope=scope)
    assert [(v.name, v.value) for v in read] == [("API", "a")]
    with pytest.raises(Forbidden, match="carries none of this token's tags"):
        secrets.read_values(keys, "dev", ["WEB"], [], tag_scope=scope)


# -- what is read back is checked -----------------------------------------------------------


def test_a_head_edited_behind_its_mac_is_an_integrity_error(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "alpha"})
    row = head(keys, "dev", "A")
    flipped = HeadFields(row.name, row.version, 1, row.tags, row.updated_at, row.actor, row.mac)
    with keys.store.write() as db:
        db.update_head(row.secret_id, flipped)
    for read in (
        lambda: secrets.list_secrets(keys, "dev", [], TESTER),
        lambda: secrets.read_values(keys, "dev", [], []),
        lambda: secrets.read_values(keys, "dev", ["A"], []),
        lambda: secrets.history(keys, "dev", "A", TESTER),
    ):
        with pytest.raises(IntegrityError):
            read()


def test_an_older_authentic_head_put_back_is_an_integrity_error(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "one"})
    old = head(keys, "dev", "A")
    store(keys, "dev", {"A": "two"})
    with keys.store.write() as db:
        db.update_head(old.secret_id, HeadFields(*old[:7]))
    restored = head(keys, "dev", "A")
    keys.check_head("dev", restored)  # every row is authentic ...
    assert (restored.version, restored.newest) == (1, 2)  # ... but the head is not the newest
    with pytest.raises(IntegrityError):
        secrets.read_values(keys, "dev", ["A"], [])
    with pytest.raises(IntegrityError):
        secrets.list_secrets(keys, "dev", [], TESTER)


def test_a_version_row_edited_behind_its_mac_fails_the_history(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "one"})
    store(keys, "dev", {"A": "two"})
    assert [v["version"] for v in secrets.history(keys, "dev", "A", TESTER)] == [1, 2]
    row = head(keys, "dev", "A")
    first = keys.store.direct.rotation_row(row.secret_id, 1)
    assert first is not None
    with keys.store.write() as db:
        db.rewrap_versions(
            [VersionRewrap(first.dek_version, first.wrapped_dek, b"\x00" * 32, row.secret_id, 1)]
        )
    with pytest.raises(IntegrityError):
        secrets.history(keys, "dev", "A", TESTER)


# -- the ephemeral retrieval ------------------------------------------------------------------


def test_a_retrieval_is_readable_only_with_the_clients_key_and_is_recorded(
    keys: OrgKeys,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    store(keys, "dev", {"A": "alpha", "B": "beta", "C": "gamma"})
    client = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    answer = secrets.retrieve(keys, "dev", ["B", "A"], [], None, client.public_key(), "n-1", TESTER)
    bundle = json.loads(jwe.decrypt(client, answer["bundle"]).plaintext)
    assert (bundle["org"], bundle["environment"], bundle["nonce"]) == ("acme", "dev", "n-1")
    assert bundle["secrets"] == [
        {"name": "B", "value": "beta", "version": 1},
        {"name": "A", "value": "alpha", "version": 1},
    ]
    entry = newest_entry(keys)
    assert (entry.action, json.loads(entry.names)) == ("retrieve", ["B", "A"])
