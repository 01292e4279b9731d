"""What crate prints for an error, and the exit codes it names (DESIGN §7).

`CrateError.render` is the one place the stderr lines are made; `cli.main`
writes them for crate's errors and for click's usage errors alike.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crate_cli.cli import main
from crate_cli.errors import (
    Conflict,
    CrateError,
    ExitCode,
    IntegrityError,
    InvalidInput,
    InvalidSealedValue,
    KeystoreError,
    NotFound,
    PayloadTooLarge,
    SealedTransportRequired,
    Unauthorized,
    error_from_api,
)


def test_an_error_renders_its_message_then_its_hint() -> None:
    assert NotFound("no secret A in acme/dev").render() == "crate: error: no secret A in acme/dev\n"
    assert InvalidInput("bad name", "use letters").render() == (
        "crate: error: bad name\ncrate: use letters\n"
    )
    # An empty hint is no hint.
    assert CrateError("it failed", "").render() == "crate: error: it failed\n"


def test_render_says_what_diagnostics_says() -> None:
    error = Conflict("already exists", "pick another name")
    assert error.render() == "".join(
        f"crate: {'error: ' if i == 0 else ''}{line}\n"
        for i, line in enumerate(error.diagnostics().split("\n"))
    )


def test_the_documented_exit_codes() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "ERROR": 1,
        "USAGE": 2,
        "NOT_FOUND": 3,
        "DENIED": 4,
        "INTEGRITY": 5,
        "KEYSTORE": 6,
        "CONFLICT": 7,
        "CANNOT_EXECUTE": 126,
        "COMMAND_NOT_FOUND": 127,
        "INTERRUPTED": 130,
    }
    assert InvalidInput("x").exit_code == ExitCode.USAGE
    assert NotFound("x").exit_code == ExitCode.NOT_FOUND
    assert Unauthorized("x").exit_code == ExitCode.DENIED
    assert IntegrityError().exit_code == ExitCode.INTEGRITY
    assert KeystoreError("x").exit_code == ExitCode.KEYSTORE
    assert Conflict("x").exit_code == ExitCode.CONFLICT


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ended:
        main(list(argv))
    code = ended.value.code
    return int(code) if isinstance(code, int) else 1, capsys.readouterr().err


def test_main_prints_the_rendered_error_and_exits_with_its_code(
    crate_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(capsys, "org", "delete", "nope", "--yes")
    assert (code, err) == (3, "crate: error: organization 'nope' does not exist\n")
    code, err = _run(capsys, "session", "org", "set", "nope")
    assert code == 3
    assert err == (
        "crate: error: organization 'nope' does not exist\n"
        "crate: create it with: crate org create\n"
    )


def test_a_usage_error_from_click_renders_as_crate_s_own(
    crate_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(capsys, "secrets", "bogus")
    assert code == ExitCode.USAGE
    assert err == "crate: error: No such command 'bogus'.\ncrate: see 'crate secrets --help'\n"
    code, err = _run(capsys, "token", "create", "ci", "--role", "boss")
    assert code == ExitCode.USAGE
    assert err.startswith("crate: error: Invalid value for '--role': 'boss' is not one of ")
    assert err.endswith("\ncrate: see 'crate token create --help'\n")
    assert err.count("\n") == 2


@pytest.mark.parametrize(
    "cls",
    [
        InvalidInput,
        PayloadTooLarge,
        SealedTransportRequired,
        InvalidSealedValue,
        NotFound,
        IntegrityError,
        KeystoreError,
        Conflict,
    ],
)
def test_errors_keep_their_exit_code_across_the_wire(cls: type[CrateError]) -> None:
    original = cls("message")
    rebuilt = error_from_api(original.api_code, original.message)
    assert rebuilt.exit_code == original.exit_code
    assert rebuilt.api_code == original.api_code
    assert rebuilt.message == "message"
