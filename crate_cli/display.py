"""Text that came from elsewhere (a server, a vault file), made safe to show.

A server's error message, a secret name in a planted row or an actor string
reaches the user's terminal. Escape sequences in it could move the cursor,
rewrite earlier lines, set the window title or, on some terminals, answer
back with input (DESIGN §9). So every control character, and the invisible
formatting characters that reorder or hide text, is shown as an escape
(`\\x1b`, `\\u202e`) instead.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, zero-width and bidirectional formatting characters,
# line and paragraph separators, the BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str, limit: int | None = None) -> str:
    """`text` with every control or invisible formatting character escaped,
    cut to `limit` characters (with an ellipsis) when given."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def safe_value(
    value: object, limit: int | None = None, data: frozenset[str] = frozenset()
) -> object:
    """`safe_text` for strings, applied through lists and dicts (a JSON answer);
    anything else as it is. Members named in `data` are kept as they are: they
    are parsed, never shown (a PEM key's newlines)."""
    if isinstance(value, str):
        return safe_text(value, limit)
    if isinstance(value, list):
        return [safe_value(v, limit, data) for v in value]
    if isinstance(value, dict):
        return {
            safe_text(str(k), limit): v if k in data else safe_value(v, limit, data)
            for k, v in value.items()
        }
    return value
