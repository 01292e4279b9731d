"""Units of the audit log's logic: time and number parsing for queries, the
MAC chain's encoding, and what verify replays. The log's behaviour against a
real vault is in tests/integration/test_audit_log.py and test_audit_tamper.py."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from crate_cli.commands.audit import since_time
from crate_cli.errors import InvalidInput
from crate_cli.vault import audit
from crate_cli.vault.api.routes import _query_int, _query_time

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def test_since_a_duration_is_that_long_ago() -> None:
    got = datetime.strptime(since_time("90m"), FORMAT).replace(tzinfo=UTC)
    expected = datetime.now(UTC) - timedelta(minutes=90)
    assert abs((got - expected).total_seconds()) < 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", "2026-11-01T00:00:00.000000Z"),
        ("2026-11-01T09:30:00Z", "2026-11-01T09:30:00.000000Z"),
        ("2026-11-01T09:30:00+02:00", "2026-11-01T07:30:00.000000Z"),
    ],
)
def test_since_a_date_is_utc(text: str, expected: str) -> None:
    assert since_time(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "1x", "0h", "2026-13-01", ""])
def test_since_rejects_what_is_neither(text: str) -> None:
    with pytest.raises(InvalidInput):
        since_time(text)


def test_query_time_is_normalised_and_checked() -> None:
    assert _query_time({"since": "2026-11-01T09:30:00Z"}, "since") == "2026-11-01T09:30:00.000000Z"
    assert _query_time({}, "since") is None
    with pytest.raises(InvalidInput, match="ISO 8601"):
        _query_time({"since": "last week"}, "since")


@pytest.mark.parametrize("raw", ["-1", "1.5", "abc", "٣", "9" * 19, "0"])
def test_query_int_refuses_what_is_not_a_bounded_whole_number(raw: str) -> None:
    with pytest.raises(InvalidInput):
        _query_int({"limit": raw}, "limit", 100, 1, 10_000)


def test_query_int_bounds_and_default() -> None:
    assert _query_int({}, "limit", 100, 1, 10_000) == 100
    assert _query_int({"limit": "10000"}, "limit", 100, 1, 10_000) == 10_000
    with pytest.raises(InvalidInput, match="at most 10000"):
        _query_int({"limit": "10001"}, "limit", 100, 1, 10_000)


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
