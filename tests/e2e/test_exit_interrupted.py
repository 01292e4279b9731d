"""Ctrl-C at a prompt: crate says it was aborted and exits 130 (ExitCode.INTERRUPTED)."""

from __future__ import annotations

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner
from tests.support.terminal import Terminal

pytestmark = pytest.mark.e2e


def test_ctrl_c_at_the_value_prompt_exits_130_and_stores_nothing(crate: CrateRunner) -> None:
    term = Terminal(crate, "secrets", "set", "API_KEY")
    term.child.expect_exact("Value for API_KEY: ")
    assert term.child.waitnoecho(timeout=10)
    term.child.sendintr()
    assert term.finish() == ExitCode.INTERRUPTED == 130
    assert term.output.replace("\r", "").endswith("crate: aborted\n"), term.output
    assert "Traceback" not in term.output
    listed = crate("secrets", "list", "--json", check=True).stdout
    assert "API_KEY" not in listed
