"""End to end: `crate secrets ...` as a user types it, against the installed crate.

Every test starts crate in a subprocess (no TTY, so prompts are off; the
prompt tests live in test_cli_prompts.py) on a fresh CRATE_HOME, except those
that share a module-scoped home (each with names of its own, or read-only) to
save first-use start-ups.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from dotenv import dotenv_values

import crate_cli
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

LIST_FIELDS = {"name", "environment", "version", "tags", "updated_at", "actor"}


def names(crate: CrateRunner, *args: str) -> list[str]:
    """The secret names `crate secrets list --json` shows."""
    rows = json.loads(crate("secrets", "list", "--json", *args, check=True).stdout)
    return [row["name"] for row in rows]


def value(crate: CrateRunner, name: str, *args: str) -> str:
    return crate("secrets", "get", name, *args, check=True).stdout


# -- first use ------------------------------------------------------------------


def test_first_use_creates_key_and_org_then_run_sees_the_secret(crate: CrateRunner) -> None:
    first = crate("secrets", "set", "GREETING", "hello")
    assert first.returncode == 0, first
    assert first.stdout == ""
    assert "created master key v1" in first.stderr
    assert "protected by file permissions only" in first.stderr
    assert "created organization 'personal'" in first.stderr

    second = crate("run", "--", "sh", "-c", "echo $GREETING")
    assert second.returncode == 0, second
    assert second.stdout == "hello\n"
    assert second.stderr == "", "the first-use notices must appear only once"


def test_first_use_keeps_files_private(crate: CrateRunner) -> None:
    crate("secrets", "set", "GREETING", "hello", check=True)
    paths = [crate.home, *crate.home.rglob("*")]
    assert any(p.suffix == ".vault" for p in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, f"{path} is {oct(mode)}"


def start(crate: CrateRunner, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*crate.argv0, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=crate.env(),
    )


def finish(procs: list[subprocess.Popen[bytes]]) -> list[Result]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append(Result(proc.returncode, out.decode(), err.decode()))
    return results


def test_concurrent_first_uses_and_writes_lose_nothing(crate: CrateRunner) -> None:
    firsts = finish([start(crate, "secrets", "set", f"P_{i}", f"value-{i}") for i in range(6)])
    assert [r.returncode for r in firsts] == [0] * 6, firsts
    assert sum("created organization 'personal'" in r.stderr for r in firsts) == 1
    registry = json.loads((crate.home / "keys" / "master.json").read_text())
    assert [v["version"] for v in registry["versions"]] == [1]
    fetched = json.loads(crate("secrets", "fetch", "--json", check=True).stdout)
    assert fetched == {f"P_{i}": f"value-{i}" for i in range(6)}

    same = finish([start(crate, "secrets", "set", "SAME", f"v{i}") for i in range(6)])
    assert [r.returncode for r in same] == [0] * 6, same
    history = json.loads(crate("secrets", "history", "SAME", "--json", check=True).stdout)
    assert [h["version"] for h in history] == [1, 2, 3, 4, 5, 6]


def test_only_the_process_that_creates_the_master_key_says_so(crate: CrateRunner) -> None:
    # Hold crate's key-creation lock so that several first uses queue on it.
    keys = crate.home / "keys"
    crate.home.mkdir(mode=0o700)  # a home others can enter is refused
    keys.mkdir(mode=0o700)
    with open(keys / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [start(crate, "secrets", "set", f"P_{i}", "1") for i in range(4)]
        time.sleep(2.0)
        fcntl.flock(lock, fcntl.LOCK_UN)
    results = finish(procs)
    assert [r.returncode for r in results] == [0] * 4, results
    assert sum("created master key" in r.stderr for r in results) == 1


def test_version_and_help(crate: CrateRunner) -> None:
    version = crate("--version")
    assert version.returncode == 0, version
    assert version.stdout.startswith(f"crate {crate_cli.__version__}")
    assert not crate.home.exists()
    helped = crate("--help")
    assert helped.returncode == 0
    for command in ("init", "org", "env", "session", "secrets", "run"):
        assert command in helped.stdout


# -- secrets set ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    """One home for tests that each use their own secret names (saves first uses)."""
    runner = CrateRunner(tmp_path_factory.mktemp("shared") / "home")
    runner("secrets", "list", check=True)
    return runner


def test_set_name_value_and_get_prints_it_without_newline(crate: CrateRunner) -> None:
    done = crate("secrets", "set", "DATABASE_URL", "postgres://localhost/dev")
    assert done.returncode == 0
    assert "set DATABASE_URL in personal/dev (version 1)" in done.stderr
    assert value(crate, "DATABASE_URL") == "postgres://localhost/dev"


def test_set_value_starting_with_a_dash_after_double_dash(shared: CrateRunner) -> None:
    shared("secrets", "set", "FLAGS", "--", "-x --verbose", check=True)
    assert value(shared, "FLAGS") == "-x --verbose"


@pytest.mark.parametrize(
    ("data", "flags", "expected"),
    [
        (b"s3cret\n", (), "s3cret"),
        (b"no newline", (), "no newline"),
        (b"two\n\n", (), "two\n"),
        (b"line1\nline2\n", (), "line1\nline2"),
        (b"windows\r\n", (), "windows"),
        (b"kept\n", ("--keep-newline",), "kept\n"),
        (b"kept crlf\r\n", ("--keep-newline",), "kept crlf\r\n"),
        ("caf\u00e9 \u2713\n".encode(), (), "caf\u00e9 \u2713"),
        (b"  spaces kept  \n", (), "  spaces kept  "),
    ],
    ids=["newline", "none", "two", "multiline", "crlf", "keep", "keep-crlf", "utf8", "spaces"],
)
def test_set_from_stdin_drops_one_trailing_newline(
    shared: CrateRunner,
    request: pytest.FixtureRequest,
    data: bytes,
    flags: tuple[str, ...],
    expected: str,
) -> None:
    name = "STDIN_" + request.node.callspec.id.replace("-", "_").upper()
    shared("secrets", "set", name, "-", *flags, input=data, check=True)
    assert value(shared, name) == expected


def test_set_name_only_without_a_terminal_reads_stdin(shared: CrateRunner) -> None:
    shared("secrets", "set", "PIPED", input="piped value\n", check=True)
    assert value(shared, "PIPED") == "piped value"


def test_set_name_only_with_no_terminal_and_no_data_refuses(crate: CrateRunner) -> None:
    """No prompt is possible and stdin is at EOF: more likely a script without
    input than a wish to blank the secret, so nothing is stored (README)."""
    crate("secrets", "set", "API_KEY", "old", check=True)
    proc = subprocess.run(
        [*crate.argv0, "secrets", "set", "API_KEY"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=crate.env(),
        timeout=30,
        check=False,
    )
    assert_clean_error(Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode()), 2)
    assert "stdin was empty" in proc.stderr.decode()
    assert value(crate, "API_KEY") == "old"
    assert len(json.loads(crate("secrets", "history", "API_KEY", "--json").stdout)) == 1


def test_set_dash_with_empty_stdin_stores_empty(crate: CrateRunner) -> None:
    crate("secrets", "set", "API_KEY", "old", check=True)
    crate("secrets", "set", "API_KEY", "-", input=b"", check=True)
    assert value(crate, "API_KEY") == ""
    assert value(crate, "API_KEY", "--version", "1") == "old"


def test_set_several_pairs(crate: CrateRunner) -> None:
    done = crate("secrets", "set", "A=1", "B=two words", "C=x=y", "EMPTY=")
    assert done.returncode == 0, done
    got = json.loads(crate("secrets", "fetch", "--format", "json", check=True).stdout)
    assert got == {"A": "1", "B": "two words", "C": "x=y", "EMPTY": ""}


@pytest.mark.parametrize(
    "pairs",
    [
        ("A=new-hunter2", "1B=2"),
        ("A=new-hunter2", "B"),
        ("A=new-hunter2", "A=again"),
        ("A=new-hunter2", "B=ok", "bad name=x"),
    ],
    ids=["invalid-name", "not-a-pair", "duplicate", "space-in-name"],
)
def test_set_several_pairs_is_one_transaction(crate: CrateRunner, pairs: tuple[str, ...]) -> None:
    crate("secrets", "set", "A", "old", check=True)
    failed = crate("secrets", "set", *pairs)
    assert_clean_error(failed, 2, hidden=("new-hunter2",))
    assert names(crate) == ["A"]
    assert value(crate, "A") == "old"


def test_set_tags_kept_when_not_given_and_replaced_when_given(crate: CrateRunner) -> None:
    def tags() -> list[str]:
        (row,) = json.loads(crate("secrets", "list", "--json", check=True).stdout)
        return list(row["tags"])

    crate("secrets", "set", "API_KEY", "1", "--tag", "backend", "--tag", "db", check=True)
    assert tags() == ["backend", "db"]
    crate("secrets", "set", "API_KEY", "2", check=True)
    assert tags() == ["backend", "db"]
    crate("secrets", "set", "API_KEY", "3", "--tag", "frontend", check=True)
    assert tags() == ["frontend"]


def test_set_with_an_invalid_tag_stores_nothing(crate: CrateRunner) -> None:
    crate("secrets", "list", check=True)
    failed = crate("secrets", "set", "A", "hunter2", "--tag", "Not Valid")
    assert_clean_error(failed, 2, hidden=("hunter2",))
    assert "tag" in failed.stderr
    assert names(crate) == []


# -- get, list ------------------------------------------------------------------


def test_get_an_older_version(shared: CrateRunner) -> None:
    shared("secrets", "set", "TOKEN", "v1", check=True)
    shared("secrets", "set", "TOKEN", "v2", check=True)
    assert value(shared, "TOKEN") == "v2"
    assert value(shared, "TOKEN", "--version", "1") == "v1"
    assert value(shared, "TOKEN", "--version", "2") == "v2"


def test_list_json_has_metadata_and_never_values(crate: CrateRunner) -> None:
    crate("secrets", "set", "A=value-of-a-123", "B=value-of-b-456", "--tag", "backend", check=True)
    crate("secrets", "set", "A", "value-of-a-789", check=True)
    listed = crate("secrets", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [set(row) for row in rows] == [LIST_FIELDS, LIST_FIELDS]
    a, b = rows
    assert (a["name"], a["environment"], a["version"], a["tags"]) == ("A", "dev", 2, ["backend"])
    assert (b["name"], b["version"]) == ("B", 1)
    assert a["updated_at"].endswith("Z")
    assert "@" in a["actor"]
    table = crate("secrets", "list")
    for output in (listed.stdout, table.stdout):
        assert "value-of" not in output
    assert "A" in table.stdout and "backend" in table.stdout


def test_list_tags_selects_secrets_with_every_tag(crate: CrateRunner) -> None:
    crate("secrets", "set", "BOTH=1", "--tag", "backend,db", check=True)
    crate("secrets", "set", "BACKEND=2", "--tag", "backend", check=True)
    crate("secrets", "set", "DB=3", "--tag", "db", check=True)
    crate("secrets", "set", "NONE=4", check=True)
    assert names(crate, "--tags", "backend") == ["BACKEND", "BOTH"]
    assert names(crate, "--tags", "backend,db") == ["BOTH"]
    assert names(crate, "--tags", "backend", "--tags", "db") == ["BOTH"]
    assert names(crate, "--tags", "nothing") == []


# -- fetch ----------------------------------------------------------------------

# Values that break naive quoting in one format or another.
TRICKY = {
    "SIMPLE": "plain-value_1.2:3/4@5",
    "SPACES": "  two  spaces  ",
    "SINGLE": "it's",
    "DOUBLE": 'say "hi"',
    "BOTH_QUOTES": """'"'"'""",
    "DOLLAR": "$HOME $(id) `id` ${HOME}",
    "BACKSLASH": "a\\b\\'c\\",
    "NEWLINES": "line1\nline2\n\nline4",
    "CRLF": "dos\r\nline",
    "HASH": "#not a comment",
    "INLINE_HASH": "a #b",
    "BANG": "!! !$",
    "TAB": "a\tb",
    "UNICODE": "caf\u00e9 \u2713 \U0001f512",
    "EMPTY": "",
    "EQUALS": "a=b==c",
    "SEMICOLON": "x; rm -rf /tmp/nothing-here",
}


