"""What `crate run` loads on its way to the command, in a fresh Python.

Each module off the list costs milliseconds on every dev command, and a
`typing.NamedTuple` class compiles its constructor with `eval` when it is
defined (about 0.2 ms each, more with string annotations): `crate run`
loads some fifty record classes, which are `crate_cli.records.Record`s and
cost a property per field (docs/ARCHITECTURE.md). The home is written by the
crate under test (the installed script or CRATE_BIN); the module list comes
from this Python, which runs crate_cli's own entry point with execve stubbed
out.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.crate_runner import CrateRunner

pytestmark = pytest.mark.e2e

# Modules that `crate run` must not import: each costs milliseconds on every
# dev command, and none is needed to start one (docs/ARCHITECTURE.md).
NOT_ON_THE_RUN_PATH = (
    "click",
    "rich",
    "tomllib",
    "hashlib",  # with hmac: OpenSSL's hash bindings, about 3 ms
    "hmac",
    "secrets",
    "tempfile",
    "dataclasses",
    "ctypes",
    "uvicorn",
    "http.client",
    "ssl",
    "crate_cli.display",
    "crate_cli.client.remote",
    # The PostgreSQL store: psycopg costs about 150 ms, and a local vault needs none of it.
    "psycopg",
    "psycopg_pool",
    "crate_cli.vault.storage.postgres",
)

RUN_AND_LIST_MODULES = """
import os, sys
def done(*args):
    print(" ".join(sorted(sys.modules)))
    os._exit(0)
os.execve = done
from crate_cli.cli import main
sys.argv = ["crate", "run", "--", "true"]
main()
"""


def test_crate_run_imports_nothing_it_does_not_need(tmp_path: Path) -> None:
    crate = CrateRunner(tmp_path / "home")
    crate("secrets", "set", "A=1", "B=${A}", check=True)
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES],
        env=crate.env(),
        check=True,
        capture_output=True,
        text=True,
    )
    loaded = set(done.stdout.split())
    assert "crate_cli.run.command" in loaded  # it did run
    assert not loaded & set(NOT_ON_THE_RUN_PATH), loaded & set(NOT_ON_THE_RUN_PATH)
    ours = sorted(m for m in loaded if m.startswith("crate_cli."))
    assert "crate_cli.vault.storage.interface" in ours
    assert not [name for m in ours for name in _named_tuples(m)]
    assert [name for m in ours for name in _records(m)], "no record on the path: test the test"


def _classes(module_name: str) -> list[type]:
    module = importlib.import_module(module_name)
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type) and value.__module__ == module_name
    ]


def _named_tuples(module_name: str) -> list[str]:
    """The typing.NamedTuple (or collections.namedtuple) classes a module defines."""
    return [
        f"{module_name}.{c.__qualname__}"
        for c in _classes(module_name)
        if issubclass(c, tuple) and hasattr(c, "_field_defaults")
    ]


def _records(module_name: str) -> list[str]:
    from crate_cli.records import Record

    return [
        f"{module_name}.{c.__qualname__}"
        for c in _classes(module_name)
        if issubclass(c, Record) and c is not Record
    ]
