"""Reading .env files and writing secrets in the formats `crate` exports.

`parse_dotenv` reads .env files the way python-dotenv does, without its
`${VAR}` interpolation. `render` writes `env`, `dotenv`, `json` or `shell`
text. Errors name line numbers only, never a value: a malformed line may hold
a secret where a name was expected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from crate_cli.errors import InvalidInput
from crate_cli.vault.names import check_secret_name

FORMATS = ("env", "dotenv", "json", "shell")

# The .env grammar, modelled on python-dotenv's parser. "Horizontal"
# whitespace is `[^\S\r\n]`: any whitespace except a line break.
_BLANK = re.compile(r"\s*")
_EXPORT = re.compile(r"export[^\S\r\n]+")
# A key that starts with a quote must be a whole quoted key.
_KEY = re.compile(r"'([^']+)'|([^=#\s'][^=#\s]*)")
_ASSIGN = re.compile(r"[^\S\r\n]*=([^\S\r\n]*)")
# Inside quotes a backslash always takes the next character with it, so `\\'`
# is an escaped backslash followed by the closing quote.
_SINGLE_QUOTED = re.compile(r"'((?:\\.|[^'\\])*)'", re.DOTALL)
_DOUBLE_QUOTED = re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL)
_UNQUOTED = re.compile(r"[^\r\n]*")
_INLINE_COMMENT = re.compile(r"\s+#")
# What may follow a value (or make up a comment line): spaces, an optional
# comment, then the end of the line.
_LINE_END = re.compile(r"[^\S\r\n]*(?:#[^\r\n]*)?(?:\r\n|\r|\n|\Z)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SINGLE_ESCAPE = re.compile(r"\\([\\'])")
_DOUBLE_ESCAPE = re.compile(r"\\([\\'\"abfnrtv])")
_DOUBLE_ESCAPES = {
    "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b",
    "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
}  # fmt: skip

# Values written bare in a .env: python-dotenv, docker --env-file, docker
# compose and a shell that sources the file all read these the same. `~` is
# left out because a shell would expand it; quotes, `$`, `#`, `\` and spaces
# mean something to at least one of those readers.
_BARE_VALUE = re.compile(r"[A-Za-z0-9_\-.,:/@%+=^]+")
# python-dotenv (interpolate=True, its default) expands this in every value,
# quoted or not, and offers no escape for it.
_INTERPOLATION = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")


def _always(pattern: re.Pattern[str], text: str, pos: int) -> re.Match[str]:
    """Match a pattern that accepts the empty string, so cannot fail."""
    match = pattern.match(text, pos)
    assert match is not None
    return match


def _line_of(text: str, pos: int) -> int:
    return len(_LINE_BREAK.findall(text, 0, pos)) + 1


def parse_dotenv(text: str) -> list[tuple[str, str]]:
    """Read the `(name, value)` pairs of a .env file, in file order.

    The syntax is python-dotenv's (which docker compose also accepts for the
    common cases): blank lines, `#` comment lines, an optional `export `
    prefix, `NAME=VALUE` with optional spaces around `=`, and values that are
    unquoted (trailing spaces and a ` # comment` dropped), single-quoted
    (literal apart from `\\'` and `\\\\`, may span lines) or double-quoted
    (`\\n`, `\\t`, `\\"`, `\\\\` and the other C escapes decoded, may span
    lines). After a closing quote only spaces and a comment may follow.

    Values are taken literally: `${VAR}` is NOT interpolated, because crate
    stores exactly the text it is given. The result therefore equals
    python-dotenv's `dotenv_values(..., interpolate=False)`.

    Every assignment is returned, duplicates included, so the caller can warn
    about them; `dict(pairs)` gives python-dotenv's meaning (the last value
    wins, at the position of the first). Names are returned as written and
    not validated here.

    Raises InvalidInput, naming the line, for an unterminated quote, text
    after a closing quote, and a line that is not `NAME=VALUE` (python-dotenv
    reads a bare `NAME` as "unset", which crate cannot store).
    """
    text = text.removeprefix("\ufeff")
    pairs: list[tuple[str, str]] = []
    pos = _always(_BLANK, text, 0).end()
    while pos < len(text):
        export = _EXPORT.match(text, pos)
        if export:
            pos = export.end()
        if not text.startswith("#", pos):
            key_match = _KEY.match(text, pos)
            assign = _ASSIGN.match(text, key_match.end()) if key_match else None
            if key_match is None or assign is None:
                raise InvalidInput(
                    f"line {_line_of(text, pos)}: expected NAME=VALUE",
                    "write NAME= for an empty value",
                )
            key = key_match.group(1) or key_match.group(2)
            pos = assign.end()
            value, pos = _read_value(text, pos, spaced=bool(assign.group(1)))
            pairs.append((key, value))
        end = _LINE_END.match(text, pos)
        if end is None:
            raise InvalidInput(
                f"line {_line_of(text, pos)}: unexpected text after a quoted value",
                "only a # comment may follow the closing quote",
            )
        pos = _always(_BLANK, text, end.end()).end()
    return pairs


def _read_value(text: str, pos: int, *, spaced: bool) -> tuple[str, int]:
    """Read the value starting at `pos`; return it and the position after it."""
    first = text[pos : pos + 1]
    if first in ("'", '"'):
        quoted = (_SINGLE_QUOTED if first == "'" else _DOUBLE_QUOTED).match(text, pos)
        if quoted is None:
            kind = "single" if first == "'" else "double"
            raise InvalidInput(
                f"line {_line_of(text, pos)}: unterminated {kind}-quoted value",
                f"close the value with {first}, or escape a {first} inside it with a backslash",
            )
        if first == "'":
            value = _SINGLE_ESCAPE.sub(lambda m: m.group(1), quoted.group(1))
        else:
            value = _DOUBLE_ESCAPE.sub(lambda m: _DOUBLE_ESCAPES[m.group(1)], quoted.group(1))
        return value, quoted.end()
    if spaced and first == "#":
        # `NAME= # note` is an empty value with a comment; `NAME=#x` is "#x".
        return "", pos
    raw = _always(_UNQUOTED, text, pos)
    value = raw.group()
    comment = _INLINE_COMMENT.search(value)
    if comment:
        value = value[: comment.start()]
    return value.rstrip(), raw.end()


def render(secrets: Sequence[tuple[str, str]], fmt: str) -> str:
    """Write `(name, value)` pairs as `fmt`, one of FORMATS, in input order.

    - `env`: `NAME=value` lines with raw values, like `printenv`; for reading,
      not for parsing (a value with a newline spans lines).
    - `dotenv`: a .env file that python-dotenv and `docker --env-file` read
      back as the same values, except for the names listed by
      `dotenv_docker_incompatible` and `dotenv_interpolated`.
    - `json`: one object `{"NAME": "value"}`, indented, non-ASCII kept as is.
    - `shell`: `export NAME='value'` lines, safe to `eval` in sh, bash and zsh
      whatever the value holds.

    Non-empty output ends with a newline. Names are checked to be valid
    environment variable names for every format except `json`.
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(dict(secrets), indent=2, ensure_ascii=False) + "\n"
    lines: list[str] = []
    for name, value in secrets:
        # The name is written unquoted, so it must not be able to inject syntax.
        check_secret_name(name)
        if fmt == "env":
            lines.append(f"{name}={value}")
        elif fmt == "dotenv":
            lines.append(f"{name}={_dotenv_value(value)}")
        else:
            if "\x00" in value:
                raise InvalidInput(
                    f"value of {name} contains a NUL byte, which a shell cannot hold"
                )
            lines.append(f"export {name}={_shell_quote(value)}")
    return "".join(line + "\n" for line in lines)


