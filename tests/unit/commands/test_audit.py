"""`crate audit log --since`: a duration or a date (crate_cli/commands/audit.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crate_cli.commands.audit import since_time
from crate_cli.errors import InvalidInput

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
