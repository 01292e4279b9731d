"""cli.restore_environment: what the frozen binary's launcher added to the
environment is taken back before crate starts any command."""

from __future__ import annotations

from crate_cli.cli import restore_environment


def test_restore_environment_puts_back_the_users_library_path() -> None:
    environ = {
        "LD_LIBRARY_PATH": "/b/_internal:/user",
        "LD_LIBRARY_PATH_ORIG": "/user",
        "_PYI_ARCHIVE_FILE": "/b/crate",
        "_PYI_PARENT_PROCESS_LEVEL": "1",
        "_PYI_LINUX_PROCESS_NAME": "crate",
        "_MEIPASS2": "/b/_internal",
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/u",
        "PYI_NOT_OURS": "kept",
        "X_PYI_": "kept",
    }
    restore_environment(environ)
    assert environ == {
        "LD_LIBRARY_PATH": "/user",
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/u",
        "PYI_NOT_OURS": "kept",
        "X_PYI_": "kept",
    }


def test_restore_environment_without_original_removes_the_library_path() -> None:
    environ = {
        "LD_LIBRARY_PATH": "/b/_internal",
        "_PYI_ARCHIVE_FILE": "/b/crate",
        "_MEIPASS2": "/b/_internal",
        "TERM": "xterm",
    }
    restore_environment(environ)
    assert environ == {"TERM": "xterm"}


def test_restore_environment_keeps_an_empty_original() -> None:
    environ = {"LD_LIBRARY_PATH": "/b/_internal", "LD_LIBRARY_PATH_ORIG": "", "LANG": "C"}
    restore_environment(environ)
    assert environ == {"LD_LIBRARY_PATH": "", "LANG": "C"}


def test_restore_environment_on_a_clean_environment_changes_nothing() -> None:
    environ = {"PATH": "/usr/bin", "LANG": "C.UTF-8"}
    restore_environment(environ)
    assert environ == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}