@pytest.fixture(scope="module")
def tricky(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    """One home holding TRICKY (set in one call) and one tagged secret."""
    runner = CrateRunner(tmp_path_factory.mktemp("tricky") / "home")
    runner("secrets", "set", *(f"{k}={v}" for k, v in TRICKY.items()), check=True)
    return runner


def test_fetch_json(tricky: CrateRunner) -> None:
    fetched = tricky("secrets", "fetch", "--raw", "--format", "json", check=True)
    assert json.loads(fetched.stdout) == TRICKY
    assert json.loads(tricky("secrets", "fetch", "--raw", "--json", check=True).stdout) == TRICKY


def test_fetch_env_is_name_equals_raw_value(tricky: CrateRunner) -> None:
    fetched = tricky("secrets", "fetch", "--raw", "SIMPLE", "SPACES", "DOLLAR", check=True)
    # In the order asked for.
    assert fetched.stdout == (
        f"SIMPLE={TRICKY['SIMPLE']}\nSPACES={TRICKY['SPACES']}\nDOLLAR={TRICKY['DOLLAR']}\n"
    )


def test_fetch_names_gives_only_those(tricky: CrateRunner) -> None:
    fetched = tricky("secrets", "fetch", "--raw", "SINGLE", "EMPTY", "--format", "json", check=True)
    assert json.loads(fetched.stdout) == {"SINGLE": "it's", "EMPTY": ""}


def read_env0(data: bytes) -> dict[str, str]:
    pairs = (entry.decode().partition("=") for entry in data.split(b"\0") if entry)
    return {name: val for name, _, val in pairs}


@pytest.mark.parametrize("shell", ["bash", "sh", "zsh"])
def test_fetch_shell_evals_back_to_the_same_values(
    tricky: CrateRunner, tmp_path: Path, shell: str
) -> None:
    path = require_tool(shell) if shell == "zsh" else shell
    script = tmp_path / "secrets.sh"
    script.write_bytes(
        tricky("secrets", "fetch", "--raw", "--format", "shell", check=True).stdout.encode()
    )
    proc = subprocess.run(
        [path, "-c", 'eval "$(cat "$1")" && env -0', shell, str(script)],
        capture_output=True,
        env={"PATH": os.environ["PATH"], "HOME": "/home-of-test"},
        timeout=30,
        check=True,
    )
    env = read_env0(proc.stdout)
    assert {k: env.get(k) for k in TRICKY} == TRICKY


def test_fetch_dotenv_reads_back_with_python_dotenv(tricky: CrateRunner, tmp_path: Path) -> None:
    fetched = tricky("secrets", "fetch", "--raw", "--format", "dotenv", check=True)
    path = tmp_path / ".env"
    path.write_bytes(fetched.stdout.encode())
    assert dict(dotenv_values(path, interpolate=False)) == TRICKY
    # Without `${...}` in a value, python-dotenv's defaults read it back too.
    plain = {k: v for k, v in TRICKY.items() if "${" not in v}
    with_defaults = dotenv_values(path)
    assert {k: with_defaults[k] for k in plain} == plain
    # Simple values stay bare, so docker --env-file reads them too.
    assert "SIMPLE=plain-value_1.2:3/4@5\n" in fetched.stdout
    assert "crate: warning: docker --env-file" in fetched.stderr
    assert "NEWLINES" in fetched.stderr


def test_fetch_dotenv_warns_about_interpolation(crate: CrateRunner) -> None:
    crate("secrets", "set", "TEMPLATE", "${HOME}/x", check=True)
    fetched = crate("secrets", "fetch", "--raw", "--format", "dotenv", check=True)
    warnings = [line for line in fetched.stderr.splitlines() if "TEMPLATE" in line]
    assert any("${...}" in line for line in warnings), fetched.stderr
    assert all(line.startswith("crate: warning: ") for line in fetched.stderr.splitlines())
    assert fetched.stdout == "TEMPLATE='${HOME}/x'\n"


def test_fetch_by_tags(crate: CrateRunner) -> None:
    crate("secrets", "set", "A=1", "B=2", "--tag", "backend", check=True)
    crate("secrets", "set", "C=3", check=True)
    fetched = crate("secrets", "fetch", "--tags", "backend", "--format", "json", check=True)
    assert json.loads(fetched.stdout) == {"A": "1", "B": "2"}


def test_fetch_into_a_closed_pipe_is_not_an_error(crate: CrateRunner, tmp_path: Path) -> None:
    path = tmp_path / "many.env"
    path.write_text("".join(f"MANY_{i:03d}={'v' * 500}\n" for i in range(400)))
    crate("secrets", "import", str(path), check=True)
    for fmt in ("env", "json", "dotenv", "shell"):
        script = '"$@" | head -c 10 >/dev/null; echo "status=${PIPESTATUS[0]}"'
        done = subprocess.run(
            ["bash", "-c", script, "bash", *crate.argv0, "secrets", "fetch", "--format", fmt],
            capture_output=True,
            env=crate.env(),
            timeout=30,
            check=True,
        )
        assert done.stdout == b"status=0\n", (fmt, done)
        assert done.stderr == b"", (fmt, done.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["secrets", "fetch", "--format", "json"],
        ["secrets", "list"],
        ["secrets", "history", "MANY_001"],
        ["keys", "slots", "list"],
        ["keys", "status"],
        ["secrets", "get", "MANY_001"],
        ["version", "--json"],
    ],
)
def test_output_to_a_pipe_nobody_reads_is_not_an_error(
    crate: CrateRunner, tmp_path: Path, args: list[str]
) -> None:
    """The reader is gone before crate writes (its end of the pipe closed):
    every write fails with EPIPE, deterministically."""
    crate("secrets", "set", "MANY_001", "v" * 100, check=True)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [*crate.argv0, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=crate.env(),
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, b""), done


