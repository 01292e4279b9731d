"""Org data-key rotation: `crate keys rotate org`, `crate keys prune`, and the
data keys of `crate keys status --json`.

Rotation makes org DEK version M+1 and rewraps every secret DEK under it in
one SQLite write transaction. These tests check it on real vaults through
real crate processes: every value (current and older versions) reads back
after it; readers running alongside never fail or see a wrong value; a
rotation killed at any moment leaves the old state whole and a rerun
completes; a tampered row stops it with nothing changed; prune removes only
versions that wrap nothing and never the current one.
"""

from __future__ import annotations

import json
import os
import random
import secrets as pysecrets
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from crate_cli.errors import ExitCode
from crate_cli.vault import keys as vault_keys
from tests.support.crate_runner import CrateRunner, assert_clean_error
from tests.support.homes import session_at
from tests.support.vault_state import run_sql

pytestmark = pytest.mark.e2e

# env -> name -> the value of each version, oldest first (None: a deletion).
Model = dict[str, dict[str, list[str | None]]]
# (version, wrapped_keys, current) of each org data key, as keys status shows them.
DataKeys = list[tuple[int, int, bool]]


# -- helpers ---------------------------------------------------------------------------


def vault_path(home: Path, org: str) -> Path:
    return home / "orgs" / f"{org}.vault"


