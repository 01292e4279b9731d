"""Concurrent crate processes must not lose updates (DESIGN §3).

Real processes, real vault: two writers run `crate secrets set` in a loop at
the same time. Every write must land, each as its own version, and no
process may fail on a locked database. First use (master key and org) must
also be safe when two processes start on an empty home at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode

pytestmark = pytest.mark.e2e

WRITES = 50

# A writer: runs `crate secrets set NAME -` for each (name, value), one process each.
WRITER = r"""
import json, subprocess, sys
argv0, pairs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
failed = 0
for name, value in pairs:
    p = subprocess.run([*argv0, "secrets", "set", name, "-"], input=value.encode(),
                       capture_output=True)
    sys.stderr.write(p.stderr.decode("utf-8", "replace"))
    if p.returncode != 0:
        failed += 1
        sys.stderr.write(f"WRITER: exit {p.returncode} for {name}\n")
sys.exit(1 if failed else 0)
"""


def start_writer(crate, pairs: list[tuple[str, str]]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(crate.argv0), json.dumps(pairs)],
        env=crate.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(writers: list[subprocess.Popen[bytes]]) -> list[str]:
    """Wait for every writer; return their stderr after checking they all succeeded."""
    outputs = []
    for w in writers:
        try:
            _, err = w.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            w.kill()
            raise
        text = err.decode("utf-8", "replace")
        assert w.returncode == 0, text
        outputs.append(text)
    for text in outputs:
        assert "locked" not in text.lower(), text
        assert "busy" not in text.lower(), text
        assert "error" not in text.lower(), text
    return outputs


def list_names(crate) -> dict[str, int]:
    result = crate("secrets", "list", "--json")
    assert result.returncode == 0, result
    return {s["name"]: s["version"] for s in json.loads(result.stdout)}


@pytest.fixture
def initialised(personal_home: Path, crate) -> Path:
    assert crate("secrets", "set", "INIT", "x").returncode == 0
    return personal_home


@pytest.mark.slow
def test_two_writers_distinct_names(initialised: Path, crate, retrieve) -> None:
    batches = [[(f"K{w}_{i}", f"value-{w}-{i}") for i in range(WRITES)] for w in (1, 2)]
    finish([start_writer(crate, batch) for batch in batches])

    expected = {name: 1 for batch in batches for name, _ in batch}
    expected["INIT"] = 1
    assert list_names(crate) == expected
    values = retrieve("personal", "dev", [])
    assert values == {"INIT": "x", **{n: v for batch in batches for n, v in batch}}


@pytest.mark.slow
def test_two_writers_same_name(initialised: Path, crate, fresh_session) -> None:
    half = WRITES // 2
    batches = [[("SHARED", f"writer{w}-{i}") for i in range(half)] for w in (1, 2)]
    finish([start_writer(crate, batch) for batch in batches])

    assert list_names(crate) == {"INIT": 1, "SHARED": WRITES}
    history = json.loads(crate("secrets", "history", "SHARED", "--json").stdout)
    assert [v["version"] for v in history] == list(range(1, WRITES + 1))

    # Every write is exactly one version: no value lost, none written twice.
    with fresh_session() as s:
        client = s.client("personal")
        stored = [
            client.retrieve("dev", ["SHARED"], versions={"SHARED": v})[0].value
            for v in range(1, WRITES + 1)
        ]
    assert sorted(stored) == sorted(value for batch in batches for _, value in batch)
    # Each writer's own writes keep their order.
    for w in (1, 2):
        mine = [v for v in stored if v.startswith(f"writer{w}-")]
        assert mine == [f"writer{w}-{i}" for i in range(half)]
    assert stored[-1] in (f"writer1-{half - 1}", f"writer2-{half - 1}")


@pytest.mark.parametrize("attempt", range(3))
def test_first_use_raced_by_two_processes(crate_home: Path, crate, attempt: int) -> None:
    """Both start on an empty home: one master key, one org, both secrets stored."""
    procs = [
        subprocess.Popen(
            [*crate.argv0, "secrets", "set", name, "-"],
            env=crate.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("FIRST", "SECOND")
    ]
    results = [p.communicate(input=f"value-{i}".encode(), timeout=120) for i, p in enumerate(procs)]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()

    registry = json.loads((crate_home / "keys" / "master.json").read_text())
    assert [v["version"] for v in registry["versions"]] == [1]
    assert len(registry["versions"][0]["slots"]) == 1
    assert len(list((crate_home / "keys").glob("slot-*.key"))) == 1
    assert sorted(p.name for p in (crate_home / "orgs").iterdir()) == ["personal.vault"]
    assert list_names(crate) == {"FIRST": 1, "SECOND": 1}
    fetched = crate("secrets", "fetch", "--format", "json")
    assert json.loads(fetched.stdout) == {"FIRST": "value-0", "SECOND": "value-1"}


def test_same_org_created_twice_at_once(personal_home: Path, crate) -> None:
    procs = [
        subprocess.Popen(
            [*crate.argv0, "org", "create", "acme"],
            env=crate.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outcomes = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        outcomes.append((p.returncode, err.decode()))
    assert sorted(code for code, _ in outcomes) == [0, ExitCode.CONFLICT], outcomes
    assert all("Traceback" not in err for _, err in outcomes)
    vaults = sorted(p.name for p in (personal_home / "orgs").iterdir())
    assert vaults == ["acme.vault", "personal.vault"]
    assert crate("secrets", "set", "X", "y", "--org", "acme").returncode == 0
