"""Known-answer vectors for the at-rest formats (tests/vectors/at-rest.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crate_cli.errors import IntegrityError
from crate_cli.vault import crypto
from crate_cli.vault.slots.base import slot_aad
from crate_cli.vault.slots.passphrase import derive_kek

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors" / "at-rest.json"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def test_the_script_regenerates_the_file_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "at-rest.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make-vectors"), "--out", str(out)], check=True
    )
    assert out.read_bytes() == VECTORS.read_bytes()


def test_blob_layout_is_format_byte_nonce_ciphertext_tag(vectors: dict[str, Any]) -> None:
    # Opened with the bare AES-GCM primitive, not crate's code: pins the layout.
    chain = vectors["chain"]
    raw = bytes.fromhex(chain["value_ciphertext"])
    assert raw[0] == 1
    nonce, sealed = raw[1:13], raw[13:]
    plaintext = AESGCM(bytes.fromhex(chain["secret_dek"])).decrypt(
        nonce, sealed, vectors["aad"]["secret_value"].encode()
    )
    assert plaintext.decode() == chain["value"]
    assert len(sealed) == len(chain["value"].encode()) + 16


def test_aad_strings(vectors: dict[str, Any]) -> None:
    chain = vectors["chain"]
    org, env, name, version = chain["org"], chain["env"], chain["name"], chain["version"]
    assert vectors["aad"]["secret_value"] == "crate/secret-value/v1|acme|dev|DB_URL|7"
    assert (
        crypto.aad(crypto.SECRET_VALUE, org, env, name, version).decode()
        == (vectors["aad"]["secret_value"])
    )
    assert (
        crypto.aad(crypto.SECRET_DEK, org, env, name, version).decode()
        == (vectors["aad"]["secret_dek"])
    )
    assert slot_aad(1, "0a1b2c3d").decode() == vectors["aad"]["master_slot"]


def test_the_key_chain_opens_from_the_master_key(vectors: dict[str, Any]) -> None:
    chain = vectors["chain"]
    master = bytes.fromhex(chain["master_key"])
    org_dek = crypto.unwrap_key(
        master, bytes.fromhex(chain["wrapped_org_dek"]), vectors["aad"]["org_dek"].encode()
    )
    assert org_dek.hex() == chain["org_dek"]
    secret_dek = crypto.unwrap_key(
        org_dek, bytes.fromhex(chain["wrapped_secret_dek"]), vectors["aad"]["secret_dek"].encode()
    )
    value = crypto.decrypt(
        secret_dek,
        bytes.fromhex(chain["value_ciphertext"]),
        vectors["aad"]["secret_value"].encode(),
    )
    assert value.decode() == chain["value"]


def test_slots_unwrap_the_master_key(vectors: dict[str, Any]) -> None:
    master = vectors["chain"]["master_key"]
    file_slot = vectors["file_slot"]
    aad = slot_aad(file_slot["master_version"], file_slot["slot_id"])
    assert (
        crypto.unwrap_key(
            bytes.fromhex(file_slot["kek"]), bytes.fromhex(file_slot["wrapped"]), aad
        ).hex()
        == master
    )
    p = vectors["passphrase_slot"]
    kek = derive_kek(
        p["passphrase"], bytes.fromhex(p["salt"]), p["iterations"], p["lanes"], p["memory_cost"]
    )
    assert kek.hex() == p["kek"]
    assert crypto.unwrap_key(kek, bytes.fromhex(p["wrapped"]), aad).hex() == master


@pytest.mark.parametrize("index", range(5))
def test_ciphertext_moved_elsewhere_fails(vectors: dict[str, Any], index: int) -> None:
    case = vectors["must_fail"][index]
    chain = vectors["chain"]
    with pytest.raises(IntegrityError):
        crypto.decrypt(
            bytes.fromhex(chain["secret_dek"]),
            bytes.fromhex(chain["value_ciphertext"]),
            case["aad"].encode(),
        )


def test_wrong_passphrase_does_not_unwrap(vectors: dict[str, Any]) -> None:
    p = vectors["passphrase_slot"]
    kek = derive_kek(
        "Correct horse battery staple",
        bytes.fromhex(p["salt"]),
        p["iterations"],
        p["lanes"],
        p["memory_cost"],
    )
    with pytest.raises(IntegrityError):
        crypto.unwrap_key(kek, bytes.fromhex(p["wrapped"]), slot_aad(1, p["slot_id"]))


def test_row_metadata_mac(vectors: dict[str, Any]) -> None:
    v = vectors["row_mac"]
    row_key = crypto.derive_subkey(bytes.fromhex(v["audit_key"]), crypto.ROW_MAC_KEY)
    assert row_key.hex() == v["row_key"]
    message = v["head_message"].encode()
    assert crypto.mac(row_key, message).hex() == v["head_mac"]
    crypto.verify_mac(row_key, message, bytes.fromhex(v["head_mac"]))
    with pytest.raises(IntegrityError):
        crypto.verify_mac(
            row_key, message.replace(b"\x007\x00", b"\x006\x00"), bytes.fromhex(v["head_mac"])
        )
