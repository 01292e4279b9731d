"""End to end: the options of `crate run` and references between secrets.

tests/e2e/test_cli_run.py covers the exec itself (exit codes, signals, argv,
credentials, --tags, NAME selection, a thousand secrets); this file covers
--command, --preserve-env, --no-inherit-env, --only, --name-transformer,
--raw and `${NAME}` / `${env.NAME}` references in `run` and `secrets fetch`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crate_cli.config import CREDENTIAL_VARIABLES
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error

pytestmark = pytest.mark.e2e

PYTHON = sys.executable
DUMP_ENV = "import os, json; print(json.dumps(dict(os.environ)))"
# CRATE_TOKEN needs a server (alone it is an error): tests/e2e/test_remote.py
# checks that it never reaches the command either.
CREDENTIALS = tuple(v for v in CREDENTIAL_VARIABLES if v != "CRATE_TOKEN")

# personal/dev, as stored.
DEV = {
    "GREETING": "hello",
    "SHARED": "from-vault",
    "TWILIO_API_KEY": "twilio-value",
    "SMTP__USER_NAME": "mailer",
    "DB_HOST": "db.internal",
    "DB_USER": "app",
    "DB_URL": "postgres://${DB_USER}@${DB_HOST}/${prod.DB_NAME}",
    "NESTED": "<${DB_URL}>",
    "CROSS": "${prod.PROD_CHAIN}",
    "ESCAPED": "$${DB_HOST} is ${DB_HOST}",
    "NOT_REFS": "${1X} ${A-B} ${ DB_HOST } $DB_HOST ${Prod.X} ${DB_HOST",
}
TAGGED = {"TAGGED_REF": "${DB_HOST}"}  # tag `web`; DB_HOST has no tag
# personal/dev, as `run` and `fetch` give them.
RESOLVED = {
    **DEV,
    **TAGGED,
    "DB_URL": "postgres://app@db.internal/main",
    "NESTED": "<postgres://app@db.internal/main>",
    "CROSS": "main-blue",
    "ESCAPED": "${DB_HOST} is db.internal",
    "TAGGED_REF": "db.internal",
}
PROD = {"DB_NAME": "main", "PROD_CHAIN": "${DB_NAME}-${staging.SUFFIX}"}
STAGING = {
    "SUFFIX": "blue",
    # camel case makes one name of these two.
    "TWILIO_API_KEY": "staging-one",
    "TWILIO__API_KEY": "staging-two",
}
# personal/broken: each of these fails alone (tests select them by name).
BROKEN = {
    "FINE": "ok",
    "MISSING_REF": "${NOPE}",
    "DEEP_1": "x${DEEP_2}",
    "DEEP_2": "${prod.DEEP_3}",
    "BAD_ENV": "${nope.X}",
    "SELF": "${SELF}",
    "CYC_A": "${CYC_B}",
    "CYC_B": "${CYC_C}",
    "CYC_C": "${CYC_A}",
    "CROSS_CYCLE": "${staging.BACK}",
}


def pairs(values: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    """dev, prod, staging and `broken` filled as above; tests must not change it."""
    runner = CrateRunner(tmp_path_factory.mktemp("run-options") / "home")
    # What references name is stored first: a value may name only what exists.
    runner("secrets", "set", "--env", "staging", *pairs(STAGING), check=True)
    runner("secrets", "set", "--env", "prod", *pairs(PROD), check=True)
    runner("secrets", "set", *pairs(DEV), check=True)
    runner("secrets", "set", *pairs(TAGGED), "--tag", "web", check=True)
    runner("env", "create", "broken", check=True)
    store_as_an_older_crate(runner.home, "broken", BROKEN)
    store_as_an_older_crate(runner.home, "staging", {"BACK": "${broken.CROSS_CYCLE}"})
    return runner


def store_as_an_older_crate(home: Path, env: str, values: dict[str, str]) -> None:
    """Values whose references never resolve, which crate now refuses to store
    (a missing target, a cycle): what a crate that did not check references
    at store could have left in a vault, and `run` must still refuse."""
    from crate_cli.session import Session
    from crate_cli.vault import secrets

    session = Session(environ={"CRATE_HOME": str(home), "CRATE_KEYSTORE": "file"})
    check = secrets.check_references
    secrets.check_references = lambda *_args, **_kw: {}
    try:
        session.client("personal").store(env, list(values.items()))
    finally:
        secrets.check_references = check
        session.close()


def child_env(home: CrateRunner, *run_args: str, env: dict[str, str] | None = None) -> dict:
    """The environment the command gets from `crate run RUN_ARGS -- python`."""
    done = home("run", *run_args, "--", PYTHON, "-c", DUMP_ENV, env=env, check=True)
    return dict(json.loads(done.stdout))


def secrets_in(env: dict[str, str], store: dict[str, str] = RESOLVED) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in store}


def run_exact(home: CrateRunner, args: list[str], environ: dict[str, str]) -> Result:
    """crate with exactly `environ` (plus its home), nothing inherited from pytest."""
    proc = subprocess.run(
        [*home.argv0, *args],
        capture_output=True,
        env={**environ, "CRATE_HOME": str(home.home), "CRATE_KEYSTORE": "file"},
        timeout=60,
        check=False,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_help_lists_every_option(home: CrateRunner) -> None:
    from crate_cli.run.args import RUN_OPTIONS

    done = home("run", "--help", check=True)
    for flag, *_ in RUN_OPTIONS:
        assert flag in done.stdout
    assert done.stderr == ""


# -- --command ---------------------------------------------------------------------

AWKWARD_COMMAND = """printf '%s|' "$GREETING" 'it''s' "a  b" * $((6*7)) "" ; echo "${X:-}" \\\n"""


@pytest.fixture
def fake_shell(tmp_path: Path) -> Path:
    """A "shell" that prints its argv and the GREETING it got, as JSON."""
    shell = tmp_path / "fake shell"
    shell.write_text(
        f"#!{PYTHON}\nimport json, os, sys\n"
        'print(json.dumps([sys.argv, os.environ.get("GREETING")]))\n'
    )
    shell.chmod(0o755)
    return shell


def test_command_runs_with_shell_from_environment(home: CrateRunner, fake_shell: Path) -> None:
    done = home("run", "--command", AWKWARD_COMMAND, env={"SHELL": str(fake_shell)}, check=True)
    assert json.loads(done.stdout) == [[str(fake_shell), "-c", AWKWARD_COMMAND], "hello"]


@pytest.mark.parametrize("shell", [None, ""], ids=["unset", "empty"])
def test_command_without_shell_uses_bin_sh(
    home: CrateRunner, tmp_path: Path, shell: str | None
) -> None:
    (tmp_path / "match.txt").touch()
    environ = {k: v for k, v in home.env().items() if k != "SHELL"}
    if shell is not None:
        environ["SHELL"] = shell
    script = 'printf "%s|" "$0" "$GREETING" *.txt "$SHELL"'
    proc = subprocess.run(
        [*home.argv0, "run", "--command", script],
        capture_output=True,
        env=environ,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    assert proc.stdout.decode() == f"/bin/sh|hello|match.txt|{shell or ''}|"


def test_command_exit_status_is_the_shells(home: CrateRunner) -> None:
    done = home("run", "--only", "GREETING", "--command", 'test "$GREETING" = hello && exit 7')
    assert (done.returncode, done.stderr) == (7, "")


def test_command_with_a_missing_shell_exits_127(home: CrateRunner, tmp_path: Path) -> None:
    shell = str(tmp_path / "no-such-shell")
    done = home("run", "--command", "true", env={"SHELL": shell})
    assert_clean_error(done, 127)
    assert done.stderr == f"crate: error: command not found: {shell}\n"


def test_command_and_double_dash_together_are_a_usage_error(
    home: CrateRunner, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    done = home("run", "--command", f"touch {marker}", "--", "touch", str(marker))
    assert_clean_error(done, 2)
    assert "not both" in done.stderr
    assert not marker.exists()


# -- --preserve-env, --no-inherit-env ---------------------------------------------

PARENT = {"SHARED": "from-parent", "GREETING": "parent-hello", "PARENT_ONLY": "p"}


@pytest.mark.parametrize(
    ("options", "shared", "greeting"),
    [
        ([], "from-vault", "hello"),
        (["--preserve-env"], "from-parent", "parent-hello"),
        (["--preserve-env=SHARED"], "from-parent", "hello"),
        (["--preserve-env=SHARED,GREETING,NOT_INHERITED"], "from-parent", "parent-hello"),
        (["--preserve-env="], "from-vault", "hello"),
    ],
)
def test_preserve_env(home: CrateRunner, options: list[str], shared: str, greeting: str) -> None:
    env = child_env(home, *options, env=PARENT)
    assert (env["SHARED"], env["GREETING"]) == (shared, greeting)
    # Secrets the parent does not have are set whatever is preserved.
    assert env["DB_HOST"] == "db.internal"
    assert env["NOT_REFS"] == RESOLVED["NOT_REFS"]
    assert env["PARENT_ONLY"] == "p"


@pytest.mark.parametrize(
    "options",
    [["--preserve-env"], ["--preserve-env=" + ",".join(CREDENTIALS)], ["--no-inherit-env"]],
    ids=["preserve-all", "preserve-credentials", "no-inherit"],
)
def test_credentials_never_reach_the_command_whatever_the_options(
    home: CrateRunner, options: list[str]
) -> None:
    env = child_env(home, *options, "--only", "GREETING", env=dict.fromkeys(CREDENTIALS, "cred"))
    assert not set(CREDENTIALS) & set(env)
    assert "cred" not in env.values()
    assert env["GREETING"] == "hello"


MINIMAL = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/nonexistent/home",
    "USER": "someone",
    "TERM": "xterm-test",
    "LANG": "C.UTF-8",
}


@pytest.mark.parametrize(
    "kept", [tuple(MINIMAL), ("PATH", "HOME")], ids=["all-five", "only-path-home"]
)
def test_no_inherit_env_gives_exactly_the_minimal_environment(
    home: CrateRunner, kept: tuple[str, ...]
) -> None:
    parent = {k: MINIMAL[k] for k in kept}
    parent.update({"EXTRA": "x", "SHARED": "from-parent", "LC_ALL": "C", "CRATE_ORG": "personal"})
    parent.update(dict.fromkeys(CREDENTIALS, "cred"))
    done = run_exact(
        home,
        ["run", "--no-inherit-env", "--only", "GREETING,SHARED,DB_URL", "--", "env", "-0"],
        parent,
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    got = dict(line.split("=", 1) for line in done.stdout.split("\0") if line)
    assert got == {
        **{k: MINIMAL[k] for k in kept},
        "GREETING": "hello",
        "SHARED": "from-vault",
        "DB_URL": RESOLVED["DB_URL"],
    }


def test_no_inherit_env_with_preserve_env_keeps_the_minimal_variables(
    home: CrateRunner,
) -> None:
    env = child_env(home, "--no-inherit-env", "--preserve-env", "--only", "GREETING,SHARED")
    assert set(env) - set(MINIMAL) == {"GREETING", "SHARED"}


# -- --only, --tags ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (["--only", "GREETING,SHARED"], {"GREETING", "SHARED"}),
        (["--only=GREETING", "--only", "SHARED"], {"GREETING", "SHARED"}),
        (
            ["DB_HOST", "--only", "GREETING,,SHARED", "DB_USER"],
            {"GREETING", "SHARED", "DB_HOST", "DB_USER"},
        ),
    ],
)
def test_only_and_names_select_the_union(
    home: CrateRunner, options: list[str], names: set[str]
) -> None:
    assert secrets_in(child_env(home, *options)) == {n: RESOLVED[n] for n in names}


def test_tags_with_a_reference_to_an_untagged_secret(home: CrateRunner) -> None:
    assert secrets_in(child_env(home, "--tags", "web")) == {"TAGGED_REF": "db.internal"}


# -- --name-transformer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("camel", ["twilioApiKey", "smtpUserName", "dbUrl"]),
        ("upper-camel", ["TwilioApiKey", "SmtpUserName", "DbUrl"]),
        ("lower-snake", ["twilio_api_key", "smtp_user_name", "db_url"]),
        ("lower-kebab", ["twilio-api-key", "smtp-user-name", "db-url"]),
        ("tf-var", ["TF_VAR_twilio_api_key", "TF_VAR_smtp_user_name", "TF_VAR_db_url"]),
        ("dotnet-env", ["TwilioApiKey", "Smtp__UserName", "DbUrl"]),
    ],
)
def test_name_transformers(home: CrateRunner, kind: str, names: list[str]) -> None:
    selected = ["TWILIO_API_KEY", "SMTP__USER_NAME", "DB_URL"]
    env = child_env(home, "--name-transformer", kind, "--only", ",".join(selected))
    # Renamed after references are resolved; the original names are gone.
    assert {n: env.get(n) for n in names} == {
        n: RESOLVED[o] for n, o in zip(names, selected, strict=True)
    }
    assert not set(selected) & set(env)


def test_name_transformer_collision_never_runs_the_command(
    home: CrateRunner, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    done = home(
        "run",
        "--env",
        "staging",
        "--name-transformer",
        "camel",
        "TWILIO_API_KEY",
        "TWILIO__API_KEY",
        "--",
        "touch",
        str(marker),
    )
    assert_clean_error(done, 2, hidden=("staging-one", "staging-two"))
    assert "TWILIO_API_KEY and TWILIO__API_KEY into twilioApiKey" in done.stderr
    assert not marker.exists()


def test_unknown_name_transformer_is_a_usage_error(home: CrateRunner, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = home("run", "--name-transformer", "dotnet", "--", "touch", str(marker))
    assert_clean_error(done, 2)
    assert "unknown name transformer 'dotnet'" in done.stderr
    assert not marker.exists()


def test_global_options_first_take_the_same_run_options(home: CrateRunner) -> None:
    """`crate --debug run ...` goes through click, to the same parser."""
    done = home(
        "--debug", "run", "--name-transformer", "camel", "--only", "DB_URL", "--",
        PYTHON, "-c", DUMP_ENV, check=True,
    )  # fmt: skip
    env = json.loads(done.stdout)
    assert env["dbUrl"] == RESOLVED["DB_URL"]
    assert "DB_URL" not in env


# -- references ----------------------------------------------------------------------


def fetch_json(home: CrateRunner, *args: str) -> dict[str, str]:
    done = home("secrets", "fetch", "--format", "json", *args, check=True)
    return dict(json.loads(done.stdout))


def test_run_and_fetch_resolve_references(home: CrateRunner) -> None:
    """Same env, another env (itself referring on), nested, escaped, and
    text that only looks like a reference."""
    assert secrets_in(child_env(home)) == RESOLVED
    assert fetch_json(home) == RESOLVED


def test_raw_gives_the_values_as_stored(home: CrateRunner) -> None:
    stored = {**DEV, **TAGGED}
    assert secrets_in(child_env(home, "--raw"), stored) == stored
    assert fetch_json(home, "--raw") == stored


def test_fetch_formats_show_resolved_values(home: CrateRunner) -> None:
    done = home("secrets", "fetch", "CROSS", "DB_HOST", "--format", "env", check=True)
    assert done.stdout == "CROSS=main-blue\nDB_HOST=db.internal\n"


def test_references_of_a_selected_secret_stay_out_of_the_environment(
    home: CrateRunner,
) -> None:
    """NESTED needs DB_URL, DB_USER, DB_HOST and prod's DB_NAME: they are
    fetched to resolve it but are not put in the command's environment."""
    env = child_env(home, "NESTED", "CROSS")
    assert secrets_in(env) == {"NESTED": RESOLVED["NESTED"], "CROSS": "main-blue"}
    assert not {"DB_URL", "DB_USER", "DB_HOST", "DB_NAME", "PROD_CHAIN", "SUFFIX"} & set(env)
    assert fetch_json(home, "NESTED") == {"NESTED": RESOLVED["NESTED"]}


