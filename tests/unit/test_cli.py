"""cli.restore_environment: what the frozen binary's launcher added to the
environment is taken back before crate starts any command."""

from __future__ import annotations

import pytest

from crate_cli.cli import _command_words, restore_environment

LAUNCHED = {
    "_PYI_ARCHIVE_FILE": "/b/crate",
    "_PYI_PARENT_PROCESS_LEVEL": "1",
    "_PYI_LINUX_PROCESS_NAME": "crate",
    "_MEIPASS2": "/b/_internal",
}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(
            {
                "LD_LIBRARY_PATH": "/b/_internal:/user",
                "LD_LIBRARY_PATH_ORIG": "/user",
                **LAUNCHED,
                "PATH": "/usr/bin:/bin",
                "PYI_NOT_OURS": "kept",
                "X_PYI_": "kept",
            },
            {
                "LD_LIBRARY_PATH": "/user",
                "PATH": "/usr/bin:/bin",
                "PYI_NOT_OURS": "kept",
                "X_PYI_": "kept",
            },
            id="the user's library path comes back",
        ),
        pytest.param(
            {"LD_LIBRARY_PATH": "/b/_internal", **LAUNCHED, "TERM": "xterm"},
            {"TERM": "xterm"},
            id="without an original, no library path",
        ),
        pytest.param(
            {"LD_LIBRARY_PATH": "/b/_internal", "LD_LIBRARY_PATH_ORIG": "", "LANG": "C"},
            {"LD_LIBRARY_PATH": "", "LANG": "C"},
            id="an empty original is kept",
        ),
        pytest.param(
            {"PATH": "/usr/bin", "LANG": "C.UTF-8"},
            {"PATH": "/usr/bin", "LANG": "C.UTF-8"},
            id="a clean environment is left alone",
        ),
    ],
)
def test_restore_environment(before: dict[str, str], after: dict[str, str]) -> None:
    environ = dict(before)
    restore_environment(environ)
    assert environ == after


@pytest.mark.parametrize(
    ("own", "words"),
    [
        (["--store", "postgresql://h/x", "run"], ["run"]),
        (["--store=sqlite", "--debug", "secrets", "get", "A"], ["secrets", "get", "A"]),
        (["--debug", "--store", "sqlite", "run", "A"], ["run", "A"]),
        # After the command's name, --store is not the root's option.
        (["run", "--store", "A"], ["run", "A"]),
    ],
)
def test_a_root_options_value_is_not_a_command_word(own: list[str], words: list[str]) -> None:
    assert _command_words(own) == words
