"""End to end: `crate run -- CMD`, the exec form, against the installed crate.

The command replaces crate: these tests check what the command sees (argv,
environment, PID) and what the caller sees (signals, errors), from a real
process. What the exec form and the supervised one must do alike (exit
status, stdin, a closed pipe, ...) is in tests/e2e/test_run_modes.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.crate_runner import CrateRunner, assert_clean_error
from tests.support.processes import TRAP_SIGTERM

pytestmark = pytest.mark.e2e

PYTHON = sys.executable
DUMP_ARGV = "import sys, json; print(json.dumps(sys.argv[1:]))"
DUMP_ENV = "import os, json; print(json.dumps(dict(os.environ)))"
# CRATE_TOKEN needs a server (alone it is an error): tests/e2e/test_remote.py
# checks that it never reaches the command either.
CREDENTIALS = (
    "CRATE_PASSPHRASE",
    "CRATE_MASTER_KEY",
    "CRATE_PKCS11_PIN",
    "CRATE_TPM2_PIN",
)


def child_env(crate: CrateRunner, *run_args: str, env: dict[str, str] | None = None) -> dict:
    """The environment the command gets from `crate run RUN_ARGS -- python`."""
    done = crate("run", *run_args, "--", PYTHON, "-c", DUMP_ENV, env=env, check=True)
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    """A home with tagged secrets in personal/dev; tests must not change it."""
    runner = CrateRunner(tmp_path_factory.mktemp("run") / "home")
    runner("secrets", "set", "GREETING=hello", "SHARED=from-vault", check=True)
    runner("secrets", "set", "API_KEY=k", "DB_URL=postgres://db", "--tag", "backend", check=True)
    runner("secrets", "set", "DB_PASSWORD=pw", "--tag", "backend,db", check=True)
    return runner


ALL = {
    "GREETING": "hello",
    "SHARED": "from-vault",
    "API_KEY": "k",
    "DB_URL": "postgres://db",
    "DB_PASSWORD": "pw",
}


# -- argv, stdin, PID -----------------------------------------------------------------

AWKWARD_ARGS = [
    "two words",
    "it's",
    '"double"',
    "$HOME",
    "${HOME}",
    "*",
    "*.py",
    "~",
    "",
    " ",
    "a\nb",
    "-",
    "--",
    "-c",
    "--help",
    "--org",
    "--env=prod",
    "caf\u00e9",
    "; echo injected",
    "$(echo injected)",
]


def test_argv_arrives_unchanged(home: CrateRunner, tmp_path: Path) -> None:
    # A glob that would match if anything expanded it.
    (tmp_path / "match.py").touch()
    done = subprocess.run(
        [*home.argv0, "run", "--", PYTHON, "-c", DUMP_ARGV, *AWKWARD_ARGS],
        capture_output=True,
        env=home.env(),
        cwd=tmp_path,
        timeout=30,
        check=True,
    )
    assert json.loads(done.stdout) == AWKWARD_ARGS


def test_double_dash_in_the_command_is_kept(home: CrateRunner) -> None:
    done = home("run", "--", PYTHON, "-c", DUMP_ARGV, "a", "--", "b", check=True)
    assert json.loads(done.stdout) == ["a", "--", "b"]


def test_options_after_double_dash_belong_to_the_command(home: CrateRunner) -> None:
    done = home("run", "--", "echo", "--env", "nope", "--org", "x", "--help", check=True)
    assert done.stdout == "--env nope --org x --help\n"


def test_same_pid_as_crate(home: CrateRunner) -> None:
    proc = subprocess.Popen(
        [*home.argv0, "run", "--", "sh", "-c", "echo $$"],
        stdout=subprocess.PIPE,
        env=home.env(),
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert int(out) == proc.pid


def test_sigterm_reaches_the_command_exactly_once(home: CrateRunner, tmp_path: Path) -> None:
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    proc = subprocess.Popen(
        [*home.argv0, "run", "--", PYTHON, "-c", TRAP_SIGTERM, str(marker), str(ready)],
        env=home.env(),
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, "the command exited before it was ready"
            assert time.monotonic() < deadline, "the command never got ready"
            time.sleep(0.02)
        assert int(ready.read_text()) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert marker.read_text() == "TERM\n"


# -- the environment the command gets ----------------------------------------------


def test_all_secrets_by_default(home: CrateRunner) -> None:
    env = child_env(home)
    assert {k: env.get(k) for k in ALL} == ALL
    assert env["PATH"] == os.environ["PATH"], "inherited variables are kept"


def test_only_named_secrets(home: CrateRunner) -> None:
    env = child_env(home, "GREETING", "DB_URL")
    assert {k for k in ALL if k in env} == {"GREETING", "DB_URL"}


def test_only_secrets_with_every_tag(home: CrateRunner) -> None:
    assert {k for k in ALL if k in child_env(home, "--tags", "backend")} == {
        "API_KEY",
        "DB_URL",
        "DB_PASSWORD",
    }
    assert {k for k in ALL if k in child_env(home, "--tags", "backend,db")} == {"DB_PASSWORD"}
    assert {k for k in ALL if k in child_env(home, "--tags=nothing")} == set()


def test_secrets_override_inherited_variables(home: CrateRunner) -> None:
    env = child_env(home, env={"SHARED": "from-parent", "ONLY_PARENT": "kept"})
    assert env["SHARED"] == "from-vault"
    assert env["ONLY_PARENT"] == "kept"


def test_credentials_never_reach_the_command(home: CrateRunner) -> None:
    env = child_env(home, env=dict.fromkeys(CREDENTIALS, "credential-value"))
    assert not set(CREDENTIALS) & set(env)
    assert "credential-value" not in json.dumps(env)
    assert env["GREETING"] == "hello"


def test_passphrase_vault_run_hides_the_passphrase(crate: CrateRunner) -> None:
    secret = {"CRATE_PASSPHRASE": "correct horse battery"}
    crate("init", "--keystore", "passphrase", env=secret, check=True)
    crate("secrets", "set", "GREETING", "hello", env=secret, check=True)
    env = child_env(crate, env=secret)
    assert env["GREETING"] == "hello"
    assert "CRATE_PASSPHRASE" not in env
    assert "correct horse battery" not in json.dumps(env)


def test_org_and_env_options_select_the_secrets(crate: CrateRunner) -> None:
    crate("secrets", "set", "WHERE", "personal-dev", check=True)
    crate("org", "create", "acme", check=True)
    crate("secrets", "set", "WHERE", "acme-prod", "--org", "acme", "--env", "prod", check=True)
    assert child_env(crate)["WHERE"] == "personal-dev"
    assert child_env(crate, "--org", "acme", "--env", "prod")["WHERE"] == "acme-prod"
    assert child_env(crate, "--org=acme", "--env=prod")["WHERE"] == "acme-prod"
    by_env = child_env(crate, env={"CRATE_ORG": "acme", "CRATE_ENV": "prod"})
    assert by_env["WHERE"] == "acme-prod"


@pytest.mark.slow
def test_a_thousand_secrets_of_one_kib(crate: CrateRunner, tmp_path: Path) -> None:
    rng = random.Random(1000)
    alphabet = string.ascii_letters + string.digits + "+/=-_.:@"
    secrets = {
        f"BULK_{i:04d}": "".join(rng.choice(alphabet) for _ in range(1024)) for i in range(1000)
    }
    path = tmp_path / "bulk.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    imported = crate("secrets", "import", str(path), "--json", check=True)
    assert json.loads(imported.stdout)["imported"] == 1000
    env = child_env(crate)
    assert {k: v for k, v in env.items() if k.startswith("BULK_")} == secrets


# -- errors: the command never runs ------------------------------------------------


def test_missing_double_dash_is_a_usage_error(home: CrateRunner, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for args in (["run"], ["run", "--"], ["run", "touch", str(marker)], ["run", "GREETING"]):
        done = home(*args)
        assert_clean_error(done, 2)
        assert "--" in done.stderr
    assert not marker.exists()


def test_missing_double_dash_before_an_option_like_argument(home: CrateRunner) -> None:
    done = home("run", "sh", "-c", "echo hi")
    assert_clean_error(done, 2)
    assert "put the command after --" in done.stderr


@pytest.mark.slow
def test_an_early_exit_waits_for_the_key_search(home: CrateRunner) -> None:
    """A usage error exits while the ephemeral key search (started before
    parsing) may still run. A daemon thread inside cryptography's Rust code at
    interpreter finalization used to abort the process ("FATAL: exception not
    rethrown", exit 134) about once in 150 runs; the search is now waited for."""
    for _ in range(60):
        done = home("run", "sh", "-c", "echo hi")
        assert "FATAL" not in done.stderr, done.stderr
        assert_clean_error(done, 2)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--env", "nope"), 3),
        (("--env", "Not Valid"), 2),
        (("--org", "nope"), 3),
        (("--tags", "Bad Tag"), 2),
        (("MISSING",), 3),
        (("not-a-name",), 2),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_errors_before_exec_never_run_the_command(
    home: CrateRunner, tmp_path: Path, args: tuple[str, ...], code: int
) -> None:
    marker = tmp_path / "ran"
    done = home("run", *args, "--", "touch", str(marker))
    assert_clean_error(done, code, hidden=tuple(v for v in ALL.values() if len(v) > 2))
    assert not marker.exists()


def test_a_locked_vault_never_runs_the_command(crate: CrateRunner, tmp_path: Path) -> None:
    secret = {"CRATE_PASSPHRASE": "correct horse battery"}
    crate("init", "--keystore", "passphrase", env=secret, check=True)
    crate("secrets", "set", "GREETING", "hello", env=secret, check=True)
    marker = tmp_path / "ran"
    assert_clean_error(crate("run", "--", "touch", str(marker)), 6)
    wrong = crate("run", "--", "touch", str(marker), env={"CRATE_PASSPHRASE": "wrong wrong"})
    assert_clean_error(wrong, 6, hidden=("wrong wrong", "correct horse battery"))
    assert not marker.exists()


def test_each_run_sees_the_values_of_its_moment(tmp_path: Path) -> None:
    """The first run seals a snapshot of the environment and later runs open
    it; a set, a delete or a rollback in between must show in the next run."""
    crate = CrateRunner(tmp_path / "home")
    crate("secrets", "set", "A=one", "B=bee", check=True)
    wanted = {"A": "one", "B": "bee"}
    for change, after in (
        ([], wanted),
        (["secrets", "set", "A=two"], {"A": "two", "B": "bee"}),
        (["secrets", "delete", "B", "--yes"], {"A": "two"}),
        (["secrets", "rollback", "A", "--to", "1"], {"A": "one"}),
        ([], {"A": "one"}),
    ):
        if change:
            crate(*change, check=True)
        for _ in range(2):  # the run that seals a snapshot, then one that opens it
            seen = child_env(crate)
            assert {k: seen[k] for k in ("A", "B") if k in seen} == after
    fetched = crate("secrets", "fetch", "--format", "json", check=True).stdout
    assert json.loads(fetched) == {"A": "one"}
