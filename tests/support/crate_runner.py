"""crate as a subprocess: how the e2e tests start it, and what they expect of an error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


def crate_executable() -> list[str]:
    """How e2e tests start crate: CRATE_BIN (the frozen binary) or the installed script."""
    explicit = os.environ.get("CRATE_BIN")
    if explicit:
        return [str(Path(explicit).absolute())]
    beside = Path(sys.executable).parent / "crate"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("crate")
    if found:
        return [found]
    return [sys.executable, "-m", "crate_cli"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class CrateRunner:
    """Runs crate in a subprocess against one CRATE_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.argv0 = crate_executable()

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {
            k: v for k, v in os.environ.items() if not k.startswith("CRATE_") or k == "CRATE_BIN"
        }
        base["CRATE_HOME"] = str(self.home)
        base["CRATE_KEYSTORE"] = "file"  # see the crate_home fixture
        base.update(extra or {})
        return base

    def __call__(
        self,
        *args: str,
        input: str | bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> Result:
        proc = subprocess.run(
            [*self.argv0, *args],
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            env=self.env(env),
            timeout=120,
        )
        result = Result(
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"crate {' '.join(args)} failed: {result}")
        return result

    def run_bytes(
        self, *args: str, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        """crate with these arguments on pipes; stdout and stderr as bytes."""
        return subprocess.run(
            [*self.argv0, *args],
            input=input,
            capture_output=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )


def assert_clean_error(result: Result, code: int, *, hidden: tuple[str, ...] = ()) -> None:
    """An error as crate promises it: the exit code, one or two `crate:` lines on
    stderr starting with `crate: error:`, nothing on stdout, no traceback, and
    none of the `hidden` secret values anywhere."""
    assert result.returncode == code, result
    # First use announces what it created before anything else: not part of the error.
    lines = [
        line
        for line in result.stderr.strip().splitlines()
        if not line.startswith(("crate: created ", "crate: selected "))
    ]
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("crate: error: "), result.stderr
    assert all(line.startswith("crate: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "", result.stdout
    for value in hidden:
        assert value not in result.stderr, f"secret value leaked on stderr: {result.stderr}"