def _shell_quote(value: str) -> str:
    # Single quotes make everything literal in sh; a `'` itself is written
    # as `\'` between quoted runs. Empty runs are not emitted, so no `''`
    # appears, which zsh with RC_QUOTES would read as a literal quote.
    if not value:
        return "''"
    return "\\'".join(f"'{run}'" if run else "" for run in value.split("'"))


def _dotenv_value(value: str) -> str:
    if not value or _BARE_VALUE.fullmatch(value):
        return value
    if "\r" in value:
        # A file read in text mode (python-dotenv opens it so) turns a raw CR
        # into LF; double quotes let CR and LF be written as escapes instead.
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\r", "\\r")
            .replace("\n", "\\n")
        )
        return f'"{escaped}"'
    # Single quotes keep `#`, spaces, `"` and newlines literal; python-dotenv
    # decodes only `\\` and `\'` inside them.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def dotenv_docker_incompatible(secrets: Sequence[tuple[str, str]]) -> list[str]:
    """Names whose `dotenv` line `docker --env-file` reads as another value.

    Docker takes everything after `=` literally, quotes included, and cannot
    hold a newline, so every value that `render` has to quote is listed.
    """
    return [name for name, value in secrets if _dotenv_value(value) != value]


def dotenv_interpolated(secrets: Sequence[tuple[str, str]]) -> list[str]:
    """Names whose value python-dotenv would change by `${VAR}` interpolation.

    python-dotenv (with its default `interpolate=True`) expands `${NAME}` and
    `${NAME:-default}` in every value, single-quoted ones included, and has no
    escape for a literal `${`. Such values survive only `interpolate=False`.
    """
    return [name for name, value in secrets if _INTERPOLATION.search(value)]