def vault_sql(home: Path, org: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """One statement run directly on an org's vault file (committed)."""
    return run_sql(vault_path(home, org), sql, params)


def write_locked(path: Path) -> bool:
    """Whether some process holds the vault's write lock (is inside a write transaction)."""
    db = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as e:
        assert "locked" in str(e) or "busy" in str(e), e
        return True
    finally:
        db.close()


def newest_dek(home: Path, org: str) -> int:
    ((version,),) = vault_sql(home, org, "SELECT max(version) FROM org_deks")
    return int(version)


def dek_rows(home: Path, org: str) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    """(env, name, version) -> (org_dek_version, wrapped_dek, ciphertext, mac) of every version."""
    rows = vault_sql(
        home,
        org,
        "SELECT s.env, s.name, v.version, v.org_dek_version, v.wrapped_dek, v.ciphertext, v.mac "
        "FROM secret_versions v JOIN secrets s ON s.id = v.secret_id",
    )
    return {(r[0], r[1], r[2]): tuple(r[3:]) for r in rows}


def data_keys(crate: CrateRunner) -> dict[str, DataKeys]:
    """Each org's data keys from `crate keys status --json`."""
    result = crate("keys", "status", "--json")
    assert result.returncode == 0, result
    out: dict[str, DataKeys] = {}
    for entry in json.loads(result.stdout)["organizations"]:
        keys = entry["data_keys"]
        assert all(k["master_version"] == 1 and k["created_at"] for k in keys), keys
        out[entry["org"]] = [(k["version"], k["wrapped_keys"], k["current"]) for k in keys]
    return out


def rotate(crate: CrateRunner, org: str, version: int, count: int) -> None:
    result = crate("keys", "rotate", "org", "--org", org)
    assert result.returncode == 0, result
    assert result.stdout == ""
    assert (
        f"organization {org!r} now uses data key v{version}; {count} secret keys rewrapped"
        in result.stderr
    ), result.stderr


def prune_json(crate: CrateRunner) -> dict[str, list[int]]:
    """The data key versions `crate keys prune --json` removed, by org."""
    result = crate("keys", "prune", "--json")
    assert result.returncode == 0, result
    doc = json.loads(result.stdout)
    # One master key version, in use: prune never touches it.
    assert (doc["master_keys"], doc["held"]) == ([], {}), doc
    return doc["data_keys"]


def mismatches(got: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """A short description of how two name -> value maps differ (empty when equal)."""
    out = [f"missing {n}" for n in expected.keys() - got.keys()]
    out += [f"unexpected {n}" for n in got.keys() - expected.keys()]
    out += [f"wrong value of {n}" for n in expected.keys() & got.keys() if got[n] != expected[n]]
    return sorted(out)[:20]


def build_model(org: str, count: int, tag: str) -> Model:
    """`count` secrets: one in ten in prod, one in seven with 2 versions, one in
    21 with 3, and secret 5 deleted (version 2 is a deletion)."""
    model: Model = {"dev": {}, "prod": {}}
    for i in range(count):
        env = "prod" if i % 10 == 0 else "dev"
        name = f"{org.upper()}_{i:05d}"
        depth = 3 if i % 21 == 0 else 2 if i % 7 == 0 else 1
        model[env][name] = [f"{org}/{env}/{name}/v{v}/{tag}" for v in range(1, depth + 1)]
    model["dev"][f"{org.upper()}_00005"].append(None)
    return model


def value_versions(model: Model) -> int:
    """How many stored versions hold a value (each has a wrapped secret DEK)."""
    return sum(v is not None for names in model.values() for vs in names.values() for v in vs)


def seed(home: Path, org: str, model: Model) -> None:
    """Store the model in-process: each version level of each env in one batch."""
    with session_at(home) as s:
        client = s.client(org)
        for env, names in model.items():
            for k in range(max(len(vs) for vs in names.values())):
                batch = [(n, vs[k]) for n, vs in names.items() if len(vs) > k and vs[k] is not None]
                if batch:
                    client.store(env, batch)
                for n, vs in names.items():
                    if len(vs) > k and vs[k] is None:
                        client.delete(env, n)


def check_values(home: Path, org: str, model: Model) -> None:
    """Every current value and every older version's value reads back, in a fresh Session."""
    with session_at(home) as s:
        client = s.client(org)
        for env, names in model.items():
            current = {n: (vs[-1], len(vs)) for n, vs in names.items() if vs[-1] is not None}
            got = {r.name: (r.value, r.version) for r in client.retrieve(env, [])}
            assert not mismatches(got, current), (org, env, mismatches(got, current))
            for k in range(1, max(len(vs) for vs in names.values())):
                older = {n: vs[k - 1] for n, vs in names.items() if len(vs) > k and vs[k - 1]}
                if not older:
                    continue
                found = client.retrieve(env, list(older), versions=dict.fromkeys(older, k))
                assert all(r.version == k for r in found)
                got_old = {r.name: r.value for r in found}
                assert not mismatches(got_old, older), (org, env, k, mismatches(got_old, older))


def import_file(crate: CrateRunner, path: Path, org: str, values: dict[str, str]) -> None:
    path.write_text("".join(f"{n}={v}\n" for n, v in values.items()))
    result = crate("secrets", "import", str(path), "--org", org)
    assert result.returncode == 0, result


def fetch(crate: CrateRunner, org: str, env: str = "dev") -> dict[str, str]:
    result = crate("secrets", "fetch", "--org", org, "--env", env, "--format", "json", "--raw")
    assert result.returncode == 0, result
    return json.loads(result.stdout)


# -- 1. rotation of 10,000 secrets in three orgs ------------------------------------------


@pytest.mark.slow
def test_rotation_of_ten_thousand_secrets_in_three_orgs(
    crate: CrateRunner, crate_home: Path
) -> None:
    tag = pysecrets.token_hex(4)
    sizes = {"north": 3334, "south": 3333, "west": 3333}
    for org in sizes:
        crate("org", "create", org, check=True)
    models = {org: build_model(org, n, tag) for org, n in sizes.items()}
    assert sum(len(names) for m in models.values() for names in m.values()) == 10_000
    for org, model in models.items():
        seed(crate_home, org, model)
    totals = {org: value_versions(m) for org, m in models.items()}
    assert data_keys(crate) == {org: [(1, totals[org], True)] for org in sizes}
    before = {org: dek_rows(crate_home, org) for org in sizes}

    for i, org in enumerate(sizes):
        rotate(crate, org, 2, totals[org])
        keys = data_keys(crate)
        assert keys[org] == [(1, 0, False), (2, totals[org], True)]
        # The other orgs' vaults are not touched.
        for other in list(sizes)[i + 1 :]:
            assert keys[other] == [(1, totals[other], True)]
            assert dek_rows(crate_home, other) == before[other]
        after = dek_rows(crate_home, org)
        assert after.keys() == before[org].keys()
        for place, (dek_version, wrapped, blob, mac) in after.items():
            old = before[org][place]
            assert blob == old[2], place  # a rewrap: the values are not re-encrypted
            if blob is None:  # a deletion has no key to rewrap
                assert (dek_version, wrapped, mac) == (None, None, old[3]), place
            else:
                assert dek_version == 2, place
                assert wrapped != old[1], place
                assert mac != old[3], place

    for org, model in models.items():
        check_values(crate_home, org, model)

    # The same through the CLI: a whole env, older versions, the deleted secret.
    north = models["north"]
    expected_prod = {n: vs[-1] for n, vs in north["prod"].items()}
    assert not mismatches(fetch(crate, "north", "prod"), expected_prod)
    for version, value in enumerate(north["dev"]["NORTH_00021"], 1):
        got = crate("secrets", "get", "NORTH_00021", "--org", "north", "--version", str(version))
        assert (got.returncode, got.stdout) == (0, value), got
    deleted = crate("secrets", "get", "NORTH_00005", "--org", "north")
    assert_clean_error(deleted, ExitCode.NOT_FOUND)
    got = crate("secrets", "get", "NORTH_00005", "--org", "north", "--version", "1")
    assert (got.returncode, got.stdout) == (0, north["dev"]["NORTH_00005"][0]), got
    # The history's rows were re-MAC'd correctly: it still authenticates.
    with session_at(crate_home) as s:
        history = s.client("north").history("dev", "NORTH_00005")
    assert [(h["version"], h["action"], h["deleted"]) for h in history] == [
        (1, "set", False),
        (2, "delete", True),
    ]

    # A second rotation: v3, and v2 goes to zero as v1 did.
    rotate(crate, "north", 3, totals["north"])
    assert data_keys(crate)["north"] == [(1, 0, False), (2, 0, False), (3, totals["north"], True)]
    assert {r[0] for r in dek_rows(crate_home, "north").values() if r[2] is not None} == {3}
    check_values(crate_home, "north", north)

    # New writes use the newest data key: v3 in north, v2 in south.
    with session_at(crate_home) as s:
        s.client("north").store("dev", [("NORTH_NEW", f"north-new-{tag}")])
        s.client("south").store("dev", [("SOUTH_NEW", f"south-new-{tag}")])
    set_result = crate("secrets", "set", "NORTH_00001", f"north-update-{tag}", "--org", "north")
    assert set_result.returncode == 0, set_result
    rolled = crate("secrets", "rollback", "NORTH_00007", "--to", "1", "--org", "north")
    assert rolled.returncode == 0, rolled
    north["dev"]["NORTH_NEW"] = [f"north-new-{tag}"]
    north["dev"]["NORTH_00001"].append(f"north-update-{tag}")
    north["dev"]["NORTH_00007"].append(north["dev"]["NORTH_00007"][0])
    models["south"]["dev"]["SOUTH_NEW"] = [f"south-new-{tag}"]
    north_rows = dek_rows(crate_home, "north")
    assert north_rows[("dev", "NORTH_NEW", 1)][0] == 3
    assert north_rows[("dev", "NORTH_00001", 2)][0] == 3
    assert north_rows[("dev", "NORTH_00007", 3)][0] == 3
    assert dek_rows(crate_home, "south")[("dev", "SOUTH_NEW", 1)][0] == 2
    keys = data_keys(crate)
    assert keys["north"] == [(1, 0, False), (2, 0, False), (3, totals["north"] + 3, True)]
    assert keys["south"] == [(1, 0, False), (2, totals["south"] + 1, True)]
    assert keys["west"] == [(1, 0, False), (2, totals["west"], True)]
    check_values(crate_home, "north", north)
    check_values(crate_home, "south", models["south"])


# -- 2. readers while rotations run ----------------------------------------------------------


@pytest.mark.slow
def test_readers_during_rotation_see_no_error_and_no_wrong_value(
    crate: CrateRunner, crate_home: Path, tmp_path: Path
) -> None:
    org, count, rotations = "busy", 30_000, 3
    tag = pysecrets.token_hex(4)
    crate("org", "create", org, check=True)
    expected = {f"BUSY_{i:05d}": f"busy-{i}-{tag}" for i in range(count)}
    import_file(crate, tmp_path / "busy.env", org, expected)
    names = sorted(expected)

    stop = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []
    wrong: list[str] = []
    loops = [0, 0]
    reads: list[tuple[float, float]] = []  # (start, end) of every full fetch

    def reader(index: int) -> None:
        rng = random.Random(index)
        while not stop.is_set():
            start = time.monotonic()
            result = crate("secrets", "fetch", "--org", org, "--format", "json", "--raw")
            end = time.monotonic()
            name = rng.choice(names)
            one = crate("secrets", "get", name, "--org", org)
            with lock:
                reads.append((start, end))
                for r in (result, one):
                    if r.returncode != 0 or r.stderr.strip():
                        errors.append(f"reader {index}: {r}")
                if result.returncode == 0:
                    wrong.extend(mismatches(json.loads(result.stdout), expected))
                if one.returncode == 0 and one.stdout != expected[name]:
                    wrong.append(f"get {name}: {one.stdout!r}")
                loops[index] += 1

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
    rotated: list[tuple[float, float]] = []
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)  # both readers are inside their first fetch
        for version in range(2, 2 + rotations):
            start = time.monotonic()
            rotate(crate, org, version, count)
            rotated.append((start, time.monotonic()))
            time.sleep(random.uniform(0.1, 0.5))
        # Each reader finishes one whole read that began after the last rotation.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                done = sum(start > rotated[-1][1] for start, _ in reads)
            if done >= 2:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)

    print(f"reader loops {loops}, rotations {rotated}")
    assert not errors, errors[:5]
    assert not wrong, wrong[:20]
    assert all(n > 0 for n in loops), loops
    assert sum(start > rotated[-1][1] for start, _ in reads) >= 2
    overlapping = [(r, rot) for r in reads for rot in rotated if r[0] < rot[1] and r[1] > rot[0]]
    assert overlapping, f"no read overlapped a rotation: reads {reads}, rotations {rotated}"
    assert data_keys(crate)[org] == [(1, 0, False), (2, 0, False), (3, 0, False), (4, count, True)]


