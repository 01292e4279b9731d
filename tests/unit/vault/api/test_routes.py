"""The audit routes' query parameters (crate_cli/vault/api/routes.py): times,
and whole numbers within bounds."""

from __future__ import annotations

import pytest

from crate_cli.errors import InvalidInput
from crate_cli.vault.api.routes import _query_int, _query_time


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
