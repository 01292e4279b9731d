"""Which store crate uses, through the CLI in new processes: --store, else
CRATE_STORE, else the `store` setting; a store crate does not know is a
usage error (exit 2) that names it without its password, and a PostgreSQL
URL's password never shows, whatever happens to the connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.crate_runner import CrateRunner, assert_clean_error

pytestmark = pytest.mark.e2e

PASSWORD = "hunter2"
POSTGRES_URL = f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"


def test_an_unknown_store_is_a_usage_error_and_makes_nothing(
    crate: CrateRunner, crate_home: Path
) -> None:
    result = crate("--store", "bogus://x", "secrets", "list")
    assert_clean_error(result, 2)
    assert "unknown store 'bogus://x'" in result.stderr
    assert "postgresql://" in result.stderr
    assert "--store, CRATE_STORE" in result.stderr
    assert not crate_home.exists()


@pytest.mark.parametrize(
    "how",
    [
        ("--store", f"bogus://u:{PASSWORD}@x/y"),
        ("--store=" + f"mysql://root:{PASSWORD}@db/x",),
    ],
)
def test_an_unknown_stores_password_is_not_shown(crate: CrateRunner, how: tuple[str, ...]) -> None:
    result = crate(*how, "secrets", "list")
    assert_clean_error(result, 2, hidden=(PASSWORD,))
    assert ":***@" in result.stderr


def test_an_unknown_store_from_the_environment_too(crate: CrateRunner) -> None:
    result = crate("secrets", "list", env={"CRATE_STORE": f"bogus://u:{PASSWORD}@x"})
    assert_clean_error(result, 2, hidden=(PASSWORD,))


def test_a_postgresql_password_never_shows(crate: CrateRunner) -> None:
    """Without a PostgreSQL backend, or with nothing listening on port 1,
    crate fails; it must not say the password doing so."""
    for args, env in (
        (("secrets", "list"), {"CRATE_STORE": POSTGRES_URL}),
        (("--store", POSTGRES_URL, "secrets", "list"), {}),
        (("--store", POSTGRES_URL, "run", "--", "true"), {}),
    ):
        result = crate(*args, env=env)
        assert result.returncode != 0, result
        assert PASSWORD not in result.stdout + result.stderr, result


def test_store_option_beats_crate_store_beats_the_setting(
    personal_home: Path, crate: CrateRunner
) -> None:
    crate("secrets", "set", "A=1", check=True)
    settings = personal_home / "settings.toml"
    settings.write_text('store = "bogus://from-setting"\n' + settings.read_text())
    from_setting = crate("secrets", "list")
    assert_clean_error(from_setting, 2)
    assert "bogus://from-setting" in from_setting.stderr

    env = {"CRATE_STORE": "sqlite"}
    assert "A" in crate("secrets", "list", env=env, check=True).stdout
    from_env = crate("secrets", "list", env={"CRATE_STORE": "bogus://from-env"})
    assert "bogus://from-env" in from_env.stderr

    from_option = crate("--store", "bogus://from-option", "secrets", "list", env=env)
    assert_clean_error(from_option, 2)
    assert "bogus://from-option" in from_option.stderr
    listed = crate("--store", "sqlite", "secrets", "list", env={"CRATE_STORE": "bogus://x"})
    assert listed.returncode == 0, listed
    assert "A" in listed.stdout


def test_the_option_does_not_reach_crate_runs_command(
    personal_home: Path, crate: CrateRunner
) -> None:
    crate("secrets", "set", "A=1", check=True)
    result = crate(
        "--store", "sqlite", "run", "--", "sh", "-c", 'echo "$A ${CRATE_STORE-unset}"', check=True
    )
    assert result.stdout == "1 unset\n"
    # Nor does CRATE_STORE, which usually carries the database's password.
    result = crate(
        "run",
        "--",
        "sh",
        "-c",
        'echo "$A ${CRATE_STORE-unset}"',
        env={"CRATE_STORE": "sqlite"},
        check=True,
    )
    assert result.stdout == "1 unset\n"


def test_the_agent_serves_only_the_homes_own_vaults(crate: CrateRunner) -> None:
    result = crate("--store", POSTGRES_URL, "agent", "start")
    assert_clean_error(result, 2, hidden=(PASSWORD,))
    assert "agent" in result.stderr
