"""The frozen binary as a teammate gets it: no Python, no libtss2, moved.

These tests run only against the binary (CRATE_BIN=dist/crate/crate, set by
scripts/test after scripts/build-binary); without CRATE_BIN they are
deselected (see conftest.py). The rest of tests/e2e runs against the binary
too in that pass: set, get, fetch, run with exit codes and signals, the
prompts under pexpect, a tpm2 slot on swtpm, the server and remote client.
"""

from __future__ import annotations

import glob
import os
import platform
import subprocess
import tarfile
from pathlib import Path

import pytest

import crate_cli
from tests.support.crate_runner import CrateRunner
from tests.support.keyring_service import SecretService
from tests.support.softhsm_token import Token
from tests.support.tools import IN_CI, require_tool
from tests.support.tpm_simulator import Swtpm

pytestmark = [pytest.mark.e2e, pytest.mark.frozen]

BINARY = Path(os.environ.get("CRATE_BIN", "dist/crate/crate")).absolute()
FOLDER = BINARY.parent
DIST = FOLDER.parent
RELEASE = f"crate-{crate_cli.__version__}-{platform.system().lower()}-{platform.machine()}"
VALUE = "frozen-value-5e1d"


def run(argv: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


def elf_files(folder: Path) -> list[Path]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def scrubbed(tmp_path: Path) -> dict[str, str]:
    """What `env -i PATH=/usr/bin:/bin HOME=... CRATE_HOME=...` leaves."""
    (tmp_path / "user").mkdir(exist_ok=True)
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "user"),
        "CRATE_HOME": str(tmp_path / "crate-home"),
    }


def test_every_library_of_the_bundle_resolves() -> None:
    ldd = require_tool("ldd")
    files = elf_files(FOLDER)
    assert BINARY in files
    assert len(files) > 20, files  # the launcher, libpython, extensions, libtss2 ...
    internal = str(FOLDER / "_internal")
    for path in files:
        # As at run time: the bootloader puts _internal first on the search path.
        out = subprocess.run(
            [ldd, str(path)],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": internal},
            check=False,
        ).stdout
        assert "not found" not in out, f"{path}:\n{out}"


def test_it_works_in_a_scrubbed_environment(tmp_path: Path) -> None:
    env = scrubbed(tmp_path)
    scrub = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), str(BINARY)]
    code, _, err = run([*scrub, "secrets", "set", "API_KEY", "-"], {}, stdin=VALUE)
    assert code == 0, err
    code, out, err = run([*scrub, "run", "--", "sh", "-c", 'printf %s "$API_KEY"'], {})
    assert (code, out) == (0, VALUE), err
    code, _, _ = run([*scrub, "run", "--", "sh", "-c", "exit 7"], {})
    assert code == 7
    code, out, err = run([*scrub, "secrets", "fetch", "--format", "env"], {})
    assert (code, out) == (0, f"API_KEY={VALUE}\n"), err


def test_the_release_tarball_runs_from_anywhere(tmp_path: Path) -> None:
    tarball = DIST / f"{RELEASE}.tar.gz"
    assert tarball.is_file(), f"scripts/build-binary makes {tarball.name}"
    checked = subprocess.run(
        ["sha256sum", "-c", f"{tarball.name}.sha256"], cwd=DIST, capture_output=True, text=True
    )
    assert checked.returncode == 0 and f"{tarball.name}: OK" in checked.stdout, checked
    place = tmp_path / "Program Files" / "tools"
    place.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        assert "crate/crate" in names and "crate/_internal" in names
        archive.extractall(place, filter="tar")
    moved = place / "crate" / "crate"
    env = scrubbed(tmp_path)
    code, _, err = run([str(moved), "secrets", "set", "API_KEY", VALUE], env)
    assert code == 0, err
    # `--mask` keeps crate alive as the command's parent: read what it mapped.
    code, maps, err = run(
        [str(moved), "run", "--mask", "--", "sh", "-c", "cat /proc/$PPID/maps"], env
    )
    assert code == 0, err
    libraries = {
        line.split(None, 5)[5] for line in maps.splitlines() if ".so" in line.split(None, 5)[-1]
    }
    assert any(lib.startswith(str(place / "crate" / "_internal")) for lib in libraries), maps
    assert not [lib for lib in libraries if lib.startswith(str(FOLDER))], libraries
    assert not [lib for lib in libraries if "libpython" in lib and str(place) not in lib]


@pytest.mark.parametrize("supervised", [False, True], ids=["exec", "mask"])
def test_commands_get_the_users_library_path_back(tmp_path: Path, supervised: bool) -> None:
    env = scrubbed(tmp_path)
    mask = ["--mask"] if supervised else []
    code, _, err = run([str(BINARY), "secrets", "set", "API_KEY", VALUE], env)
    assert code == 0, err
    for user_path in ("/opt/users/lib", None):
        called = env | ({"LD_LIBRARY_PATH": user_path} if user_path else {})
        code, out, err = run([str(BINARY), "run", *mask, "--", "env"], called)
        assert code == 0, err
        seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        assert seen.get("LD_LIBRARY_PATH") == user_path, out
        assert not [k for k in seen if k.startswith(("_PYI", "_MEI", "LD_LIBRARY_PATH_"))], out
    # A crate started by the command starts as cleanly (a nested bootloader).
    code, out, err = run([str(BINARY), "run", *mask, "--", str(BINARY), "secrets", "get"], env)
    assert code == 2, (out, err)  # a usage error of the inner crate, not a loader failure
    code, out, err = run(
        [str(BINARY), "run", *mask, "--", str(BINARY), "secrets", "get", "API_KEY"], env
    )
    assert (code, out) == (0, VALUE if not supervised else "***"), err


