"""How well the master key is protected, in plain words: the summary and
warnings `crate keys status` shows, from the slot report of the master key
registry (MasterKeys.slot_report)."""

from typing import Any

# How each slot type protects the key, in a sentence, and whether it stays
# with this machine (lost with its TPM, keyring or key file).
_PROTECTION = {
    "tpm2": ("a TPM 2.0 on this machine", True),
    "keyring": ("the OS keyring", True),
    "pkcs11": ("an HSM token", False),
    "passphrase": ("a passphrase", False),
    "file": ("a key file, protected by file permissions only", True),
    "env": ("CRATE_MASTER_KEY in the environment", False),
}


def assess(rows: list[dict[str, Any]], keys_dir: str) -> tuple[str, list[str]]:
    """A plain summary of how the current master key is protected, and warnings."""
    current = [r for r in rows if r["current"]]
    if not current:
        return "crate has no master key yet (crate init creates it)", []
    types = list(dict.fromkeys(r["type"] for r in current))
    version = max(r["master_version"] or 0 for r in current)
    words = [_PROTECTION.get(t, (t, False))[0] for t in types]
    summary = f"master key v{version} can be unlocked by: " + "; ".join(words)
    warnings = []
    at_rest = [t for t in types if t != "env"]
    if "file" in at_rest:
        if at_rest == ["file"]:
            warnings.append(
                f"only file permissions protect it: anyone who can read {keys_dir} can open "
                "every vault; add a stronger slot (crate keys slots add tpm2|keyring|passphrase)"
            )
        else:
            warnings.append(
                f"a key file in {keys_dir} also unlocks it, so it is only as safe as that "
                "folder; remove the file slot (crate keys slots remove ID)"
            )
    for r in current:
        if r["type"] == "tpm2" and not r.get("pin") and not r.get("pcrs"):
            warnings.append(
                f"tpm2 slot {r['id']} has no PIN or PCR policy: it protects the key from a "
                "stolen disk or a copied home folder (the TPM stays behind), not from a stolen "
                "laptop (the TPM goes with it and unseals for whoever holds it); add a PIN: "
                f"crate keys slots add tpm2 --pin, then crate keys slots remove {r['id']}"
            )
    if at_rest not in ([], ["file"]) and all(_PROTECTION.get(t, ("", False))[1] for t in at_rest):
        warnings.append(
            "no recovery slot: if this machine's TPM, keyring or key file is lost, so are the "
            "vaults; add one: crate keys slots add passphrase"
        )
    return summary, warnings
