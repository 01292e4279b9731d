"""The grammar of references between secrets: `${NAME}`, `${env.NAME}`, `$${`.

A value may name another secret of its environment (`${NAME}`) or of another
environment of the org (`${prod.NAME}`); `$${` writes a literal `${`. The
reader's client resolves them (crate_cli/references.py), with the reader's
own access; the server role checks them when they are stored
(`VaultService.store_sealed`), so that a value can only name what its writer
could read. Names follow vault/names.py.
"""

from __future__ import annotations

import re

# `$${` (an escaped `${`), a reference, or (`bad`) any other `${`.
TOKEN = re.compile(
    r"\$\$\{|\$\{(?:(?P<env>[a-z0-9][a-z0-9_-]{0,62})\.)?(?P<name>[A-Za-z_][A-Za-z0-9_]{0,255})\}"
    r"|(?P<bad>\$\{)"
)

Key = tuple[str, str]  # (environment, secret name)
# How deep references may nest (a chain of values each naming the next).
MAX_DEPTH = 64


def has_references(value: str) -> bool:
    return "${" in value


def references(value: str, env: str) -> list[Key]:
    """The (env, name) pairs that `value` refers to, in order; `env` is the
    value's own environment (a reference without one means it)."""
    return [
        (m.group("env") or env, m.group("name"))
        for m in TOKEN.finditer(value)
        if m.group("name") is not None
    ]


def malformed(value: str) -> bool:
    """Whether `value` holds a `${` that is neither a reference nor the `$${`
    escape: it is left as text when read, which may not be what was meant."""
    return any(m.group("bad") is not None for m in TOKEN.finditer(value))


def show(key: Key, home_env: str) -> str:
    """A reference as a user writes it, from the environment `home_env`."""
    env, name = key
    return name if env == home_env else f"{env}.{name}"