def test_a_keyring_slot_works_from_the_binary(
    crate: CrateRunner, keyring_service: SecretService
) -> None:
    env = keyring_service.env()
    done = crate("init", "--keystore", "keyring", env=env, check=True)
    assert "sealed by a keyring slot" in done.stderr
    crate("secrets", "set", "API_KEY", VALUE, env=env, check=True)
    got = crate("secrets", "get", "API_KEY", env=env)
    assert (got.returncode, got.stdout) == (0, VALUE), got
    assert len(keyring_service.crate_items()) == 1


def test_an_hsm_slot_works_from_the_binary(crate: CrateRunner, tmp_path: Path) -> None:
    token = Token(tmp_path / "hsm")
    done = crate("init", "--keystore", "pkcs11", *token.options(), env=token.env(), check=True)
    assert "sealed by a pkcs11 slot" in done.stderr
    crate("secrets", "set", "API_KEY", VALUE, env=token.env(), check=True)
    got = crate("secrets", "get", "API_KEY", env=token.env())
    assert (got.returncode, got.stdout) == (0, VALUE), got


def system_libtss2() -> list[str]:
    found = {
        os.path.realpath(path)
        for pattern in ("/lib/*/libtss2-*.so*", "/usr/lib/*/libtss2-*.so*", "/usr/lib/libtss2-*")
        for path in glob.glob(pattern)
    }
    return sorted(found)


def test_a_tpm2_slot_works_where_libtss2_is_not_installed(crate: CrateRunner, swtpm: Swtpm) -> None:
    """In a private mount namespace every system libtss2 file reads as empty
    (/dev/null bound over it), as on a machine without the package."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root: this test needs a mount namespace")
        pytest.skip("needs root for a private mount namespace (unshare -m)")
    unshare = require_tool("unshare")
    libraries = system_libtss2()
    assert libraries, "libtss2 is not installed: nothing to hide"
    hide = 'for lib in $LIBS; do mount --bind /dev/null "$lib" || exit 99; done; exec "$@"'

    def hidden(*argv: str) -> tuple[int, str, str]:
        env = crate.env(swtpm.env() | {"LIBS": " ".join(libraries)})
        return run([unshare, "-m", "--propagation", "private", "sh", "-c", hide, "sh", *argv], env)

    # The system's libtss2 is really gone in there ...
    code, _, err = hidden("python3", "-c", "import ctypes; ctypes.CDLL('libtss2-esys.so.0')")
    assert code != 0 and "OSError" in err, err
    # ... and the binary seals, stores and unseals with its own.
    code, _, err = hidden(str(BINARY), "init", "--keystore", "tpm2")
    assert code == 0 and "sealed by a tpm2 slot" in err, err
    code, _, err = hidden(str(BINARY), "secrets", "set", "API_KEY", VALUE)
    assert code == 0, err
    code, out, err = hidden(str(BINARY), "secrets", "get", "API_KEY")
    assert (code, out) == (0, VALUE), err


def test_the_bundle_carries_psycopg_and_its_libpq() -> None:
    """`crate server --store postgresql://...` needs psycopg, its compiled
    wrapper with the libpq it ships, and the pool: nothing on the start path
    imports them, so the spec names them (packaging/crate.spec)."""
    internal = FOLDER / "_internal"
    for module in ("psycopg/__init__.pyc", "psycopg/pq/__init__.pyc", "psycopg_pool/__init__.pyc"):
        assert (internal / module).is_file(), module
    for pattern in ("psycopg_binary/pq.*.so", "psycopg_binary/_psycopg.*.so"):
        assert glob.glob(str(internal / pattern)), pattern
    assert glob.glob(str(internal / "psycopg_binary.libs" / "libpq-*.so*"))


def test_the_onefile_build(tmp_path: Path) -> None:
    onefile = os.environ.get("CRATE_ONEFILE")
    if not onefile:
        if IN_CI:
            pytest.fail("CI builds the one-file binary too: CRATE_ONEFILE is not set")
        pytest.skip("CRATE_ONEFILE is not set (scripts/build-binary --onefile makes one)")
    assert (DIST / f"{RELEASE}-onefile.tar.gz").is_file()
    onefile = str(Path(onefile).absolute())
    env = scrubbed(tmp_path)
    code, out, _ = run([onefile, "--version"], env)
    assert (code, out.startswith(f"crate {crate_cli.__version__} (")) == (0, True), out
    code, _, err = run([onefile, "secrets", "set", "API_KEY", VALUE], env)
    assert code == 0, err
    code, out, err = run([onefile, "run", "--", "sh", "-c", 'printf %s "$API_KEY"; exit 5'], env)
    assert (code, out) == (5, VALUE), err
    code, out, err = run([onefile, "run", "--", "env"], env)
    assert "LD_LIBRARY_PATH" not in out and "_PYI" not in out and "_MEI" not in out, out
    # No PostgreSQL driver in the one-file build (packaging/crate.spec): said plainly.
    store = {**env, "CRATE_STORE": "postgresql://crate:hunter2@127.0.0.1:1/crate"}
    code, out, err = run([onefile, "org", "list"], store)
    assert code == 1 and "needs psycopg" in err and "one-folder build" in err, err
    assert "hunter2" not in out + err