# -- delete, history, rollback ----------------------------------------------------


def test_delete_history_rollback(crate: CrateRunner) -> None:
    crate("secrets", "set", "API_KEY", "first-value", check=True)
    deleted = crate("secrets", "delete", "API_KEY", "--yes")
    assert deleted.returncode == 0
    assert "deleted API_KEY from personal/dev (version 2)" in deleted.stderr

    assert_clean_error(crate("secrets", "get", "API_KEY"), 3, hidden=("first-value",))
    assert names(crate) == []
    assert crate("secrets", "fetch", "--format", "json", check=True).stdout.strip() == "{}"

    history = json.loads(crate("secrets", "history", "API_KEY", "--json", check=True).stdout)
    assert [(h["version"], h["action"], h["deleted"]) for h in history] == [
        (1, "set", False),
        (2, "delete", True),
    ]
    assert "first-value" not in crate("secrets", "history", "API_KEY", check=True).stdout

    rolled = crate("secrets", "rollback", "API_KEY", "--to", "1")
    assert rolled.returncode == 0, rolled
    assert "now version 3" in rolled.stderr
    assert value(crate, "API_KEY") == "first-value"
    history = json.loads(crate("secrets", "history", "API_KEY", "--json", check=True).stdout)
    assert [h["action"] for h in history] == ["set", "delete", "rollback"]