# -- 3. a rotation killed at random moments -------------------------------------------------


@pytest.mark.slow
def test_rotation_killed_at_random_moments_leaves_a_whole_vault(
    crate: CrateRunner, crate_home: Path
) -> None:
    org, count, kills = "crash", 20_000, 20
    tag = pysecrets.token_hex(4)
    crate("org", "create", org, check=True)
    expected = {f"CRASH_{i:05d}": f"crash-{i}-{tag}" for i in range(count)}
    with session_at(crate_home) as s:
        s.client(org).store("dev", list(expected.items()))
    path = vault_path(crate_home, org)

    start = time.monotonic()
    rotate(crate, org, 2, count)
    duration = time.monotonic() - start
    seed_value = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed_value)
    outcomes: list[tuple[float, int, bool, int, int]] = []  # delay, exit, locked, before, after
    oldest = 1  # the oldest data key version not pruned yet

    for i in range(kills):
        before = newest_dek(crate_home, org)
        proc = subprocess.Popen(
            [*crate.argv0, "keys", "rotate", "org", "--org", org],
            env=crate.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if i % 2:
            # The rotation holds the write lock only for its last, short
            # phase: half the kills wait for it, so that some land inside.
            deadline = time.monotonic() + 2 * duration + 5
            while proc.poll() is None and time.monotonic() < deadline:
                if write_locked(path):
                    break
                time.sleep(0.002)
            delay = rng.uniform(0, 0.05)
        else:
            delay = rng.uniform(0, duration)
        time.sleep(delay)
        locked = write_locked(path)
        # Not reaped yet: the pid is still this child's, even if it has exited.
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        after = newest_dek(crate_home, org)
        outcomes.append((round(delay, 3), proc.returncode, locked, before, after))
        context = f"seed {seed_value}, kill {i}: {outcomes[-1]} {err.decode(errors='replace')}"
        assert proc.returncode in (0, -signal.SIGKILL), context
        if proc.returncode == 0:
            assert after == before + 1, context
        else:  # killed before, during or just after its commit
            assert after in (before, before + 1), context

        # Exactly one data key wraps every secret key, and it is the current
        # one: never a current version holding only part of them.
        keys = data_keys(crate)[org]
        assert [k for k in keys if k[2]] == [(after, count, True)], (context, keys)
        assert all(k[1] == 0 for k in keys if not k[2]), (context, keys)

        # A full read, in a new Session, returns every value.
        with session_at(crate_home) as s:
            got = {r.name: r.value for r in s.client(org).retrieve("dev", [])}
        assert not mismatches(got, expected), (context, mismatches(got, expected))

        rotate(crate, org, after + 1, count)
        if i % 5 == 4:
            assert prune_json(crate) == {org: list(range(oldest, after + 1))}, context
            oldest = after + 1

    mid_transaction = [o for o in outcomes if o[1] == -signal.SIGKILL and o[2] and o[3] == o[4]]
    print(f"seed {seed_value}, rotation {duration:.2f} s, {len(mid_transaction)} killed mid-way")
    print("(delay, exit, write lock held, data key before, after):", *outcomes, sep="\n")
    assert len(mid_transaction) >= 3, f"seed {seed_value}: too few kills mid-rotation: {outcomes}"
    assert vault_sql(crate_home, org, "PRAGMA integrity_check") == [("ok",)]
    assert not mismatches(fetch(crate, org), expected)


# -- 4. a tampered row stops the rotation ------------------------------------------------------


def _flip(blob: bytes) -> bytes:
    data = bytearray(blob)
    data[20] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize("column", ["tags", "action", "wrapped_dek"])
def test_tampered_row_stops_rotation_and_changes_nothing(
    crate: CrateRunner, crate_home: Path, tmp_path: Path, column: str
) -> None:
    org = "acme"
    tag = pysecrets.token_hex(4)
    crate("org", "create", org, check=True)
    values = {f"ACME_{i:03d}": f"acme-{i}-{tag}" for i in range(300)}
    import_file(crate, tmp_path / "v1.env", org, values)
    updates = {n: f"{v}-second" for n, v in list(values.items())[::3]}
    import_file(crate, tmp_path / "v2.env", org, updates)
    values.update(updates)
    total = 300 + len(updates)

    # The last row of the table: every other row has been rewrapped when it is reached.
    ((secret_id, version, original),) = vault_sql(
        crate_home,
        org,
        f"SELECT secret_id, version, {column} FROM secret_versions "
        "ORDER BY secret_id DESC, version DESC LIMIT 1",
    )
    forged: object = {"tags": '["injected"]', "action": "rollback"}.get(column)
    if column == "wrapped_dek":
        forged = _flip(original)
    assert forged != original
    where = "WHERE secret_id = ? AND version = ?"
    update = f"UPDATE secret_versions SET {column} = ? {where}"
    vault_sql(crate_home, org, update, (forged, secret_id, version))

    snapshot = "SELECT * FROM secret_versions ORDER BY secret_id, version"
    deks = "SELECT * FROM org_deks ORDER BY version"
    rows_before = vault_sql(crate_home, org, snapshot)
    deks_before = vault_sql(crate_home, org, deks)
    assert len(deks_before) == 1

    result = crate("keys", "rotate", "org", "--org", org)
    assert_clean_error(result, ExitCode.INTEGRITY, hidden=tuple(values.values()))
    assert "integrity" in result.stderr

    assert vault_sql(crate_home, org, deks) == deks_before
    assert vault_sql(crate_home, org, snapshot) == rows_before  # every wrapped_dek, MAC
    assert data_keys(crate)[org] == [(1, total, True)]

    # Put the original back: nothing was left half done, so the rotation now goes through.
    vault_sql(crate_home, org, update, (original, secret_id, version))
    rotate(crate, org, 2, total)
    assert not mismatches(fetch(crate, org), values)
    assert data_keys(crate)[org] == [(1, 0, False), (2, total, True)]


# -- 5. prune ------------------------------------------------------------------------------------


def test_prune_removes_only_versions_that_wrap_nothing(
    crate: CrateRunner, crate_home: Path, tmp_path: Path
) -> None:
    org = "acme"
    tag = pysecrets.token_hex(4)
    crate("org", "create", org, check=True)
    values = {f"PRUNE_{i:02d}": f"prune-{i}-{tag}" for i in range(50)}
    import_file(crate, tmp_path / "prune.env", org, values)

    # Before any rotation: nothing to prune.
    text = crate("keys", "prune")
    assert text.returncode == 0, text
    assert text.stdout == ""
    assert "nothing to prune" in text.stderr
    assert prune_json(crate) == {org: []}
    assert data_keys(crate)[org] == [(1, 50, True)]

    rotate(crate, org, 2, 50)
    assert prune_json(crate) == {org: [1]}
    assert data_keys(crate)[org] == [(2, 50, True)]
    assert vault_sql(crate_home, org, "SELECT version FROM org_deks") == [(2,)]
    assert not mismatches(fetch(crate, org), values)
    assert prune_json(crate) == {org: []}

    # Two rotations, then the text form removes both old versions at once.
    rotate(crate, org, 3, 50)
    rotate(crate, org, 4, 50)
    text = crate("keys", "prune")
    assert text.returncode == 0, text
    assert f"crate: {org}: removed data key v2, v3" in text.stderr
    assert data_keys(crate)[org] == [(4, 50, True)]
    assert not mismatches(fetch(crate, org), values)
    with session_at(crate_home) as s:
        got = s.client(org).retrieve("dev", ["PRUNE_07"])
    assert [(r.name, r.value) for r in got] == [("PRUNE_07", values["PRUNE_07"])]


def test_prune_keeps_the_current_version_of_an_empty_org(
    crate: CrateRunner, crate_home: Path
) -> None:
    org = "empty"
    crate("org", "create", org, check=True)
    assert prune_json(crate) == {org: []}
    rotate(crate, org, 2, 0)
    rotate(crate, org, 3, 0)
    assert data_keys(crate)[org] == [(1, 0, False), (2, 0, False), (3, 0, True)]
    assert prune_json(crate) == {org: [1, 2]}
    # v3 wraps nothing either, but it is current: it stays.
    assert data_keys(crate)[org] == [(3, 0, True)]
    assert prune_json(crate) == {org: []}
    text = crate("keys", "prune")
    assert text.returncode == 0, text
    assert "nothing to prune" in text.stderr
    assert vault_sql(crate_home, org, "SELECT version FROM org_deks") == [(3,)]

    # The org still works, under v3.
    stored = crate("secrets", "set", "FIRST", "first-value", "--org", org)
    assert stored.returncode == 0, stored
    got = crate("secrets", "get", "FIRST", "--org", org)
    assert (got.returncode, got.stdout) == (0, "first-value"), got
    assert dek_rows(crate_home, org)[("dev", "FIRST", 1)][0] == 3
    assert data_keys(crate)[org] == [(3, 1, True)]


# -- 6. rotate in an org that does not exist, or holds nothing -----------------------------


def test_rotate_in_an_org_that_does_not_exist(crate: CrateRunner, crate_home: Path) -> None:
    crate("org", "create", "real", check=True)
    result = crate("keys", "rotate", "org", "--org", "ghost")
    assert_clean_error(result, ExitCode.NOT_FOUND)
    assert "organization 'ghost' does not exist" in result.stderr
    assert not vault_path(crate_home, "ghost").exists()
    assert data_keys(crate) == {"real": [(1, 0, True)]}


def test_rotate_in_an_org_with_no_secrets(crate: CrateRunner, crate_home: Path) -> None:
    crate("org", "create", "bare", check=True)
    result = crate("keys", "rotate", "org", "--org", "bare")
    assert result.returncode == 0, result
    assert "0 secret keys rewrapped" in result.stderr
    assert "now uses data key v2" in result.stderr
    assert data_keys(crate)["bare"] == [(1, 0, False), (2, 0, True)]


# -- a reader whose snapshot predates a rotation and a prune ---------------------------------


@pytest.mark.slow
def test_read_racing_rotation_and_prune_is_not_an_integrity_failure(
    crate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process rotates and prunes just after this reader took its snapshot
    (the rows still name DEK v1) and before it loads DEK v1: the reader must
    still get its values, as the rotation promises readers keep their snapshot."""
    with session_at(crate_home) as s:
        s.init()
        from crate_cli.vault.orgs import create_org

        create_org(s.storage, s.master, "acme")
        s.client("acme").store("dev", [("A", "a-value"), ("B", "b-value")])

    load = vault_keys.OrgKeys.dek
    started: list[bool] = []
    interleaved: list[tuple[int, list[int]]] = []

    def dek(self: vault_keys.OrgKeys, version: int) -> bytes:
        if not started:  # the first DEK load: the reader's, after its snapshot
            started.append(True)
            with session_at(crate_home) as other:
                new, _ = other.service.rotate_org("acme")
                interleaved.append((new, other.service.prune_org_deks("acme")))
        return load(self, version)

    monkeypatch.setattr(vault_keys.OrgKeys, "dek", dek)
    with session_at(crate_home) as reader:
        got = {r.name: r.value for r in reader.client("acme").retrieve("dev", [])}
    assert interleaved == [(2, [1])]
    assert got == {"A": "a-value", "B": "b-value"}
