"""End to end: `crate --version`, `crate version [--json]` and shell completion.

Run against the installed crate and against the frozen binary (CRATE_BIN):
the version report says which one it is. Completion is driven by real bash,
zsh and fish, which call `crate` by name with `_CRATE_COMPLETE` set.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
from pathlib import Path

import cryptography
import pytest

import crate_cli
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

FROZEN = bool(os.environ.get("CRATE_BIN"))
VERSION = crate_cli.__version__
CHECKOUT = Path(crate_cli.__file__).resolve().parent.parent
# What crate knows of its build depends on how it was installed: the binary
# carries build.json (commit and date), a source checkout (an editable
# install) reads its commit from .git, a plain install (a wheel) knows neither.
INSTALL = "binary" if FROZEN else "checkout" if (CHECKOUT / ".git").exists() else "wheel"
COMPONENTS = ("click", "rich", "keyring", "python-pkcs11", "tpm2-pytss", "uvicorn")
REPORT_KEYS = {
    "version",
    "commit",
    "build_date",
    "frozen",
    "python",
    "python_implementation",
    "cryptography",
    "openssl",
    "sqlite",
    "platform",
    "components",
}
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def git_head() -> str:
    git = require_tool("git")
    proc = subprocess.run(
        [git, "-C", str(CHECKOUT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return proc.stdout.strip()


def distribution(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_report(crate: CrateRunner) -> dict:
    result = crate("version", "--json", check=True)
    assert result.stderr == "", result.stderr
    return dict(json.loads(result.stdout))


# -- crate --version -------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--version"], ["--debug", "--version"]])
def test_version_option_prints_one_line(crate: CrateRunner, args: list[str]) -> None:
    result = crate(*args)
    assert result.returncode == 0, result
    assert result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = lines[0]
    assert line == f"crate {VERSION}" or line.startswith(f"crate {VERSION} ("), line
    if FROZEN:
        assert line.endswith("binary)"), line
    else:
        assert "binary" not in line, line


def test_version_option_agrees_with_the_report(crate: CrateRunner) -> None:
    line = crate("--version", check=True).stdout.strip()
    report = version_report(crate)
    assert (report["commit"] is None) == (INSTALL == "wheel"), report
    commit = (report["commit"] or "")[:12]
    expected = {
        "binary": f"crate {VERSION} ({commit}, {report['build_date']}, binary)",
        "checkout": f"crate {VERSION} ({commit})",
        "wheel": f"crate {VERSION}",
    }
    assert line == expected[INSTALL]


def test_version_option_creates_no_home(crate: CrateRunner) -> None:
    crate("--version", check=True)
    crate("version", check=True)
    assert not crate.home.exists()


# -- crate version ---------------------------------------------------------------------


def test_version_json_describes_the_runtime(crate: CrateRunner) -> None:
    report = version_report(crate)
    assert set(report) >= REPORT_KEYS, sorted(report)
    assert report["version"] == VERSION
    assert report["frozen"] is FROZEN
    assert report["python"] == platform.python_version()
    assert report["python_implementation"] == platform.python_implementation()
    assert report["cryptography"] == cryptography.__version__
    assert report["openssl"].startswith("OpenSSL"), report["openssl"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", report["sqlite"]), report["sqlite"]
    assert report["platform"] == f"{platform.system().lower()}-{platform.machine()}"
    assert isinstance(report["components"], dict)
    assert set(report["components"]) == set(COMPONENTS)


def test_version_json_build_fields(crate: CrateRunner) -> None:
    """The binary carries its build (commit, date, every component); a source
    checkout reads its commit from git and has no date; a wheel has neither."""
    report = version_report(crate)
    if INSTALL == "binary":
        head = git_head()
        assert report["commit"] in (head, f"{head}-dirty"), (report["commit"], head)
        assert isinstance(report["build_date"], str)
        assert ISO_UTC.fullmatch(report["build_date"]), report["build_date"]
        missing = [name for name, found in report["components"].items() if not found]
        assert missing == [], f"the binary lacks {missing}"
    else:
        assert report["commit"] == (git_head() if INSTALL == "checkout" else None)
        assert report["build_date"] is None
        # The same environment as this test: the same distributions, found or not.
        assert report["components"] == {name: distribution(name) for name in COMPONENTS}


def test_version_human_lines(crate: CrateRunner) -> None:
    result = crate("version")
    assert result.returncode == 0, result
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"version\s+{re.escape(VERSION)}", lines[0]), lines
    fields = {line.split()[0] for line in lines}
    assert {"version", "commit", "build", "frozen", "python", "openssl", *COMPONENTS} <= fields
    frozen_line = next(line for line in lines if line.startswith("frozen "))
    assert frozen_line.split()[-1] == ("yes" if FROZEN else "no")
    assert not any(line.rstrip().endswith("None") for line in lines), lines


def test_version_has_one_source() -> None:
    assert importlib.metadata.version("crate-cli") == crate_cli.__version__


# -- shell completion ------------------------------------------------------------------


def shell_env(crate: CrateRunner, tmp_path: Path) -> dict[str, str]:
    """crate's environment with crate's folder first on PATH and a private HOME
    (compinit and fish write their caches there, not in the real home)."""
    if len(crate.argv0) == 1 and Path(crate.argv0[0]).name == "crate":
        folder = Path(crate.argv0[0]).parent
    else:  # `python -m crate_cli`: the scripts need a `crate` on PATH
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        wrapper = folder / "crate"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(crate.argv0)} "$@"\n')
        wrapper.chmod(0o755)
    user = tmp_path / "user"
    user.mkdir(exist_ok=True)
    return crate.env(
        {
            "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(user),
            "XDG_CONFIG_HOME": str(user / ".config"),
            "XDG_DATA_HOME": str(user / ".local" / "share"),
            "XDG_CACHE_HOME": str(user / ".cache"),
        }
    )


def run_shell(argv: list[str], env: dict[str, str]) -> Result:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def bash_complete(crate: CrateRunner, tmp_path: Path, *words: str) -> Result:
    """What bash's completion function puts in COMPREPLY for `words` (the last
    one is the word being completed), one per line."""
    script = (
        "source <(crate completion bash) || exit 90\n"
        "type -t _crate_completion >/dev/null || exit 91\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        # bash passes the command's name as $1, and the script runs "$1".
        "_crate_completion crate || exit 92\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    return run_shell([require_tool("bash"), "-c", script], shell_env(crate, tmp_path))


def bash_words(crate: CrateRunner, tmp_path: Path, *words: str) -> list[str]:
    result = bash_complete(crate, tmp_path, *words)
    assert result.returncode == 0, result
    assert result.stderr == "", result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_shells_call_this_crate(crate: CrateRunner, tmp_path: Path) -> None:
    result = run_shell([require_tool("bash"), "-c", "command -v crate"], shell_env(crate, tmp_path))
    assert result.returncode == 0, result
    if len(crate.argv0) == 1:
        assert result.stdout.strip() == crate.argv0[0]


def test_bash_completes_commands(crate: CrateRunner, tmp_path: Path) -> None:
    found = bash_words(crate, tmp_path, "crate", "sec")
    assert "secrets" in found, found
    assert all(word.startswith("sec") for word in found), found


def test_bash_completes_subcommands(crate: CrateRunner, tmp_path: Path) -> None:
    found = bash_words(crate, tmp_path, "crate", "secrets", "")
    assert {"set", "get", "list", "fetch"} <= set(found), found


def test_bash_completes_choices(crate: CrateRunner, tmp_path: Path) -> None:
    found = bash_words(crate, tmp_path, "crate", "secrets", "fetch", "--format", "")
    assert {"dotenv", "json"} <= set(found), found


def test_bash_completes_orgs_of_the_home(crate: CrateRunner, tmp_path: Path) -> None:
    crate("secrets", "set", "A", "1", check=True)  # first use: org `personal`
    crate("org", "create", "acme", check=True)
    found = bash_words(crate, tmp_path, "crate", "secrets", "list", "--org", "")
    assert sorted(found) == ["acme", "personal"]
    assert bash_words(crate, tmp_path, "crate", "secrets", "list", "--org", "ac") == ["acme"]


def test_bash_completes_the_options_of_run(crate: CrateRunner, tmp_path: Path) -> None:
    """`crate run` parses its own options; completion offers them, the orgs
    after `--org`, and nothing among the command's words after `--`."""
    from crate_cli.run.args import RUN_OPTIONS

    found = bash_words(crate, tmp_path, "crate", "run", "--")
    assert set(found) == {flag for flag, *_ in RUN_OPTIONS}, found
    assert bash_words(crate, tmp_path, "crate", "run", "--ma") == ["--mask"]
    assert bash_words(crate, tmp_path, "crate", "run", "--mask", "--", "ls", "--ma") == []
    crate("org", "create", "acme", check=True)
    assert bash_words(crate, tmp_path, "crate", "run", "--mask", "--org", "a") == ["acme"]
    assert bash_words(crate, tmp_path, "crate", "run", "--", "ls", "--org", "a") == []


