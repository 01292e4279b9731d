"""An open org for each test of the vault's operations (tests/support/org_keys.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from crate_cli.vault.keys import OrgKeys
from tests.support.org_keys import make_home, open_org


@pytest.fixture(scope="session")
def org_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("org-template") / "home"
    make_home(root)
    return root


@pytest.fixture
def home(org_template: Path, tmp_path: Path) -> Path:
    """A private copy of the template home."""
    root = tmp_path / "home"
    shutil.copytree(org_template, root)
    return root


@pytest.fixture
def keys(home: Path) -> Iterator[OrgKeys]:
    """Org `acme` of this test's home, with its keys."""
    with open_org(home) as opened:
        yield opened
