"""`${NAME}` and `${env.NAME}` references: the syntax, `resolve` with a fake
fetch (what is fetched, and how often), errors, and `resolve_pairs`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from crate_cli.client.secrets import RetrievedSecret
from crate_cli.errors import CrateError, ExitCode, NotFound
from crate_cli.run.references import (
    MAX_DEPTH,
    UnresolvedReference,
    references,
    resolve,
    resolve_pairs,
)
from crate_cli.vault.names import SECRET_RE


class FakeFetch:
    """Secrets per environment; records every call (env, names)."""

    def __init__(self, stores: Mapping[str, Mapping[str, str]]) -> None:
        self.stores = stores
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, env: str, names: list[str]) -> dict[str, str]:
        self.calls.append((env, list(names)))
        if env not in self.stores:
            raise NotFound(f"environment {env!r} does not exist")
        return {n: self.stores[env][n] for n in names if n in self.stores[env]}


def never(env: str, names: list[str]) -> dict[str, str]:
    raise AssertionError(f"nothing should be fetched, got {env} {names}")


# -- the syntax --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "refs"),
    [
        ("${A}", [("dev", "A")]),
        ("${lower}", [("dev", "lower")]),  # a valid secret name, so a reference
        ("${_}", [("dev", "_")]),
        ("${_X1}", [("dev", "_X1")]),
        ("${prod.A}", [("prod", "A")]),
        ("${env.NAME}", [("env", "NAME")]),  # an environment called `env`
        ("${prod-eu_2.A}", [("prod-eu_2", "A")]),
        ("${0env.A}", [("0env", "A")]),
        ("${dev.A}", [("dev", "A")]),
        ("x${A}y${prod.B}z${A}", [("dev", "A"), ("prod", "B"), ("dev", "A")]),
        ("${A}}", [("dev", "A")]),
        ("${A${B}}", [("dev", "B")]),
        ("${" + "N" * 256 + "}", [("dev", "N" * 256)]),
        ("${" + "e" * 63 + ".A}", [("e" * 63, "A")]),
        # Not shaped like a reference: left as it is.
        ("plain", []),
        ("$A $A_B", []),
        ("${", []),
        ("${A", []),
        ("${}", []),
        ("${1X}", []),
        ("${A-B}", []),
        ("${A B}", []),
        ("${ A }", []),
        ("${A.B}", []),  # uppercase is not an environment name
        ("${prod.}", []),
        ("${.A}", []),
        ("${a.b.C}", []),
        ("${-env.A}", []),
        ("${_env.A}", []),
        ("${prod.1X}", []),
        ("${A:-default}", []),
        ("{A}", []),
        ("$ {A}", []),
        ("${" + "N" * 257 + "}", []),
        ("${" + "e" * 64 + ".A}", []),
        ("${caf\u00e9}", []),
        # `$${` is an escape: never a reference, however many `$` come before.
        ("$${A}", []),
        ("$$${A}", []),
        ("$$$${A}", []),
        ("$${A}${B}", [("dev", "B")]),
    ],
)
def test_references_in_a_value(value: str, refs: list[tuple[str, str]]) -> None:
    assert references(value, "dev") == refs


def test_reference_names_are_exactly_the_secret_names() -> None:
    for name in ("A", "a", "_", "A1", "Z_9", "x" * 256):
        assert SECRET_RE.fullmatch(name)
        assert references("${" + name + "}", "dev") == [("dev", name)]
    for name in ("1A", "A-B", "A.B", "", "x" * 257):
        assert not SECRET_RE.fullmatch(name)
        assert references("${" + name + "}", "dev") == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$${A}", "${A}"),
        ("$${A} and ${A}", "${A} and 1"),
        ("$$${A}", "$${A}"),  # the leftmost `$${` is the escape
        ("$$$${A}", "$$${A}"),
        ("$${", "${"),
        ("$$", "$$"),
        ("$A ${1X} ${A-B} ${ ${A:-x}", "$A ${1X} ${A-B} ${ ${A:-x}"),
        ("${A}${A}", "11"),
        ("${A}}", "1}"),
        ("${A${A}}", "${A1}"),  # the result is not read again
    ],
)
def test_escapes_and_text_that_is_not_a_reference(value: str, expected: str) -> None:
    assert resolve("dev", {"A": "1", "V": value}, never)["V"] == expected


# -- resolve: what it fetches ------------------------------------------------------


def test_nothing_is_fetched_without_references() -> None:
    values = {f"BULK_{i:04d}": "x" * 1024 + "$ {} $$" for i in range(1000)}
    assert resolve("dev", values, never) == values


def test_escapes_alone_fetch_nothing() -> None:
    assert resolve("dev", {"A": "$${B} $${prod.C}"}, never) == {"A": "${B} ${prod.C}"}


def test_references_between_the_given_values_fetch_nothing() -> None:
    values = {"URL": "postgres://${USER}@${HOST}", "USER": "app", "HOST": "db"}
    assert resolve("dev", values, never) == {**values, "URL": "postgres://app@db"}


def test_each_environment_is_fetched_once_per_round() -> None:
    fetch = FakeFetch(
        {
            "dev": {"X": "x", "Y": "y", "UNUSED": "u"},
            "prod": {"P": "p", "Q": "q"},
            "staging": {"S": "s"},
        }
    )
    values = {
        "A": "${X}${Y}${prod.P}",
        "B": "${Y}${X}${staging.S}${prod.Q}${prod.P}",
        "C": "${dev.X}",
    }
    assert resolve("dev", values, fetch) == {"A": "xyp", "B": "yxsqp", "C": "x"}
    assert sorted(fetch.calls) == [("dev", ["X", "Y"]), ("prod", ["P", "Q"]), ("staging", ["S"])]


def test_nested_references_take_one_round_per_level() -> None:
    fetch = FakeFetch(
        {
            "dev": {"L1": "${L2}", "L2": "${prod.L3}", "SIDE": "side"},
            "prod": {"L3": "<${L4}>", "L4": "${staging.L5}"},
            "staging": {"L5": "deep"},
        }
    )
    values = {"TOP": "${L1}+${SIDE}"}
    assert resolve("dev", values, fetch) == {"TOP": "<deep>+side"}
    assert fetch.calls == [
        ("dev", ["L1", "SIDE"]),
        ("dev", ["L2"]),
        ("prod", ["L3"]),
        ("prod", ["L4"]),
        ("staging", ["L5"]),
    ]


def test_a_reference_is_fetched_once_however_often_it_is_used() -> None:
    fetch = FakeFetch({"dev": {"SHARED": "${prod.BASE}"}, "prod": {"BASE": "b"}})
    values = {"A": "${SHARED}", "B": "${SHARED}${SHARED}", "C": "${prod.BASE}"}
    assert resolve("dev", values, fetch) == {"A": "b", "B": "bb", "C": "b"}
    assert sorted(fetch.calls) == [("dev", ["SHARED"]), ("prod", ["BASE"])]


def test_a_missing_name_is_asked_for_once() -> None:
    fetch = FakeFetch({"dev": {}})
    with pytest.raises(UnresolvedReference):
        resolve("dev", {"A": "${GONE}", "B": "${GONE}"}, fetch)
    assert fetch.calls == [("dev", ["GONE"])]


def test_only_the_given_names_are_returned() -> None:
    fetch = FakeFetch({"dev": {"HIDDEN": "h"}, "prod": {"P": "p"}})
    assert resolve("dev", {"A": "${HIDDEN}${prod.P}"}, fetch) == {"A": "hp"}


def test_unqualified_references_belong_to_the_environment_of_their_value() -> None:
    fetch = FakeFetch(
        {"dev": {"NAME": "dev-name"}, "prod": {"NAME": "prod-name", "REF": "${NAME}"}}
    )
    values = {"NAME": "home", "A": "${prod.REF}", "B": "${NAME}"}
    assert resolve("dev", values, fetch) == {"NAME": "home", "A": "prod-name", "B": "home"}
    assert fetch.calls == [("prod", ["REF"]), ("prod", ["NAME"])]


def test_a_reference_back_to_the_home_environment_uses_the_given_value() -> None:
    fetch = FakeFetch({"prod": {"P": "[${dev.A}]"}})
    assert resolve("dev", {"A": "a", "B": "${prod.P}"}, fetch) == {"A": "a", "B": "[a]"}
    assert fetch.calls == [("prod", ["P"])]


def test_a_referenced_value_is_used_as_resolved_not_read_again() -> None:
    # ESC resolves to the text `${X}`: the referring value gets that text.
    fetch = FakeFetch({"dev": {"ESC": "$${X}", "X": "x"}})
    assert resolve("dev", {"A": "${ESC}", "B": "${ESC}${X}"}, fetch) == {
        "A": "${X}",
        "B": "${X}x",
    }


def test_diamonds_are_not_cycles() -> None:
    values = {"TOP": "${L}${R}", "L": "${BASE}", "R": "${BASE}", "BASE": "b"}
    assert resolve("dev", values, never)["TOP"] == "bb"


def test_replacement_text_is_not_a_regex_template() -> None:
    values = {"A": r"\1 \g<0> \\ $0 &", "B": "[${A}]"}
    assert resolve("dev", values, never)["B"] == r"[\1 \g<0> \\ $0 &]"


def test_empty_and_multiline_values() -> None:
    values = {"EMPTY": "", "LINES": "a\nb\n", "REF": "${EMPTY}|${LINES}|"}
    assert resolve("dev", values, never)["REF"] == "|a\nb\n|"


def test_a_chain_deeper_than_the_limit_is_a_clean_error() -> None:
    depth = 500
    values = {f"S{i}": f"${{S{i + 1}}}" for i in range(depth)}
    values[f"S{depth}"] = "end"
    message = unresolved(values)
    assert f"nested more than {MAX_DEPTH} deep: S0 -> S1 -> S2" in message


def test_a_chain_at_the_limit_resolves() -> None:
    values = {f"S{i}": f"${{S{i + 1}}}" for i in range(MAX_DEPTH)}
    values[f"S{MAX_DEPTH}"] = "end"
    assert resolve("dev", values, never)["S0"] == "end"


# -- resolve: errors ---------------------------------------------------------------


def unresolved(values: Mapping[str, str], fetch: Any = never, env: str = "dev") -> str:
    with pytest.raises(UnresolvedReference) as bad:
        resolve(env, values, fetch)
    assert bad.value.exit_code == ExitCode.ERROR == 1
    assert isinstance(bad.value, CrateError)
    assert bad.value.hint
    return bad.value.message


def test_a_missing_secret_shows_the_chain() -> None:
    fetch = FakeFetch({"dev": {"B": "${prod.C}"}, "prod": {"C": "(${D})"}})
    message = unresolved({"A": "x${B}"}, fetch)
    assert message == "a secret reference cannot be resolved: A -> B -> prod.C -> prod.D " + (
        "(no secret D in prod)"
    )


def test_a_missing_environment_shows_the_chain() -> None:
    fetch = FakeFetch({"dev": {"B": "${nope.C}"}})
    message = unresolved({"A": "${B}"}, fetch)
    assert message == (
        "a secret reference cannot be resolved: A -> B -> nope.C "
        "(environment 'nope' does not exist)"
    )


def test_every_name_of_a_missing_environment_is_missing() -> None:
    fetch = FakeFetch({})
    message = unresolved({"A": "${nope.X}${nope.Y}"}, fetch)
    assert "A -> nope.X" in message
    assert fetch.calls == [("nope", ["X", "Y"])]


@pytest.mark.parametrize(
    ("values", "stores", "loop"),
    [
        ({"A": "${A}"}, {}, "A -> A"),
        ({"A": "${B}", "B": "${A}"}, {}, "A -> B -> A"),
        ({"A": "x${B}"}, {"dev": {"B": "${C}", "C": "${B}"}}, "B -> C -> B"),
        ({"A": "${prod.P}"}, {"prod": {"P": "${dev.A}"}}, "A -> prod.P -> A"),
        ({"A": "${prod.P}"}, {"prod": {"P": "${P}"}}, "prod.P -> prod.P"),
        ({"A": "${dev.A}"}, {}, "A -> A"),
    ],
)
def test_cycles_show_the_loop(
    values: dict[str, str], stores: dict[str, dict[str, str]], loop: str
) -> None:
    message = unresolved(values, FakeFetch(stores))
    assert message == f"secret references form a cycle: {loop}"


def test_an_error_names_no_value() -> None:
    fetch = FakeFetch({"dev": {"B": "secret-b ${C}"}})
    message = unresolved({"A": "secret-a ${B}"}, fetch)
    assert "secret-" not in message


def test_a_cycle_through_escaped_text_is_no_cycle() -> None:
    assert resolve("dev", {"A": "$${A}"}, never) == {"A": "${A}"}


# -- resolve_pairs -----------------------------------------------------------------


class FakeClient:
    """The two SecretsClient calls resolve_pairs makes, on in-memory stores."""

    def __init__(self, stores: dict[str, dict[str, str]]) -> None:
        self.stores = stores
        self.calls: list[tuple[str, Any]] = []

    def list_secrets(self, env: str) -> list[dict[str, Any]]:
        self.calls.append(("list", env))
        if env not in self.stores:
            raise NotFound(f"environment {env!r} does not exist")
        return [{"name": n} for n in self.stores[env]]

    def retrieve(self, env: str, names: list[str]) -> list[RetrievedSecret]:
        self.calls.append(("retrieve", (env, list(names))))
        missing = set(names) - set(self.stores[env])
        if missing:  # as the server: asking for a missing name is an error
            raise NotFound(f"no secret {sorted(missing)[0]}")
        return [RetrievedSecret(n, self.stores[env][n], 1) for n in names]


def test_resolve_pairs_without_references_calls_nothing() -> None:
    client = FakeClient({})
    pairs = [("A", "1"), ("B", "$ {} $A")]
    assert resolve_pairs(client, "dev", pairs) is pairs  # type: ignore[arg-type]
    assert client.calls == []


def test_resolve_pairs_keeps_order_and_retrieves_only_existing_names() -> None:
    client = FakeClient({"dev": {"HOST": "db", "A": "-"}, "prod": {"NAME": "main"}})
    pairs = [("Z", "${HOST}/${prod.NAME}"), ("A", "plain"), ("M", "$${HOST}")]
    assert resolve_pairs(client, "dev", pairs) == [  # type: ignore[arg-type]
        ("Z", "db/main"),
        ("A", "plain"),
        ("M", "${HOST}"),
    ]
    assert client.calls == [
        ("list", "dev"),
        ("retrieve", ("dev", ["HOST"])),
        ("list", "prod"),
        ("retrieve", ("prod", ["NAME"])),
    ]


def test_resolve_pairs_reports_a_missing_secret_without_retrieving_it() -> None:
    client = FakeClient({"dev": {"OTHER": "o"}})
    with pytest.raises(UnresolvedReference, match=r"A -> GONE \(no secret GONE in dev\)"):
        resolve_pairs(client, "dev", [("A", "${GONE}")])  # type: ignore[arg-type]
    assert client.calls == [("list", "dev")]


def test_resolve_pairs_reports_a_missing_environment() -> None:
    client = FakeClient({"dev": {}})
    with pytest.raises(UnresolvedReference, match="environment 'nope' does not exist"):
        resolve_pairs(client, "dev", [("A", "${nope.X}")])  # type: ignore[arg-type]
