"""The pkcs11 slot in process against a real HSM token (SoftHSM2): sealing
and unsealing, the key the token keeps, a wrong PIN, and removing the slot.
crate with a pkcs11 slot, in subprocesses, is in tests/e2e/test_pkcs11_slot.py.

SoftHSM2 reads SOFTHSM2_CONF when the module is initialised, and
python-pkcs11 keeps a module loaded for the process: each test points the
variable at its own token and unloads the module afterwards.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest

from crate_cli.errors import KeystoreError
from crate_cli.vault.slots.pkcs11 import Pkcs11Slot
from tests.support.slots import slot_context
from tests.support.softhsm_token import PIN, Token


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    made = Token(tmp_path / "hsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(made.conf))
    yield made
    pkcs11.unload(made.module)


def context(tmp_path: Path, token: Token, pin: str = PIN) -> Any:
    return slot_context(
        tmp_path,
        {"CRATE_PKCS11_PIN": pin},
        pkcs11_module=token.module,
        pkcs11_token="crate",
    )


def wrapping_key(token: Token, label: str) -> Any:
    with pkcs11.lib(token.module).get_token(token_label="crate").open(user_pin=PIN) as session:
        return {
            attribute: session.get_key(label=label)[attribute]
            for attribute in (
                pkcs11.Attribute.SENSITIVE,
                pkcs11.Attribute.EXTRACTABLE,
                pkcs11.Attribute.VALUE_LEN,
            )
        }


def test_seal_and_unseal_in_process(tmp_path: Path, token: Token) -> None:
    key = os.urandom(32)
    slot = Pkcs11Slot()
    params = slot.seal(context(tmp_path, token), key, 1, "s1")
    assert (params["token"], params["key_label"]) == ("crate", "crate-master-wrap-s1")
    assert key not in base64.b64decode(params["wrapped"])
    assert slot.unseal(context(tmp_path, token), params, 1, "s1") == key
    assert wrapping_key(token, "crate-master-wrap-s1") == {
        pkcs11.Attribute.SENSITIVE: True,
        pkcs11.Attribute.EXTRACTABLE: False,
        pkcs11.Attribute.VALUE_LEN: 32,
    }


def test_a_wrong_pin_or_version_does_not_unseal(tmp_path: Path, token: Token) -> None:
    slot = Pkcs11Slot()
    params = slot.seal(context(tmp_path, token), os.urandom(32), 1, "s1")
    with pytest.raises(KeystoreError):
        slot.unseal(context(tmp_path, token, pin="9999"), params, 1, "s1")
    with pytest.raises(KeystoreError, match="does not unlock master key v2"):
        slot.unseal(context(tmp_path, token), params, 2, "s1")


def test_removing_the_slot_deletes_its_key_from_the_token(tmp_path: Path, token: Token) -> None:
    slot = Pkcs11Slot()
    params = slot.seal(context(tmp_path, token), os.urandom(32), 1, "s1")
    slot.destroy(context(tmp_path, token), params)
    with pytest.raises(KeystoreError, match="no longer holds the key of slot s1"):
        slot.unseal(context(tmp_path, token), params, 1, "s1")
