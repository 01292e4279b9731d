"""The mount (crate_cli.run.mount.Mount) against a path swapped as crate makes it.

tests/e2e/test_run_mount_attacks.py swaps the path between two readers, as
an attacker can time it from outside. The window between crate's mkfifo and
its first look at what it made is too short to hit from outside, so here the
swap happens inside it: os.mkfifo makes the real FIFO, then a real FIFO (or
symlink) of the "attacker" is renamed over it, and Mount must refuse, with
nothing written anywhere and the attacker's file left in place.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_cli.errors import CrateError, InvalidInput
from crate_cli.run.mount import Mount

CONTENT = b'{"TOKEN": "unit-mount-token-3b7e"}\n'
NOBODY = 65534
REAL_MKFIFO = os.mkfifo


def swapping_mkfifo(monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], None]) -> list[Path]:
    """os.mkfifo that, once it has made the FIFO, puts `make(new)` over it."""
    swapped: list[Path] = []

    def mkfifo(path: os.PathLike[str] | str, mode: int = 0o666, **kwargs: object) -> None:
        REAL_MKFIFO(path, mode)
        new = Path(path).with_name(".attacker")
        make(new)
        os.replace(new, path)
        swapped.append(Path(path))

    monkeypatch.setattr(os, "mkfifo", mkfifo)
    return swapped


def test_a_symlink_put_over_the_new_fifo_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    target = tmp_path / "catch"
    REAL_MKFIFO(target, 0o600)
    reader = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    swapped = swapping_mkfifo(monkeypatch, lambda new: new.symlink_to(target))
    path = tmp_path / "mnt" / "secrets"
    path.parent.mkdir(mode=0o700)
    try:
        with pytest.raises(CrateError) as caught:
            Mount(str(path), CONTENT, "fifo", None)
        assert os.read(reader, 1 << 16) == b""
    finally:
        os.close(reader)
    assert swapped == [path]
    assert caught.value.message == (
        f"cannot mount the secrets at {path}: something replaced the pipe as crate made it; "
        "nothing was written to it"
    )
    assert path.is_symlink(), "the attacker's file is left alone"


@pytest.mark.skipif(os.geteuid() != 0, reason="a FIFO of another user needs root to chown")
def test_a_fifo_of_another_user_put_over_the_new_fifo_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def make(new: Path) -> None:
        REAL_MKFIFO(new, 0o666)
        os.chown(new, NOBODY, NOBODY)

    swapped = swapping_mkfifo(monkeypatch, make)
    path = tmp_path / "secrets"
    with pytest.raises(CrateError, match="something replaced the pipe"):
        Mount(str(path), CONTENT, "fifo", None)
    assert swapped == [path]
    st = path.lstat()
    assert stat.S_ISFIFO(st.st_mode) and st.st_uid == NOBODY


def test_the_mount_is_crates_own_fifo_when_nothing_interferes(tmp_path: Path) -> None:
    """The control: the same path, no swap, is served and removed."""
    path = tmp_path / "secrets"
    mount = Mount(str(path), CONTENT, "fifo", None)
    try:
        st = path.lstat()
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        with path.open("rb") as f:
            assert f.read() == CONTENT
    finally:
        mount.close()
    assert not os.path.lexists(path)


@pytest.mark.parametrize("mode", ["fifo", "file"])
def test_a_folder_path_through_a_symlink_is_judged_by_the_folder_it_leads_to(
    tmp_path: Path, mode: str
) -> None:
    """`--mount link/secrets`, link -> a world-writable folder: refused."""
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(open_folder)
    with pytest.raises(InvalidInput, match=r"every user can write to its folder"):
        Mount(str(link / "secrets"), CONTENT, mode, None)
    assert os.listdir(open_folder) == []
