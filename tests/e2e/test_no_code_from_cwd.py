"""End to end: no code from the working directory ever runs (DESIGN §9).

The attack: a cloned repository holds a `crate_cli.py`, a `crate_cli/`
package or a `sitecustomize.py`, and the user runs crate in it. crate itself
and every process it starts of itself (the key reserve's refill, the agent)
must load crate's own code only. Each planted file writes a marker when it is
imported; after every command has run, and the refill it started has
finished, no marker may exist. Runs against the venv's crate and, in CI's
second pass, the frozen binary (CRATE_BIN).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crate_cli.client import keyreserve
from tests.support.crate_runner import CrateRunner

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc"),
]

REFILL_ARG = "__refill-key-reserve"

# Every command a user may run in a cloned repository (the retrieving ones
# start the key reserve's refill).
COMMANDS: list[tuple[str, ...]] = [
    ("--version",),
    ("version",),
    ("secrets", "set", "NAME=planted-test-value"),
    ("secrets", "get", "NAME"),
    ("secrets", "fetch", "--format", "json"),
    ("secrets", "list"),
    ("secrets", "history", "NAME"),
    ("run", "--", "true"),
    ("run", "--mask", "--", "true"),
    ("env", "list"),
    ("org", "list"),
    ("session", "show"),
    ("keys", "status"),
    ("token", "list"),
    ("audit", "verify"),
    ("completion", "bash"),
    ("agent", "start"),
    ("secrets", "get", "NAME"),  # through the agent
    ("agent", "stop"),
]


def plant(folder: Path, marker: Path, layout: str) -> None:
    """Files that record their import in `marker`, as a hostile repository would."""
    code = (
        "import os, sys\n"
        f"with open({str(marker)!r}, 'a') as f:\n"
        "    f.write(repr((__file__, sys.argv)) + '\\n')\n"
    )
    (folder / "sitecustomize.py").write_text(code)
    (folder / "usercustomize.py").write_text(code)
    if layout == "module":
        (folder / "crate_cli.py").write_text(code)
    else:
        package = folder / "crate_cli"
        package.mkdir()
        for name in ("__init__.py", "__main__.py", "cli.py", "keyreserve.py"):
            (package / name).write_text(code)


def refills(runtime: Path) -> list[int]:
    """Live refill processes started for this test (found by their XDG_RUNTIME_DIR)."""
    wanted = f"XDG_RUNTIME_DIR={runtime}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        if wanted in environ and REFILL_ARG.encode() in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.parametrize("layout", ["module", "package"])
def test_planted_code_in_the_working_directory_never_runs(
    crate_home: Path, tmp_path: Path, memory_dir: Path, layout: str
) -> None:
    repo = tmp_path / "cloned-repo"
    repo.mkdir()
    marker = tmp_path / "planted-code-ran"
    plant(repo, marker, layout)
    crate = CrateRunner(crate_home)
    # The agent's socket path is limited in length: a short runtime folder.
    env = crate.env({"XDG_RUNTIME_DIR": str(memory_dir)})
    import subprocess

    for args in COMMANDS:
        done = subprocess.run(
            [*crate.argv0, *args],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, (args, done.stderr.decode())

    # The retrievals started a refill: it must have run crate's own code, and
    # filled the reserve.
    reserve = memory_dir / "crate-keys"
    deadline = time.monotonic() + 60
    while refills(memory_dir) or len(list(reserve.glob("rsa*.key"))) < keyreserve.TARGET:
        assert not marker.exists(), marker.read_text()
        assert time.monotonic() < deadline, "the refill did not fill the reserve"
        time.sleep(0.05)
    assert not marker.exists(), marker.read_text()