def test_an_environment_resolves_its_own_references(home: CrateRunner) -> None:
    assert fetch_json(home, "--env", "prod") == {"DB_NAME": "main", "PROD_CHAIN": "main-blue"}


UNRESOLVED = "a secret reference cannot be resolved: "


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "MISSING_REF",
            UNRESOLVED + "MISSING_REF -> NOPE (no secret NOPE in broken)",
        ),
        (
            "DEEP_1",
            UNRESOLVED + "DEEP_1 -> DEEP_2 -> prod.DEEP_3 (no secret DEEP_3 in prod)",
        ),
        (
            "BAD_ENV",
            UNRESOLVED + "BAD_ENV -> nope.X (environment 'nope' does not exist)",
        ),
        ("SELF", "secret references form a cycle: SELF -> SELF"),
        ("CYC_B", "secret references form a cycle: CYC_B -> CYC_C -> CYC_A -> CYC_B"),
        (
            "CROSS_CYCLE",
            "secret references form a cycle: CROSS_CYCLE -> staging.BACK -> CROSS_CYCLE",
        ),
    ],
)
def test_unresolvable_references_never_run_the_command(
    home: CrateRunner, tmp_path: Path, name: str, message: str
) -> None:
    marker = tmp_path / "ran"
    done = home("run", "--env", "broken", name, "--", "touch", str(marker))
    assert_clean_error(done, 1, hidden=("from-vault",))
    assert done.stderr.splitlines()[0] == f"crate: error: {message}"
    assert "--raw" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "chain"),
    [("DEEP_1", "DEEP_1 -> DEEP_2 -> prod.DEEP_3"), ("CYC_A", "CYC_A -> CYC_B -> CYC_C -> CYC_A")],
)
def test_fetch_fails_on_unresolvable_references(home: CrateRunner, name: str, chain: str) -> None:
    done = home("secrets", "fetch", "--env", "broken", name)
    assert_clean_error(done, 1)
    assert chain in done.stderr


def test_raw_and_selection_avoid_broken_references(home: CrateRunner) -> None:
    env = child_env(home, "--env", "broken", "--raw", "CYC_A", "MISSING_REF", "BAD_ENV")
    assert secrets_in(env, BROKEN) == {k: BROKEN[k] for k in ("CYC_A", "MISSING_REF", "BAD_ENV")}
    assert secrets_in(child_env(home, "--env", "broken", "FINE"), BROKEN) == {"FINE": "ok"}
    assert fetch_json(home, "--env", "broken", "--raw", "SELF") == {"SELF": "${SELF}"}


def test_a_deleted_reference_is_reported(crate: CrateRunner) -> None:
    crate("secrets", "set", "URL=https://${HOST}/", "HOST=example.org", check=True)
    assert child_env(crate, "URL")["URL"] == "https://example.org/"
    crate("secrets", "delete", "HOST", "--yes", check=True)
    done = crate("run", "URL", "--", "true")
    assert_clean_error(done, 1)
    assert "URL -> HOST (no secret HOST in dev)" in done.stderr
    assert_clean_error(crate("secrets", "fetch", "URL"), 1)
    assert fetch_json(crate, "--raw") == {"URL": "https://${HOST}/"}
