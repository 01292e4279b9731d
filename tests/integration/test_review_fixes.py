"""Faults found in review: replayed rows, odd paths, a lying transport, echoes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crate_cli.client.secrets import SecretsClient
from crate_cli.config import CrateHome, Settings
from crate_cli.errors import ExitCode, IntegrityError, InvalidInput
from crate_cli.vault import jwe
from tests.support.crate_runner import CrateRunner, assert_clean_error

# -- an older, authentic head row copied back ----------------------------------------


def test_an_older_head_row_restored_is_refused(
    acme_home: Path, vault_sql: Callable[..., list[tuple[object, ...]]], crate: CrateRunner
) -> None:
    crate("secrets", "set", "DB", "pw-old", "--org", "acme", check=True)
    (saved,) = vault_sql(
        "SELECT version, deleted, tags, updated_at, actor, mac FROM secrets WHERE name = 'DB'"
    )
    crate("secrets", "set", "DB", "pw-new-rotated", "--org", "acme", check=True)
    crate("secrets", "delete", "DB", "--yes", "--org", "acme", check=True)
    vault_sql(
        "UPDATE secrets SET version = ?, deleted = ?, tags = ?, updated_at = ?, actor = ?, "
        "mac = ? WHERE name = 'DB'",
        saved,
    )
    for args in (
        ["secrets", "get", "DB", "--org", "acme"],
        ["secrets", "list", "--org", "acme"],
        ["run", "--org", "acme", "--", "true"],
    ):
        assert_clean_error(crate(*args), ExitCode.INTEGRITY, hidden=("pw-old",))


@pytest.mark.parametrize("column", ["wrapped_dek", "ciphertext"])
def test_a_blob_cut_to_a_few_bytes_is_an_integrity_failure(
    acme_home: Path,
    vault_sql: Callable[..., list[tuple[object, ...]]],
    crate: CrateRunner,
    column: str,
) -> None:
    vault_sql(
        f"UPDATE secret_versions SET {column} = x'01616263' WHERE secret_id = "
        "(SELECT id FROM secrets WHERE name = 'API_KEY' AND env = 'dev')"
    )
    assert_clean_error(crate("secrets", "get", "API_KEY", "--org", "acme"), ExitCode.INTEGRITY)


def test_a_swapped_public_key_is_refused(
    acme_home: Path, vault_sql: Callable[..., list[tuple[object, ...]]], crate: CrateRunner
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=3072).public_key()
    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    vault_sql("UPDATE org_rsa_keys SET public_der = ?", (der,))
    assert_clean_error(crate("secrets", "set", "NEW", "value", "--org", "acme"), ExitCode.INTEGRITY)
    # With the key id rewritten to match, the private key no longer opens.
    vault_sql("UPDATE org_rsa_keys SET kid = ?", (jwe.thumbprint(other),))
    assert_clean_error(crate("secrets", "set", "NEW", "value", "--org", "acme"), ExitCode.INTEGRITY)


# -- the client checks what comes back ----------------------------------------------------


class LyingTransport:
    """Answers a retrieval with a bundle of its own making: it saw the request.
    `columns` picks the layout (a server that predates columns sends rows);
    `raw` replaces the secrets' members with whatever it holds."""

    def __init__(
        self,
        extra: dict[str, str],
        *,
        drop: bool = False,
        nonce: str | None = None,
        columns: bool = False,
        raw: dict[str, Any] | None = None,
    ):
        self.extra, self.drop, self.nonce, self.columns, self.raw = extra, drop, nonce, columns, raw
        self.asked: list[Any] = []

    def request(self, method: str, path: str, query: Any = None, body: Any = None) -> Any:
        self.asked.append(body.get("layout"))
        pairs = [] if self.drop else [(n, "v") for n in body["names"]]
        pairs += list(self.extra.items())
        bundle: dict[str, Any] = {
            "org": "acme",
            "environment": body["environment"],
            "nonce": self.nonce or body["nonce"],
        }
        if self.raw is not None:
            bundle.update(self.raw)
        elif self.columns:
            bundle.update(
                names=[n for n, _ in pairs], values=[v for _, v in pairs], versions=[1] * len(pairs)
            )
        else:
            bundle["secrets"] = [{"name": n, "value": v, "version": 1} for n, v in pairs]
        public = jwe.public_key_from_jwk(body["public_key"])
        return {"bundle": jwe.encrypt(public, json.dumps(bundle).encode())}


@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize(
    ("lie", "names"),
    [
        ({"extra": {"LD_PRELOAD": "/tmp/evil.so"}}, ["API_KEY"]),
        ({"extra": {}, "drop": True}, ["API_KEY"]),
        ({"extra": {"API_KEY": "again"}}, ["API_KEY"]),
        ({"extra": {}, "nonce": "x" * 32}, ["API_KEY"]),
        ({"extra": {"BAD-NAME": "x"}}, []),
    ],
    ids=["extra-name", "missing-name", "duplicate", "other-nonce", "invalid-name"],
)
def test_a_bundle_that_does_not_answer_the_request_is_refused(
    lie: dict[str, Any], names: list[str], columns: bool
) -> None:
    client = SecretsClient(LyingTransport(columns=columns, **lie), "acme")
    with pytest.raises(IntegrityError):
        client.retrieve("dev", names)


