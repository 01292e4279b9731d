"""`crate run` and secrets whose names steer processes (issue 17, item 2).

A secret named LD_PRELOAD, PATH, PYTHONPATH or BASH_ENV would let whoever
wrote it choose what runs in the process of whoever runs `crate run`. Such
names are refused at store unless an admin allowed each one for the org;
`crate run` refuses a vault that holds one (written before, or allowed and
then no longer) and never resolves the command with a PATH from the vault.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.crate_runner import CrateRunner, assert_clean_error

pytestmark = pytest.mark.e2e


def script(folder: Path, name: str, says: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {says}\n")
    path.chmod(0o755)


def test_a_steering_name_is_refused_at_store_and_allowed_by_name(crate: CrateRunner) -> None:
    refused = crate("secrets", "set", "LD_PRELOAD=/tmp/evil.so")
    assert_clean_error(refused, 4, hidden=("/tmp/evil.so",))
    assert "secret name LD_PRELOAD is refused: it steers the dynamic loader" in refused.stderr
    assert "crate org allow-name LD_PRELOAD" in refused.stderr

    allowed = crate("org", "allow-name", "LD_PRELOAD")
    assert allowed.returncode == 0, allowed
    assert "LD_PRELOAD is allowed in organization 'personal'" in allowed.stderr
    crate("secrets", "set", "LD_PRELOAD=/nonexistent/lib.so", check=True)
    listed = crate("org", "allowed-names", "--json")
    assert '"name": "LD_PRELOAD"' in listed.stdout


def test_crate_run_refuses_a_steering_secret_it_was_not_allowed(
    crate: CrateRunner, tmp_path: Path
) -> None:
    """A vault that holds one (stored while allowed, or by an older crate)."""
    crate("org", "allow-name", "BASH_ENV", check=True)
    crate("secrets", "set", "BASH_ENV=/tmp/owned.sh", "SAFE=fine-value", check=True)
    crate("org", "disallow-name", "BASH_ENV", check=True)
    marker = tmp_path / "ran"
    refused = crate("run", "--", "touch", str(marker))
    assert_clean_error(refused, 4, hidden=("/tmp/owned.sh", "fine-value"))
    assert "secret BASH_ENV of personal/dev is not passed to the command" in refused.stderr
    assert "crate org allow-name BASH_ENV" in refused.stderr
    assert not marker.exists()
    # Renamed by a transformer, it is still the same variable once lower-cased.
    refused = crate("run", "--name-transformer", "lower-snake", "--", "touch", str(marker))
    assert_clean_error(refused, 4)
    assert "secret BASH_ENV (as bash_env)" in refused.stderr
    # Nor in a mount file, which a tool may load into an environment.
    mount = tmp_path / "secrets.env"
    done = crate(
        "run",
        "--mount",
        str(mount),
        "--mount-format",
        "dotenv",
        "--no-env",
        "--",
        "cat",
        str(mount),
    )
    assert_clean_error(done, 4, hidden=("/tmp/owned.sh",))


@pytest.mark.parametrize("extra", [[], ["--mask"]], ids=["exec", "supervised"])
def test_the_command_is_found_with_the_callers_path_not_the_vaults(
    crate: CrateRunner, tmp_path: Path, extra: list[str]
) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    script(mine, "hello", "from-the-callers-path")
    script(theirs, "hello", "from-the-vaults-path")
    crate("org", "allow-name", "PATH", check=True)
    crate("secrets", "set", f"PATH={theirs}:/usr/bin:/bin", check=True)
    env = {"PATH": f"{mine}:{os.environ['PATH']}"}
    done = crate("run", *extra, "--", "hello", env=env)
    assert done.returncode == 0, done
    assert done.stdout.strip() == "from-the-callers-path"
    # The command itself gets the vault's PATH (an admin allowed it).
    seen = crate("run", *extra, "--", "sh", "-c", 'echo "$PATH"', env=env)
    assert seen.stdout.strip() == ("***" if extra else f"{theirs}:/usr/bin:/bin")
    # Not on the caller's PATH: not found (127), even though the vault's has it.
    gone = crate("run", *extra, "--", "hello", env={"PATH": "/usr/bin:/bin"})
    assert gone.returncode == 127, gone
