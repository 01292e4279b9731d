"""The audit log end to end (DESIGN §5): every call on an org leaves one entry.

Everything here runs the real `crate` in subprocesses (the `crate` fixture,
tests/conftest.py) and reads the log back the way a user does (`crate audit
log --json/--jsonl`, `crate audit verify`), over HTTP where the server is
involved, and, where the promise is about what is at rest, straight from the
vault file with sqlite3.

- `local`: one home (module scope) driven through every local action once,
  in a known order; most tests read its log, none of them writes to it.
- `remote`: one real `crate server` (module scope) in a home of its own, with
  org `personal` (the remote CLI tests), `paging` (exact counts for paging)
  and `busy` (concurrent HTTP writers), and tokens of several roles.
- The agent, the failed unlock, the migration, tampering and the
  concurrency tests each build a home of their own.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from crate_cli.errors import ExitCode, IntegrityError
from crate_cli.vault import crypto
from crate_cli.vault.keys import local_actor
from crate_cli.vault.storage.sqlite.schema import expected_schema
from tests.support.crate_runner import CrateRunner, Result
from tests.support.crate_server import CrateServer
from tests.support.vault_state import restore_triggers, run_sql

pytestmark = pytest.mark.e2e

ORG = "personal"
ACTOR = local_actor()  # the subprocesses inherit this process's USER/LOGNAME
ENTRY_KEYS = {
    "seq",
    "time",
    "actor",
    "action",
    "organization",
    "environment",
    "names",
    "outcome",
    "request_id",
    "client",
    "details",
}
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
GENERATED_ID_RE = re.compile(r"[0-9a-f]{16}")
VERIFIED_RE = re.compile(r"verified: (\d+) entries")
PASSPHRASE = "audit-test-passphrase-5c2e"
WRONG_PASSPHRASE = "not-the-passphrase-9d01"
BAD_TOKEN = "crate_" + "B" * 43  # the shape of a token, unknown to the server
WIDE = {"COLUMNS": "200"}  # rich tables on one line per row


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


# -- helpers --------------------------------------------------------------------


def ok(crate: CrateRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    """crate ARGS with an empty stdin (never a prompt), which must succeed."""
    result = crate(*args, input="", env=env)
    assert result.returncode == 0, f"crate {' '.join(args)}: {result}"
    return result


def fails(crate: CrateRunner, code: int, *args: str, env: dict[str, str] | None = None) -> Result:
    result = crate(*args, input="", env=env)
    assert result.returncode == code, f"crate {' '.join(args)}: {result}"
    assert "Traceback" not in result.stderr
    return result


def read_log(crate: CrateRunner, *args: str, env: dict[str, str] | None = None) -> list[Any]:
    """`crate audit log --json --limit 0 ARGS`: every matching entry, oldest first."""
    result = ok(crate, "audit", "log", "--json", "--limit", "0", *args, env=env)
    entries = json.loads(result.stdout)
    assert isinstance(entries, list)
    return entries


def verified(crate: CrateRunner, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`crate audit verify`: (the number of entries, its output)."""
    result = ok(crate, "audit", "verify", env=env)
    match = VERIFIED_RE.search(result.stdout)
    assert match, result
    return int(match.group(1)), result.stdout


def actions(entries: list[Any]) -> list[str]:
    return [e["action"] for e in entries]