def test_bash_org_completion_on_an_empty_home(crate: CrateRunner, tmp_path: Path) -> None:
    assert bash_words(crate, tmp_path, "crate", "secrets", "list", "--org", "") == []
    assert not crate.home.exists(), "completing a word must not create the home"


def test_completion_never_prints_an_error(crate: CrateRunner, tmp_path: Path) -> None:
    crate.home.parent.mkdir(parents=True, exist_ok=True)
    crate.home.write_text("not a directory\n")  # CRATE_HOME is a regular file
    result = bash_complete(crate, tmp_path, "crate", "secrets", "list", "--org", "")
    assert result.returncode == 0, result
    assert "crate:" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.strip() == "", result.stdout
    assert crate.home.read_text() == "not a directory\n"


def test_zsh_script_loads(crate: CrateRunner, tmp_path: Path) -> None:
    zsh = require_tool("zsh")
    result = crate("completion", "zsh")
    assert result.returncode == 0, result
    assert "_crate_completion" in result.stdout
    script = tmp_path / "crate.zsh"
    script.write_text(result.stdout)
    env = shell_env(crate, tmp_path)
    syntax = run_shell([zsh, "-f", "-n", str(script)], env)
    assert syntax.returncode == 0, syntax

    loaded = run_shell(
        [
            zsh,
            "-f",
            "-c",
            "autoload -U compinit && compinit -u && source <(crate completion zsh)"
            " && whence -w _crate_completion && print -r -- $_comps[crate]",
        ],
        env,
    )
    assert loaded.returncode == 0, loaded
    assert loaded.stdout.splitlines() == ["_crate_completion: function", "_crate_completion"]


