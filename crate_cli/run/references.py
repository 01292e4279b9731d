"""References between secrets: `${NAME}` and `${env.NAME}` inside values.

A value may name another secret of the same environment (`${NAME}`) or of
another environment of the org (`${prod.NAME}`); `crate run` and `crate
secrets fetch` put the referenced value in its place (`--raw` turns this
off). `$${` writes a literal `${`. Text that is not shaped like a reference
(`${lower case}`, `${1X}`, a `${` with no `}`) is left as it is.

References are followed through other references. A reference that cannot
be resolved (a missing secret or environment, or a cycle) is an error that
shows the whole chain, so the user sees which value to fix. Values of other
environments are fetched with the same ephemeral exchange as any retrieval,
and only the names that are referenced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from crate_cli.errors import Forbidden, UnresolvedReference
from crate_cli.vault.references import MAX_DEPTH, TOKEN, Key, has_references, references
from crate_cli.vault.references import show as _show

if TYPE_CHECKING:
    from crate_cli.client.secrets import SecretsClient
# Fetches the named secrets of an environment; returns the ones that exist.
# Raises NotFound when the environment itself does not exist.
Fetch = Callable[[str, list[str]], Mapping[str, str]]


def resolve(env: str, values: Mapping[str, str], fetch: Fetch) -> dict[str, str]:
    """`values` (the secrets of `env` that were asked for) with every reference
    replaced by its value; `fetch` gets what they refer to and was not asked for."""
    known: dict[Key, str] = {(env, name): value for name, value in values.items()}
    missing = _gather(known, fetch)
    expander = _Expander(env, known, missing)
    return {name: expander.expand((env, name), []) for name in values}


def _gather(known: dict[Key, str], fetch: Fetch) -> dict[Key, str]:
    """Fetch into `known` every value a reference reaches, breadth first (one
    fetch per environment and round); returns what cannot be had, and why."""
    from crate_cli.errors import NotFound

    missing: dict[Key, str] = {}
    frontier = [key for key, value in known.items() if has_references(value)]
    while frontier:
        wanted: dict[str, set[str]] = {}
        for key in frontier:
            for ref in references(known[key], key[0]):
                if ref not in known and ref not in missing:
                    wanted.setdefault(ref[0], set()).add(ref[1])
        frontier = []
        for ref_env, names in sorted(wanted.items()):
            refused = ""
            try:
                found = fetch(ref_env, sorted(names))
            except NotFound:
                found, refused = {}, f"environment {ref_env!r} does not exist"
            except Forbidden:
                # Resolved with the reader's own access, never more.
                found, refused = {}, f"you may not read environment {ref_env!r}"
            for name in names:
                if name in found:
                    known[(ref_env, name)] = found[name]
                    if has_references(found[name]):
                        frontier.append((ref_env, name))
                else:
                    missing[(ref_env, name)] = refused or f"no secret {name} in {ref_env}"
    return missing


class _Expander:
    """Values with their references replaced, each computed once, following
    chains of references up to MAX_DEPTH and refusing cycles."""

    def __init__(self, env: str, known: dict[Key, str], missing: dict[Key, str]) -> None:
        self.env = env
        self.known = known
        self.missing = missing
        self.resolved: dict[Key, str] = {}

    def expand(self, key: Key, chain: list[Key]) -> str:
        if key in self.resolved:
            return self.resolved[key]
        self._check(key, chain)
        text = self.known[key]
        if not has_references(text):
            self.resolved[key] = text
            return text

        def replace(m: re.Match[str]) -> str:
            if m.group("name") is None:  # `$${` is a literal `${`; another `${` stays
                return "${" if m.group(0) == "$${" else m.group(0)
            return self.expand((m.group("env") or key[0], m.group("name")), [*chain, key])

        self.resolved[key] = TOKEN.sub(replace, text)
        return self.resolved[key]

    def _check(self, key: Key, chain: list[Key]) -> None:
        env = self.env
        if len(chain) > MAX_DEPTH:
            path = " -> ".join(_show(k, env) for k in [*chain[:3], key])
            raise UnresolvedReference(
                f"secret references are nested more than {MAX_DEPTH} deep: {path} ...",
                "shorten the chain of references (--raw shows the values as stored)",
            )
        if key in chain:
            loop = " -> ".join(_show(k, env) for k in [*chain[chain.index(key) :], key])
            raise UnresolvedReference(
                f"secret references form a cycle: {loop}",
                "change one of these values to break the cycle (--raw shows them as stored)",
            )
        if key in self.missing:
            path = " -> ".join(_show(k, env) for k in [*chain, key])
            raise UnresolvedReference(
                f"a secret reference cannot be resolved: {path} ({self.missing[key]})",
                "create the referenced secret, fix the reference, or pass --raw",
            )


def resolve_pairs(
    client: SecretsClient,
    env: str,
    pairs: list[tuple[str, str]],
    seen: list[str] | None = None,
) -> list[tuple[str, str]]:
    """Retrieved (name, value) pairs of `env` with their references resolved,
    fetching what they refer to through `client` (only names that exist).
    Values fetched for references are appended to `seen` (for --mask)."""
    if not any(has_references(value) for _, value in pairs):
        return pairs

    def fetch(ref_env: str, names: list[str]) -> dict[str, str]:
        live = {row["name"] for row in client.list_secrets(ref_env)}
        wanted = [n for n in names if n in live]
        if not wanted:
            return {}
        found = {s.name: s.value for s in client.retrieve(ref_env, wanted)}
        if seen is not None:
            seen.extend(found.values())
        return found

    resolved = resolve(env, dict(pairs), fetch)
    return [(name, resolved[name]) for name, _ in pairs]
