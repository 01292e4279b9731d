"""End to end on a terminal: crate's prompts under pexpect.

Each test spawns the installed crate on a pseudo-terminal with the
environment of `crate.env()`. Hidden prompts are answered only once the
terminal's echo is off (`waitnoecho`), and the whole transcript is kept, so a
typed secret that shows up anywhere in it is caught.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.support.crate_runner import CrateRunner
from tests.support.terminal import Terminal

pytestmark = pytest.mark.e2e

PASSPHRASE = "correct horse battery"
PASSPHRASE_PROMPT = "Passphrase for the crate master key: "
REPEAT_PROMPT = "Repeat the passphrase: "


def assert_tty_error(output: str, prefix: str = "crate: error: ") -> None:
    lines = [line for line in output.replace("\r", "").splitlines() if line.startswith("crate:")]
    assert any(line.startswith(prefix) for line in lines), output
    assert "Traceback" not in output


# -- secret value prompt -------------------------------------------------------------


def test_set_prompts_for_the_value_without_echo(crate: CrateRunner) -> None:
    typed = "typed-s3cret-value"
    term = Terminal(crate, "secrets", "set", "API_KEY")
    term.answer_hidden("Value for API_KEY: ", typed)
    assert term.finish() == 0, term.output
    assert typed not in term.output
    assert "set API_KEY in personal/dev (version 1)" in term.output
    # Off a terminal, get prints the raw value without a newline ...
    assert crate("secrets", "get", "API_KEY", check=True).stdout == typed
    # ... and on a terminal with one.
    shown = Terminal(crate, "secrets", "get", "API_KEY")
    assert shown.finish() == 0
    assert shown.output == typed + "\r\n"


def test_an_empty_answer_at_the_prompt_stores_nothing(crate: CrateRunner) -> None:
    crate("secrets", "set", "API_KEY", "keep-me", check=True)
    term = Terminal(crate, "secrets", "set", "API_KEY")
    term.answer_hidden("Value for API_KEY: ", "")
    assert term.finish() == 2
    assert_tty_error(term.output)
    assert "nothing was stored" in term.output
    assert crate("secrets", "get", "API_KEY", check=True).stdout == "keep-me"


def test_set_several_names_never_prompts(crate: CrateRunner) -> None:
    term = Terminal(crate, "secrets", "set", "A=1", "B=2")
    assert term.finish() == 0, term.output
    assert "Value for" not in term.output


# -- passphrase keystore ----------------------------------------------------------------


def test_init_with_a_passphrase_asks_twice(crate: CrateRunner) -> None:
    mismatch = Terminal(crate, "init", "--keystore", "passphrase")
    mismatch.answer_hidden(PASSPHRASE_PROMPT, PASSPHRASE)
    mismatch.answer_hidden(REPEAT_PROMPT, PASSPHRASE + "!")
    assert mismatch.finish() == 6
    assert_tty_error(mismatch.output)
    assert "differ" in mismatch.output
    assert not (crate.home / "keys" / "master.json").exists()
    assert not (crate.home / "orgs").exists()
    shown = json.loads(crate("session", "show", "--json", check=True).stdout)
    assert shown["keystore"] == "not initialized"

    created = Terminal(crate, "init", "--keystore", "passphrase")
    created.answer_hidden(PASSPHRASE_PROMPT, PASSPHRASE)
    created.answer_hidden(REPEAT_PROMPT, PASSPHRASE)
    assert created.finish() == 0, created.output
    assert "sealed by a passphrase slot" in created.output
    assert PASSPHRASE not in created.output
    shown = json.loads(crate("session", "show", "--json", check=True).stdout)
    assert shown["keystore"] == "passphrase"


def test_init_refuses_a_short_passphrase(crate: CrateRunner) -> None:
    term = Terminal(crate, "init", "--keystore", "passphrase")
    term.answer_hidden(PASSPHRASE_PROMPT, "short")
    assert term.finish() == 2
    assert_tty_error(term.output)
    assert "at least 8 characters" in term.output
    assert not (crate.home / "keys" / "master.json").exists()


def test_init_refuses_a_short_passphrase_from_the_environment(crate: CrateRunner) -> None:
    seven = "Zq7-x!p"
    done = crate("init", "--keystore", "passphrase", env={"CRATE_PASSPHRASE": seven})
    assert done.returncode == 2
    assert done.stderr.startswith("crate: error: ")
    assert "at least 8 characters" in done.stderr
    assert seven not in done.stderr
    assert not (crate.home / "keys" / "master.json").exists()
    # What the failed attempt left is private all the same.
    assert crate.home.stat().st_mode & 0o777 == 0o700


@pytest.fixture
def locked(crate: CrateRunner) -> CrateRunner:
    """A passphrase-sealed home holding API_KEY=s3cret-in-vault."""
    unlock = {"CRATE_PASSPHRASE": PASSPHRASE}
    crate("init", "--keystore", "passphrase", env=unlock, check=True)
    crate("secrets", "set", "API_KEY", "s3cret-in-vault", env=unlock, check=True)
    return crate


def test_a_locked_vault_asks_for_the_passphrase(locked: CrateRunner) -> None:
    wrong = Terminal(locked, "secrets", "get", "API_KEY")
    wrong.answer_hidden(PASSPHRASE_PROMPT, "not the passphrase")
    assert wrong.finish() == 6
    assert_tty_error(wrong.output)
    assert "wrong passphrase" in wrong.output
    assert "not the passphrase" not in wrong.output
    assert "s3cret-in-vault" not in wrong.output

    right = Terminal(locked, "secrets", "get", "API_KEY")
    right.answer_hidden(PASSPHRASE_PROMPT, PASSPHRASE)
    assert right.finish() == 0
    assert right.output.endswith("s3cret-in-vault\r\n")
    assert PASSPHRASE not in right.output


def test_crate_passphrase_means_no_prompt(locked: CrateRunner) -> None:
    term = Terminal(locked, "secrets", "get", "API_KEY", env={"CRATE_PASSPHRASE": PASSPHRASE})
    assert term.finish() == 0
    assert term.output == "s3cret-in-vault\r\n"


def test_without_a_terminal_or_crate_passphrase_it_is_locked(locked: CrateRunner) -> None:
    done = locked("secrets", "get", "API_KEY")
    assert done.returncode == 6
    assert done.stderr.startswith("crate: error: a passphrase is needed")
    assert "CRATE_PASSPHRASE" in done.stderr


def test_run_asks_then_hands_the_terminal_to_the_command(locked: CrateRunner) -> None:
    probe = (
        "import os; "
        "print(os.isatty(0), os.isatty(1), os.isatty(2), os.environ['API_KEY'], "
        "'CRATE_PASSPHRASE' in os.environ)"
    )
    term = Terminal(locked, "run", "--", sys.executable, "-c", probe)
    term.answer_hidden(PASSPHRASE_PROMPT, PASSPHRASE)
    assert term.finish() == 0, term.output
    assert term.output.endswith("True True True s3cret-in-vault False\r\n")


# -- delete confirmation ---------------------------------------------------------------


@pytest.mark.parametrize("answer", ["n", ""])
def test_delete_answered_no_keeps_the_secret(crate: CrateRunner, answer: str) -> None:
    crate("secrets", "set", "API_KEY", "keep-me", check=True)
    term = Terminal(crate, "secrets", "delete", "API_KEY")
    term.answer("Delete API_KEY from personal/dev? [y/N]: ", answer)
    assert term.finish() == 1
    assert "nothing was deleted" in term.output
    assert "keep-me" not in term.output
    assert crate("secrets", "get", "API_KEY", check=True).stdout == "keep-me"
    history = json.loads(crate("secrets", "history", "API_KEY", "--json", check=True).stdout)
    assert len(history) == 1


def test_delete_answered_yes_deletes(crate: CrateRunner) -> None:
    crate("secrets", "set", "API_KEY", "delete-me", check=True)
    term = Terminal(crate, "secrets", "delete", "API_KEY")
    term.answer("Delete API_KEY from personal/dev? [y/N]: ", "y")
    assert term.finish() == 0, term.output
    assert "deleted API_KEY" in term.output
    assert crate("secrets", "get", "API_KEY").returncode == 3


def test_org_delete_asks_on_a_terminal(crate: CrateRunner) -> None:
    crate("org", "create", "acme", check=True)
    no = Terminal(crate, "org", "delete", "acme")
    no.answer("Delete organization 'acme' and all its secrets? [y/N]: ", "n")
    assert no.finish() != 0
    assert (crate.home / "orgs" / "acme.vault").exists()
    yes = Terminal(crate, "org", "delete", "acme")
    yes.answer("Delete organization 'acme' and all its secrets? [y/N]: ", "y")
    assert yes.finish() == 0
    assert not (crate.home / "orgs" / "acme.vault").exists()
