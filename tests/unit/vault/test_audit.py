"""Units of the audit log's logic (crate_cli/vault/audit.py): the MAC chain's
encoding, and what verify replays. The log's behaviour against a real vault
is in tests/e2e/test_audit_log.py and test_audit_tamper.py."""

from __future__ import annotations

import os

import pytest

from crate_cli.vault import audit


def test_entry_mac_covers_every_field_and_the_previous_mac() -> None:
    key = os.urandom(32)
    fields = (
        7,
        "2026-11-29T00:00:00.000000Z",
        "a@h",
        "store",
        "dev",
        '["A"]',
        "ok",
        "r",
        "cli",
        "{}",
    )
    prev = os.urandom(32)
    base = audit.entry_mac(key, "acme", fields, prev)
    for i in range(len(fields)):
        changed = list(fields)
        changed[i] = f"{changed[i]}x"
        assert audit.entry_mac(key, "acme", tuple(changed), prev) != base
    assert audit.entry_mac(key, "acme", fields, os.urandom(32)) != base
    assert audit.entry_mac(key, "other", fields, prev) != base
    assert audit.entry_mac(os.urandom(32), "acme", fields, prev) != base


def test_fields_cannot_bleed_into_each_other() -> None:
    key = os.urandom(32)
    prev = b""
    one = (1, "t", "a", "b", "dev", "[]", "ok", "", "cli", "{}")
    two = (1, "t", "a", "b", "de", "v[]", "ok", "", "cli", "{}")
    assert audit.entry_mac(key, "acme", one, prev) != audit.entry_mac(key, "acme", two, prev)


def test_a_nul_in_a_field_is_refused_not_encoded() -> None:
    with pytest.raises(ValueError):
        audit.entry_mac(os.urandom(32), "acme", (1, "t\x00", "a"), b"")


def test_verify_replays_the_versions_entries_record() -> None:
    latest: dict[tuple[str, str], tuple[int, int]] = {}

    def note(seq: int, action: str, env: str, names: str, details: str) -> None:
        fields = [str(seq), "t", "a", action, env, names, "ok", "", "cli", details]
        audit._note_versions(latest, seq, fields)

    note(1, "store", "dev", '["A","B"]', '{"versions":[1,4]}')
    note(2, "store", "prod", '["A"]', '{"versions":[2]}')
    note(3, "delete", "dev", '["B"]', '{"version":5}')
    note(4, "rollback", "dev", '["A"]', '{"to":1,"version":2}')
    assert latest == {("dev", "A"): (2, 4), ("dev", "B"): (5, 3), ("prod", "A"): (2, 2)}
    note(5, "env-delete", "dev", "[]", '{"secrets_deleted":2}')
    assert latest == {("prod", "A"): (2, 2)}
    note(6, "store", "prod", "not json", "{}")
    assert latest == {("prod", "A"): (2, 2)}


def test_wire_form_has_the_documented_keys() -> None:
    entry = audit.Entry(3, "t", "a@h", "retrieve", "acme", "", ["A"], "ok", "", "cli", {})
    wire = entry.to_wire()
    assert set(wire) == {
        "seq",
        "time",
        "actor",
        "action",
        "organization",
        "environment",
        "names",
        "outcome",
        "request_id",
        "client",
        "details",
    }
    assert wire["environment"] is None
    assert wire["request_id"] is None


def test_the_checker_accepts_exactly_what_entry_mac_makes() -> None:
    key = os.urandom(32)
    prev = os.urandom(32)
    fields = (9, "t", "a@h", "retrieve", "dev", '["A"]', "ok", "r1", "agent", '{"x":1}')
    checker = audit.Checker(key, "acme")
    assert checker.matches((*fields, audit.entry_mac(key, "acme", fields, prev)), prev)
    assert not checker.matches((*fields, audit.entry_mac(key, "acme", fields, b"")), prev)
    assert not checker.matches((*fields, audit.entry_mac(key, "other", fields, prev)), prev)
    assert not checker.matches(
        (*fields[:9], "{}", audit.entry_mac(key, "acme", fields, prev)), prev
    )
    assert not checker.matches((*fields, "not bytes"), prev)
    nul = (*fields[:2], "a\x00h", *fields[3:])
    assert not checker.matches((*nul, os.urandom(32)), prev)
