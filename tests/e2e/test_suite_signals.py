"""The suite passes whatever signal dispositions it inherits.

A shell starts a background job with SIGINT and SIGQUIT ignored, and every
crate the tests start would inherit that: Ctrl-C at a prompt, or `kill -INT`
in a command, would do nothing. tests/conftest.py restores the defaults as
the suite starts (tests/support/signals.py); here the tests that send
SIGINT run in a pytest started with those signals ignored.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.signals import IGNORING

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SIGINT_TESTS = [
    "tests/e2e/test_exit_interrupted.py::test_ctrl_c_at_the_value_prompt_exits_130_and_stores_nothing",
    "tests/e2e/test_run_modes.py::test_a_signal_death_is_what_a_shell_reports[exec-INT-130]",
    "tests/e2e/test_run_modes.py::test_a_signal_death_is_what_a_shell_reports[supervised-INT-130]",
    "tests/e2e/test_run_modes.py::test_signal_dispositions_are_the_same_as_without_crate"
    "[exec-defaults]",
]


def test_the_sigint_tests_pass_in_a_suite_started_with_sigint_ignored(tmp_path: Path) -> None:
    inner = subprocess.run(
        [
            *IGNORING,
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "inner"),
            *SIGINT_TESTS,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert inner.returncode == 0, inner.stdout[-4000:] + inner.stderr[-2000:]
    assert f"{len(SIGINT_TESTS)} passed" in inner.stdout, inner.stdout[-2000:]