def test_zsh_protocol(crate: CrateRunner) -> None:
    require_tool("zsh")
    result = crate(
        env={"_CRATE_COMPLETE": "zsh_complete", "COMP_WORDS": "crate sec", "COMP_CWORD": "1"}
    )
    assert result.returncode == 0, result
    assert result.stderr == "", result.stderr
    assert "secrets" in result.stdout.splitlines(), result.stdout


def fish_complete(crate: CrateRunner, tmp_path: Path, line: str) -> list[str]:
    fish = require_tool("fish")
    script = f"crate completion fish | source; complete -C {shlex.quote(line)}"
    result = run_shell([fish, "--no-config", "-c", script], shell_env(crate, tmp_path))
    assert result.returncode == 0, result
    assert result.stderr == "", result.stderr
    return [row.split("\t")[0] for row in result.stdout.splitlines() if row]


def test_fish_completes_commands(crate: CrateRunner, tmp_path: Path) -> None:
    assert "secrets" in fish_complete(crate, tmp_path, "crate sec")


def test_fish_completes_choices(crate: CrateRunner, tmp_path: Path) -> None:
    found = fish_complete(crate, tmp_path, "crate secrets fetch --format ")
    assert {"dotenv", "json"} <= set(found), found


def test_completion_unknown_shell_is_a_usage_error(crate: CrateRunner) -> None:
    result = crate("completion", "powershell")
    assert_clean_error(result, 2)
    assert "powershell" in result.stderr


def test_completion_needs_a_shell(crate: CrateRunner) -> None:
    result = crate("completion")
    assert_clean_error(result, 2)
