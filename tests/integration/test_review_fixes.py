"""Faults found in review, in process: a lying transport, settings written by
two processes at once, settings out of range. The ones crate shows as a
command are in tests/e2e/test_review_fixes.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from crate_cli.client.secrets import SecretsClient
from crate_cli.config import CrateHome, Settings
from crate_cli.errors import IntegrityError, InvalidInput
from crate_cli.vault import jwe

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