def one(entries: list[Any], **match: Any) -> dict[str, Any]:
    """The single entry whose fields equal `match`."""
    found = [e for e in entries if all(e.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    entry: dict[str, Any] = found[0]
    return entry


def vault_path(home: Path, org: str = ORG) -> Path:
    return home / "orgs" / f"{org}.vault"


def vault_sql(home: Path, sql: str, org: str = ORG) -> list[Any]:
    """SQL on the vault file directly, as someone with access to the file could."""
    return run_sql(vault_path(home, org), sql)


@dataclass
class Reply:
    status: int
    body: Any
    request_id: str | None


def request(
    url: str,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    request_id: str | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    """One request by hand (http.client): status, JSON body and X-Request-Id."""
    parts = urlsplit(url)
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return Reply(
            response.status, json.loads(response.read()), response.getheader("X-Request-Id")
        )
    finally:
        if own:
            conn.close()


def http_log(url: str, org: str, token: str, **query: str) -> list[Any]:
    """Every entry of an org's log over HTTP (GET /organization/{org}/audit)."""
    params = {"limit": "10000", **query}
    reply = request(url, "GET", f"/organization/{org}/audit?{urlencode(params)}", token)
    assert reply.status == 200, reply
    assert reply.body["more"] is False
    entries: list[Any] = reply.body["entries"]
    return entries


def assert_chain_shape(entries: list[Any]) -> None:
    """Entries as documented: exactly the keys, seq 1..N, UTC times in order."""
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    for e in entries:
        assert set(e) == ENTRY_KEYS, e
        assert TIME_RE.fullmatch(e["time"]), e
        assert e["outcome"] in ("ok", "denied", "failed"), e
        assert isinstance(e["names"], list) and isinstance(e["details"], dict), e
    times = [e["time"] for e in entries]
    assert times == sorted(times)


# -- the local home, driven through every action ------------------------------------------


@dataclass
class LocalDrive:
    crate: CrateRunner
    values: dict[str, str]
    token: str = ""
    slot: str = ""
    log: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> LocalDrive:
    """A home where each local action ran once, in this order (the log's seqs)."""
    crate = CrateRunner(tmp_path_factory.mktemp("audit-local") / "crate-home")
    values = {
        "A": unique("a-value-"),
        "B": unique("b-value-"),
        "C": unique("c-value-"),
        "A2": unique("a2-value-"),
        "Q": unique("q-value-"),
    }
    drive = LocalDrive(crate, values)
    ok(crate, "secrets", "set", f"A={values['A']}", f"B={values['B']}", "--tag", "t1")  # 1, 2
    ok(crate, "secrets", "set", "C", values["C"])  # 3
    assert ok(crate, "secrets", "get", "A").stdout == values["A"]  # 4
    fetched = json.loads(ok(crate, "secrets", "fetch", "--format", "json").stdout)  # 5
    assert fetched == {"A": values["A"], "B": values["B"], "C": values["C"]}
    ok(crate, "secrets", "fetch", "B")  # 6
    ran = ok(crate, "run", "--tags", "t1", "--", "printenv", "B")  # 7
    assert ran.stdout == values["B"] + "\n"
    ok(crate, "secrets", "list")  # 8
    ok(crate, "secrets", "history", "A")  # 9
    ok(crate, "secrets", "set", "A", values["A2"])  # 10
    assert ok(crate, "secrets", "get", "A", "--version", "1").stdout == values["A"]  # 11
    ok(crate, "secrets", "rollback", "A", "--to", "1")  # 12
    ok(crate, "secrets", "delete", "C", "--yes")  # 13
    fails(crate, ExitCode.NOT_FOUND, "secrets", "get", "NOPE")  # 14
    ok(crate, "env", "create", "qa")  # 15
    fails(crate, ExitCode.CONFLICT, "env", "create", "qa")  # 16
    ok(crate, "secrets", "set", "--env", "qa", "Q", values["Q"])  # 17
    ok(crate, "env", "delete", "qa", "--yes")  # 18
    drive.token = ok(crate, "token", "create", "ci", "--role", "reader", "--env", "dev").stdout
    ok(crate, "token", "revoke", "ci")  # 20
    ok(crate, "keys", "rotate", "org")  # 21
    ok(crate, "keys", "rotate", "master")  # 22
    pruned = json.loads(ok(crate, "keys", "prune", "--json").stdout)  # 23, 24
    assert pruned["data_keys"] == {ORG: [1]} and pruned["master_keys"] == [1]
    added = ok(crate, "keys", "slots", "add", "passphrase", env={"CRATE_PASSPHRASE": PASSPHRASE})
    match = re.search(r"added passphrase slot (\S+)", added.stderr)  # 25
    assert match, added
    drive.slot = match.group(1)
    ok(crate, "keys", "slots", "remove", drive.slot)  # 26
    ok(crate, "audit", "enable")  # 27
    ok(crate, "audit", "disable")  # 28
    fails(crate, ExitCode.DENIED, "audit", "log")  # 29: denied while disabled
    ok(crate, "audit", "enable")  # 30
    again = ok(crate, "audit", "enable")  # not a change: no entry
    assert "already enabled" in again.stderr
    drive.log = read_log(crate)
    return drive


LOCAL_SEQUENCE = [
    ("org-create", "ok"),
    ("store", "ok"),
    ("store", "ok"),
    ("retrieve", "ok"),
    ("retrieve", "ok"),
    ("retrieve", "ok"),
    ("retrieve", "ok"),
    ("list", "ok"),
    ("history", "ok"),
    ("store", "ok"),
    ("retrieve", "ok"),
    ("rollback", "ok"),
    ("delete", "ok"),
    ("retrieve", "failed"),
    ("env-create", "ok"),
    ("env-create", "failed"),
    ("store", "ok"),
    ("env-delete", "ok"),
    ("token-create", "ok"),
    ("token-revoke", "ok"),
    ("rotate-org", "ok"),
    ("rotate-master", "ok"),
    ("prune", "ok"),
    ("prune", "ok"),
    ("slot-add", "ok"),
    ("slot-remove", "ok"),
    ("audit-enable", "ok"),
    ("audit-disable", "ok"),
    ("audit-log", "denied"),
    ("audit-enable", "ok"),
]
# Actions that come through the API core (with a request id); the others are
# done by the CLI on the vault itself (org creation, tokens, keys).
API_ACTIONS = {
    "store",
    "retrieve",
    "list",
    "history",
    "rollback",
    "delete",
    "env-create",
    "env-delete",
    "audit-enable",
    "audit-disable",
    "audit-log",
}


def test_every_local_action_is_recorded_once_in_order(local: LocalDrive) -> None:
    assert [(e["action"], e["outcome"]) for e in local.log] == LOCAL_SEQUENCE
    assert_chain_shape(local.log)
    assert verified(local.crate)[0] == len(LOCAL_SEQUENCE)
    report = json.loads(ok(local.crate, "audit", "verify", "--json").stdout)
    assert set(report) == {"organization", "entries", "head_mac", "pending"}
    assert (report["organization"], report["entries"], report["pending"]) == (ORG, 30, 0)
    assert re.fullmatch(r"[0-9a-f]{64}", report["head_mac"])


def test_local_entries_name_the_user_and_the_cli(local: LocalDrive) -> None:
    assert local.log
    for e in local.log:
        assert e["actor"] == ACTOR, e
        assert "@" in e["actor"]
        assert e["client"] == "cli", e
        assert e["organization"] == ORG, e


def test_api_calls_carry_a_fresh_request_id_and_direct_changes_none(local: LocalDrive) -> None:
    ids = []
    for e in local.log:
        if e["action"] in API_ACTIONS:
            assert GENERATED_ID_RE.fullmatch(e["request_id"] or ""), e
            ids.append(e["request_id"])
        else:
            assert e["request_id"] is None, e
    assert len(ids) == len(set(ids)) == sum(a in API_ACTIONS for a, _ in LOCAL_SEQUENCE)


def test_changes_record_names_environment_and_versions(local: LocalDrive) -> None:
    log = local.log
    assert log[0]["environment"] is None and log[0]["names"] == [] and log[0]["details"] == {}
    assert log[1]["environment"] == "dev"
    assert log[1]["names"] == ["A", "B"]
    assert log[1]["details"] == {"versions": [1, 1]}
    assert log[2]["names"] == ["C"] and log[2]["details"] == {"versions": [1]}
    assert (log[9]["names"], log[9]["details"]) == (["A"], {"versions": [2]})
    assert log[11]["names"] == ["A"] and log[11]["details"] == {"to": 1, "version": 3}
    assert log[12]["names"] == ["C"] and log[12]["details"] == {"version": 2}
    assert log[8]["names"] == ["A"] and log[8]["details"] == {}
    assert log[7]["names"] == [] and log[7]["details"] == {"count": 3}
    assert log[7]["environment"] == "dev"


def test_retrieve_entries_name_exactly_the_secrets_returned(local: LocalDrive) -> None:
    retrieves = [e for e in local.log if e["action"] == "retrieve"]
    assert [(e["names"], e["details"], e["outcome"]) for e in retrieves] == [
        (["A"], {}, "ok"),  # secrets get A
        (["A", "B", "C"], {}, "ok"),  # secrets fetch (all)
        (["B"], {}, "ok"),  # secrets fetch B
        (["A", "B"], {"tags": ["t1"]}, "ok"),  # run --tags t1 (C has no tag)
        (["A"], {"versions": {"A": 1}}, "ok"),  # secrets get A --version 1
        (["NOPE"], {"error": "not_found"}, "failed"),  # secrets get NOPE
    ]
    assert all(e["environment"] == "dev" for e in retrieves)


def test_environment_entries(local: LocalDrive) -> None:
    envs = [e for e in local.log if e["action"].startswith("env-")]
    assert [(e["environment"], e["outcome"], e["details"]) for e in envs] == [
        ("qa", "ok", {}),
        ("qa", "failed", {"error": "conflict"}),
        ("qa", "ok", {"secrets_deleted": 1}),
    ]
    assert one(local.log, action="store", environment="qa")["names"] == ["Q"]


def test_token_entries_name_the_token_never_its_secret(local: LocalDrive) -> None:
    token = local.token.strip()
    assert token.startswith("crate_")
    created = one(local.log, action="token-create")
    assert created["details"] == {
        "token": "ci",
        "role": "reader",
        "environments": ["dev"],
        "tags": [],
    }
    revoked = one(local.log, action="token-revoke")
    # `recorded`: the time of the revocation record audit verify checks for.
    assert revoked["details"] == {"token": "ci", "recorded": revoked["time"][:-1] + "Z"} or (
        set(revoked["details"]) == {"token", "recorded"} and revoked["details"]["token"] == "ci"
    )
    assert token not in json.dumps(local.log)
    assert token.encode() not in vault_path(local.crate.home).read_bytes()


def test_key_changes_are_recorded_with_their_versions(local: LocalDrive) -> None:
    rotated = one(local.log, action="rotate-org")["details"]
    assert rotated["data_key_version"] == 2
    # A v1-v3, B v1, C v1: C's tombstone and Q (gone with qa) hold no key.
    assert rotated["rewrapped"] == 5
    master = one(local.log, action="rotate-master")["details"]
    assert master["master_version"] == 2
    assert master["rewrapped"] == 4  # data keys v1 and v2, the RSA key, the audit key
    prunes = [e["details"] for e in local.log if e["action"] == "prune"]
    assert prunes == [{"data_key_versions": [1]}, {"master_versions": [1]}]
    slot = {"slot": local.slot, "type": "passphrase"}
    assert one(local.log, action="slot-add")["details"] == slot
    assert one(local.log, action="slot-remove")["details"] == slot


def test_the_module_switch_is_recorded_only_when_it_changes(local: LocalDrive) -> None:
    switches = [e for e in local.log if e["action"].startswith("audit")]
    assert [(e["action"], e["outcome"], e["details"]) for e in switches] == [
        ("audit-enable", "ok", {}),
        ("audit-disable", "ok", {}),
        ("audit-log", "denied", {"error": "forbidden"}),  # read while disabled
        ("audit-enable", "ok", {}),  # the second enable changed nothing
    ]


def test_reading_the_log_records_nothing(local: LocalDrive) -> None:
    count = len(local.log)
    ok(local.crate, "audit", "log")
    ok(local.crate, "audit", "log", "--jsonl", "--limit", "0")
    ok(local.crate, "env", "list")  # an environment listing is not recorded either
    assert verified(local.crate)[0] == count
    assert read_log(local.crate) == local.log


def test_the_table_shows_the_newest_entries(local: LocalDrive) -> None:
    result = ok(local.crate, "audit", "log", "--limit", "5", env=WIDE)
    header = result.stdout.splitlines()[0].split()
    assert header[:2] == ["SEQ", "TIME"] and header[-2:] == ["NAMES", "OUTCOME"]
    rows = re.findall(r"^\s*(\d+)\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s", result.stdout, re.M)
    assert rows == [str(s) for s in range(26, 31)]
    assert "audit-log" in result.stdout and "denied (forbidden)" in result.stdout
    assert ACTOR in result.stdout
    assert "showing the newest 5 entries; --limit 0 shows them all" in result.stderr


# -- filters and formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--action", "retrieve"),
        ("--action", "env-create"),
        ("--env", "qa"),
        ("--name", "A"),
        ("--name", "C"),
        ("--actor", ACTOR),
        ("--actor", "token:nobody"),
    ],
)
def test_filters_select_exactly_the_matching_entries(
    local: LocalDrive, option: str, value: str
) -> None:
    key = {"--action": "action", "--env": "environment", "--actor": "actor"}.get(option)
    if key is None:
        expected = [e for e in local.log if value in e["names"]]
    else:
        expected = [e for e in local.log if e[key] == value]
    if value != "token:nobody":
        assert expected
    assert read_log(local.crate, option, value) == expected


def test_filters_combine(local: LocalDrive) -> None:
    got = read_log(local.crate, "--action", "store", "--name", "A", "--env", "dev")
    assert [e["seq"] for e in got] == [2, 10]


def test_since_takes_a_duration_or_a_date(local: LocalDrive) -> None:
    assert read_log(local.crate, "--since", "1h") == local.log
    assert read_log(local.crate, "--since", "2000-01-01") == local.log
    assert read_log(local.crate, "--since", "2999-01-01T00:00Z") == []
    middle = local.log[15]["time"]
    assert read_log(local.crate, "--since", middle) == local.log[15:]
    empty = ok(local.crate, "audit", "log", "--since", "2999-01-01")
    assert empty.stdout == ""
    assert "no audit entries" in empty.stderr


@pytest.mark.parametrize("value", ["yesterday", "0h", "2026-13-45"])
def test_a_bad_since_is_a_usage_error(local: LocalDrive, value: str) -> None:
    bad = fails(local.crate, ExitCode.USAGE, "audit", "log", "--since", value)
    assert bad.stdout == ""
    assert "crate: error:" in bad.stderr


def test_limit_shows_the_newest_in_ascending_order(local: LocalDrive) -> None:
    got = json.loads(ok(local.crate, "audit", "log", "--json", "--limit", "3").stdout)
    assert got == local.log[-3:]
    default = json.loads(ok(local.crate, "audit", "log", "--json").stdout)
    assert default == local.log  # 30 entries: under the default 50


def test_json_and_jsonl_hold_the_same_documented_entries(local: LocalDrive) -> None:
    lines = ok(local.crate, "audit", "log", "--jsonl", "--limit", "0").stdout.splitlines()
    assert [json.loads(line) for line in lines] == local.log
    assert all(set(json.loads(line)) == ENTRY_KEYS for line in lines)
    both = fails(local.crate, ExitCode.USAGE, "audit", "log", "--json", "--jsonl")
    assert "not both" in both.stderr


# -- enable and disable -------------------------------------------------------------------


def test_the_module_is_off_until_enabled(crate: CrateRunner) -> None:
    off = fails(crate, ExitCode.DENIED, "audit", "log")
    assert "disabled" in off.stderr
    assert "crate audit enable" in off.stderr
    assert off.stdout == ""
    first = ok(crate, "audit", "enable")
    assert "now enabled" in first.stderr
    assert "already enabled" in ok(crate, "audit", "enable").stderr
    assert actions(read_log(crate)) == ["org-create", "audit-log", "audit-enable"]
    assert "now disabled" in ok(crate, "audit", "disable").stderr
    assert "already disabled" in ok(crate, "audit", "disable").stderr
    again = fails(crate, ExitCode.DENIED, "audit", "log", "--json")
    assert "crate audit enable" in again.stderr
    assert again.stdout == ""
    # Entries were recorded while it was off, and the chain holds.
    assert verified(crate)[0] == 5
    ok(crate, "audit", "enable")
    assert actions(read_log(crate)) == [
        "org-create",
        "audit-log",
        "audit-enable",
        "audit-disable",
        "audit-log",
        "audit-enable",
    ]


# -- a failed unlock ----------------------------------------------------------------------


def passphrase_home(crate: CrateRunner) -> dict[str, str]:
    """A home whose only slot is a passphrase, with GREETING stored; returns the
    env that unlocks it without Argon2 (CRATE_MASTER_KEY, as exported)."""
    ok(crate, "init", "--keystore", "passphrase", env={"CRATE_PASSPHRASE": PASSPHRASE})
    exported = ok(crate, "keys", "export-env", "--yes", env={"CRATE_PASSPHRASE": PASSPHRASE})
    unlocked = {"CRATE_MASTER_KEY": exported.stdout.strip()}
    ok(crate, "secrets", "set", "GREETING", "hello-there", env=unlocked)
    return unlocked


WRONG = {"CRATE_PASSPHRASE": WRONG_PASSPHRASE}


def test_a_failed_unlock_is_chained_in_by_the_next_write(crate: CrateRunner) -> None:
    unlocked = passphrase_home(crate)
    for args in (("secrets", "set", "OTHER=x"), ("secrets", "list"), ("run", "--", "true")):
        refused = fails(crate, ExitCode.KEYSTORE, *args, env=WRONG)
        assert "wrong passphrase" in refused.stderr
    count, text = verified(crate, env=unlocked)
    assert count == 2  # org-create, store
    assert "3 recorded while locked" in text
    ok(crate, "secrets", "list", env=unlocked)  # a write: the list entry
    ok(crate, "audit", "enable", env=unlocked)
    log = read_log(crate, env=unlocked)
    assert actions(log) == [
        "org-create",
        "store",
        "unlock",
        "unlock",
        "unlock",
        "list",
        "audit-enable",
    ]
    assert_chain_shape(log)
    for e in log[2:5]:
        assert e["outcome"] == "failed"
        assert e["details"] == {
            "error": "keystore_unavailable",
            "master_version": 1,
            "deferred": True,
        }
        assert (e["actor"], e["client"], e["environment"], e["names"]) == (ACTOR, "cli", None, [])
        assert e["request_id"] is None
    assert "OTHER" not in json.dumps(log)  # nothing was stored, and no store entry
    count, text = verified(crate, env=unlocked)
    assert count == 7
    assert "recorded while locked" not in text
    assert vault_sql(crate.home, "SELECT count(*) FROM audit_pending") == [(0,)]
    assert PASSPHRASE not in json.dumps(log) and WRONG_PASSPHRASE not in json.dumps(log)


def test_a_failed_unlock_while_reading_is_recorded_too(crate: CrateRunner) -> None:
    """get, fetch and history unlock inside their read snapshot."""
    unlocked = passphrase_home(crate)
    for args in (
        ("secrets", "get", "GREETING"),
        ("secrets", "fetch"),
        ("secrets", "history", "GREETING"),
    ):
        fails(crate, ExitCode.KEYSTORE, *args, env=WRONG)
    _, text = verified(crate, env=unlocked)
    assert "3 recorded while locked" in text
    ok(crate, "audit", "enable", env=unlocked)
    log = read_log(crate, env=unlocked)
    assert actions(log) == ["org-create", "store", "unlock", "unlock", "unlock", "audit-enable"]
    assert all(e["details"].get("deferred") is True for e in log[2:5])


def test_a_failed_unlock_inside_a_write_fails_promptly_and_is_recorded(
    crate: CrateRunner,
) -> None:
    """env create and token create unlock inside their write transaction: the
    failure must neither wait on that transaction's own lock nor be lost."""
    unlocked = passphrase_home(crate)
    for args in (("env", "create", "qa"), ("token", "create", "ci", "--role", "reader")):
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [*crate.argv0, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=crate.env(WRONG),
                timeout=10,  # Argon2 and a start take a second or two; a stuck lock waits 30 s
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"crate {' '.join(args)} hung for {time.monotonic() - started:.0f} s")
        assert proc.returncode == ExitCode.KEYSTORE, proc
    _, text = verified(crate, env=unlocked)
    assert "2 recorded while locked" in text
    ok(crate, "secrets", "list", env=unlocked)
    ok(crate, "audit", "enable", env=unlocked)
    log = read_log(crate, env=unlocked)
    assert actions(log) == ["org-create", "store", "unlock", "unlock", "list", "audit-enable"]
    assert all(e["environment"] != "qa" and e["action"] != "token-create" for e in log)


# -- the remote server --------------------------------------------------------------------


@dataclass
class Remote:
    server: CrateServer
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def env(self, token: str) -> dict[str, str]:
        """CRATE_SERVER and CRATE_TOKEN for a client home, as token `token`."""
        return {"CRATE_SERVER": self.url, "CRATE_TOKEN": self.tokens.get(token, token)}

    def log(self, org: str = ORG, **query: str) -> list[Any]:
        token = {"personal": "ops", "paging": "pager", "busy": "busy"}[org]
        return http_log(self.url, org, self.tokens[token], **query)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    home = tmp_path_factory.mktemp("audit-remote") / "server-home"
    # Refusals of strangers are summed up every second here (10 s by default).
    server = CrateServer(home, "--denial-log-interval", "1")
    ok(server.runner, "env", "list")  # first use: org personal (entry 1)
    ok(server.runner, "org", "create", "paging")
    ok(server.runner, "org", "create", "busy")
    tokens = {
        "ops": server.token("ops", "admin"),
        "viewer": server.token("viewer", "reader"),
        "dev-admin": server.token("dev-admin", "admin", "--env", "dev"),
        "pager": server.token("pager", "admin", "--org", "paging"),
        "busy": server.token("busy", "admin", "--org", "busy"),
    }
    server.start()
    try:
        enabled = request(
            server.url, "PUT", f"/organization/{ORG}/audit/module", tokens["ops"], {"enabled": True}
        )
        assert enabled.status == 200 and enabled.body == {"enabled": True, "changed": True}
        yield Remote(server, tokens)
    finally:
        server.stop()


def test_remote_calls_are_recorded_for_the_token_through_the_server(
    crate: CrateRunner, remote: Remote
) -> None:
    name = unique("REMOTE_")
    before = {e["seq"] for e in remote.log()}
    login = crate("login", "--server", remote.url, input=remote.tokens["ops"] + "\n")
    assert login.returncode == 0, login
    ok(crate, "secrets", "set", name, "remote-value-1")
    ok(crate, "secrets", "get", name)
    ok(crate, "secrets", "list")
    ok(crate, "secrets", "history", name)
    ok(crate, "secrets", "delete", name, "--yes")
    ours = [e for e in remote.log() if e["seq"] not in before]
    assert [(e["action"], e["names"]) for e in ours] == [
        ("store", [name]),
        ("retrieve", [name]),
        ("list", []),
        ("history", [name]),
        ("delete", [name]),
    ]
    assert all(e["actor"] == "token:ops" for e in ours)
    for e in ours:
        assert (e["client"], e["outcome"], e["environment"]) == ("server", "ok", "dev"), e
        assert GENERATED_ID_RE.fullmatch(e["request_id"] or ""), e
    assert len({e["request_id"] for e in ours}) == len(ours)
    # The same log, read by the logged-in CLI over HTTP.
    over_http = read_log(crate, "--actor", "token:ops", "--name", name)
    assert over_http == [e for e in ours if name in e["names"]]


def test_a_tag_scoped_retrieval_names_only_what_it_returned(
    crate: CrateRunner, remote: Remote
) -> None:
    env_name = unique("tagged-")
    as_ops = remote.env("ops")
    ok(crate, "env", "create", env_name, env=as_ops)
    ok(crate, "secrets", "set", "--env", env_name, "--tag", "team-a", "TA=a1", "TB=b1", env=as_ops)
    ok(crate, "secrets", "set", "--env", env_name, "TC=c1", env=as_ops)
    name = unique("team-a-")
    scoped = {**as_ops, "CRATE_TOKEN": remote.server.token(name, "reader", "--tags", "team-a")}
    fetched = json.loads(
        ok(crate, "secrets", "fetch", "--env", env_name, "--json", env=scoped).stdout
    )
    assert fetched == {"TA": "a1", "TB": "b1"}
    fails(crate, ExitCode.DENIED, "secrets", "get", "TC", "--env", env_name, env=scoped)
    mine = [e for e in remote.log() if e["actor"] == f"token:{name}"]
    assert [(e["action"], e["environment"], e["names"], e["outcome"]) for e in mine] == [
        ("retrieve", env_name, ["TA", "TB"], "ok"),
        ("retrieve", env_name, ["TC"], "denied"),
    ]
    assert mine[1]["details"] == {"error": "forbidden"}


def test_a_denied_store_is_recorded_with_the_error(crate: CrateRunner, remote: Remote) -> None:
    value = unique("denied-value-")
    name = unique("DENIED_")
    refused = fails(crate, ExitCode.DENIED, "secrets", "set", name, value, env=remote.env("viewer"))
    assert "reader" in refused.stderr
    denied = [e for e in remote.log() if e["actor"] == "token:viewer" and e["action"] == "store"]
    assert denied, remote.log()
    entry = denied[-1]
    assert entry["outcome"] == "denied"
    assert entry["details"] == {"error": "forbidden"}
    assert entry["client"] == "server"
    assert GENERATED_ID_RE.fullmatch(entry["request_id"] or "")
    assert value not in json.dumps(remote.log())


def unauthenticated_since(remote: Remote, before: set[int], count: int) -> list[Any]:
    """The anonymous entries after `before`, once summaries of `count` refusals
    are in (the server writes one per org and second here, not one per refusal)."""
    deadline = time.monotonic() + 15
    while True:
        new = [e for e in remote.log() if e["seq"] not in before and e["actor"] == "anonymous"]
        if sum(e["details"].get("count", 0) for e in new) >= count:
            return new
        assert time.monotonic() < deadline, new
        time.sleep(0.2)


def test_bad_tokens_are_summed_up_as_anonymous(crate: CrateRunner, remote: Remote) -> None:
    before = {e["seq"] for e in remote.log()}
    refused = fails(
        crate, ExitCode.DENIED, "secrets", "list", "--org", ORG, env=remote.env(BAD_TOKEN)
    )
    assert "not valid" in refused.stderr
    request_id = unique("anon-")
    reply = request(
        remote.url, "GET", f"/organization/{ORG}/secrets?env=dev", BAD_TOKEN, request_id=request_id
    )
    assert reply.status == 401 and reply.request_id == request_id
    no_token = request(
        remote.url, "GET", f"/organization/{ORG}/secrets/NOPE/versions?env=dev", None
    )
    assert no_token.status == 401
    anonymous = unauthenticated_since(remote, before, 3)
    # One entry per interval, not one per refusal (no request id of its own).
    assert {(e["action"], e["outcome"], e["client"]) for e in anonymous} == {
        ("unauthenticated", "denied", "server")
    }
    assert request_id not in {e["request_id"] for e in anonymous}
    assert sum(e["details"]["errors"].get("unauthorized", 0) for e in anonymous) >= 3
    assert all(set(e["details"]["addresses"]) == {"127.0.0.1"} for e in anonymous)
    assert BAD_TOKEN not in json.dumps(remote.log())


def test_successful_reads_of_keys_environments_and_the_log_are_not_recorded(
    remote: Remote,
) -> None:
    ops = remote.tokens["ops"]
    reads = (
        "secrets/public-key",
        "environments",
        "audit?limit=5",
        "audit/verify",
    )

    def entries() -> int:
        reply = request(remote.url, "GET", f"/organization/{ORG}/audit/verify", ops)
        assert reply.status == 200, reply
        count: int = reply.body["entries"]
        return count

    count = entries()
    for path in reads:
        assert request(remote.url, "GET", f"/organization/{ORG}/{path}", ops).status == 200
    assert entries() == count
    # Refused, the same reads are recorded: summed up, as strangers' refusals are.
    before = {e["seq"] for e in remote.log()}
    for path in reads[:2]:
        reply = request(remote.url, "GET", f"/organization/{ORG}/{path}", BAD_TOKEN)
        assert reply.status == 401
    new = unauthenticated_since(remote, before, 2)
    assert [(e["action"], e["actor"], e["outcome"]) for e in new] == [
        ("unauthenticated", "anonymous", "denied")
    ] * len(new)
    assert sum(e["details"]["count"] for e in new) == 2


def test_a_client_request_id_is_recorded_and_echoed(remote: Remote) -> None:
    request_id = unique("trace-") + ".span:1_A"
    reply = request(
        remote.url,
        "GET",
        f"/organization/{ORG}/secrets?env=dev",
        remote.tokens["ops"],
        request_id=request_id,
    )
    assert reply.status == 200
    assert reply.request_id == request_id
    entry = one(remote.log(), request_id=request_id)
    assert (entry["action"], entry["actor"], entry["outcome"]) == ("list", "token:ops", "ok")
    # A failed call keeps the id too.
    failed_id = unique("fail-")
    missing = request(
        remote.url,
        "GET",
        f"/organization/{ORG}/secrets/NOT_THERE/versions?env=dev",
        remote.tokens["ops"],
        request_id=failed_id,
    )
    assert missing.status == 404 and missing.request_id == failed_id
    failed = one(remote.log(), request_id=failed_id)
    assert (failed["action"], failed["outcome"], failed["names"]) == (
        "history",
        "failed",
        ["NOT_THERE"],
    )
    assert failed["details"] == {"error": "not_found"}


@pytest.mark.parametrize("header", ["has spaces in it", "x" * 65, "semi;colon", 'quote"d'])
def test_a_malformed_request_id_is_replaced(remote: Remote, header: str) -> None:
    reply = request(
        remote.url,
        "GET",
        f"/organization/{ORG}/secrets?env=dev",
        remote.tokens["ops"],
        request_id=header,
    )
    assert reply.status == 200
    assert reply.request_id is not None and GENERATED_ID_RE.fullmatch(reply.request_id)
    log = remote.log()
    assert one(log, request_id=reply.request_id)["action"] == "list"
    assert header not in json.dumps(log)


def test_audit_routes_need_an_admin_without_scope(crate: CrateRunner, remote: Remote) -> None:
    before = {e["seq"] for e in remote.log()}
    reader = fails(crate, ExitCode.DENIED, "audit", "log", env=remote.env("viewer"))
    assert "reader" in reader.stderr
    scoped = fails(crate, ExitCode.DENIED, "audit", "verify", env=remote.env("dev-admin"))
    assert "limited" in scoped.stderr
    for token in ("viewer", "dev-admin"):
        for method, path, body in (
            ("GET", "audit", None),
            ("GET", "audit/verify", None),
            ("PUT", "audit/module", {"enabled": False}),
        ):
            reply = request(
                remote.url, method, f"/organization/{ORG}/{path}", remote.tokens[token], body
            )
            assert reply.status == 403, (token, path, reply)
            assert reply.body["error"]["code"] == "forbidden"
    # The admin without scope reads and verifies over HTTP.
    count = verified(crate, env=remote.env("ops"))[0]
    assert count >= len(before)
    new = [e for e in remote.log() if e["seq"] not in before]
    refusals = [(e["actor"], e["action"], e["outcome"], e["details"]) for e in new]
    denied = {"error": "forbidden"}
    assert refusals == [
        ("token:viewer", "audit-log", "denied", denied),
        ("token:dev-admin", "audit-verify", "denied", denied),
        ("token:viewer", "audit-log", "denied", denied),
        ("token:viewer", "audit-verify", "denied", denied),
        ("token:viewer", "audit-module", "denied", denied),
        ("token:dev-admin", "audit-log", "denied", denied),
        ("token:dev-admin", "audit-verify", "denied", denied),
        ("token:dev-admin", "audit-module", "denied", denied),
    ]
    assert one(remote.log(), action="audit-enable")["actor"] == "token:ops"


def test_paging_through_the_log_over_http(crate: CrateRunner, remote: Remote) -> None:
    token = remote.tokens["pager"]
    parts = urlsplit(remote.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        put = request(
            remote.url,
            "PUT",
            "/organization/paging/audit/module",
            token,
            {"enabled": True},
            conn=conn,
        )
        assert put.status == 200
        for i in range(149):
            path = "/organization/paging/secrets?env=" + ("dev" if i % 2 else "prod")
            assert request(remote.url, "GET", path, token, conn=conn).status == 200
    finally:
        conn.close()
    # org-create, token-create (the pager), audit-enable, 149 lists: 152 entries.
    env = remote.env("pager")
    newest = json.loads(ok(crate, "audit", "log", "--json", "--limit", "120", env=env).stdout)
    assert [e["seq"] for e in newest] == list(range(33, 153))
    everything = [
        json.loads(line)
        for line in ok(crate, "audit", "log", "--jsonl", "--limit", "0", env=env).stdout.split("\n")
        if line
    ]
    assert_chain_shape(everything)
    assert len(everything) == 152
    assert everything[-120:] == newest
    assert actions(everything[:3]) == ["org-create", "token-create", "audit-enable"]
    assert set(actions(everything[3:])) == {"list"}
    assert all(e["organization"] == "paging" for e in everything)
    prod = read_log(crate, "--env", "prod", env=env)
    assert [e["seq"] for e in prod] == list(range(4, 153, 2))
    # The API pages by before= and after=, ascending, with `more`.
    page = request(remote.url, "GET", "/organization/paging/audit?limit=10&before=50", token)
    assert [e["seq"] for e in page.body["entries"]] == list(range(40, 50))
    assert page.body["more"] is True
    page = request(remote.url, "GET", "/organization/paging/audit?limit=10&after=145", token)
    assert [e["seq"] for e in page.body["entries"]] == list(range(146, 153))
    assert page.body["more"] is False


@pytest.mark.slow
def test_concurrent_http_writers_keep_one_chain(remote: Remote) -> None:
    token = remote.tokens["busy"]
    per_thread = 25
    errors: list[str] = []

    def hammer(worker: int) -> None:
        parts = urlsplit(remote.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
        try:
            for i in range(per_thread):
                if i % 2:
                    path = "/organization/busy/secrets?env=dev"
                else:
                    path = f"/organization/busy/secrets/W{worker}_{i}/versions?env=dev"
                status = request(remote.url, "GET", path, token, conn=conn).status
                if status not in (200, 404):
                    errors.append(f"{path}: {status}")
        finally:
            conn.close()

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = request(remote.url, "GET", "/organization/busy/audit/verify", token)
    assert check.status == 200, check
    assert check.body["entries"] == 2 + 4 * per_thread  # org-create, token-create
    assert check.body["pending"] == 0
    request(remote.url, "PUT", "/organization/busy/audit/module", token, {"enabled": True})
    log = remote.log("busy")
    assert_chain_shape(log)
    assert len(log) == 3 + 4 * per_thread
    failed = [e for e in log if e["outcome"] == "failed"]
    assert sorted(n for e in failed for n in e["names"]) == sorted(
        f"W{w}_{i}" for w in range(4) for i in range(0, per_thread, 2)
    )
    assert all(e["client"] == "server" and e["actor"] == "token:busy" for e in log[2:])


# -- no value, ever -----------------------------------------------------------------------


def test_no_value_is_ever_recorded(crate: CrateRunner, remote: Remote) -> None:
    """Distinctive values stored, read, refused and rejected in every way; then no
    value is in the vault file, its WAL, the log (CLI and SQL), except where
    that string is, legitimately, a name."""
    zeta = unique("ZETA_")
    env_name = unique("envv-")
    values = {
        "LEAK_PLAIN": unique("plain-value-"),
        "LEAK_ALIAS": zeta,  # the value is another secret's name
        zeta: unique("zeta-value-"),
        "LEAK_ENVISH": env_name,  # the value is an environment's name
    }
    inside_value = unique("inside-value-")
    denied_value = unique("denied-value-")
    plaintext_value = unique("plaintext-value-")
    jwe_value = unique("not-a-jwe-")
    names = sorted(values)
    as_ops = remote.env("ops")
    before = {e["seq"] for e in remote.log()}
    ok(crate, "secrets", "set", *(f"{k}={v}" for k, v in values.items()), env=as_ops)
    ok(crate, "env", "create", env_name, env=as_ops)
    ok(crate, "secrets", "set", "--env", env_name, "INSIDE", inside_value, env=as_ops)
    assert ok(crate, "secrets", "get", "LEAK_ALIAS", env=as_ops).stdout == zeta
    assert ok(crate, "secrets", "get", "LEAK_ENVISH", env=as_ops).stdout == env_name
    fetched = json.loads(ok(crate, "secrets", "fetch", *names, "--json", env=as_ops).stdout)
    assert fetched == values
    ok(crate, "run", "--only", "LEAK_PLAIN", "--", "true", env=as_ops)
    ok(crate, "secrets", "history", "LEAK_ALIAS", env=as_ops)
    missing = unique("MISSING_")
    fails(crate, ExitCode.NOT_FOUND, "secrets", "get", missing, env=as_ops)
    fails(
        crate,
        ExitCode.DENIED,
        "secrets",
        "set",
        "LEAK_PLAIN",
        denied_value,
        env=remote.env("viewer"),
    )
    path = f"/organization/{ORG}/secrets"
    plaintext = request(
        remote.url,
        "PUT",
        path,
        remote.tokens["ops"],
        {"environment": "dev", "name": "LEAK_PLAIN", "value": plaintext_value},
    )
    assert plaintext.status == 400
    assert plaintext.body["error"]["code"] == "sealed_transport_required"
    bogus = request(
        remote.url,
        "PUT",
        path,
        remote.tokens["ops"],
        {"environment": "dev", "name": "LEAK_PLAIN", "sealed": True, "encrypted_value": jwe_value},
    )
    assert bogus.status == 400
    assert bogus.body["error"]["code"] == "invalid_sealed_value"

    secret_values = [
        values["LEAK_PLAIN"],
        values[zeta],
        inside_value,
        denied_value,
        plaintext_value,
        jwe_value,
        *remote.tokens.values(),
    ]
    log = remote.log()
    lines = ok(crate, "audit", "log", "--jsonl", "--limit", "0", env=as_ops).stdout
    home = remote.server.home
    rows = vault_sql(home, "SELECT * FROM audit_log") + vault_sql(
        home, "SELECT * FROM audit_pending"
    )
    vault = vault_path(home)
    at_rest = vault.read_bytes()
    wal = Path(str(vault) + "-wal")
    wal_bytes = wal.read_bytes() if wal.exists() else b""
    for value in secret_values:
        assert value not in lines
        assert value not in json.dumps(log)
        assert value not in repr(rows)
        assert value.encode() not in at_rest
        assert value.encode() not in wal_bytes
    # Strings that are also names turn up only as the names they are.
    refusals = [e for e in log if e["outcome"] != "ok" and e["action"] == "store"]
    assert [e["details"]["error"] for e in refusals[-3:]] == [
        "forbidden",
        "sealed_transport_required",
        "invalid_sealed_value",
    ]
    for e in log:
        rest = {k: v for k, v in e.items() if k not in ("names", "environment")}
        assert zeta not in json.dumps(rest), e
        assert env_name not in json.dumps(rest), e
        if zeta in e["names"]:
            assert e["action"] in ("store", "retrieve") and len(e["names"]) == len(values), e
        if e["environment"] == env_name:
            assert e["names"] in ([], ["INSIDE"]), e
    new = [e for e in log if e["seq"] not in before]
    assert [(e["action"], e["names"], e["outcome"]) for e in new if e["action"] == "retrieve"] == [
        ("retrieve", ["LEAK_ALIAS"], "ok"),  # only the name asked for, not its value's
        ("retrieve", ["LEAK_ENVISH"], "ok"),
        ("retrieve", names, "ok"),
        ("retrieve", ["LEAK_PLAIN"], "ok"),
        ("retrieve", [missing], "failed"),
    ]


# -- the agent ----------------------------------------------------------------------------


@pytest.fixture
def runtime() -> Iterator[dict[str, str]]:
    """A short private XDG_RUNTIME_DIR (unix socket paths are limited)."""
    folder = tempfile.mkdtemp(prefix="cra-", dir="/tmp")
    try:
        yield {"XDG_RUNTIME_DIR": folder}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _gone(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text.rpartition(")")[2].split()[0] in ("Z", "X")


def test_agent_calls_are_recorded_as_the_agent(crate: CrateRunner, runtime: dict[str, str]) -> None:
    ok(crate, "env", "list", env=runtime)  # first use, in-process: org-create by the cli
    info = json.loads(ok(crate, "agent", "start", "--json", env=runtime).stdout)
    pid = int(info["pid"])
    try:
        ok(crate, "secrets", "set", "AGENT_SECRET", "agent-value-1", env=runtime)
        got = ok(crate, "secrets", "get", "AGENT_SECRET", env=runtime)
        assert got.stdout == "agent-value-1"
        fails(crate, ExitCode.NOT_FOUND, "secrets", "get", "NOT_HERE", env=runtime)
        ok(crate, "audit", "enable", env=runtime)
        log = read_log(crate, env=runtime)
    finally:
        crate("agent", "stop", input="", env=runtime)
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert [(e["action"], e["client"], e["outcome"]) for e in log] == [
        ("org-create", "cli", "ok"),
        ("store", "agent", "ok"),
        ("retrieve", "agent", "ok"),
        ("retrieve", "agent", "failed"),
        ("audit-enable", "agent", "ok"),
    ]
    assert all(e["actor"] == ACTOR for e in log)
    assert all(GENERATED_ID_RE.fullmatch(e["request_id"] or "") for e in log[2:])
    assert log[2]["names"] == ["AGENT_SECRET"] and log[3]["names"] == ["NOT_HERE"]
    # Without the agent, the same home records the cli again.
    ok(crate, "secrets", "list", env=runtime)
    assert read_log(crate, env=runtime)[-1]["client"] == "cli"


# -- migration from schema 2 --------------------------------------------------------------


def as_schema_2(crate: CrateRunner) -> None:
    """Turn the home's vault into what schema 2 wrote: no audit or snapshot
    tables (nor their triggers), and the org audit key under its first label."""
    exported = ok(crate, "keys", "export-env", "--yes").stdout.strip()
    master = base64.b64decode(exported.partition(":")[2])
    db = sqlite3.connect(vault_path(crate.home))
    try:
        version, wrapped = db.execute(
            "SELECT version, wrapped FROM org_audit_keys ORDER BY version DESC LIMIT 1"
        ).fetchone()
        plain = crypto.aad(crypto.ORG_AUDIT_KEY, ORG, version)
        try:
            key = crypto.unwrap_key(master, wrapped, plain)
        except IntegrityError:  # rewrapped once the log began
            chained = crypto.aad(crypto.ORG_AUDIT_KEY_CHAINED, ORG, version)
            key = crypto.unwrap_key(master, wrapped, chained)
        db.execute(
            "UPDATE org_audit_keys SET wrapped = ? WHERE version = ?",
            (crypto.wrap_key(master, key, plain), version),
        )
        # Every object that schema 2 did not have, triggers and indexes first.
        v2 = expected_schema(2)
        for kind in ("trigger", "index", "table"):
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite%'",
                (kind,),
            ).fetchall():
                if name not in v2:
                    db.execute(f"DROP {kind.upper()} {name}")
        db.execute("PRAGMA user_version = 2")
        db.commit()
    finally:
        db.close()


def test_a_schema_2_vault_gains_the_audit_log(crate: CrateRunner) -> None:
    ok(crate, "secrets", "set", "KEPT", "kept-value-2a1b")
    as_schema_2(crate)
    assert vault_sql(crate.home, "SELECT name FROM sqlite_master WHERE name LIKE 'audit%'") == []

    assert ok(crate, "secrets", "get", "KEPT").stdout == "kept-value-2a1b"
    assert vault_sql(crate.home, "PRAGMA user_version") == [(5,)]
    schema = dict(vault_sql(crate.home, "SELECT name, type FROM sqlite_master"))
    for table in ("audit_log", "audit_anchor", "audit_pending"):
        assert schema.get(table) == "table", schema
    triggers = {name for name, kind in schema.items() if kind == "trigger"}
    assert {"audit_log_append_only_update", "audit_log_append_only_delete"} <= triggers
    assert verified(crate)[0] == 1
    ok(crate, "audit", "enable")
    log = read_log(crate)
    assert_chain_shape(log)
    assert [(e["action"], e["names"]) for e in log] == [
        ("retrieve", ["KEPT"]),
        ("audit-enable", []),
    ]
    assert verified(crate)[0] == 2
    for statement in (
        "UPDATE audit_log SET actor = 'someone-else'",
        "DELETE FROM audit_log",
        "INSERT OR REPLACE INTO audit_log SELECT * FROM audit_log WHERE seq = 1",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            vault_sql(crate.home, statement)


# -- tampering ----------------------------------------------------------------------------


TAMPERING = {
    "edited": (
        "DROP TRIGGER audit_log_append_only_update; "
        "UPDATE audit_log SET actor = 'someone@else' WHERE seq = 2;",
        "entry 2",
    ),
    "removed": (
        "DROP TRIGGER audit_log_append_only_delete; DELETE FROM audit_log WHERE seq = 2;",
        "entry 2",
    ),
    "cut-off": (
        "DROP TRIGGER audit_log_append_only_delete; DELETE FROM audit_log WHERE seq = 3;",
        "cut off",
    ),
    "anchor-rewound": (
        "UPDATE audit_anchor SET seq = 2, mac = (SELECT mac FROM audit_log WHERE seq = 2);",
        "anchor",
    ),
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_tampering_is_detected(crate: CrateRunner, kind: str) -> None:
    ok(crate, "secrets", "set", "X", "x-value-77ab")  # org-create, store
    ok(crate, "audit", "enable")  # 3
    sql, named = TAMPERING[kind]
    db = sqlite3.connect(vault_path(crate.home))
    db.executescript(sql)
    restore_triggers(lambda sql: db.execute(sql).fetchall())
    db.commit()
    db.close()
    broken = fails(crate, ExitCode.INTEGRITY, "audit", "verify")
    assert named in broken.stderr, broken
    assert broken.stdout == ""


def test_wiping_the_whole_log_is_detected(crate: CrateRunner) -> None:
    """Emptying the log and resetting its anchor to the state of a freshly
    migrated vault (which needs no key) is still noticed."""
    ok(crate, "secrets", "set", "X", "x-value-77ab")
    ok(crate, "audit", "enable")
    db = sqlite3.connect(vault_path(crate.home))
    db.executescript(
        "DROP TRIGGER audit_log_append_only_delete; DELETE FROM audit_log; "
        "UPDATE audit_anchor SET seq = 0, mac = X'', enabled = 0, tag = X'';"
    )
    restore_triggers(lambda sql: db.execute(sql).fetchall())
    db.commit()
    db.close()
    broken = fails(crate, ExitCode.INTEGRITY, "audit", "verify")
    assert "emptied" in broken.stderr
    fails(crate, ExitCode.INTEGRITY, "secrets", "list")  # and no write starts a new log


# -- concurrency --------------------------------------------------------------------------


@pytest.mark.slow
def test_parallel_processes_keep_one_exact_chain(crate: CrateRunner) -> None:
    ok(crate, "secrets", "set", "SEED", "seed-value")  # org-create, store
    workers, rounds = 4, 4

    def work(worker: int) -> list[str]:
        problems = []
        for i in range(rounds):
            name, value = f"W{worker}_{i}", f"value-{worker}-{i}"
            stored = crate("secrets", "set", name, value, input="")
            got = crate("secrets", "get", name, input="")
            if stored.returncode or got.returncode or got.stdout != value:
                problems.append(f"{name}: {stored} {got}")
        return problems

    with ThreadPoolExecutor(workers) as pool:
        problems = [p for found in pool.map(work, range(workers)) for p in found]
    assert problems == []
    expected = 2 + workers * rounds * 2
    assert verified(crate)[0] == expected
    ok(crate, "audit", "enable")
    lines = ok(crate, "audit", "log", "--jsonl", "--limit", "0").stdout.splitlines()
    log = [json.loads(line) for line in lines]
    assert_chain_shape(log)
    assert len(log) == expected + 1
    for w in range(workers):
        for i in range(rounds):
            name = f"W{w}_{i}"
            touching = [e["action"] for e in log if e["names"] == [name]]
            assert touching == ["store", "retrieve"], (name, touching)
