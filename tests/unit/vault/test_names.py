"""Naming rules (crate_cli/vault/names.py): org, environment, secret and tag
names, values and tags; and the names that steer processes: the rule, and
the fast check `crate run` uses, which must never miss a name the rule
refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crate_cli.errors import ExitCode, InvalidInput, PayloadTooLarge
from crate_cli.vault import names
from crate_cli.vault.names import (
    STEERING_NAMES,
    STEERING_PREFIXES,
    STEERING_SUFFIXES,
    steering_names,
    steering_reason,
)

# Each runs code from its value alone, or decides whom programs trust (found
# by an attack review of the first list).
STEERING = [
    "PATH",
    "path",
    "LD_PRELOAD",
    "DYLD_INSERT_LIBRARIES",
    "BASH_ENV",
    "ENV",
    "IFS",
    "PS0",
    "PS1",
    "PS4",
    "PROMPT_COMMAND",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "NODE_OPTIONS",
    "PERL5OPT",
    "RUBYOPT",
    "GIT_SSH_COMMAND",
    "CRATE_TOKEN",
    "MANPAGER",
    "PAGER",
    "EDITOR",
    "VISUAL",
    "VIMINIT",
    "EXINIT",
    "MAKEFLAGS",
    "TAR_OPTIONS",
    "SYSTEMD_PAGER",
    "KUBE_EDITOR",
    "JAVA_TOOL_OPTIONS",
    "CLASSPATH",
    "MAVEN_OPTS",
    "KUBECONFIG",
    "DOCKER_HOST",
    "RUSTC_WRAPPER",
    "CC",
    "CMAKE_C_COMPILER_LAUNCHER",
    "GOFLAGS",
    "GOPROXY",
    "CARGO_HOME",
    "GEM_PATH",
    "PIP_INDEX_URL",
    "DOTNET_STARTUP_HOOKS",
    "CORECLR_PROFILER_PATH",
    "LUA_INIT",
    "ERL_AFLAGS",
    "PHPRC",
    "PSQLRC",
    "INPUTRC",
    "HISTFILE",
    "FPATH",
    "TERMINFO",
    "QT_PLUGIN_PATH",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "HTTPS_PROXY",
    "https_proxy",
    "SSLKEYLOGFILE",
    "NODE_TLS_REJECT_UNAUTHORIZED",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "TPM2TOOLS_TCTI",
]
# Names of everyday secrets and settings, and the suffixes on their own.
EVERYDAY = [
    "DATABASE_URL",
    "API_KEY",
    "STRIPE_SECRET_KEY",
    "SENTRY_DSN",
    "NODE_ENV",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "GITHUB_TOKEN",
    "REDIS_URL",
    "JWT_SECRET",
    "SMTP_PASSWORD",
    "DB_HOST",
    "DB_USER",
    "SECRET_KEY_BASE",
    "OPENAI_API_KEY",
    "TWILIO_AUTH_TOKEN",
    "GOOGLE_API_KEY",
    "SLACK_WEBHOOK_URL",
    "POSTGRES_PASSWORD",
    "RAILS_MASTER_KEY",
    "NEXT_PUBLIC_API_URL",
    "VITE_API_KEY",
    "APP_ENV",
    "LOG_LEVEL",
    "PORT",
    "HOST",
    "GREETING",
    "FLAGS",
    "INIT",
    "OPTS",
    "OPTIONS",
    "PROXY",
    "RC",
]


@pytest.mark.parametrize("name", STEERING)
def test_a_steering_name_is_refused(name: str) -> None:
    assert steering_reason(name) is not None
    assert steering_names([*EVERYDAY, name]) == [name]


@pytest.mark.parametrize("name", EVERYDAY)
def test_an_everyday_name_is_not(name: str) -> None:
    assert steering_reason(name) is None
    assert steering_names([name]) == []


FRAGMENTS = [
    *STEERING_NAMES,
    *STEERING_PREFIXES,
    *STEERING_SUFFIXES,
    "A",
    "_",
    "X1",
    "DB",
    "KEY",
    "path",
    "Home",
]
NAMES = (
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=3)
    .map("".join)
    .filter(lambda n: not n[0].isdigit())
)


@given(st.lists(NAMES, max_size=20))
def test_the_fast_check_finds_exactly_what_the_rule_refuses(names: list[str]) -> None:
    assert steering_names(names) == [n for n in names if steering_reason(n) is not None]


@given(st.lists(NAMES, max_size=20))
def test_the_fast_check_of_many_names_finds_the_same(names: list[str]) -> None:
    """Beyond a few thousand names the check takes another path (tries of
    regular expressions): it must agree too."""
    filler = [f"SECRET_NUMBER_{i}" for i in range(2500)]
    expected = [n for n in names if steering_reason(n) is not None]
    assert steering_names([*filler, *names]) == expected


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (names.check_org, ["acme", "my-team", "a" * 63], ["Acme", "-x", "a_b", "a" * 64, ""]),
        (names.check_env, ["dev", "qa_1", "pr-12"], ["Dev", "_x", "a b", "a" * 64]),
        (
            names.check_secret_name,
            ["DB_URL", "_x", "a1", "A" * 256],
            ["1A", "A-B", "A B", "A" * 257, "", "A|B"],
        ),
        (names.check_tag, ["db", "v1.2", "a_b-c"], ["DB", ".x", "a/b", "a" * 64]),
    ],
)
def test_name_rules(check: object, good: list[str], bad: list[str]) -> None:
    assert callable(check)
    for name in good:
        assert check(name) == name
    for name in bad:
        with pytest.raises(InvalidInput) as caught:
            check(name)
        assert caught.value.exit_code == ExitCode.USAGE
        assert "use " in caught.value.message


def test_a_long_bad_name_is_not_echoed() -> None:
    pasted = "sk_live_" + "x" * 100
    with pytest.raises(InvalidInput) as caught:
        names.check_org(pasted)
    assert pasted not in caught.value.message


def test_values_must_be_text_without_nul_and_within_the_limit() -> None:
    assert names.check_value("A", "héllo".encode(), 100) == "héllo"
    with pytest.raises(PayloadTooLarge):
        names.check_value("A", b"x" * 101, 100)
    with pytest.raises(InvalidInput):
        names.check_value("A", b"\xff\xfe", 100)
    with pytest.raises(InvalidInput):
        names.check_value("A", b"a\x00b", 100)


def test_tags_are_sorted_and_deduplicated() -> None:
    assert names.check_tags(["db", "backend", "db"]) == ["backend", "db"]


def test_all_secret_names_is_check_secret_name_for_each() -> None:
    from crate_cli.vault.names import all_secret_names

    assert all_secret_names([])
    assert all_secret_names(["A", "_b", "C_1", "x" * 256])
    for bad in (["A", "1B"], ["A\nB"], ["A", ""], ["A", "B-C"], ["x" * 257], ["A", 1], ["A\n"]):
        assert not all_secret_names(bad), bad  # type: ignore[arg-type]
