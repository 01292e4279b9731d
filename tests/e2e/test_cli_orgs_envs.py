"""End to end: organizations, environments and the session's defaults."""

from __future__ import annotations

import json

import pytest

from tests.support.crate_runner import CrateRunner, assert_clean_error

pytestmark = pytest.mark.e2e

ORG_RULE = "lowercase letters, digits and '-'"
ENV_RULE = "lowercase letters, digits, '_' and '-'"
SESSION_FIELDS = {
    "server",
    "agent",
    "org",
    "env",
    "home",
    "settings",
    "keystore",
    "master_key_version",
}


def orgs(crate: CrateRunner) -> list[dict]:
    return list(json.loads(crate("org", "list", "--json", check=True).stdout))


def envs(crate: CrateRunner, *args: str) -> list[str]:
    return list(json.loads(crate("env", "list", "--json", *args, check=True).stdout))


def get(crate: CrateRunner, *args: str, env: dict[str, str] | None = None) -> str:
    return crate("secrets", "get", *args, env=env, check=True).stdout


def session(crate: CrateRunner, env: dict[str, str] | None = None) -> dict:
    return dict(json.loads(crate("session", "show", "--json", env=env, check=True).stdout))


# -- organizations ---------------------------------------------------------------------


def test_org_create_list_delete(crate: CrateRunner) -> None:
    crate("secrets", "set", "WHERE", "personal", check=True)
    created = crate("org", "create", "acme")
    assert created.returncode == 0, created
    assert "created organization 'acme'" in created.stderr
    assert orgs(crate) == [
        {"name": "acme", "current": False},
        {"name": "personal", "current": True},
    ]
    table = crate("org", "list", check=True).stdout.splitlines()
    assert table == ["  acme", "* personal"]

    refused = crate("org", "delete", "acme")
    assert_clean_error(refused, 2)
    assert "--yes" in refused.stderr
    assert [o["name"] for o in orgs(crate)] == ["acme", "personal"]

    deleted = crate("org", "delete", "acme", "--yes")
    assert deleted.returncode == 0
    assert "deleted organization 'acme'" in deleted.stderr
    assert [o["name"] for o in orgs(crate)] == ["personal"]
    assert not (crate.home / "orgs" / "acme.vault").exists()
    assert_clean_error(crate("org", "delete", "acme", "--yes"), 3)


def test_org_create_existing_is_a_conflict(crate: CrateRunner) -> None:
    crate("org", "create", "acme", check=True)
    crate("secrets", "set", "KEEP", "me", "--org", "acme", check=True)
    again = crate("org", "create", "acme")
    assert_clean_error(again, 7)
    assert "already exists" in again.stderr
    assert get(crate, "KEEP", "--org", "acme") == "me"


@pytest.mark.parametrize("name", ["Acme", "my_team", "-acme", "acme!", "a" * 64, ""])
def test_org_create_invalid_name_states_the_rule(crate: CrateRunner, name: str) -> None:
    refused = crate("org", "create", "--", name)
    assert_clean_error(refused, 2)
    assert ORG_RULE in refused.stderr
    assert not (crate.home / "orgs").exists() or not any((crate.home / "orgs").iterdir())


def test_org_name_of_63_characters_is_fine(crate: CrateRunner) -> None:
    crate("org", "create", "a" * 63, check=True)
    assert [o["name"] for o in orgs(crate)] == ["a" * 63]


def test_org_option_and_crate_org_select_the_org(crate: CrateRunner) -> None:
    crate("secrets", "set", "WHERE", "personal", check=True)
    crate("org", "create", "acme", check=True)
    crate("secrets", "set", "WHERE", "acme", "--org", "acme", check=True)

    assert get(crate, "WHERE") == "personal"
    assert get(crate, "WHERE", "--org", "acme") == "acme"
    assert get(crate, "WHERE", env={"CRATE_ORG": "acme"}) == "acme"
    # The option beats the variable.
    assert get(crate, "WHERE", "--org", "personal", env={"CRATE_ORG": "acme"}) == "personal"
    listed = json.loads(crate("secrets", "list", "--json", "--org", "acme", check=True).stdout)
    assert [r["name"] for r in listed] == ["WHERE"]


