"""keys.rotate_org_every: the first write after the period rotates the org data key."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.crate_runner import CrateRunner

pytestmark = pytest.mark.e2e


def data_keys(crate: CrateRunner) -> tuple[list[dict], str | None]:
    status = json.loads(crate("keys", "status", "--json", check=True).stdout)
    (org,) = status["organizations"]
    return org["data_keys"], org["rotation_due"]


def test_a_write_after_the_period_rotates_first(crate: CrateRunner) -> None:
    crate("secrets", "set", "A", "one", check=True)
    keys, due = data_keys(crate)
    assert [k["version"] for k in keys] == [1] and due is None  # no schedule by default

    with (crate.home / "settings.toml").open("a") as f:
        f.write('\n[keys]\nrotate_org_every = "1s"\n')
    keys, due = data_keys(crate)
    assert due is not None and due > keys[0]["created_at"]
    time.sleep(1.2)
    crate("secrets", "get", "A", check=True)  # a read does not rotate
    assert [k["version"] for k in data_keys(crate)[0]] == [1]

    crate("secrets", "set", "B", "two", check=True)
    keys, due = data_keys(crate)
    assert [(k["version"], k["wrapped_keys"], k["current"]) for k in keys] == [
        (1, 0, False),
        (2, 2, True),
    ]
    assert due is not None and due > keys[1]["created_at"]
    assert crate("secrets", "get", "A", check=True).stdout == "one"
    assert crate("secrets", "get", "B", check=True).stdout == "two"


def test_a_bad_period_is_a_clear_error(crate: CrateRunner) -> None:
    crate("secrets", "set", "A", "one", check=True)
    with (crate.home / "settings.toml").open("a") as f:
        f.write('\n[keys]\nrotate_org_every = "soon"\n')
    result = crate("secrets", "set", "B", "two")
    assert result.returncode == 2
    assert "keys.rotate_org_every" in result.stderr
