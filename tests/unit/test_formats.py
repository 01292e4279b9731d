"""Tests of crate_cli.formats: reading .env files and rendering exports.

`parse_dotenv` is compared with python-dotenv (interpolation off) on a
hand-written corpus and on seeded random files, including which files are
errors. `render` output is read back by the programs it is written for:
python-dotenv, a model of `docker --env-file`, and real sh and bash processes
that `eval` the shell format.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values
from dotenv.parser import parse_stream

from crate_cli.errors import ExitCode, InvalidInput
from crate_cli.formats import (
    dotenv_docker_incompatible,
    dotenv_interpolated,
    parse_dotenv,
    render,
)
from tests.support.tools import require_tool

# ---------------------------------------------------------------- helpers


def python_dotenv_pairs(text: str) -> list[tuple[str, str]] | None:
    """Every assignment python-dotenv sees, or None if it finds the file broken.

    A bare `NAME` (value None) counts as broken: crate requires a value.
    """
    pairs: list[tuple[str, str]] = []
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            return None
        if binding.key is not None:
            if binding.value is None:
                return None
            pairs.append((binding.key, binding.value))
    return pairs


def docker_env_file(text: str) -> dict[str, str]:
    """`docker --env-file` as released (docker/cli pkg/kvfile): no quote handling.

    Lines are split at LF (Go's bufio.ScanLines, which also drops one CR before
    it), leading whitespace is trimmed, empty and `#` lines are skipped, and
    the line is cut at the first `=`; the value is taken literally.
    """
    env: dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw.removesuffix("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:  # without "=" docker would copy NAME from its own environment
            env[key] = value
    return env


FRAGMENTS = [
    "a", "Z", "9", "_", "-", ".", "/", ":", "@", "%", "+", "=", "~", "^", ",",
    " ", "  ", "\t", "\n", "\r\n", "\r", "'", '"', "`", "\\", "\\\\", "\\n", "\\'",
    '\\"', "$", "$HOME", "${", "}", "{", "${HOME}", "${X:-d}", "#", " #", "# x",
    "!", "*", "?", ";", "&", "|", "<", ">", "(", ")", "é", "ß", "€", "日本", "😀",
    "\u00a0", "\u2028", "\x85", "\x0b", "\x0c", "\x1f", "\x7f", "\ufeff",
]  # fmt: skip


def random_values(seed: int, count: int, max_parts: int = 10) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(FRAGMENTS, k=rng.randint(0, max_parts))) for _ in range(count)]


TRICKY_VALUES = [
    "",
    "plain",
    "with space",
    " leading",
    "trailing ",
    "  ",
    "\t",
    "a=b=c",
    "postgres://user:p%40ss@db.example:5432/app?sslmode=require",
    "#not-a-comment",
    "value # not a comment",
    "a#b",
    "'",
    '"',
    "''",
    '""',
    "'single'",
    '"double"',
    "it's",
    'say "hi"',
    "\\",
    "\\\\",
    "ends with \\",
    "\\'",
    '\\"',
    "\\n",
    "C:\\path\\to\\file",
    "$",
    "$HOME",
    "${",
    "${HOME",
    "$HOME}",
    "${HOME}",
    "${HOME:-x}",
    "${:-$}",
    "$(touch canary)",
    "`touch canary`",
    "'; touch canary; '",
    "!event",
    "~",
    "~/x",
    "*",
    "a;b&c|d",
    "line1\nline2",
    "\n",
    "\n\n",
    "trailing newline\n",
    "crlf\r\nline",
    "\r",
    "cr\rmid",
    "-----BEGIN KEY-----\nMIIB\n-----END KEY-----\n",
    "é ß € 日本 😀",
    "\u00a0nbsp\u00a0",
    "line\u2028sep",
    "\x85",
    "\x0b\x0c",
    "\x1f",
    "\ufeffbom",
    "=",
    "==",
    "export X=1",
    "X=1\nY=2",
    "'\n'",
]


def values_and_names(values: list[str]) -> list[tuple[str, str]]:
    return [(f"V{i}", value) for i, value in enumerate(values)]


ALL_VALUES = TRICKY_VALUES + random_values(seed=1, count=600)


# ---------------------------------------------------------------- parse_dotenv

DOTENV_CORPUS = [
    "A=1",
    "A=1\nB=2\n",
    "A=1\n\n\nB=2\n\n",
    "  A=1\n\tB=2",
    "A = 1",
    "A= 1",
    "A =1",
    "A\t=\t1\t",
    "# comment\nA=1\n  # indented comment\n#B=2",
    "#",
    "",
    "\n\n",
    "A=1 # comment",
    "A=1# not a comment",
    "A=1\t# comment",
    "A=#value",
    "A= #comment",
    "A=  # comment",
    "A=a b c",
    "A=a b c   ",
    "A=",
    "A=\nB=",
    'A=""',
    "A=''",
    "A= ''",
    'A=""  # c',
    "export A=1",
    "export  A=1",
    "export\tA=1",
    "export A = 'x'",
    "export=1",
    "exportA=1",
    "A=a=b=c",
    "A==",
    "A=x=",
    "A='a b'",
    "A='a # b'",
    'A="a # b"',
    "A='x' # c",
    "A='x'#c",
    'A="x"\t#c',
    "A='it\\'s'",
    "A='back\\\\slash'",
    "A='not\\nnewline'",
    "A='\\$'",
    "A='trail\\\\'",
    "A='\\\\\\''",
    'A="line1\\nline2"',
    'A="tab\\there"',
    'A="cr\\rlf"',
    'A="q\\"q"',
    'A="s\\\'s"',
    'A="b\\\\s"',
    'A="dollar\\$x"',
    'A="bell\\a\\b\\f\\v"',
    'A="\\x41\\u0041"',
    'A="unknown\\qescape"',
    "A='multi\nline'",
    "A='multi\n\nline'\nB=2",
    'A="multi\nline"',
    'A="multi\nline" # c\nB=3',
    "A='a\"b'",
    'A="a\'b"',
    "A=${HOME}",
    "A='${HOME}'",
    'A="${HOME:-x}"',
    "A=$HOME",
    "A=é ß € 日本 😀",
    "A='😀'",
    "ÄÖ=umlaut key",
    "a.b-c=weird key",
    "'A'=quoted key",
    "A=1\r\nB=2\r\n",
    "A='x'\r\nB=\"y\"\r\n",
    "A=1 # c\r\nB=2",
    "A='multi\r\nline'\r\n",
    "A=1\rB=2",
    "\ufeffA=1",
    "A=1\nA=2\nB=3\nA=4",
    "A=trailing\\",
    "A=\\'",
    "A=x'y",
    'A=x"y',
    "A=`cmd`",
    "A=$(cmd)",
    "A=\u00a0x\u00a0",
    "A=x\u2028y",
    "A=x\x85y",
]


@pytest.mark.parametrize("text", DOTENV_CORPUS)
def test_parse_matches_python_dotenv(text: str) -> None:
    expected = python_dotenv_pairs(text)
    assert expected is not None, "corpus entries must be valid for python-dotenv"
    pairs = parse_dotenv(text)
    assert pairs == expected
    reference = dotenv_values(stream=io.StringIO(text), interpolate=False)
    assert dict(pairs) == reference
    assert list(dict(pairs)) == list(reference)


def _random_dotenv(rng: random.Random) -> str:
    """A .env-like text: mostly plausible lines, with random damage."""
    lines = []
    for _ in range(rng.randint(1, 4)):
        key = rng.choice(["A", "B", "key_1", "'Q'", "é", ""])
        prefix = rng.choice(["", "", "export ", " ", "\t", "# "])
        eq = rng.choice(["=", "=", " = ", "= ", "", "=="])
        body = "".join(rng.choices(FRAGMENTS, k=rng.randint(0, 6)))
        quote = rng.choice(["", "", "'", '"'])
        close = quote if rng.random() < 0.9 else ""
        tail = rng.choice(["", "", " # c", "#c", " x", "  "])
        lines.append(f"{prefix}{key}{eq}{quote}{body}{close}{tail}")
    return rng.choice(["\n", "\r\n", "\n\n"]).join(lines) + rng.choice(["", "\n", "\r\n"])


@pytest.mark.parametrize("seed", range(8))
def test_parse_agrees_with_python_dotenv_on_random_files(seed: int) -> None:
    """Same pairs when python-dotenv reads the file, an error when it cannot."""
    rng = random.Random(seed)
    texts = [_random_dotenv(rng) for _ in range(400)]
    texts += ["".join(rng.choices([*FRAGMENTS, "A", "=", "export "], k=8)) for _ in range(400)]
    for text in texts:
        expected = python_dotenv_pairs(text)
        if expected is None:
            with pytest.raises(InvalidInput):
                parse_dotenv(text)
        else:
            assert parse_dotenv(text) == expected, repr(text)


def test_parse_does_not_interpolate() -> None:
    text = "A=x\nB=${A}\nC='${A:-d}'\nD=\"$A ${HOME}\"\n"
    assert parse_dotenv(text) == [
        ("A", "x"),
        ("B", "${A}"),
        ("C", "${A:-d}"),
        ("D", "$A ${HOME}"),
    ]


def test_parse_keeps_every_duplicate_in_order() -> None:
    pairs = parse_dotenv("A=1\nB=2\nA=3\n")
    assert pairs == [("A", "1"), ("B", "2"), ("A", "3")]
    assert dict(pairs) == {"A": "3", "B": "2"}
    assert list(dict(pairs)) == ["A", "B"]


def test_parse_returns_names_as_written() -> None:
    assert parse_dotenv("lower.case-name=1\n'QUOTED'=2") == [
        ("lower.case-name", "1"),
        ("QUOTED", "2"),
    ]


SECRET = "hunter2-very-secret"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (f"A=1\nB='{SECRET}\n", 2, "unterminated single-quoted"),
        (f'A=1\n\n\nB="{SECRET}', 4, "unterminated double-quoted"),
        (f"A='{SECRET}\\'", 1, "unterminated single-quoted"),
        (f"A='ok'\nB='{SECRET}' trailing", 2, "after a quoted value"),
        (f'A="{SECRET}"x', 1, "after a quoted value"),
        (f"A='multi\nline'{SECRET}", 2, "after a quoted value"),
        ("A=1\nBARE\n", 2, "expected NAME=VALUE"),
        (f"A=1\n{SECRET}\n", 2, "expected NAME=VALUE"),
        (f"A=1\r\n\r\n{SECRET} x\r\n", 3, "expected NAME=VALUE"),
        (f"={SECRET}", 1, "expected NAME=VALUE"),
        (f"A B={SECRET}", 1, "expected NAME=VALUE"),
        ("export A", 1, "expected NAME=VALUE"),
        (f"export ={SECRET}", 1, "expected NAME=VALUE"),
        (f"'{SECRET}", 1, "expected NAME=VALUE"),
    ],
)
def test_parse_errors_name_the_line_not_the_value(text: str, line: int, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_dotenv(text)
    error = caught.value
    assert error.exit_code == ExitCode.USAGE
    assert error.message.startswith(f"line {line}: ")
    assert words in error.message
    assert SECRET not in error.diagnostics()


# ---------------------------------------------------------------- render

SAMPLE = [("A", "plain"), ("B", "it's $HOME"), ("C", "two\nlines"), ("D", "")]


def test_render_env_is_raw() -> None:
    assert render(SAMPLE, "env") == "A=plain\nB=it's $HOME\nC=two\nlines\nD=\n"


def test_render_json() -> None:
    out = render([("Z", 'é\n"q"'), ("A", "1")], "json")
    assert out == '{\n  "Z": "é\\n\\"q\\"",\n  "A": "1"\n}\n'
    assert json.loads(out) == {"Z": 'é\n"q"', "A": "1"}


def test_render_shell_text() -> None:
    assert render(SAMPLE, "shell") == (
        "export A='plain'\nexport B='it'\\''s $HOME'\nexport C='two\nlines'\nexport D=''\n"
    )
    assert render([("Q", "'")], "shell") == "export Q=\\'\n"
    assert render([("Q", "''a''")], "shell") == "export Q=\\'\\''a'\\'\\'\n"


def test_render_dotenv_text() -> None:
    secrets = [
        ("BARE", "abc-123_x.y,z:/@%+=^"),
        ("EMPTY", ""),
        ("SPACE", "a b"),
        ("QUOTE", "it's \\o/"),
        ("LINES", "a\nb"),
        ("CR", 'a\r\nb"\\'),
    ]
    assert render(secrets, "dotenv") == (
        "BARE=abc-123_x.y,z:/@%+=^\n"
        "EMPTY=\n"
        "SPACE='a b'\n"
        "QUOTE='it\\'s \\\\o/'\n"
        "LINES='a\nb'\n"
        'CR="a\\r\\nb\\"\\\\"\n'
    )


@pytest.mark.parametrize("fmt", ["env", "dotenv", "shell"])
def test_render_nothing_is_empty(fmt: str) -> None:
    assert render([], fmt) == ""


def test_render_json_nothing_is_an_empty_object() -> None:
    assert render([], "json") == "{}\n"


def test_render_unknown_format() -> None:
    with pytest.raises(InvalidInput, match="unknown format 'yaml'"):
        render(SAMPLE, "yaml")


@pytest.mark.parametrize("fmt", ["env", "dotenv", "shell"])
@pytest.mark.parametrize("name", ["A B", "A=B", "1A", "A;rm -rf /", "A\nB", ""])
def test_render_rejects_names_that_are_not_variable_names(fmt: str, name: str) -> None:
    with pytest.raises(InvalidInput):
        render([(name, "v")], fmt)


def test_render_shell_rejects_nul() -> None:
    with pytest.raises(InvalidInput, match="NUL") as caught:
        render([("A", "sec\x00ret")], "shell")
    assert "sec" not in caught.value.message


# ---------------------------------------------------------------- shell: eval for real

SHELLS = [
    pytest.param("/bin/sh", id="sh"),
    pytest.param("bash", id="bash"),
    pytest.param("zsh", id="zsh"),
]


def _run_shell(shell: str, script: str, env: dict[str, str], cwd: Path) -> bytes:
    proc = subprocess.run(
        [require_tool(shell), "-c", script],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        check=True,
    )
    return proc.stdout


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("how", ["eval", "inline"])
def test_shell_output_evaluates_to_the_values(shell: str, how: str, tmp_path: Path) -> None:
    secrets = values_and_names([v for v in ALL_VALUES if "\x00" not in v])
    out = render(secrets, "shell")
    names = [name for name, _ in secrets]
    printer = "printf '%s\\0' " + " ".join(f'"${name}"' for name in names) + "\n"
    if how == "eval":
        script, env = 'eval "$CRATE_OUT"\n' + printer, {"CRATE_OUT": out}
    else:
        script, env = out + printer, {}
    stdout = _run_shell(shell, script, env, tmp_path)
    assert stdout.decode("utf-8").split("\0")[:-1] == [value for _, value in secrets]
    # Values such as "$(touch canary)" must not have run.
    assert not (tmp_path / "canary").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_shell_output_exports_to_children(shell: str, tmp_path: Path) -> None:
    secrets = [("CRATE_T1", "a'b\nc $x `y`"), ("CRATE_T2", "")]
    stdout = _run_shell(shell, render(secrets, "shell") + "env -0", {}, tmp_path)
    exported = dict(item.split("=", 1) for item in stdout.decode().split("\0") if item)
    assert exported["CRATE_T1"] == "a'b\nc $x `y`"
    assert exported["CRATE_T2"] == ""


# ---------------------------------------------------------------- dotenv: read back


def test_dotenv_round_trip_python_dotenv_interpolating() -> None:
    secrets = values_and_names(ALL_VALUES)
    expanded = set(dotenv_interpolated(secrets))
    wanted = {name: value for name, value in secrets if name not in expanded}
    text = render([(name, value) for name, value in secrets if name in wanted], "dotenv")
    assert dotenv_values(stream=io.StringIO(text), interpolate=True) == wanted


def test_dotenv_round_trip_python_dotenv_literal() -> None:
    secrets = values_and_names(ALL_VALUES)
    text = render(secrets, "dotenv")
    assert dotenv_values(stream=io.StringIO(text), interpolate=False) == dict(secrets)


def test_dotenv_round_trip_through_a_real_file(tmp_path: Path) -> None:
    """A file is read with universal newlines, which would turn a raw CR into LF."""
    secrets = values_and_names(ALL_VALUES)
    path = tmp_path / ".env"
    path.write_bytes(render(secrets, "dotenv").encode("utf-8"))
    assert dotenv_values(path, interpolate=False) == dict(secrets)
    assert parse_dotenv(path.read_text(encoding="utf-8")) == secrets


def test_dotenv_round_trip_parse_dotenv() -> None:
    secrets = values_and_names(ALL_VALUES)
    assert parse_dotenv(render(secrets, "dotenv")) == secrets


def test_dotenv_docker_reads_back_exactly_the_compatible_values() -> None:
    secrets = values_and_names(ALL_VALUES)
    incompatible = set(dotenv_docker_incompatible(secrets))
    for name, value in secrets:
        docker_value = docker_env_file(render([(name, value)], "dotenv")).get(name)
        assert (docker_value == value) == (name not in incompatible), repr(value)
    # Every value python-dotenv and docker can both take bare is compatible.
    together = docker_env_file(render(secrets, "dotenv"))
    for name, value in secrets:
        if name not in incompatible:
            assert together[name] == value


def test_dotenv_docker_incompatible_lists() -> None:
    secrets = [
        ("OK", "abc"),
        ("EMPTY", ""),
        ("URL", "https://u:p@h:1/x?y=z"),  # `?` is outside the bare set
        ("SPACE", "a b"),
        ("LINES", "a\nb"),
        ("HASH", "a#b"),
    ]
    assert dotenv_docker_incompatible(secrets) == ["URL", "SPACE", "LINES", "HASH"]


def test_dotenv_interpolated_lists_what_python_dotenv_expands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", "/sentinel-home")
    monkeypatch.setenv("X", "sentinel-x")
    secrets = values_and_names(ALL_VALUES)
    text = render(secrets, "dotenv")
    expanded = dotenv_values(stream=io.StringIO(text), interpolate=True)
    changed = [name for name, value in secrets if expanded[name] != value]
    assert changed == dotenv_interpolated(secrets)
    assert dotenv_interpolated([("A", "${HOME}"), ("B", "$HOME"), ("C", "${a:b}")]) == ["A"]
