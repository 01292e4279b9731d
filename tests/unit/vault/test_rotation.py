"""Key rotation inside an org (crate_cli/vault/rotation.py), against the
storage interface's rows: what a rotation rewraps, what it leaves valid, what
a tampered row stops, what pruning removes, and the rewrap to a new master
key version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crate_cli.errors import IntegrityError
from crate_cli.vault import rotation, secrets
from crate_cli.vault.keys import OrgKeys
from crate_cli.vault.storage.interface import VersionRewrap
from tests.support.org_keys import TESTER, Backend, head, newest_entry, open_org, store


def stored(keys: OrgKeys) -> dict[str, str]:
    """Two environments, a secret with two versions and a deleted one."""
    store(keys, "dev", {"A": "alpha-1", "B": "beta"})
    store(keys, "dev", {"A": "alpha-2"})
    store(keys, "prod", {"A": "prod-alpha", "GONE": "soon"})
    secrets.delete(keys, "prod", "GONE", TESTER)
    return {"dev/A": "alpha-2", "dev/B": "beta", "prod/A": "prod-alpha"}


def read_all(keys: OrgKeys) -> dict[str, str]:
    return {
        f"{env}/{v.name}": v.value
        for env in ("dev", "prod")
        for v in secrets.read_values(keys, env, [], [])
    }


def test_a_rotation_rewraps_every_version_and_leaves_every_mac_valid(keys: OrgKeys) -> None:
    expected = stored(keys)
    before = keys.store.direct.rotation_rows()
    assert len(before) == 5  # the tombstone has no data key to rewrap
    assert {r.dek_version for r in before} == {1}
    assert rotation.rotate_org(keys, TESTER) == (2, 5)
    entry = newest_entry(keys)
    assert (entry.action, json.loads(entry.details)) == (
        "rotate-org",
        {"data_key_version": 2, "rewrapped": 5},
    )
    assert keys.current_dek_version(keys.store.direct) == 2
    after = keys.store.direct.rotation_rows()
    assert {(r.env, r.name, r.version) for r in after} == {
        (r.env, r.name, r.version) for r in before
    }
    for row in after:
        assert row.dek_version == 2
        keys.check_version(row.env, row.name, row[2:9])
    old = {(r.secret_id, r.version): r.wrapped_dek for r in before}
    assert all(old[(r.secret_id, r.version)] != r.wrapped_dek for r in after)
    for env in ("dev", "prod"):
        for row in keys.store.direct.heads(env):
            keys.check_head(env, row)  # heads do not change
    assert [r.name for r in secrets.list_secrets(keys, "dev", [], TESTER)] == ["A", "B"]
    assert read_all(keys) == expected


def test_older_versions_still_read_after_a_rotation(keys: OrgKeys) -> None:
    stored(keys)
    rotation.rotate_org(keys, TESTER)
    (first,) = secrets.read_values(keys, "dev", ["A"], [], {"A": 1})
    assert first.value == "alpha-1"


def test_a_tampered_version_row_stops_the_rotation_and_changes_nothing(keys: OrgKeys) -> None:
    stored(keys)
    row = head(keys, "dev", "B")
    (version,) = [r for r in keys.store.direct.rotation_rows() if r.secret_id == row.secret_id]
    with keys.store.write() as db:
        db.rewrap_versions([VersionRewrap(1, version.wrapped_dek, b"\x01" * 32, row.secret_id, 1)])
    before = keys.store.direct.rotation_rows()
    with pytest.raises(IntegrityError):
        rotation.rotate_org(keys, TESTER)
    assert keys.current_dek_version(keys.store.direct) == 1
    assert keys.store.direct.rotation_rows() == before


def test_pruning_removes_only_data_keys_that_wrap_nothing(keys: OrgKeys) -> None:
    assert rotation.prune_org_deks(keys, TESTER) == []  # the only key is the newest
    stored(keys)
    rotation.rotate_org(keys, TESTER)
    usage = rotation.org_dek_usage(keys)
    assert [(u["version"], u["wrapped_keys"], u["current"]) for u in usage] == [
        (1, 0, False),
        (2, 5, True),
    ]
    assert rotation.prune_org_deks(keys, TESTER) == [1]
    assert keys.store.direct.data_key(1) is None
    assert keys.store.direct.data_key(2) is not None
    assert json.loads(newest_entry(keys).details) == {"data_key_versions": [1]}
    assert rotation.prune_org_deks(keys, TESTER) == []


def test_a_due_rotation_runs_before_a_write_and_says_it_was_scheduled(keys: OrgKeys) -> None:
    store(keys, "dev", {"A": "1"})
    rotation.rotate_if_due(keys, None, TESTER)
    assert keys.current_dek_version(keys.store.direct) == 1
    assert rotation.rotation_due(keys, 3600) is not None
    rotation.rotate_if_due(keys, 3600, TESTER)  # not due for an hour
    assert keys.current_dek_version(keys.store.direct) == 1
    rotation.rotate_if_due(keys, 0.001, TESTER)
    assert keys.current_dek_version(keys.store.direct) == 2
    assert json.loads(newest_entry(keys).details) == {
        "data_key_version": 2,
        "rewrapped": 1,
        "scheduled": True,
    }


def test_a_scheduled_rotation_is_decided_again_under_the_lock(
    keys: OrgKeys, home: Path, backend: Backend
) -> None:
    """Two replicas find the same rotation due at once: the one that gets the
    org's lock second sees the new key and rotates nothing more."""
    store(keys, "dev", {"A": "1"})

    def other_replica_rotates_first(done: int, total: int) -> None:
        with open_org(home, backend=backend) as other:
            rotation.rotate_org(other, TESTER, scheduled=True)

    version, rewrapped = rotation.rotate_org(
        keys, TESTER, progress=other_replica_rotates_first, scheduled=True
    )
    assert (version, rewrapped) == (2, 0)
    assert keys.current_dek_version(keys.store.direct) == 2  # one rotation, not two
    entries = [e for e in audit_actions(keys) if e == "rotate-org"]
    assert len(entries) == 1


def audit_actions(keys: OrgKeys) -> list[str]:
    from crate_cli.vault.storage.interface import AuditFilter

    with keys.store.read() as db:
        return [p.entry.action for p in db.audit_page(AuditFilter(), 100, None, None)]


def test_a_rewrap_moves_every_org_key_to_the_new_master_version(
    home: Path, backend: Backend
) -> None:
    master = backend.master(home)
    with open_org(home, master=master, backend=backend) as keys:
        expected = stored(keys)
        assert set(rotation.master_versions_used(keys)) == {1}
        assert master.rotate().version == 2
        assert rotation.rewrap_to_master(keys, 2, TESTER) == 3  # data, audit and RSA keys
        assert rotation.master_versions_used(keys) == {
            2: ["1 data key", "1 RSA key", "1 audit key"]
        }
        assert rotation.rewrap_to_master(keys, 2, TESTER) == 0
        entry = newest_entry(keys)
        assert (entry.action, json.loads(entry.details)) == (
            "rotate-master",
            {"master_version": 2, "rewrapped": 3},
        )
    master.remove_version(1)
    with open_org(home, backend=backend) as fresh:  # a new process, with version 2 only
        assert read_all(fresh) == expected
