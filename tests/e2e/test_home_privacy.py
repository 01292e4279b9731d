"""A crate home that others can enter is refused, never repaired (issue 17, item 17).

`CRATE_HOME=/tmp` (or any folder another user can enter or owns) would put
the master key's slot files and the vaults where others can list, replace or
pre-create them. crate refuses such a folder with exit 1 and a hint, and
leaves its mode as it was; a folder it creates itself is 0700.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.crate_runner import CrateRunner, assert_clean_error

pytestmark = pytest.mark.e2e


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("bits", [0o1777, 0o755, 0o750, 0o711])
def test_a_home_others_can_enter_is_refused_and_left_as_it_was(tmp_path: Path, bits: int) -> None:
    home = tmp_path / "shared"
    home.mkdir()
    home.chmod(bits)
    crate = CrateRunner(home)
    for args in (("secrets", "set", "A=value-1234"), ("run", "--", "true"), ("init",)):
        result = crate(*args)
        assert_clean_error(result, 1, hidden=("value-1234",))
        assert "open to other users" in result.stderr
        assert f"chmod 700 {home}" in result.stderr
    assert mode(home) == bits
    assert list(home.iterdir()) == []  # nothing was written there


def test_a_private_subfolder_opened_up_later_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    crate = CrateRunner(home)
    crate("secrets", "set", "A=value-1234", check=True)
    assert mode(home) == 0o700
    assert mode(home / "orgs") == 0o700
    (home / "orgs").chmod(0o777)
    result = crate("org", "create", "other")
    assert_clean_error(result, 1)
    assert f"{home / 'orgs'} is open to other users" in result.stderr
    assert mode(home / "orgs") == 0o777


def test_a_home_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a folder to another uid")
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)
    result = CrateRunner(home)("secrets", "list")
    assert_clean_error(result, 1)
    assert "belongs to another user (uid 65534)" in result.stderr


def test_a_new_home_and_its_parents_are_private(tmp_path: Path) -> None:
    home = tmp_path / "a" / "b" / "home"
    old = os.umask(0o022)
    try:
        CrateRunner(home)("secrets", "set", "A=1", check=True)
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", home, home / "orgs", home / "keys"):
        assert mode(folder) == 0o700, folder


def test_a_link_to_a_private_home_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """The link's owner could point it at a folder of theirs at any moment."""
    if os.getuid() != 0:
        pytest.skip("needs root to give a link to another uid")
    home = tmp_path / "mine"
    CrateRunner(home)("secrets", "set", "A=value-1234", check=True)
    link = tmp_path / "link"
    link.symlink_to(home)
    os.lchown(link, 65534, 65534)
    result = CrateRunner(link)("secrets", "get", "A")
    assert_clean_error(result, 1, hidden=("value-1234",))
    assert "is a symbolic link that belongs to another user (uid 65534)" in result.stderr
    mine = tmp_path / "my-link"
    mine.symlink_to(home)
    assert CrateRunner(mine)("secrets", "get", "A", check=True).stdout == "value-1234"