def test_unknown_org_is_not_found_and_not_created(crate: CrateRunner) -> None:
    crate("secrets", "list", check=True)
    for args, env in (
        (("secrets", "set", "A", "1", "--org", "nope"), None),
        (("secrets", "set", "A", "1"), {"CRATE_ORG": "nope"}),
        (("env", "list", "--org", "nope"), None),
    ):
        missing = crate(*args, env=env)
        assert_clean_error(missing, 3)
        assert "'nope' does not exist" in missing.stderr
    assert not (crate.home / "orgs" / "nope.vault").exists()
    assert [o["name"] for o in orgs(crate)] == ["personal"]


def test_invalid_org_option_states_the_rule(crate: CrateRunner) -> None:
    refused = crate("secrets", "set", "A", "1", "--org", "Not Valid")
    assert_clean_error(refused, 2)
    assert ORG_RULE in refused.stderr


# -- session ---------------------------------------------------------------------------


def test_session_org_set_selects_the_default(crate: CrateRunner) -> None:
    crate("secrets", "set", "WHERE", "personal", check=True)
    crate("org", "create", "acme", check=True)
    crate("secrets", "set", "WHERE", "acme", "--org", "acme", check=True)

    chosen = crate("session", "org", "set", "acme")
    assert chosen.returncode == 0
    assert "session organization: acme" in chosen.stderr
    assert get(crate, "WHERE") == "acme"
    assert [o["name"] for o in orgs(crate) if o["current"]] == ["acme"]
    assert session(crate)["org"] == "acme"


def test_session_org_set_to_a_missing_org(crate: CrateRunner) -> None:
    crate("secrets", "set", "WHERE", "personal", check=True)
    missing = crate("session", "org", "set", "nope")
    assert_clean_error(missing, 3)
    assert "crate org create" in missing.stderr
    assert session(crate)["org"] == "personal"
    assert get(crate, "WHERE") == "personal"


def test_session_env_set(crate: CrateRunner) -> None:
    crate("secrets", "set", "WHERE", "prod", "--env", "prod", check=True)
    crate("session", "env", "set", "prod", check=True)
    assert get(crate, "WHERE") == "prod"
    assert session(crate)["env"] == "prod"
    assert_clean_error(crate("session", "env", "set", "nope"), 3)
    assert session(crate)["env"] == "prod"


def test_session_show_on_a_fresh_home_creates_nothing(crate: CrateRunner) -> None:
    shown = session(crate)
    assert set(shown) == SESSION_FIELDS
    assert shown["org"] is None
    assert shown["keystore"] == "not initialized"
    assert shown["master_key_version"] is None
    assert not crate.home.exists()


def test_session_show_after_first_use(crate: CrateRunner) -> None:
    crate("secrets", "list", check=True)
    shown = session(crate)
    assert shown == {
        "server": None,
        "agent": False,
        "org": "personal",
        "env": "dev",
        "home": str(crate.home),
        "settings": str(crate.home / "settings.toml"),
        "keystore": "file",
        "master_key_version": 1,
    }
    text = crate("session", "show", check=True).stdout
    assert "personal" in text and "file" in text


def test_session_show_reports_the_effective_org_and_env(crate: CrateRunner) -> None:
    crate("secrets", "list", check=True)
    crate("org", "create", "acme", check=True)
    shown = session(crate, env={"CRATE_ORG": "acme", "CRATE_ENV": "prod"})
    assert (shown["org"], shown["env"]) == ("acme", "prod")


# -- environments ------------------------------------------------------------------------


def test_env_list_starts_with_dev_staging_prod(crate: CrateRunner) -> None:
    assert sorted(envs(crate)) == ["dev", "prod", "staging"]
    text = crate("env", "list", check=True).stdout.split()
    assert sorted(text) == ["dev", "prod", "staging"]


