"""The tpm2 slot's own logic (crate_cli/vault/slots/tpm2.py), with no TPM:
which TPM, which PCRs, which records it refuses, which PINs, and what it
says when tpm2-pytss is missing.

The tests that need a TPM (the probe, the blobs, the sessions) run against
swtpm in tests/integration/test_tpm2_in_process.py; crate with a tpm2 slot,
in subprocesses, is in tests/e2e/test_tpm2_slot.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from crate_cli.errors import InvalidInput, KeystoreError
from crate_cli.vault.slots import tpm2
from tests.support.slots import TPM2_NOWHERE, TPM2_RECORD, answers, slot_context

# -- resolve_tcti ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recorded", ["cmd:touch /tmp/x", "/tmp/libevil.so", "libevil.so:conf", "pcap:cmd:sh"]
)
def test_a_recorded_tcti_must_be_a_known_kind(tmp_path: Path, recorded: str) -> None:
    """The TSS loads a TCTI by name (`cmd:` runs a shell command): a slot record
    may only name the usual kinds; --tcti and the variables may name any."""
    with pytest.raises(KeystoreError) as refused:
        tpm2.resolve_tcti(slot_context(tmp_path, {}), recorded)
    assert "damaged" in refused.value.message
    assert tpm2.resolve_tcti(slot_context(tmp_path, {"CRATE_TPM2_TCTI": recorded}), recorded) == (
        recorded
    )


@pytest.mark.parametrize(
    "recorded", ["device:/dev/tpmrm0", "swtpm:path=/s", "mssim:host=localhost", "pcap:swtpm:"]
)
def test_a_recorded_tcti_of_a_known_kind_is_used(tmp_path: Path, recorded: str) -> None:
    assert tpm2.resolve_tcti(slot_context(tmp_path, {}), recorded) == recorded


@pytest.mark.parametrize(
    ("option", "environ", "recorded", "expected"),
    [
        (
            "opt:a",
            {"CRATE_TPM2_TCTI": "crate:b", "TPM2TOOLS_TCTI": "tools:c"},
            "swtpm:path=/r",
            "opt:a",
        ),
        (
            None,
            {"CRATE_TPM2_TCTI": "crate:b", "TPM2TOOLS_TCTI": "tools:c"},
            "swtpm:path=/r",
            "crate:b",
        ),
        (None, {"TPM2TOOLS_TCTI": "tools:c"}, "swtpm:path=/r", "tools:c"),
        (None, {}, "swtpm:path=/r", "swtpm:path=/r"),
        (None, {}, None, "device:/dev/tpmrm0"),
        # Empty values count as unset, at every level.
        ("", {"CRATE_TPM2_TCTI": "", "TPM2TOOLS_TCTI": ""}, "", "device:/dev/tpmrm0"),
        ("", {"CRATE_TPM2_TCTI": "", "TPM2TOOLS_TCTI": "tools:c"}, "swtpm:path=/r", "tools:c"),
    ],
    ids=[
        "option",
        "crate-variable",
        "tools-variable",
        "recorded",
        "default",
        "empty",
        "skip-empty",
    ],
)
def test_resolve_tcti_order(
    tmp_path: Path,
    option: str | None,
    environ: dict[str, str],
    recorded: str | None,
    expected: str,
) -> None:
    ctx = slot_context(tmp_path, environ, tpm2_tcti=option)
    assert tpm2.resolve_tcti(ctx, recorded) == expected


# -- parse_pcrs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, []),
        ("7", [7]),
        ("0", [0]),
        ("23", [23]),
        ("7,0", [0, 7]),
        ("7,0,7", [0, 7]),
        (" 0 , 7 ", [0, 7]),
        ("sha256:0,7", [0, 7]),
        ("07", [7]),
        (7, [7]),
    ],
)
def test_parse_pcrs(text: object, expected: list[int]) -> None:
    assert tpm2.parse_pcrs(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "24",
        "100",
        "-1",
        "x",
        "7,",
        ",7",
        "7,,8",
        "7;8",
        "7 8",
        "0x7",
        "7.0",
        "sha1:7",
        "sha256:",
        "sha384:7",
        "²",
    ],
)
def test_parse_pcrs_refuses(text: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        tpm2.parse_pcrs(text)
    assert "from 0 to 23" in refused.value.message
    assert refused.value.hint == "for example: --pcrs 7"


# -- damaged slot records ----------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"public": None},
        {"public": 12},
        {"public": "not base64!"},
        {"private": None},
        {"private": ["AAAA"]},
        {"private": "AAA"},
        {"primary": None},
        {"primary": "rsa2048:aes128cfb"},
        {"pin": None},
        {"pin": "yes"},
        {"pin": 1},
        {"pcrs": "7"},
        {"pcrs": {"7": True}},
        {"pcrs": [24]},
        {"pcrs": [-1]},
        {"pcrs": ["7"]},
        {"pcrs": [7.0]},
        {"tcti": 5},
        {"tcti": ["swtpm:"]},
    ],
    ids=repr,
)
def test_a_damaged_record_is_a_keystore_error(tmp_path: Path, change: dict[str, Any]) -> None:
    params = {**TPM2_RECORD, **change}
    params = {k: v for k, v in params.items() if v is not None}
    # The TCTI leads nowhere: were the record not checked first, the error
    # would be "no TPM is reachable" instead.
    with pytest.raises(KeystoreError) as refused:
        tpm2.Tpm2Slot().unseal(
            slot_context(tmp_path, {"CRATE_TPM2_TCTI": TPM2_NOWHERE}), params, 1, "s1"
        )
    assert "damaged" in refused.value.message


# -- the PIN, checked before the TPM is touched -------------------------------------------


@pytest.mark.parametrize(
    ("typed", "error", "message"),
    [
        (("1234", "1235"), KeystoreError, "the two PINs differ; nothing was changed"),
        (("123", "123"), InvalidInput, "from 4 to 32 bytes"),
        (("é" * 17, "é" * 17), InvalidInput, "from 4 to 32 bytes"),  # 34 bytes in UTF-8
    ],
    ids=["differ", "short", "long-in-bytes"],
)
def test_a_bad_new_pin_seals_nothing(
    tmp_path: Path, typed: tuple[str, str], error: type[Exception], message: str
) -> None:
    # No TPM is reachable: the PIN is checked before the TPM is touched.
    ctx = slot_context(tmp_path, {"CRATE_TPM2_TCTI": TPM2_NOWHERE}, answers(*typed), tpm2_pin=True)
    with pytest.raises(error) as refused:
        tpm2.Tpm2Slot().seal(ctx, os.urandom(32), 1, "s1")
    assert message in str(refused.value)


def test_no_pin_and_no_prompt_names_the_variable(tmp_path: Path) -> None:
    ctx = slot_context(tmp_path, {"CRATE_TPM2_TCTI": TPM2_NOWHERE}, None, tpm2_pin=True)
    with pytest.raises(KeystoreError) as refused:
        tpm2.Tpm2Slot().seal(ctx, os.urandom(32), 1, "s1")
    assert "CRATE_TPM2_PIN" in (refused.value.hint or "")


# -- without tpm2-pytss ------------------------------------------------------------------


def test_without_tpm2_pytss_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tpm2_pytss", None)  # `import tpm2_pytss` fails
    # A TCTI that is not a device, so the check reaches the import.
    ctx = slot_context(tmp_path, {"CRATE_TPM2_TCTI": "swtpm:path=/nonexistent/sock"})
    slot = tpm2.Tpm2Slot()
    for attempt in (
        lambda: slot.seal(ctx, os.urandom(32), 1, "s1"),
        lambda: slot.unseal(ctx, dict(TPM2_RECORD), 1, "s1"),
    ):
        with pytest.raises(KeystoreError) as refused:
            attempt()
        assert "tpm2-pytss" in refused.value.message
        assert "pip install 'crate-cli[tpm2]'" in (refused.value.hint or "")
    reason = slot.probe(ctx)
    assert reason is not None and "tpm2-pytss" in reason
