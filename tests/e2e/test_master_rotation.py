"""Master key rotation (`crate keys rotate master`) and `crate keys prune`.

A rotation makes master key v(N+1), sealed in a slot like each slot of vN,
then rewraps each org's keys (data keys, audit key, RSA key) under it, one
transaction per org. An interrupted rotation is finished by running the
command again (it resumes rather than making yet another version); prune
removes an old version and its slots only once no org uses it.

Most tests drive the real CLI in new processes against a copy of one home
made once per module: three orgs holding about a thousand secrets, some with
an older version, and one org whose data key was rotated (so it has an
unused data key for prune to remove).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from crate_cli.errors import ExitCode
from crate_cli.session import Session
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.keyring_service import SecretService
from tests.support.tpm_simulator import Swtpm

pytestmark = pytest.mark.e2e

ORGS = ("alpha", "beta", "gamma")
PER_ORG = 334  # about 1,000 secrets in all
UPDATED = 60  # the first UPDATED secrets of each org also have a version 2
PASSPHRASE = "rotate-me-correct-horse"
WRONG_PASSPHRASE = "rotate-me-wrong-horse"

# org -> secret name -> its values, oldest version first.
Model = dict[str, dict[str, list[str]]]


# -- building homes ---------------------------------------------------------------------


def write_env_file(path: Path, pairs: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in pairs.items()))
    return path


def fill_org(
    crate: CrateRunner,
    org: str,
    count: int,
    updated: int,
    scratch: Path,
    env: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """Import `count` secrets into org/dev, then a second version of the first
    `updated` of them; returns name -> [v1, v2...]."""
    first = {f"KEY_{i:04d}": f"{org}.{i}.v1.{os.urandom(6).hex()}" for i in range(count)}
    second = {name: f"{org}.v2.{os.urandom(6).hex()}" for name in list(first)[:updated]}
    for n, pairs in enumerate((first, second)):
        if not pairs:
            continue
        done = crate(
            "secrets",
            "import",
            str(write_env_file(scratch / f"{org}-{n}.env", pairs)),
            "--org",
            org,
            "--json",
            env=env,
            check=True,
        )
        assert json.loads(done.stdout)["imported"] == len(pairs)
    return {
        name: [value, *([second[name]] if name in second else [])] for name, value in first.items()
    }


def model_path(home: Path) -> Path:
    return home.parent / f"{home.name}.model.json"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with a file slot, ORGS holding PER_ORG secrets each (UPDATED of
    them with two versions), and beta's data key rotated once."""
    root = tmp_path_factory.mktemp("master-rotation")
    crate = CrateRunner(root / "home")
    crate("init", "--keystore", "file", check=True)
    model: Model = {}
    for org in ORGS:
        crate("org", "create", org, check=True)
        model[org] = fill_org(crate, org, PER_ORG, UPDATED, root)
    crate("keys", "rotate", "org", "--org", "beta", check=True)
    model_path(crate.home).write_text(json.dumps(model))
    return crate.home


@pytest.fixture
def home(template: Path, crate: CrateRunner) -> CrateRunner:
    """This test's copy of the template home."""
    shutil.copytree(template, crate.home)
    return crate


@pytest.fixture
def model(template: Path) -> Model:
    loaded: Model = json.loads(model_path(template).read_text())
    return loaded


# -- looking at a home -------------------------------------------------------------------


def registry(crate: CrateRunner) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((crate.home / "keys" / "master.json").read_text())
    return doc


def versions(crate: CrateRunner) -> list[int]:
    return [v["version"] for v in registry(crate)["versions"]]


def slots_of(crate: CrateRunner, version: int) -> list[dict[str, Any]]:
    (record,) = [v for v in registry(crate)["versions"] if v["version"] == version]
    return list(record["slots"])


def key_files(crate: CrateRunner) -> set[str]:
    return {p.name for p in (crate.home / "keys").glob("slot-*.key")}