def test_env_create_use_delete(crate: CrateRunner) -> None:
    created = crate("env", "create", "qa")
    assert created.returncode == 0, created
    assert "created environment 'qa'" in created.stderr
    assert "qa" in envs(crate)

    crate("secrets", "set", "A=1", "B=2", "--env", "qa", check=True)
    assert get(crate, "A", "--env", "qa") == "1"
    assert_clean_error(crate("secrets", "get", "A"), 3)

    assert_clean_error(crate("env", "delete", "qa"), 2)
    assert "qa" in envs(crate)
    deleted = crate("env", "delete", "qa", "--yes")
    assert deleted.returncode == 0
    assert "(2 secrets)" in deleted.stderr
    assert "qa" not in envs(crate)
    assert_clean_error(crate("secrets", "get", "A", "--env", "qa"), 3)
    assert_clean_error(crate("env", "delete", "qa", "--yes"), 3)


def test_env_create_existing_is_a_conflict(crate: CrateRunner) -> None:
    assert_clean_error(crate("env", "create", "prod"), 7)


@pytest.mark.parametrize("name", ["Prod", "-qa", "q a", "qa.1", "q" * 64])
def test_env_create_invalid_name_states_the_rule(crate: CrateRunner, name: str) -> None:
    refused = crate("env", "create", "--", name)
    assert_clean_error(refused, 2)
    assert ENV_RULE in refused.stderr


def test_env_names_may_hold_underscore_and_dash(crate: CrateRunner) -> None:
    crate("env", "create", "feature_x-1", check=True)
    crate("secrets", "set", "A", "1", "--env", "feature_x-1", check=True)
    assert get(crate, "A", "--env", "feature_x-1") == "1"


def test_unknown_env_is_an_error_and_nothing_is_created(crate: CrateRunner) -> None:
    crate("secrets", "set", "DATABASE_URL", "dev-db", check=True)
    for args, env in (
        (("secrets", "set", "DATABASE_URL", "prod-db", "--env", "prdo"), None),
        (("secrets", "set", "DATABASE_URL", "prod-db"), {"CRATE_ENV": "prdo"}),
        (("secrets", "import", "-", "--env", "prdo"), None),
    ):
        refused = crate(*args, env=env, input="DATABASE_URL=prod-db\n")
        assert_clean_error(refused, 3)
        assert "environment 'prdo' does not exist" in refused.stderr
        assert "crate env create prdo" in refused.stderr
        assert "prod-db" not in refused.stderr
    assert sorted(envs(crate)) == ["dev", "prod", "staging"]
    assert get(crate, "DATABASE_URL") == "dev-db"
    history = json.loads(crate("secrets", "history", "DATABASE_URL", "--json", check=True).stdout)
    assert len(history) == 1


def test_environments_are_separate(crate: CrateRunner) -> None:
    crate("secrets", "set", "DATABASE_URL", "dev-db", check=True)
    crate("secrets", "set", "DATABASE_URL", "prod-db", "--env", "prod", check=True)
    assert get(crate, "DATABASE_URL") == "dev-db"
    assert get(crate, "DATABASE_URL", "--env", "prod") == "prod-db"
    assert get(crate, "DATABASE_URL", env={"CRATE_ENV": "prod"}) == "prod-db"
    assert get(crate, "DATABASE_URL", "--env", "dev", env={"CRATE_ENV": "prod"}) == "dev-db"
    assert_clean_error(crate("secrets", "get", "DATABASE_URL", "--env", "staging"), 3)
    crate("secrets", "delete", "DATABASE_URL", "--env", "prod", "--yes", check=True)
    assert get(crate, "DATABASE_URL") == "dev-db"


def test_environments_belong_to_their_org(crate: CrateRunner) -> None:
    crate("env", "create", "qa", check=True)
    crate("org", "create", "acme", check=True)
    assert "qa" not in envs(crate, "--org", "acme")
    assert_clean_error(crate("secrets", "set", "A", "1", "--org", "acme", "--env", "qa"), 3)
