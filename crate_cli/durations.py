"""Durations as users write them: `90s`, `15m`, `24h`, `30d`, `2w`."""

from __future__ import annotations

from crate_cli.errors import InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in `text`: a positive whole number followed by s, m, h, d or w."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:]) if raw else None
    number = raw[:-1]
    if unit is None or not number.isdigit() or int(number) == 0 or len(number) > 9:
        raise InvalidInput(
            f"invalid {what} {text!r}: use a positive number with s, m, h, d or w (e.g. 30d)"
        )
    return float(int(number) * unit)
