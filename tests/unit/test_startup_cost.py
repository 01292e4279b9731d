"""Start-up costs that a test can pin down without timing anything.

`typing.NamedTuple` compiles each field's annotation when it is a string
(as `from __future__ import annotations` makes every annotation): 22 records
on the path of `crate run` cost 8 ms that way, 2.5 ms without. The modules
that define them therefore keep real annotations (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
import typing

import pytest

RUN_PATH_RECORDS = (
    "crate_cli.client.fallback",
    "crate_cli.client.secrets",
    "crate_cli.config",
    "crate_cli.run.args",
    "crate_cli.run.launch",
    "crate_cli.vault.api.auth",
    "crate_cli.vault.api.core",
    "crate_cli.vault.audit",
    "crate_cli.vault.jwe",
    "crate_cli.vault.masterkey",
    "crate_cli.vault.keys",
    "crate_cli.vault.secrets",
    "crate_cli.vault.slots.base",
    "crate_cli.vault.storage.interface",
)


def _records(module_name: str) -> list[type]:
    module = importlib.import_module(module_name)
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, tuple)
        and hasattr(value, "_fields")
        and value.__module__ == module_name
    ]


@pytest.mark.parametrize("module_name", RUN_PATH_RECORDS)
def test_records_on_the_run_path_have_evaluated_annotations(module_name: str) -> None:
    records = _records(module_name)
    assert records, f"{module_name} defines no NamedTuple any more: update RUN_PATH_RECORDS"
    for record in records:
        strings = {
            field: hint
            for field, hint in record.__annotations__.items()
            if isinstance(hint, (str, typing.ForwardRef))
        }
        assert not strings, f"{record.__qualname__}: annotations left as strings: {strings}"


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


def test_crate_run_imports_nothing_it_does_not_need(tmp_path: object) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    home = Path(str(tmp_path)) / "home"
    env = {**os.environ, "CRATE_HOME": str(home), "CRATE_KEYSTORE": "file"}
    env.pop("CRATE_SERVER", None)
    subprocess.run(
        [sys.executable, "-m", "crate_cli", "secrets", "set", "A=1", "B=${A}"],
        env=env,
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    loaded = set(done.stdout.split())
    assert "crate_cli.run.command" in loaded  # it did run
    assert not loaded & set(NOT_ON_THE_RUN_PATH), loaded & set(NOT_ON_THE_RUN_PATH)
