"""The naming rules of DESIGN §1, checked in one place.

Each check raises `InvalidInput` (exit 2) with the rule in the message. The
name itself is repeated only when it is shaped like a name, so a value
pasted into a name field by mistake is not echoed back.
"""

from __future__ import annotations

import re

from crate_cli.errors import InvalidInput, PayloadTooLarge

ORG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
ENV_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
SECRET_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
TAG_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}")

ORG_RULE = "lowercase letters, digits and '-', starting with a letter or digit, at most 63"
ENV_RULE = "lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 63"
SECRET_RULE = (
    "letters, digits and '_', not starting with a digit, at most 256 "
    "(it must be a valid environment variable name)"
)
TAG_RULE = (
    "lowercase letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63"
)

TOKEN_RULE = "letters, digits, '_', '.', '@' and '-', starting with a letter or digit, at most 63"

# A rejected name is repeated only when it looks like a name: a URL, a
# password with punctuation or a long token pasted by mistake is not echoed.
_NAME_SHAPED = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _shown(name: str) -> str:
    if _NAME_SHAPED.fullmatch(name):
        return repr(name)
    return f"of {len(name)} characters"


def _check(kind: str, name: str, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(name, str) or not pattern.fullmatch(name):
        shown = _shown(name) if isinstance(name, str) else "(not text)"
        raise InvalidInput(f"invalid {kind} name {shown}: use {rule}")
    return name


def check_org(name: str) -> str:
    return _check("organization", name, ORG_RE, ORG_RULE)


def check_env(name: str) -> str:
    return _check("environment", name, ENV_RE, ENV_RULE)


def check_secret_name(name: str) -> str:
    return _check("secret", name, SECRET_RE, SECRET_RULE)


_SECRET_LINES = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]{0,255}\n)*")


def all_secret_names(names: list[str]) -> bool:
    """Whether every item is a valid secret name: one regex pass over them all
    (a retrieval checks thousands), with the names joined by newlines (and a
    name that holds one is refused first)."""
    try:
        joined = "\n".join(names)
    except TypeError:  # not all text
        return False
    if joined.count("\n") != max(len(names) - 1, 0):  # a name holding a newline
        return False
    return _SECRET_LINES.fullmatch(joined + "\n" if names else "") is not None


def check_tag(name: str) -> str:
    return _check("tag", name, TAG_RE, TAG_RULE)


def check_token_name(name: str) -> str:
    return _check("token", name, TOKEN_RE, TOKEN_RULE)


def check_tags(tags: list[str]) -> list[str]:
    """Validate tags and return them sorted without duplicates."""
    return sorted({check_tag(t) for t in tags})


def check_value(name: str, raw: bytes, max_bytes: int) -> str:
    """A secret value: UTF-8 text without NUL, at most `max_bytes` bytes."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(
            f"value of {name} is {len(raw)} bytes; the limit is {max_bytes}",
            "raise secrets.max_value_bytes in settings.toml if this is intended",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(
            f"value of {name} is not valid UTF-8 text",
            "store binary data base64-encoded (for example: base64 FILE | crate secrets set "
            f"{name} -)",
        ) from None
    if "\x00" in text:
        raise InvalidInput(
            f"value of {name} contains a NUL byte, which no environment variable can hold",
            "store binary data base64-encoded",
        )
    return text