def status(crate: CrateRunner, env: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(crate("keys", "status", "--json", env=env, check=True).stdout)
    return doc


def slot_rows(crate: CrateRunner, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        crate("keys", "slots", "list", "--json", env=env, check=True).stdout
    )
    return rows


def session_env(crate: CrateRunner, env: dict[str, str] | None = None) -> dict[str, str]:
    return {"CRATE_HOME": str(crate.home), "CRATE_KEYSTORE": "file", **(env or {})}


@contextmanager
def fresh_session(crate: CrateRunner, env: dict[str, str] | None = None) -> Iterator[Session]:
    """An in-process Session that has read and unlocked nothing yet."""
    s = Session(environ=session_env(crate, env))
    try:
        yield s
    finally:
        if "service" in s.__dict__:
            s.service.close()


def master_versions_used(crate: CrateRunner) -> dict[str, set[int]]:
    """org -> the master key versions wrapping any of its keys (data, audit, RSA)."""
    with fresh_session(crate) as s:
        return {org: set(s.service.master_versions_used(org)) for org in orgs_of(crate)}


def orgs_of(crate: CrateRunner) -> list[str]:
    return sorted(p.name.removesuffix(".vault") for p in (crate.home / "orgs").glob("*.vault"))


def assert_every_org_on(crate: CrateRunner, version: int) -> None:
    used = master_versions_used(crate)
    assert used == {org: {version} for org in orgs_of(crate)}, used


def assert_values_in_process(
    crate: CrateRunner, model: Model, env: dict[str, str] | None = None
) -> None:
    """Every latest value and every older version, read by a Session that has
    unlocked nothing before (so from the registry and vaults on disk)."""
    with fresh_session(crate, env) as s:
        for org, secrets in model.items():
            latest = {v.name: v.value for v in s.service.read_values(org, "dev", [], [])}
            assert latest == {name: values[-1] for name, values in secrets.items()}, org
            older = {name: 1 for name, values in secrets.items() if len(values) > 1}
            if older:
                got = s.service.read_values(org, "dev", list(older), [], versions=older)
                assert {v.name: (v.version, v.value) for v in got} == {
                    name: (1, secrets[name][0]) for name in older
                }, org


def assert_values_by_cli(
    crate: CrateRunner,
    model: Model,
    env: dict[str, str] | None = None,
    orgs: list[str] | None = None,
) -> None:
    """Each org's values through `crate secrets fetch`, and one older version
    through `crate secrets get --version 1`, in new processes."""
    for org in orgs or model:
        secrets = model[org]
        fetched = crate("secrets", "fetch", "--org", org, "--format", "json", env=env)
        assert fetched.returncode == 0, fetched
        assert json.loads(fetched.stdout) == {n: v[-1] for n, v in secrets.items()}, org
        name = next((n for n, v in secrets.items() if len(v) > 1), None)
        if name is not None:
            got = crate("secrets", "get", name, "--org", org, "--version", "1", env=env)
            assert (got.returncode, got.stdout) == (0, secrets[name][0]), got


def assert_all_values(crate: CrateRunner, model: Model, env: dict[str, str] | None = None) -> None:
    assert_values_by_cli(crate, model, env)
    assert_values_in_process(crate, model, env)


def rotate(crate: CrateRunner, env: dict[str, str] | None = None) -> Result:
    done = crate("keys", "rotate", "master", env=env)
    assert done.returncode == 0, done
    assert "Traceback" not in done.stderr
    return done


def prune(crate: CrateRunner, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = crate("keys", "prune", "--json", env=env)
    assert done.returncode == 0, done
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


# -- 1. a rotation ---------------------------------------------------------------------


def test_a_rotation_rewraps_every_org_and_every_value_still_reads(
    home: CrateRunner, model: Model
) -> None:
    crate = home
    assert versions(crate) == [1]
    assert_every_org_on(crate, 1)
    (v1_slot,) = slots_of(crate, 1)

    done = rotate(crate)
    assert "created master key v2 in 1 slot(s) (file)" in done.stderr
    for org in ORGS:
        assert f"crate: {org}: " in done.stderr
    assert "resuming" not in done.stderr
    assert versions(crate) == [1, 2]

    doc = status(crate)
    assert [v["version"] for v in doc["master_versions"]] == [1, 2]
    assert [[s["current"] for s in v["slots"]] for v in doc["master_versions"]] == [[False], [True]]
    assert doc["summary"].startswith("master key v2 ")
    assert sorted(o["org"] for o in doc["organizations"]) == list(ORGS)
    for entry in doc["organizations"]:
        assert entry["data_keys"], entry
        assert {k["master_version"] for k in entry["data_keys"]} == {2}, entry
    # The audit and RSA keys too, which status does not show.
    assert_every_org_on(crate, 2)

    rows = slot_rows(crate)
    assert [(r["master_version"], r["type"], r["current"]) for r in rows] == [
        (1, "file", False),
        (2, "file", True),
    ]
    (v2_slot,) = slots_of(crate, 2)
    assert v2_slot["id"] != v1_slot["id"]
    assert v2_slot["params"]["key_file"] != v1_slot["params"]["key_file"]
    assert key_files(crate) == {v1_slot["params"]["key_file"], v2_slot["params"]["key_file"]}
    assert registry(crate)["versions"][1]["check"]  # a new key, with its own check

    assert_all_values(crate, model)

    again = rotate(crate)
    assert "created master key v3 in 1 slot(s) (file)" in again.stderr
    assert versions(crate) == [1, 2, 3]
    assert_every_org_on(crate, 3)
    assert [r["master_version"] for r in slot_rows(crate)] == [1, 2, 3]
    assert_all_values(crate, model)


def test_new_writes_and_orgs_after_a_rotation_use_the_new_version(
    home: CrateRunner, model: Model
) -> None:
    crate = home
    rotate(crate)
    crate("org", "create", "delta", check=True)
    crate("secrets", "set", "NEW", "after-rotation", "--org", "alpha", check=True)
    crate("keys", "rotate", "org", "--org", "gamma", check=True)
    assert_every_org_on(crate, 2)
    got = crate("secrets", "get", "NEW", "--org", "alpha")
    assert (got.returncode, got.stdout) == (0, "after-rotation")
    assert prune(crate)["master_keys"] == [1]
    assert_values_by_cli(crate, model, orgs=["gamma"])


# -- 2. prune ---------------------------------------------------------------------------


def test_prune_removes_the_old_version_and_its_slot(home: CrateRunner, model: Model) -> None:
    crate = home
    (v1_slot,) = slots_of(crate, 1)
    v1_file = crate.home / "keys" / v1_slot["params"]["key_file"]
    assert v1_file.exists()
    rotate(crate)

    pruned = prune(crate)
    assert pruned == {
        "data_keys": {"alpha": [], "beta": [1], "gamma": []},
        "master_keys": [1],
        "held": {},
    }
    assert versions(crate) == [2]
    assert not v1_file.exists()
    (v2_slot,) = slots_of(crate, 2)
    assert key_files(crate) == {v2_slot["params"]["key_file"]}
    assert [(r["master_version"], r["id"]) for r in slot_rows(crate)] == [(2, v2_slot["id"])]
    assert [v["version"] for v in status(crate)["master_versions"]] == [2]
    assert_all_values(crate, model)

    # The current version is never pruned, however often prune runs.
    assert prune(crate) == {
        "data_keys": {org: [] for org in ORGS},
        "master_keys": [],
        "held": {},
    }
    assert versions(crate) == [2]
    nothing = crate("keys", "prune")
    assert nothing.returncode == 0, nothing
    assert "nothing to prune" in nothing.stderr
    assert_values_by_cli(crate, model, orgs=["alpha"])


def test_prune_never_removes_the_only_version(home: CrateRunner, model: Model) -> None:
    crate = home
    files = key_files(crate)
    pruned = prune(crate)
    assert pruned["master_keys"] == [] and pruned["held"] == {}
    assert versions(crate) == [1]
    assert key_files(crate) == files
    assert_values_by_cli(crate, model, orgs=["beta"])


def test_prune_after_two_rotations_removes_both_old_versions(
    home: CrateRunner, model: Model
) -> None:
    crate = home
    rotate(crate)
    rotate(crate)
    assert versions(crate) == [1, 2, 3]
    assert prune(crate)["master_keys"] == [1, 2]
    assert versions(crate) == [3]
    (v3_slot,) = slots_of(crate, 3)
    assert key_files(crate) == {v3_slot["params"]["key_file"]}
    assert_all_values(crate, model)


# -- 3. an interrupted rotation ----------------------------------------------------------


@pytest.mark.parametrize("finished", [0, 1, 2], ids=["no-org", "one-org", "two-orgs"])
def test_an_interrupted_rotation_is_resumed_not_repeated(
    home: CrateRunner, model: Model, finished: int
) -> None:
    """Stopped after v2 was made and `finished` orgs were rewrapped."""
    crate = home
    with fresh_session(crate) as s:
        made = s.master.rotate()
        assert made.version == 2
        for org in ORGS[:finished]:
            assert s.service.rewrap_to_master(org, 2) > 0
    done_orgs, behind = list(ORGS[:finished]), list(ORGS[finished:])
    assert master_versions_used(crate) == {
        **{org: {2} for org in done_orgs},
        **{org: {1} for org in behind},
    }

    # Every value reads from a new process: some orgs under v1, some under v2.
    assert_all_values(crate, model)

    # Prune refuses to remove v1 and names every org that still uses it.
    (v1_slot,) = slots_of(crate, 1)
    refused = crate("keys", "prune")
    assert refused.returncode == ExitCode.CONFLICT, refused
    assert refused.stdout == ""
    assert "Traceback" not in refused.stderr
    (error,) = [line for line in refused.stderr.splitlines() if "error" in line]
    assert error.startswith("crate: error: master key v1 is still used by "), error
    for org in ORGS:
        assert (f"{org} (" in error) == (org in behind), error
    assert "crate keys rotate master" in refused.stderr
    as_json = crate("keys", "prune", "--json")
    assert as_json.returncode == ExitCode.CONFLICT, as_json
    held = json.loads(as_json.stdout)["held"]
    assert list(held) == ["1"]
    assert sorted(h.split(" (")[0] for h in held["1"]) == behind
    assert json.loads(as_json.stdout)["master_keys"] == []
    assert versions(crate) == [1, 2]
    assert slots_of(crate, 1) == [v1_slot]
    assert (crate.home / "keys" / v1_slot["params"]["key_file"]).exists()
    assert_values_by_cli(crate, model, orgs=behind[:1])

    # Running the rotation again finishes it: no v3.
    resumed = rotate(crate)
    assert (
        f"resuming the rotation to master key v2: {len(behind)} organization(s) still to rewrap"
        in resumed.stderr
    ), resumed.stderr
    assert "created master key" not in resumed.stderr
    for org in ORGS:
        assert (f"crate: {org}: " in resumed.stderr) == (org in behind), resumed.stderr
    assert versions(crate) == [1, 2]
    assert_every_org_on(crate, 2)

    assert prune(crate)["master_keys"] == [1]
    assert versions(crate) == [2]
    assert not (crate.home / "keys" / v1_slot["params"]["key_file"]).exists()
    assert_all_values(crate, model)

    # The next rotation is a fresh one again.
    assert "created master key v3" in rotate(crate).stderr


@pytest.mark.slow
def test_a_rotation_killed_at_random_moments(
    home: CrateRunner, model: Model, tmp_path: Path
) -> None:
    """SIGKILL `crate keys rotate master` at random moments (before it made the
    new version, while it rewraps orgs, or after it finished): every value
    still reads, a rerun finishes the rotation (resuming when an org is
    behind, else making one new version), and no run makes more than one."""
    crate = home
    extra = ("delta", "epsilon", "zeta", "eta")
    for org in extra:
        crate("org", "create", org, check=True)
        model[org] = fill_org(crate, org, 25, 5, tmp_path)

    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    # How long a whole rotation takes here, from start to exit.
    started = time.monotonic()
    rotate(crate)
    full = time.monotonic() - started
    assert versions(crate) == [1, 2]

    outcomes = []
    for attempt in range(10):
        before = versions(crate)
        # Even attempts: a random moment of the whole run (mostly start-up).
        # Odd ones: just after the new version was made, while orgs are rewrapped.
        mid_rewrap = attempt % 2 == 1
        delay = rng.uniform(0.0, 0.005) if mid_rewrap else rng.uniform(0.0, full * 1.2)
        proc = subprocess.Popen(
            [*crate.argv0, "keys", "rotate", "master"],
            env=crate.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        seen = b""
        try:
            if mid_rewrap:
                assert proc.stderr is not None
                while b"created master key" not in seen:
                    line = proc.stderr.readline()
                    if not line:
                        break
                    seen += line
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = seen + err
        where = (
            f"(seed {seed}, attempt {attempt}, mid-rewrap {mid_rewrap}, "
            f"delay {delay:.3f}s, exit {proc.returncode})"
        )
        stderr = err.decode("utf-8", "replace")
        assert "Traceback" not in stderr, where + stderr
        assert proc.returncode in (0, -signal.SIGKILL), where + stderr

        after = versions(crate)
        assert after[: len(before)] == before, where
        assert len(after) - len(before) in (0, 1), where
        current = after[-1]
        used = master_versions_used(crate)
        behind = sorted(org for org, v in used.items() if v != {current})
        assert all(v <= {before[-1], current} for v in used.values()), (where, used)
        outcomes.append((len(after) - len(before), len(behind)))

        assert_values_in_process(crate, model)
        assert_values_by_cli(crate, model, orgs=[rng.choice(sorted(model))])

        rerun = rotate(crate)
        final = versions(crate)
        if behind:
            assert f"resuming the rotation to master key v{current}" in rerun.stderr, where
            assert final == after, where
        else:
            assert f"created master key v{current + 1}" in rerun.stderr, where
            assert final == [*after, current + 1], where
        assert_every_org_on(crate, final[-1])

    # No version was made twice or skipped, and none without a run that made it.
    final = versions(crate)
    assert final == list(range(1, len(final) + 1))
    assert len(final) <= 2 + 2 * len(outcomes)
    pruned = prune(crate)
    assert pruned["master_keys"] == final[:-1]
    assert versions(crate) == [final[-1]]
    assert_all_values(crate, model)


@pytest.mark.slow
def test_a_slow_rotation_does_not_undo_a_later_one(home: CrateRunner, model: Model) -> None:
    """Rotation P makes v2 and rewraps alpha, then waits for beta's vault (held
    here, as a long write would) and is paused. Meanwhile a rotation resumes
    it and another makes v3. When P goes on, both having exited 0 must leave
    every org on the current version."""
    crate = home
    held = sqlite3.connect(crate.home / "orgs" / "beta.vault", isolation_level=None)
    held.execute("BEGIN IMMEDIATE")
    p = subprocess.Popen(
        [*crate.argv0, "keys", "rotate", "master"],
        env=crate.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    others: list[Result] = []
    paused = False
    try:
        assert p.stderr is not None
        seen = b""
        while b"crate: alpha: " not in seen:
            line = p.stderr.readline()
            assert line, seen
            seen += line
        assert b"created master key v2" in seen
        # P now waits for beta's vault: pause it there, then let the others through.
        os.kill(p.pid, signal.SIGSTOP)
        paused = True
        held.rollback()
        assert master_versions_used(crate) == {"alpha": {2}, "beta": {1}, "gamma": {1}}

        def two_rotations() -> None:
            others.append(crate("keys", "rotate", "master"))
            others.append(crate("keys", "rotate", "master"))

        meanwhile = threading.Thread(target=two_rotations)
        meanwhile.start()
        # They may wait for P (a fix could serialise rotations): not for ever.
        meanwhile.join(timeout=5)
    finally:
        held.close()
        if paused:
            os.kill(p.pid, signal.SIGCONT)
        _, err = p.communicate(timeout=120)
    meanwhile.join(timeout=240)
    assert not meanwhile.is_alive()
    assert p.returncode == 0, seen + err
    assert [r.returncode for r in others] == [0, 0], others
    current = versions(crate)[-1]
    assert current >= 3
    assert_values_by_cli(crate, model)
    assert_every_org_on(crate, current)
    assert prune(crate)["master_keys"] == list(range(1, current))


# -- 4. a passphrase slot ----------------------------------------------------------------


@pytest.fixture
def passphrase_home(crate: CrateRunner, tmp_path: Path) -> tuple[CrateRunner, Model]:
    """A home sealed by a file slot and a passphrase slot, with org alpha."""
    env = {"CRATE_PASSPHRASE": PASSPHRASE}
    crate("init", "--keystore", "file", check=True)
    crate("keys", "slots", "add", "passphrase", env=env, check=True)
    crate("org", "create", "alpha", check=True)
    model = {"alpha": fill_org(crate, "alpha", 40, 10, tmp_path)}
    assert [s["type"] for s in slots_of(crate, 1)] == ["file", "passphrase"]
    return crate, model


def test_a_rotation_without_the_passphrase_creates_nothing(
    passphrase_home: tuple[CrateRunner, Model],
) -> None:
    crate, model = passphrase_home
    before = registry(crate)
    failed = crate("keys", "rotate", "master", input="")
    assert_clean_error(failed, ExitCode.KEYSTORE)
    assert "CRATE_PASSPHRASE" in failed.stderr
    assert registry(crate) == before
    assert_every_org_on(crate, 1)
    assert_values_by_cli(crate, model)


def test_a_failed_rotation_leaves_no_slot_behind(
    passphrase_home: tuple[CrateRunner, Model],
) -> None:
    crate, _ = passphrase_home
    files = key_files(crate)
    assert crate("keys", "rotate", "master", input="").returncode == ExitCode.KEYSTORE
    assert key_files(crate) == files


def test_the_new_passphrase_slot_unlocks_alone(
    passphrase_home: tuple[CrateRunner, Model],
) -> None:
    crate, model = passphrase_home
    env = {"CRATE_PASSPHRASE": PASSPHRASE}
    done = rotate(crate, env)
    assert "created master key v2 in 2 slot(s) (file, passphrase)" in done.stderr
    v1_slots, v2_slots = slots_of(crate, 1), slots_of(crate, 2)
    assert [s["type"] for s in v2_slots] == ["file", "passphrase"]
    # Sealed anew: its own salt, under the same passphrase and KDF settings.
    old, new = v1_slots[1]["params"], v2_slots[1]["params"]
    assert new["salt"] != old["salt"]
    assert {k: new[k] for k in ("kdf", "iterations", "lanes", "memory_cost")} == {
        k: old[k] for k in ("kdf", "iterations", "lanes", "memory_cost")
    }
    assert_every_org_on(crate, 2)

    assert prune(crate, env)["master_keys"] == [1]
    file_slot = v2_slots[0]
    removed = crate("keys", "slots", "remove", file_slot["id"], env=env)
    assert removed.returncode == 0, removed
    assert key_files(crate) == set()
    assert [s["type"] for s in slots_of(crate, 2)] == ["passphrase"]

    # Only the passphrase opens the vault now.
    assert_all_values(crate, model, env)
    values = tuple(v for secrets in model.values() for vs in secrets.values() for v in vs)
    name = next(iter(model["alpha"]))
    wrong = crate(
        "secrets", "get", name, "--org", "alpha", env={"CRATE_PASSPHRASE": WRONG_PASSPHRASE}
    )
    assert_clean_error(wrong, ExitCode.KEYSTORE, hidden=values)
    assert "wrong passphrase" in wrong.stderr
    missing = crate("secrets", "get", name, "--org", "alpha", input="")
    assert_clean_error(missing, ExitCode.KEYSTORE, hidden=values)
    # A second rotation makes a passphrase slot again, and prune keeps it working.
    assert "created master key v3 in 1 slot(s) (passphrase)" in rotate(crate, env).stderr
    assert prune(crate, env)["master_keys"] == [2]
    assert_values_by_cli(crate, model, env)


# -- 5. tpm2 and keyring slots -------------------------------------------------------------


def test_a_tpm2_slot_is_resealed_in_the_tpm(
    crate: CrateRunner, swtpm: Swtpm, tmp_path: Path
) -> None:
    env = swtpm.env()
    done = crate("init", "--keystore", "tpm2", env=env, check=True)
    assert "sealed by a tpm2 slot" in done.stderr
    crate("org", "create", "alpha", env=env, check=True)
    model = {"alpha": fill_org(crate, "alpha", 30, 5, tmp_path, env)}
    crate("keys", "slots", "add", "file", env=env, check=True)
    assert [s["type"] for s in slots_of(crate, 1)] == ["tpm2", "file"]

    done = rotate(crate, env)
    assert "created master key v2 in 2 slot(s) (tpm2, file)" in done.stderr
    old, new = slots_of(crate, 1)[0], slots_of(crate, 2)[0]
    assert new["type"] == "tpm2"
    assert new["params"]["tcti"] == old["params"]["tcti"] == swtpm.tcti
    assert (new["params"]["pin"], new["params"]["pcrs"]) == (False, [])
    assert new["params"]["private"] != old["params"]["private"]
    assert_every_org_on(crate, 2)

    assert prune(crate, env)["master_keys"] == [1]
    file_slot = slots_of(crate, 2)[1]
    crate("keys", "slots", "remove", file_slot["id"], env=env, check=True)
    assert key_files(crate) == set()
    assert [s["type"] for s in slots_of(crate, 2)] == ["tpm2"]
    assert_values_by_cli(crate, model, env)
    # The TPM is the only way in.
    swtpm.stop()
    name = next(iter(model["alpha"]))
    assert_clean_error(crate("secrets", "get", name, "--org", "alpha", env=env), ExitCode.KEYSTORE)


def test_a_keyring_slot_is_resealed_in_the_keyring(
    crate: CrateRunner, keyring_service: SecretService, tmp_path: Path
) -> None:
    env = keyring_service.env()
    done = crate("init", "--keystore", "keyring", env=env, check=True)
    assert "sealed by a keyring slot" in done.stderr
    crate("org", "create", "alpha", env=env, check=True)
    model = {"alpha": fill_org(crate, "alpha", 30, 5, tmp_path, env)}
    crate("keys", "slots", "add", "file", env=env, check=True)
    (v1_item,) = keyring_service.crate_items()

    done = rotate(crate, env)
    assert "created master key v2 in 2 slot(s) (keyring, file)" in done.stderr
    new = slots_of(crate, 2)[0]
    assert new["type"] == "keyring"
    items = keyring_service.crate_items()
    assert set(items) == {v1_item, new["params"]["username"]}
    assert len(set(items.values())) == 2  # a new key-encryption key
    assert_every_org_on(crate, 2)

    assert prune(crate, env)["master_keys"] == [1]
    assert set(keyring_service.crate_items()) == {new["params"]["username"]}
    file_slot = slots_of(crate, 2)[1]
    crate("keys", "slots", "remove", file_slot["id"], env=env, check=True)
    assert key_files(crate) == set()
    assert [s["type"] for s in slots_of(crate, 2)] == ["keyring"]
    assert_values_by_cli(crate, model, env)
    # The keyring is the only way in.
    with keyring_service.connection() as conn:
        (item,) = keyring_service.items(conn)
        item.delete()
    name = next(iter(model["alpha"]))
    assert_clean_error(crate("secrets", "get", name, "--org", "alpha", env=env), ExitCode.KEYSTORE)


# -- 6. readers during a rotation -----------------------------------------------------------


@pytest.mark.slow
def test_readers_see_no_error_during_rotations_and_prunes(home: CrateRunner, model: Model) -> None:
    crate = home
    errors: list[str] = []
    reads = [0, 0]
    stop = threading.Event()

    def reader(index: int, org: str) -> None:
        secrets = model[org]
        older = next(n for n, v in secrets.items() if len(v) > 1)
        plain = next(n for n, v in secrets.items() if len(v) == 1)
        expected_all = {n: v[-1] for n, v in secrets.items()}
        while not stop.is_set():
            step = reads[index] % 3
            if step == 0:
                got = crate("secrets", "get", plain, "--org", org)
                ok = got.returncode == 0 and got.stdout == secrets[plain][0]
            elif step == 1:
                got = crate("secrets", "get", older, "--org", org, "--version", "1")
                ok = got.returncode == 0 and got.stdout == secrets[older][0]
            else:
                got = crate("secrets", "fetch", "--org", org, "--format", "json")
                try:
                    ok = got.returncode == 0 and json.loads(got.stdout) == expected_all
                except ValueError:
                    ok = False
            if not ok:
                errors.append(f"reader {index} ({org}): {got}")
            reads[index] += 1

    threads = [
        threading.Thread(target=reader, args=(i, org)) for i, org in enumerate(("alpha", "beta"))
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while min(reads) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        during = sum(reads)
        for expected in (2, 3, 4):
            done = rotate(crate)
            assert f"created master key v{expected}" in done.stderr
            assert prune(crate)["master_keys"] == [expected - 1]
        settled = list(reads)
        assert sum(settled) > during  # the readers kept reading meanwhile
        while any(r < s + 2 for r, s in zip(reads, settled, strict=True)):
            if time.monotonic() > deadline + 30:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert errors == []
    assert min(reads) >= 5, reads
    assert versions(crate) == [4]


# -- 7. a long-lived session across a rotation ------------------------------------------------


def test_a_session_opened_before_a_rotation_reads_after_it(home: CrateRunner, model: Model) -> None:
    """The agent and the server keep one MasterKeys for their whole life: an org
    they had not opened yet is wrapped by a version their registry never saw."""
    crate = home
    with fresh_session(crate) as s:
        name = "KEY_0007"
        (got,) = s.service.read_values("alpha", "dev", [name], [])
        assert got.value == model["alpha"][name][-1]
        assert [v.version for v in s.master.versions()] == [1]

        rotate(crate)
        # beta's keys are now wrapped by v2, which this session has not heard of.
        values = {v.name: v.value for v in s.service.read_values("beta", "dev", [], [])}
        assert values == {n: v[-1] for n, v in model["beta"].items()}
        assert [v.version for v in s.master.versions()] == [1, 2]
        # alpha still reads (its data key is cached), and so does an older version.
        older = next(n for n, v in model["alpha"].items() if len(v) > 1)
        (got,) = s.service.read_values("alpha", "dev", [older], [], versions={older: 1})
        assert got.value == model["alpha"][older][0]

        # v1 pruned by another process: what this session has not opened uses v2.
        assert prune(crate)["master_keys"] == [1]
        values = {v.name: v.value for v in s.service.read_values("gamma", "dev", [], [])}
        assert values == {n: v[-1] for n, v in model["gamma"].items()}
        (got,) = s.service.read_values("alpha", "dev", [name], [])
        assert got.value == model["alpha"][name][-1]

        # A second rotation, with v2 already unlocked here.
        rotate(crate)
        assert prune(crate)["master_keys"] == [2]
    with fresh_session(crate) as s:
        (got,) = s.service.read_values("alpha", "dev", [name], [])
        assert got.value == model["alpha"][name][-1]
    assert_values_by_cli(crate, model, orgs=["beta"])


def test_a_session_that_never_unlocked_reads_after_a_rotation_and_prune(
    home: CrateRunner, model: Model
) -> None:
    crate = home
    with fresh_session(crate) as s:
        assert [v.version for v in s.master.versions()] == [1]  # read, nothing unlocked
        rotate(crate)
        assert prune(crate)["master_keys"] == [1]
        values = {v.name: v.value for v in s.service.read_values("alpha", "dev", [], [])}
        assert values == {n: v[-1] for n, v in model["alpha"].items()}


def test_a_session_opened_before_a_rotation_wraps_new_keys_under_the_new_version(
    home: CrateRunner, model: Model
) -> None:
    crate = home
    with fresh_session(crate) as s:
        s.service.read_values("alpha", "dev", ["KEY_0001"], [])  # unlocks v1
        rotate(crate)
        assert prune(crate)["master_keys"] == [1]
        # What the agent or server does on a write once keys.rotate_org_every is due.
        s.service.rotate_org("alpha")
    # A new process must still read alpha, and find it under v2 only.
    assert_values_by_cli(crate, model, orgs=["alpha"])
    assert_every_org_on(crate, 2)
