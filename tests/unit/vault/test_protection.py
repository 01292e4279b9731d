"""The plain-language verdict of `crate keys status`."""

from __future__ import annotations

from typing import Any

from crate_cli.vault.protection import assess


def row(kind: str, current: bool = True, **more: Any) -> dict[str, Any]:
    return {
        "id": f"{kind}-id",
        "type": kind,
        "current": current,
        "master_version": 1 if kind != "env" else None,
        **more,
    }


def test_no_master_key() -> None:
    summary, warnings = assess([], "/k")
    assert "no master key yet" in summary
    assert warnings == []


def test_file_only_is_one_warning_with_the_folder() -> None:
    summary, warnings = assess([row("file")], "/home/u/keys")
    assert summary == (
        "master key v1 can be unlocked by: a key file, protected by file permissions only"
    )
    assert len(warnings) == 1
    assert "/home/u/keys" in warnings[0] and "only file permissions" in warnings[0]


def test_tpm_without_recovery_is_warned() -> None:
    _, warnings = assess([row("tpm2", pin=True)], "/k")
    assert len(warnings) == 1 and "no recovery slot" in warnings[0]


def test_tpm_with_a_passphrase_is_fine() -> None:
    summary, warnings = assess([row("tpm2", pin=True), row("passphrase")], "/k")
    assert summary.endswith("a TPM 2.0 on this machine; a passphrase")
    assert warnings == []


def test_a_tpm_slot_without_pin_or_pcrs_says_what_it_protects() -> None:
    """`auto` picks a TPM slot with neither: the status says plainly that a
    stolen disk is covered and a stolen laptop is not, and how to add a PIN."""
    _, warnings = assess([row("tpm2"), row("passphrase")], "/k")
    (plain,) = warnings
    assert "tpm2 slot tpm2-id has no PIN or PCR policy" in plain
    assert "stolen disk" in plain and "not from a stolen laptop" in plain
    assert "crate keys slots add tpm2 --pin" in plain
    for guarded in (row("tpm2", pin=True), row("tpm2", pcrs=[7])):
        assert assess([guarded, row("passphrase")], "/k")[1] == []


def test_a_file_slot_beside_hardware_is_a_weak_link() -> None:
    _, warnings = assess([row("tpm2", pin=True), row("file")], "/k")
    assert any("also unlocks it" in w for w in warnings)
    assert any("no recovery slot" in w for w in warnings)


def test_an_hsm_is_its_own_recovery() -> None:
    _, warnings = assess([row("pkcs11")], "/k")
    assert warnings == []


def test_old_versions_do_not_count() -> None:
    summary, warnings = assess([row("file", current=False), row("passphrase")], "/k")
    assert summary == "master key v1 can be unlocked by: a passphrase"
    assert warnings == []
