"""The SQLite storage (crate_cli/vault/storage/sqlite/) against the promises of
the storage interface (storage/interface.py) that a second implementation
must keep too: orgs made whole or not at all, a marker that changes with an
org, transactions that roll back, byte order of names, snapshots only under
the newest data key, audit entries never overwritten, actions run after a
transaction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crate_cli.clock import utc_now
from crate_cli.config import CrateHome
from crate_cli.errors import AuditSeqTaken, Conflict, NotFound
from crate_cli.vault.storage.interface import (
    AuditFilter,
    HeadFields,
    OrgStore,
    SnapshotRow,
)
from crate_cli.vault.storage.sqlite import SqliteStorage
from tests.support.org_keys import ORG


@pytest.fixture
def storage(home: Path) -> SqliteStorage:
    return SqliteStorage(CrateHome(home, home))


def test_an_org_is_made_whole_or_not_at_all(storage: SqliteStorage) -> None:
    def half(store: OrgStore) -> None:
        with store.write() as db:
            db.init_org("half", utc_now())
        raise RuntimeError("the initialisation failed")

    with pytest.raises(RuntimeError):
        storage.create_org("half", half)
    assert not storage.org_exists("half")
    assert storage.list_orgs() == [ORG]

    def whole(store: OrgStore) -> None:
        with store.write() as db:
            db.init_org("whole", utc_now())
            db.add_environments(["dev"], utc_now())

    storage.create_org("whole", whole)
    assert storage.list_orgs() == [ORG, "whole"]
    with pytest.raises(Conflict):
        storage.create_org("whole", whole)
    opened = storage.open_org("whole")
    try:
        assert opened.direct.environment_names() == ["dev"]
    finally:
        opened.close()
    storage.delete_org("whole")
    assert storage.list_orgs() == [ORG]
    with pytest.raises(NotFound):
        storage.open_org("whole")
    with pytest.raises(NotFound):
        storage.delete_org("whole")


@pytest.fixture
def store(storage: SqliteStorage) -> Iterator[OrgStore]:
    opened = storage.open_org(ORG)
    yield opened
    opened.close()


def test_a_write_that_fails_leaves_nothing(store: OrgStore) -> None:
    with pytest.raises(RuntimeError), store.write() as db:
        db.add_environments(["qa"], utc_now())
        assert db.has_environment("qa")  # visible inside its own transaction
        raise RuntimeError("abort")
    assert not store.direct.has_environment("qa")


def test_an_action_after_a_transaction_runs_once_it_ended(store: OrgStore) -> None:
    ran: list[bool] = []
    with store.write() as db:
        db.add_environments(["qa"], utc_now())
        store.after_transaction(lambda: ran.append(store.direct.has_environment("qa")))
        assert ran == []
    assert ran == [True]
    store.after_transaction(lambda: ran.append(False))  # no transaction: now
    assert ran == [True, False]


def test_an_orgs_marker_changes_when_the_org_is_written(
    storage: SqliteStorage, store: OrgStore
) -> None:
    before = storage.org_marker(ORG)
    with store.read() as db:
        db.environment_names()
    assert storage.org_marker(ORG) == before
    with store.write() as db:
        db.add_environments(["qa"], utc_now())
    assert storage.org_marker(ORG) != before


def test_names_come_in_the_byte_order_of_their_utf8(store: OrgStore) -> None:
    names = ["b1", "_x", "B2", "a", "Z", "A_"]
    with store.write() as db:
        for name in names:
            db.insert_head("dev", HeadFields(name, 1, 0, "[]", utc_now(), "t@u", b"mac"))
    expected = sorted(names, key=lambda n: n.encode())
    assert expected == ["A_", "B2", "Z", "_x", "a", "b1"]
    assert [h.name for h in store.direct.heads("dev")] == expected
    assert [r.name for r in store.direct.values("dev", [], {})] == expected
    assert [r.name for r in store.direct.values("dev", ["a", "Z"], {})] == ["a", "Z"]


def test_a_snapshot_is_kept_only_under_the_newest_data_key(store: OrgStore) -> None:
    newest = store.direct.newest_data_key()
    assert newest is not None
    with store.write() as db:
        db.put_snapshot("dev", SnapshotRow(newest.version + 1, b"dek", b"old-key"))
        db.put_snapshot("nowhere", SnapshotRow(newest.version, b"dek", b"no-env"))
    assert store.direct.snapshot("dev") is None
    assert store.direct.snapshot("nowhere") is None
    with store.write() as db:
        db.put_snapshot("dev", SnapshotRow(newest.version, b"dek", b"values"))
    assert store.direct.snapshot("dev") == SnapshotRow(newest.version, b"dek", b"values")
    with store.write() as db:  # any change to the environment's heads drops it
        db.insert_head("dev", HeadFields("A", 1, 0, "[]", utc_now(), "t@u", b"mac"))
    assert store.direct.snapshot("dev") is None


def test_an_audit_entry_is_never_overwritten(store: OrgStore) -> None:
    with store.read() as db:
        (page,) = db.audit_page(AuditFilter(), 1, None, None)
    first = page.entry
    assert first.seq == 1
    with pytest.raises(AuditSeqTaken), store.write() as db:
        db.insert_audit_entry(first._replace(action="forged", mac=b"\x00" * 32))
    with store.read() as db:
        (again,) = db.audit_page(AuditFilter(), 1, None, None)
    assert again.entry == first


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 200])
def test_no_path_is_built_from_a_name_that_is_no_org_name(
    storage: SqliteStorage, home: Path, name: str
) -> None:
    """A name from the command line never becomes a path outside orgs/, not
    even to ask whether a file exists (InvalidInput, exit 2, before any file
    is looked at)."""
    from crate_cli.errors import InvalidInput

    (home / "evil.vault").write_bytes(b"")  # what ../evil would find from orgs/
    for call in (
        storage.org_exists,
        storage.open_org,
        storage.org_marker,
        storage.delete_org,
        lambda org: storage.create_org(org, lambda store: None),
    ):
        with pytest.raises(InvalidInput):
            call(name)
    assert (home / "evil.vault").exists()
