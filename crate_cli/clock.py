"""crate's one clock and its one time format.

Every time crate writes (audit entries, rows' `updated_at`, token expiry,
key creation) is UTC in TIME_FORMAT, with microseconds: such texts sort as
the times they name, which the vault's queries rely on (`time >= ?`).
Tests can set the clock (`set_clock`); nothing else reads the system time
for a recorded time. `datetime` is imported only when a time is made.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

# None: the system clock. Else a function returning an aware UTC datetime.
_clock: "Callable[[], datetime] | None" = None


def set_clock(clock: "Callable[[], datetime] | None") -> None:
    """Make `now()` answer `clock()` (None: the system clock again)."""
    global _clock
    _clock = clock


def now() -> "datetime":
    """The current time, timezone-aware, in UTC."""
    if _clock is not None:
        return _clock()
    from datetime import UTC, datetime

    return datetime.now(UTC)


def format_time(when: "datetime") -> str:
    """`when` as crate writes times (UTC; a naive datetime is taken as UTC)."""
    from datetime import UTC

    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime(TIME_FORMAT)


def utc_now() -> str:
    """The current time as crate writes it."""
    return format_time(now())


def from_timestamp(seconds: float) -> str:
    """A POSIX timestamp (a file's mtime) as crate writes times."""
    from datetime import UTC, datetime

    return format_time(datetime.fromtimestamp(seconds, UTC))


def parse_iso(text: str) -> str:
    """An ISO 8601 date or time a user gave (UTC unless it says otherwise, `Z`
    allowed), as crate writes times; ValueError if it is none."""
    from datetime import UTC, datetime

    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return format_time(when)


def parse_time(text: str) -> "datetime":
    """A time crate wrote, as an aware UTC datetime; ValueError for anything else."""
    from datetime import UTC, datetime

    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
