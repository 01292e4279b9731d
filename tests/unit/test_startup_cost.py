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
    "crate_cli.client",
    "crate_cli.config",
    "crate_cli.runner",
    "crate_cli.vault.api",
    "crate_cli.vault.audit",
    "crate_cli.vault.jwe",
    "crate_cli.vault.masterkey",
    "crate_cli.vault.service",
    "crate_cli.vault.slots.base",
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
