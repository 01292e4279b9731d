"""The tpm2 slot's own logic, in process: which TPM, which PCRs, which records
it refuses, and what it says when tpm2-pytss or the TPM is missing.

Only the tests that need a TPM (probe, the blobs, the key's size) start a
swtpm; the CLI-level behaviour is in tests/integration/test_tpm2_slot.py.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crate_cli.config import CrateHome
from crate_cli.errors import InvalidInput, KeystoreError
from crate_cli.vault.slots import tpm2
from crate_cli.vault.slots.base import SlotContext
from tests.support.tpm_simulator import Swtpm

NOWHERE = "device:/nonexistent/tpmrm0"


def context(
    tmp_path: Path,
    environ: dict[str, str] | None = None,
    prompt: Any = None,
    **options: Any,
) -> SlotContext:
    return SlotContext(
        home=CrateHome(tmp_path, tmp_path), environ=environ or {}, prompt=prompt, options=options
    )


def answers(*typed: str) -> Any:
    """A prompt that types `typed` in turn and records what it was asked."""
    queue: Iterator[str] = iter(typed)
    asked: list[str] = []

    def prompt(question: str) -> str:
        asked.append(question)
        return next(queue)

    prompt.asked = asked  # type: ignore[attr-defined]
    return prompt


# -- resolve_tcti ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recorded", ["cmd:touch /tmp/x", "/tmp/libevil.so", "libevil.so:conf", "pcap:cmd:sh"]
)
def test_a_recorded_tcti_must_be_a_known_kind(tmp_path: Path, recorded: str) -> None:
    """The TSS loads a TCTI by name (`cmd:` runs a shell command): a slot record
    may only name the usual kinds; --tcti and the variables may name any."""
    with pytest.raises(KeystoreError) as refused:
        tpm2.resolve_tcti(context(tmp_path, {}), recorded)
    assert "damaged" in refused.value.message
    assert tpm2.resolve_tcti(context(tmp_path, {"CRATE_TPM2_TCTI": recorded}), recorded) == (
        recorded
    )


@pytest.mark.parametrize(
    "recorded", ["device:/dev/tpmrm0", "swtpm:path=/s", "mssim:host=localhost", "pcap:swtpm:"]
)
def test_a_recorded_tcti_of_a_known_kind_is_used(tmp_path: Path, recorded: str) -> None:
    assert tpm2.resolve_tcti(context(tmp_path, {}), recorded) == recorded


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
    ctx = context(tmp_path, environ, tpm2_tcti=option)
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

GOOD = {
    "tcti": NOWHERE,
    "primary": tpm2.PRIMARY,
    "public": base64.b64encode(b"public-blob").decode(),
    "private": base64.b64encode(b"private-blob").decode(),
    "pin": False,
    "pcrs": [7],
}


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
    params = {**GOOD, **change}
    params = {k: v for k, v in params.items() if v is not None}
    # The TCTI leads nowhere: were the record not checked first, the error
    # would be "no TPM is reachable" instead.
    with pytest.raises(KeystoreError) as refused:
        tpm2.Tpm2Slot().unseal(context(tmp_path, {"CRATE_TPM2_TCTI": NOWHERE}), params, 1, "s1")
    assert "damaged" in refused.value.message


def test_unreadable_blobs_are_a_damaged_record(tmp_path: Path, swtpm: Swtpm) -> None:
    params = {**GOOD, "public": base64.b64encode(b"\x00\x40junk").decode()}
    with pytest.raises(KeystoreError) as refused:
        tpm2.Tpm2Slot().unseal(context(tmp_path, swtpm.env()), params, 1, "s1")
    assert refused.value.message == "tpm2 slot record is damaged (blobs)"


# -- in process against a swtpm ------------------------------------------------------------


def test_seal_and_unseal_in_process(tmp_path: Path, swtpm: Swtpm) -> None:
    key = os.urandom(32)
    slot = tpm2.Tpm2Slot()
    params = slot.seal(context(tmp_path, swtpm.env()), key, 1, "s1")
    assert params["tcti"] == swtpm.tcti
    assert key not in base64.b64decode(params["public"]) + base64.b64decode(params["private"])
    # The recorded TCTI is enough to find the TPM again.
    assert slot.unseal(context(tmp_path), params, 1, "s1") == key


def test_a_sealed_value_that_is_not_a_master_key(tmp_path: Path, swtpm: Swtpm) -> None:
    slot = tpm2.Tpm2Slot()
    params = slot.seal(context(tmp_path, swtpm.env()), b"sixteen byte key", 3, "s1")
    with pytest.raises(KeystoreError) as refused:
        slot.unseal(context(tmp_path, swtpm.env()), params, 3, "s1")
    assert refused.value.message == "the tpm2 slot s1 does not hold master key v3"


def test_the_pin_prompt_asks_twice_when_sealing(tmp_path: Path, swtpm: Swtpm) -> None:
    slot = tpm2.Tpm2Slot()
    key = os.urandom(32)
    prompt = answers("1234", "1234")
    params = slot.seal(context(tmp_path, swtpm.env(), prompt, tpm2_pin=True), key, 1, "s1")
    assert prompt.asked == ["TPM PIN for the crate master key: ", "Repeat the PIN: "]
    assert params["pin"] is True
    # Unsealing asks once; the variable wins over the prompt.
    prompt = answers("1234")
    assert slot.unseal(context(tmp_path, swtpm.env(), prompt), params, 1, "s1") == key
    assert prompt.asked == ["TPM PIN for the crate master key: "]
    silent = answers()
    env = swtpm.env() | {"CRATE_TPM2_PIN": "1234"}
    assert slot.unseal(context(tmp_path, env, silent), params, 1, "s1") == key
    assert silent.asked == []


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
    ctx = context(tmp_path, {"CRATE_TPM2_TCTI": NOWHERE}, answers(*typed), tpm2_pin=True)
    with pytest.raises(error) as refused:
        tpm2.Tpm2Slot().seal(ctx, os.urandom(32), 1, "s1")
    assert message in str(refused.value)


def test_no_pin_and_no_prompt_names_the_variable(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"CRATE_TPM2_TCTI": NOWHERE}, None, tpm2_pin=True)
    with pytest.raises(KeystoreError) as refused:
        tpm2.Tpm2Slot().seal(ctx, os.urandom(32), 1, "s1")
    assert "CRATE_TPM2_PIN" in (refused.value.hint or "")


@pytest.mark.parametrize(
    "options",
    [{}, {"tpm2_pin": True}, {"tpm2_pin": True, "tpm2_pcrs": "7"}],
    ids=["plain", "pin", "pin-and-pcr"],
)
def test_the_key_moves_only_in_salted_encrypting_sessions(
    tmp_path: Path, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    """TPM2_Create gets the key (and PIN) in a session salted to the primary
    that encrypts its first parameter; TPM2_Unseal returns it in one that
    encrypts its response. (The pcap test in tests/integration shows the
    bytes are not in clear; this shows an observer cannot derive the session
    key from the nonces on the bus either.)"""
    import tpm2_pytss

    esapi = tpm2_pytss.ESAPI
    sessions: dict[int, dict[str, Any]] = {}
    used: list[tuple[str, int]] = []
    real_start = esapi.start_auth_session
    real_attributes = esapi.trsess_set_attributes

    def start(self: Any, tpm_key: Any, bind: Any, kind: Any, symmetric: Any, *rest: Any) -> Any:
        handle = real_start(self, tpm_key, bind, kind, symmetric, *rest)
        sessions[int(handle)] = {"salt": tpm_key, "symmetric": symmetric, "attributes": 0}
        return handle

    def set_attributes(self: Any, session: Any, attributes: Any, *rest: Any) -> Any:
        sessions[int(session)]["attributes"] |= int(attributes)
        return real_attributes(self, session, attributes, *rest)

    def spy(name: str) -> Any:
        real = getattr(esapi, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            used.append((name, int(kwargs.get("session1", tpm2_pytss.ESYS_TR.PASSWORD))))
            return real(self, *args, **kwargs)

        return call

    monkeypatch.setattr(esapi, "start_auth_session", start)
    monkeypatch.setattr(esapi, "trsess_set_attributes", set_attributes)
    for name in ("create", "unseal"):
        monkeypatch.setattr(esapi, name, spy(name))

    key = os.urandom(32)
    ctx = context(tmp_path, swtpm.env() | {"CRATE_TPM2_PIN": "1234"}, **options)
    slot = tpm2.Tpm2Slot()
    assert slot.unseal(ctx, slot.seal(ctx, key, 1, "s1"), 1, "s1") == key

    assert [name for name, _ in used] == ["create", "unseal"]
    wanted = {"create": tpm2_pytss.TPMA_SESSION.DECRYPT, "unseal": tpm2_pytss.TPMA_SESSION.ENCRYPT}
    for name, handle in used:
        assert handle in sessions, f"{name} ran without a session of crate's own"
        session = sessions[handle]
        assert session["salt"] != tpm2_pytss.ESYS_TR.NONE, f"{name}: the session is not salted"
        symmetric = session["symmetric"]
        assert symmetric.algorithm == tpm2_pytss.TPM2_ALG.AES
        assert symmetric.mode.aes == tpm2_pytss.TPM2_ALG.CFB
        assert session["attributes"] & wanted[name], f"{name}: no parameter encryption"


@pytest.mark.parametrize(
    ("options", "pin"),
    [
        ({}, ""),
        ({"tpm2_pin": True}, "1234"),
        ({"tpm2_pcrs": "7"}, ""),
        ({"tpm2_pin": True, "tpm2_pcrs": "0,7"}, "1234"),
    ],
    ids=["plain", "pin", "pcr", "pin-and-pcr"],
)
def test_what_the_sealed_object_allows(
    tmp_path: Path, swtpm: Swtpm, options: dict[str, Any], pin: str
) -> None:
    """The object's attributes, and what someone holding the blobs and the TPM
    (but not following crate's policy) can do with them: with a PCR policy,
    the auth value alone (even the right PIN) must not unseal."""
    import tpm2_pytss as t

    key = os.urandom(32)
    ctx = context(tmp_path, swtpm.env() | {"CRATE_TPM2_PIN": pin}, **options)
    params = tpm2.Tpm2Slot().seal(ctx, key, 1, "s1")
    public = t.TPM2B_PUBLIC.unmarshal(base64.b64decode(params["public"]))[0]
    attributes = public.publicArea.objectAttributes
    pcrs = tpm2.parse_pcrs(options.get("tpm2_pcrs"))
    assert params["pcrs"] == pcrs
    assert attributes & t.TPMA_OBJECT.FIXEDTPM and attributes & t.TPMA_OBJECT.FIXEDPARENT
    # No PIN, nothing to guess: exempt from dictionary-attack lockout. A PIN is not.
    assert bool(attributes & t.TPMA_OBJECT.NODA) == (not pin)
    # A PCR policy is the only way in: no auth-value (password/HMAC) use.
    assert bool(attributes & t.TPMA_OBJECT.USERWITHAUTH) == (not pcrs)
    assert (len(bytes(public.publicArea.authPolicy)) == 32) == bool(pcrs)

    with tpm2._connected(swtpm.tcti) as tpm:
        private = t.TPM2B_PRIVATE.unmarshal(base64.b64decode(params["private"]))[0]
        sealed = tpm._track(tpm.esapi.load(tpm.primary(), private, public))
        tpm.esapi.tr_set_auth(sealed, pin.encode())
        if pcrs:
            with pytest.raises(t.TSS2_Exception) as refused:
                tpm.esapi.unseal(sealed)
            assert refused.value.error == t.TPM2_RC.AUTH_UNAVAILABLE
        else:
            assert bytes(tpm.esapi.unseal(sealed)) == key


# -- probe -------------------------------------------------------------------------------


def test_probe_finds_a_running_tpm(tmp_path: Path, swtpm: Swtpm) -> None:
    assert tpm2.Tpm2Slot().probe(context(tmp_path, swtpm.env())) is None


def test_probe_says_why_without_a_tpm(
    tmp_path: Path, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TSS2_LOG", raising=False)
    slot = tpm2.Tpm2Slot()
    missing = slot.probe(context(tmp_path, {"CRATE_TPM2_TCTI": NOWHERE}))
    assert missing == "there is no TPM device /nonexistent/tpmrm0"
    swtpm.stop()
    stopped = slot.probe(context(tmp_path, swtpm.env()))
    assert stopped == f"no TPM answers at {swtpm.tcti}"
    # The library's logging was silenced for the call only.
    assert "TSS2_LOG" not in os.environ


def test_probe_does_not_overwrite_a_users_tss2_log(
    tmp_path: Path, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TSS2_LOG", "esys+debug")
    assert tpm2.Tpm2Slot().probe(context(tmp_path, swtpm.env())) is None
    assert os.environ["TSS2_LOG"] == "esys+debug"


# -- without tpm2-pytss ------------------------------------------------------------------


def test_without_tpm2_pytss_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tpm2_pytss", None)  # `import tpm2_pytss` fails
    # A TCTI that is not a device, so the check reaches the import.
    ctx = context(tmp_path, {"CRATE_TPM2_TCTI": "swtpm:path=/nonexistent/sock"})
    slot = tpm2.Tpm2Slot()
    for attempt in (
        lambda: slot.seal(ctx, os.urandom(32), 1, "s1"),
        lambda: slot.unseal(ctx, dict(GOOD), 1, "s1"),
    ):
        with pytest.raises(KeystoreError) as refused:
            attempt()
        assert "tpm2-pytss" in refused.value.message
        assert "pip install 'crate-cli[tpm2]'" in (refused.value.hint or "")
    reason = slot.probe(ctx)
    assert reason is not None and "tpm2-pytss" in reason