@pytest.mark.parametrize(
    "raw",
    [
        {"names": ["A"], "values": ["v"]},
        {"names": ["A"], "values": ["v", "w"], "versions": [1]},
        {"names": "A", "values": ["v"], "versions": [1]},
        {"names": ["A"], "values": [5], "versions": [1]},
        {"names": ["A"], "values": [None], "versions": [1]},
        {"names": ["A"], "values": ["v"], "versions": [True]},
        {"names": ["A"], "values": ["v"], "versions": ["1"]},
        {"names": [["A"]], "values": ["v"], "versions": [1]},
        {"names": [7], "values": ["v"], "versions": [1]},
        {"secrets": [{"name": "A", "value": 5, "version": 1}]},
        {"secrets": [{"name": "A", "value": "v", "version": 1.0}]},
        {"secrets": ["A"]},
    ],
)
def test_a_malformed_bundle_is_refused_in_either_layout(raw: dict[str, Any]) -> None:
    client = SecretsClient(LyingTransport({}, raw=raw), "acme")
    with pytest.raises(IntegrityError, match=r"malformed|invalid name"):
        client.retrieve("dev", [])


@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
def test_an_honest_bundle_is_accepted(columns: bool) -> None:
    transport = LyingTransport({}, columns=columns)
    client = SecretsClient(transport, "acme")
    found = client.retrieve("dev", ["A", "B"])
    assert [tuple(s) for s in found] == [("A", "v", 1), ("B", "v", 1)]
    assert transport.asked == ["columns"]


# -- odd paths -------------------------------------------------------------------------


@pytest.mark.parametrize("odd", ["a#b", "a?b", "p%41q", "sp ace"])
def test_a_home_with_uri_characters_keeps_the_vault_inside(tmp_path: Path, odd: str) -> None:
    home = tmp_path / odd / "home"
    crate = CrateRunner(home)
    crate("secrets", "set", "X", "val", check=True)
    assert crate("secrets", "get", "X", check=True).stdout == "val"
    vault = home / "orgs" / "personal.vault"
    assert vault.stat().st_size > 0
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and home not in p.parents]
    assert outside == []


# -- what errors repeat ----------------------------------------------------------------


def test_a_value_typed_as_a_name_is_not_echoed(crate: CrateRunner) -> None:
    pasted = "postgres://admin:hunter2@db/prod"
    assert_clean_error(crate("secrets", "set", pasted), ExitCode.USAGE, hidden=(pasted, "hunter2"))


def test_a_value_that_looks_like_an_option_is_not_echoed(crate: CrateRunner) -> None:
    result = crate("secrets", "set", "PASS", "--s3cr3t-P4ss")
    assert_clean_error(result, ExitCode.USAGE, hidden=("s3cr3t",))
    assert "after --" in result.stderr
    crate("secrets", "set", "PASS", "--", "--s3cr3t-P4ss", check=True)
    assert crate("secrets", "get", "PASS", check=True).stdout == "--s3cr3t-P4ss"


@pytest.mark.parametrize(
    "args", [["secrets", "get"], ["bogus"], ["secrets", "set", "--tga", "x", "A", "1"]]
)
def test_usage_errors_are_two_crate_lines(crate: CrateRunner, args: list[str]) -> None:
    result = crate(*args)
    assert_clean_error(result, ExitCode.USAGE)
    assert "--help" in result.stderr.splitlines()[1]


def test_first_use_says_what_it_created_even_when_the_command_fails(crate: CrateRunner) -> None:
    result = crate("secrets", "get", "NOPE")
    assert result.returncode == ExitCode.NOT_FOUND
    assert "protected by file permissions only" in result.stderr
    assert "crate: error: no secret NOPE" in result.stderr


def test_a_named_secret_without_the_tag_is_an_error(crate: CrateRunner) -> None:
    crate("secrets", "set", "DATABASE_URL", "pg://x", check=True)
    assert_clean_error(crate("secrets", "fetch", "--tags", "backend", "DATABASE_URL"), 3)
    assert_clean_error(crate("run", "--tags", "backend", "DATABASE_URL", "--", "true"), 3)


# -- settings ----------------------------------------------------------------------------


def test_concurrent_setting_changes_are_both_kept(tmp_path: Path) -> None:
    home = CrateHome(tmp_path, tmp_path)
    code = (
        "import sys; from pathlib import Path; from crate_cli.config import CrateHome, Settings\n"
        "h = CrateHome(Path(sys.argv[1]), Path(sys.argv[1]))\n"
        "for i in range(30): Settings.update(h, sys.argv[2] + str(i), i)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen([os.sys.executable, "-c", code, str(tmp_path), key], env=env)
        for key in ("one.k", "two.k")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    data = Settings.load(home).data
    assert len(data["one"]) == 30 and len(data["two"]) == 30


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[secrets]\nmax_value_bytes = true\n", "secrets.max_value_bytes"),
        ("[secrets]\nmax_value_bytes = 0\n", "secrets.max_value_bytes"),
        ("[crypto]\nephemeral_rsa_bits = 512\n", "crypto.ephemeral_rsa_bits"),
        ("[crypto]\nephemeral_rsa_bits = 100000\n", "crypto.ephemeral_rsa_bits"),
    ],
)
def test_settings_out_of_range_are_refused(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "settings.toml").write_text(text)
    with pytest.raises(InvalidInput, match=key):
        Settings.load(CrateHome(tmp_path, tmp_path)).get(key)


def test_a_slot_asking_for_absurd_argon2_memory_is_refused(crate: CrateRunner) -> None:
    env = {"CRATE_PASSPHRASE": "correct horse battery"}
    crate("init", "--keystore", "passphrase", env=env, check=True)
    registry = crate.home / "keys" / "master.json"
    doc = json.loads(registry.read_text())
    doc["versions"][0]["slots"][0]["params"]["memory_cost"] = 1 << 40
    registry.write_text(json.dumps(doc))
    assert_clean_error(crate("secrets", "list", env=env), ExitCode.KEYSTORE)
