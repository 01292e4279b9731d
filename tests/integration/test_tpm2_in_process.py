"""The tpm2 slot in process against a real TPM (swtpm): sealing and unsealing,
the PIN prompt, the sessions the key moves in, what the sealed object
allows, and the probe. The slot's own logic without a TPM is in
tests/unit/vault/slots/test_tpm2.py; crate with a tpm2 slot, in
subprocesses, is in tests/e2e/test_tpm2_slot.py."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from crate_cli.errors import KeystoreError
from crate_cli.vault.slots import tpm2
from tests.support.slots import TPM2_NOWHERE, TPM2_RECORD, answers, slot_context
from tests.support.tpm_simulator import Swtpm


def test_unreadable_blobs_are_a_damaged_record(tmp_path: Path, swtpm: Swtpm) -> None:
    params = {**TPM2_RECORD, "public": base64.b64encode(b"\x00\x40junk").decode()}
    with pytest.raises(KeystoreError) as refused:
        tpm2.Tpm2Slot().unseal(slot_context(tmp_path, swtpm.env()), params, 1, "s1")
    assert refused.value.message == "tpm2 slot record is damaged (blobs)"


def test_seal_and_unseal_in_process(tmp_path: Path, swtpm: Swtpm) -> None:
    key = os.urandom(32)
    slot = tpm2.Tpm2Slot()
    params = slot.seal(slot_context(tmp_path, swtpm.env()), key, 1, "s1")
    assert params["tcti"] == swtpm.tcti
    assert key not in base64.b64decode(params["public"]) + base64.b64decode(params["private"])
    # The recorded TCTI is enough to find the TPM again.
    assert slot.unseal(slot_context(tmp_path), params, 1, "s1") == key


def test_a_sealed_value_that_is_not_a_master_key(tmp_path: Path, swtpm: Swtpm) -> None:
    slot = tpm2.Tpm2Slot()
    params = slot.seal(slot_context(tmp_path, swtpm.env()), b"sixteen byte key", 3, "s1")
    with pytest.raises(KeystoreError) as refused:
        slot.unseal(slot_context(tmp_path, swtpm.env()), params, 3, "s1")
    assert refused.value.message == "the tpm2 slot s1 does not hold master key v3"


def test_the_pin_prompt_asks_twice_when_sealing(tmp_path: Path, swtpm: Swtpm) -> None:
    slot = tpm2.Tpm2Slot()
    key = os.urandom(32)
    prompt = answers("1234", "1234")
    params = slot.seal(slot_context(tmp_path, swtpm.env(), prompt, tpm2_pin=True), key, 1, "s1")
    assert prompt.asked == ["TPM PIN for the crate master key: ", "Repeat the PIN: "]
    assert params["pin"] is True
    # Unsealing asks once; the variable wins over the prompt.
    prompt = answers("1234")
    assert slot.unseal(slot_context(tmp_path, swtpm.env(), prompt), params, 1, "s1") == key
    assert prompt.asked == ["TPM PIN for the crate master key: "]
    silent = answers()
    env = swtpm.env() | {"CRATE_TPM2_PIN": "1234"}
    assert slot.unseal(slot_context(tmp_path, env, silent), params, 1, "s1") == key
    assert silent.asked == []


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
    encrypts its response. (The pcap test in tests/e2e/test_tpm2_slot.py shows the
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
    ctx = slot_context(tmp_path, swtpm.env() | {"CRATE_TPM2_PIN": "1234"}, **options)
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
    ctx = slot_context(tmp_path, swtpm.env() | {"CRATE_TPM2_PIN": pin}, **options)
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


def test_probe_finds_a_running_tpm(tmp_path: Path, swtpm: Swtpm) -> None:
    assert tpm2.Tpm2Slot().probe(slot_context(tmp_path, swtpm.env())) is None


def test_probe_says_why_without_a_tpm(
    tmp_path: Path, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TSS2_LOG", raising=False)
    slot = tpm2.Tpm2Slot()
    missing = slot.probe(slot_context(tmp_path, {"CRATE_TPM2_TCTI": TPM2_NOWHERE}))
    assert missing == "there is no TPM device /nonexistent/tpmrm0"
    swtpm.stop()
    stopped = slot.probe(slot_context(tmp_path, swtpm.env()))
    assert stopped == f"no TPM answers at {swtpm.tcti}"
    # The library's logging was silenced for the call only.
    assert "TSS2_LOG" not in os.environ


def test_probe_does_not_overwrite_a_users_tss2_log(
    tmp_path: Path, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TSS2_LOG", "esys+debug")
    assert tpm2.Tpm2Slot().probe(slot_context(tmp_path, swtpm.env())) is None
    assert os.environ["TSS2_LOG"] == "esys+debug"