def test_delete_without_yes_and_without_a_terminal_refuses(crate: CrateRunner) -> None:
    crate("secrets", "set", "API_KEY", "keep-me", check=True)
    refused = crate("secrets", "delete", "API_KEY", input="y\n")
    assert_clean_error(refused, 2, hidden=("keep-me",))
    assert "--yes" in refused.stderr
    assert value(crate, "API_KEY") == "keep-me"


# -- import -----------------------------------------------------------------------

DOTENV_FILE = """\
# database settings
export DATABASE_URL=postgres://localhost/dev
PLAIN = spaced value   # a trailing comment
SINGLE='it\\'s # not a comment'
DOUBLE="line1\\nline2 \\"quoted\\""
MULTI='first
second'

EMPTY=
HASH=a#b
TEMPLATE=${HOME}/literal
"""


def test_import_dotenv_file(crate: CrateRunner, tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(DOTENV_FILE)
    imported = crate("secrets", "import", str(path), "--tag", "legacy")
    assert imported.returncode == 0, imported
    assert "imported 8 secrets into personal/dev (8 new, 0 updated)" in imported.stderr

    # --raw: TEMPLATE holds ${HOME}, which crate would resolve as a reference.
    raw = crate("secrets", "fetch", "--raw", "--format", "json", check=True)
    fetched = json.loads(raw.stdout)
    assert fetched == dict(dotenv_values(path, interpolate=False))
    assert fetched["DATABASE_URL"] == "postgres://localhost/dev"
    assert fetched["PLAIN"] == "spaced value"
    assert fetched["SINGLE"] == "it's # not a comment"
    assert fetched["DOUBLE"] == 'line1\nline2 "quoted"'
    assert fetched["MULTI"] == "first\nsecond"
    assert fetched["HASH"] == "a#b"
    assert fetched["TEMPLATE"] == "${HOME}/literal", "crate stores text, it does not expand"
    assert len(names(crate, "--tags", "legacy")) == 8

    path.write_text("PLAIN=changed\nNEW_ONE=1\n")
    again = crate("secrets", "import", str(path), "--json", check=True)
    assert json.loads(again.stdout) == {"imported": 2, "new": 1, "updated": 1}


def test_import_from_stdin(crate: CrateRunner) -> None:
    crate("secrets", "import", "-", input="A=1\nB='two'\n", check=True)
    assert json.loads(crate("secrets", "fetch", "--json", check=True).stdout) == {
        "A": "1",
        "B": "two",
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'GOOD=1\nTOKEN="hunter2-unterminated\n', "line 2"),
        (b"GOOD=1\nJUST_A_NAME\n", "line 2"),
        (b"GOOD=1\nTOKEN='hunter2' trailing\n", "line 2"),
        (b"GOOD=1\n1BAD=hunter2\n", "invalid secret name"),
        (b"GOOD=1\nTOKEN=\xff\xfehunter2\n", "UTF-8"),
        (b"# only a comment\n\n", "no NAME=VALUE"),
        (b"GOOD=1\nNUL=hunter2\\0\x00\n", "NUL"),
    ],
    ids=["unterminated", "bare-name", "after-quote", "bad-name", "not-utf8", "empty", "nul"],
)
def test_import_bad_file_stores_nothing(
    crate: CrateRunner, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.env"
    path.write_bytes(content)
    failed = crate("secrets", "import", str(path))
    assert_clean_error(failed, 2, hidden=("hunter2",))
    assert message in failed.stderr
    assert names(crate) == []


def test_import_missing_file(crate: CrateRunner, tmp_path: Path) -> None:
    failed = crate("secrets", "import", str(tmp_path / "missing.env"))
    assert_clean_error(failed, 2)
    assert "missing.env" in failed.stderr


# -- errors -----------------------------------------------------------------------

SECRET = "S3CRET-never-printed"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    """A home with API_KEY=SECRET (two versions) in personal/dev; tests must not change it."""
    runner = CrateRunner(tmp_path_factory.mktemp("seeded") / "home")
    runner("secrets", "set", "API_KEY", SECRET, check=True)
    runner("secrets", "set", "API_KEY", SECRET + "-v2", check=True)
    return runner


@pytest.mark.parametrize(
    ("args", "code", "stdin"),
    [
        (("secrets", "get", "MISSING"), 3, None),
        (("secrets", "get", "API_KEY", "--version", "99"), 3, None),
        (("secrets", "get", "API_KEY", "--env", "nope"), 3, None),
        (("secrets", "get", "API_KEY", "--org", "nope"), 3, None),
        (("secrets", "get", "API_KEY", "--org", "Not_Valid"), 2, None),
        (("secrets", "get", "not-a-name"), 2, None),
        (("secrets", "fetch", "API_KEY", "MISSING"), 3, None),
        (("secrets", "list", "--tags", "BAD TAG"), 2, None),
        (("secrets", "history", "MISSING"), 3, None),
        (("secrets", "rollback", "API_KEY", "--to", "99"), 3, None),
        (("secrets", "delete", "MISSING", "--yes"), 3, None),
        (("secrets", "delete", "API_KEY"), 2, None),
        (("secrets", "set", "API_KEY", SECRET, "--env", "prdo"), 3, None),
        (("secrets", "set", "API_KEY", "-"), 2, b"x" * (64 * 1024 + 1)),
        (("secrets", "set", "API_KEY", "-"), 2, SECRET.encode() + b"\0tail"),
        (("secrets", "set", "API_KEY", "-"), 2, b"\xff" + SECRET.encode()),
        (("secrets", "set", f"API_KEY={SECRET}", "9LIVES=x"), 2, None),
        (("secrets", "set", "API_KEY", SECRET, "extra"), 2, None),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_errors_are_short_and_never_show_values(
    seeded: CrateRunner, args: tuple[str, ...], code: int, stdin: bytes | None
) -> None:
    failed = seeded(*args, input=stdin)
    assert_clean_error(failed, code, hidden=(SECRET, "xxxxxxxxxxxxxxxx"))
    assert failed.stdout == ""
    if args[1] in ("set", "delete", "rollback"):
        assert value(seeded, "API_KEY") == SECRET + "-v2", "a failed change changed nothing"


@pytest.mark.parametrize(
    "args",
    [
        ("secrets", "get", "API_KEY", "--version", "99"),
        ("secrets", "rollback", "API_KEY", "--to", "99"),
    ],
    ids=["get", "rollback"],
)
def test_missing_version_error_names_the_version(
    seeded: CrateRunner, args: tuple[str, ...]
) -> None:
    failed = seeded(*args)
    assert_clean_error(failed, 3, hidden=(SECRET,))
    assert "no secret API_KEY" not in failed.stderr, "API_KEY exists; version 99 does not"
    assert "version 99" in failed.stderr


def test_commands_work_without_any_stdin(crate: CrateRunner) -> None:
    """Started with fd 0 closed (as by some CI runners and daemons), crate
    neither crashes nor waits: it behaves as with an empty, non-terminal stdin."""

    def closed_stdin(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*crate.argv0, *args],
            env=crate.env(),
            capture_output=True,
            preexec_fn=lambda: os.close(0),
            timeout=60,
            check=False,
        )

    assert closed_stdin("secrets", "set", "A", "1").returncode == 0
    got = closed_stdin("secrets", "get", "A")
    assert (got.returncode, got.stdout) == (0, b"1")
    empty = closed_stdin("secrets", "set", "A")
    assert empty.returncode == 2
    assert b"stdin was empty" in empty.stderr
    refused = closed_stdin("secrets", "delete", "A")
    assert refused.returncode == 2
    assert b"--yes" in refused.stderr
    ran = closed_stdin("run", "--", "sh", "-c", 'printf %s "$A"')
    assert (ran.returncode, ran.stdout) == (0, b"1")
