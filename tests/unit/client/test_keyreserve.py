"""The reserve of ephemeral RSA keys (crate_cli.client.keyreserve), in process.

What is tested: the reserve file format (dump_key/parse_key); refill() filling
a private folder with TARGET keys and take() handing each out once; the files
take() refuses and removes (expired, readable by others, symlinks, garbage);
a folder others can enter, or CRATE_KEY_RESERVE=off, meaning no reserve; the
refill lock; the stale files refill() cleans; and takers in concurrent
processes never getting the same key. Real files in a private folder under
/dev/shm (XDG_RUNTIME_DIR), real keys, real processes: no mocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from crate_cli.client import keyreserve

BITS = 2048


@pytest.fixture
def runtime_dir(memory_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_RUNTIME_DIR of this test's own, in memory: the reserve is isolated."""
    run = memory_dir
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.delenv("CRATE_KEY_RESERVE", raising=False)
    return run


@pytest.fixture
def reserve(runtime_dir: Path) -> Path:
    """The reserve's folder (not created yet)."""
    folder = runtime_dir / "crate-keys"
    assert keyreserve.reserve_dir() == str(folder)
    return folder


@pytest.fixture(scope="module")
def spare_keys() -> list[Any]:
    """Keys for files a test writes itself (made once: key generation is slow)."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=BITS) for _ in range(2)]


def modulus(key: Any) -> int:
    return int(key.public_key().public_numbers().n)


def key_names(folder: Path) -> set[str]:
    return {n for n in os.listdir(folder) if n.startswith(f"rsa{BITS}-") and n.endswith(".key")}


@pytest.fixture(autouse=True)
def three_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reserve of three keys (crate keeps more): quicker to fill, and the
    tests below count them."""
    monkeypatch.setattr(keyreserve, "TARGET", 3)


def make_reserve(folder: Path) -> None:
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)


def put_key(folder: Path, name: str, data: bytes, *, mode: int = 0o600, age: float = 0.0) -> Path:
    """A reserve file as the refill writes it, or with the given mode and age."""
    path = folder / name
    path.write_bytes(data)
    path.chmod(mode)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def file_moduli(folder: Path) -> dict[str, int]:
    """Each key file's name and its key's modulus."""
    found: dict[str, int] = {}
    for name in key_names(folder):
        key = keyreserve.parse_key((folder / name).read_bytes(), BITS)
        assert key is not None, name
        found[name] = modulus(key)
    return found


# -- the file format --------------------------------------------------------------


def test_dump_and_parse_round_trip(spare_keys: list[Any]) -> None:
    key = spare_keys[0]
    data = keyreserve.dump_key(key)
    fields = json.loads(data)
    assert fields["v"] == 1
    assert set(fields) == {"v", "p", "q", "d", "e"}
    parsed = keyreserve.parse_key(data, BITS)
    assert parsed is not None
    assert parsed.private_numbers() == key.private_numbers()
    assert parsed.key_size == BITS


def _edited(key: Any, **changes: Any) -> bytes:
    fields = json.loads(keyreserve.dump_key(key))
    for name, value in changes.items():
        if value is None:
            del fields[name]
        else:
            fields[name] = value
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "case",
    [
        "wrong-size",
        "v2",
        "v0",
        "v-string",
        "v-true",
        "v-float",
        "no-v",
        "e3",
        "no-p",
        "no-d",
        "p-not-hex",
        "garbage",
        "empty",
        "not-utf8",
        "json-list",
        "json-string",
    ],
)
def test_parse_rejects(spare_keys: list[Any], case: str) -> None:
    key = spare_keys[0]
    bits = BITS
    data = {
        "wrong-size": keyreserve.dump_key(key),
        "v2": _edited(key, v=2),
        "v0": _edited(key, v=0),
        "v-string": _edited(key, v="1"),
        "v-true": _edited(key, v=True),
        "v-float": _edited(key, v=1.0),
        "no-v": _edited(key, v=None),
        "e3": _edited(key, e="3"),
        "no-p": _edited(key, p=None),
        "no-d": _edited(key, d=None),
        "p-not-hex": _edited(key, p="xyz"),
        "garbage": b"\x00\x01garbage{]",
        "empty": b"",
        "not-utf8": b'{"v": 1, "p": "\xff\xfe"}',
        "json-list": b"[1, 2, 3]",
        "json-string": b'"rsa"',
    }[case]
    if case == "wrong-size":
        bits = 4096
    assert keyreserve.parse_key(data, bits) is None


# -- refill and take --------------------------------------------------------------


def test_refill_then_take_hands_out_each_key_once(reserve: Path) -> None:
    assert keyreserve.refill(BITS) == keyreserve.TARGET == 3
    assert stat.S_IMODE(reserve.stat().st_mode) == 0o700
    names = key_names(reserve)
    assert len(names) == 3
    for name in names:
        st = (reserve / name).lstat()
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    assert not [n for n in os.listdir(reserve) if n.startswith(".partial-")]
    assert keyreserve.refill(BITS) == 0  # full already: makes nothing
    assert key_names(reserve) == names

    before = file_moduli(reserve)
    assert len(set(before.values())) == 3
    key = keyreserve.take(BITS)
    assert key is not None
    assert key.key_size == BITS
    taken = [name for name, n in before.items() if n == modulus(key)]
    assert len(taken) == 1
    assert key_names(reserve) == names - set(taken)  # that file, and only it, is gone

    seen = {modulus(key)}
    for _ in range(2):
        key = keyreserve.take(BITS)
        assert key is not None
        seen.add(modulus(key))
    assert seen == set(before.values())  # three distinct keys, the three files'
    assert keyreserve.take(BITS) is None
    assert sorted(os.listdir(reserve)) == [".lock"]  # no claimed leftovers


def test_take_of_another_size_leaves_the_keys(reserve: Path, spare_keys: list[Any]) -> None:
    make_reserve(reserve)
    put_key(reserve, f"rsa{BITS}-aa.key", keyreserve.dump_key(spare_keys[0]))
    assert keyreserve.take(4096) is None
    assert key_names(reserve) == {f"rsa{BITS}-aa.key"}


def test_take_without_a_reserve_folder_is_none(reserve: Path) -> None:
    assert keyreserve.take(BITS) is None
    assert not reserve.exists()


# -- files take() refuses -----------------------------------------------------------


def test_expired_key_is_removed_not_used(reserve: Path, spare_keys: list[Any]) -> None:
    make_reserve(reserve)
    old = put_key(reserve, f"rsa{BITS}-old.key", keyreserve.dump_key(spare_keys[0]), age=7200)
    assert keyreserve.take(BITS) is None
    assert not old.exists()
    assert os.listdir(reserve) == []


def test_key_readable_by_others_is_removed_not_used(reserve: Path, spare_keys: list[Any]) -> None:
    make_reserve(reserve)
    shared = put_key(reserve, f"rsa{BITS}-shared.key", keyreserve.dump_key(spare_keys[0]))
    shared.chmod(0o644)
    assert keyreserve.take(BITS) is None
    assert not shared.exists()
    assert os.listdir(reserve) == []


def test_symlink_to_a_key_is_not_followed(
    reserve: Path, tmp_path: Path, spare_keys: list[Any]
) -> None:
    make_reserve(reserve)
    data = keyreserve.dump_key(spare_keys[0])
    target = put_key(tmp_path, "elsewhere.key", data)
    link = reserve / f"rsa{BITS}-link.key"
    link.symlink_to(target)
    assert keyreserve.take(BITS) is None
    assert not os.path.lexists(link)
    assert os.listdir(reserve) == []
    assert target.read_bytes() == data  # the target survives, unchanged


@pytest.mark.parametrize("garbage", [b"\x00not a key", b'{"v": 2}'], ids=["bytes", "json"])
def test_garbage_is_removed_and_a_good_key_after_it_is_used(
    reserve: Path, spare_keys: list[Any], garbage: bytes
) -> None:
    make_reserve(reserve)
    for name in (f"rsa{BITS}-1111.key", f"rsa{BITS}-2222.key"):
        put_key(reserve, name, b"")
    # take() tries the files in listdir order: the garbage goes in the first one.
    first, second = os.listdir(reserve)
    for name, content in ((first, garbage), (second, keyreserve.dump_key(spare_keys[1]))):
        with open(reserve / name, "r+b") as f:  # in place: the order stays
            f.write(content)
    assert os.listdir(reserve) == [first, second]

    key = keyreserve.take(BITS)
    assert key is not None
    assert modulus(key) == modulus(spare_keys[1])
    assert os.listdir(reserve) == []  # the garbage is gone too


# -- no reserve ---------------------------------------------------------------------


def test_folder_others_can_enter_is_not_used(reserve: Path, spare_keys: list[Any]) -> None:
    make_reserve(reserve)
    names = {f"rsa{BITS}-aaaa.key", f"rsa{BITS}-bbbb.key"}
    data = keyreserve.dump_key(spare_keys[0])
    for name in names:
        put_key(reserve, name, data)
    reserve.chmod(0o755)
    assert keyreserve.take(BITS) is None
    assert keyreserve.refill(BITS) == 0
    assert set(os.listdir(reserve)) == names  # left alone: no lock, no new keys
    for name in names:
        assert (reserve / name).read_bytes() == data


@pytest.mark.parametrize("value", ["0", "off", "OFF", " no ", "false", "False"])
def test_reserve_turned_off(
    reserve: Path, spare_keys: list[Any], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    make_reserve(reserve)
    kept = put_key(reserve, f"rsa{BITS}-kept.key", keyreserve.dump_key(spare_keys[0]))
    monkeypatch.setenv("CRATE_KEY_RESERVE", value)
    assert keyreserve.reserve_dir() is None
    assert keyreserve.take(BITS) is None
    assert kept.exists()
    assert not keyreserve.needs_refill()
    kept.unlink()
    reserve.rmdir()
    assert keyreserve.refill(BITS) == 0
    assert not reserve.exists()


@pytest.mark.parametrize("value", ["1", "on", "yes", ""])
def test_reserve_on_values(runtime_dir: Path, value: str) -> None:
    environ = {"XDG_RUNTIME_DIR": str(runtime_dir), "CRATE_KEY_RESERVE": value}
    assert keyreserve.reserve_dir(environ) == str(runtime_dir / "crate-keys")


def test_runtime_dir_that_is_not_private_is_not_used(memory_dir: Path) -> None:
    shared = memory_dir / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    private = memory_dir / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    link = memory_dir / "link"
    link.symlink_to(private)
    fallback = keyreserve.reserve_dir({})
    if sys.platform.startswith("linux") and os.path.isdir("/dev/shm"):
        assert fallback == f"/dev/shm/crate-keys-{os.getuid()}"
    for runtime in (str(shared), str(link), "relative/xdg", str(memory_dir / "missing")):
        assert keyreserve.reserve_dir({"XDG_RUNTIME_DIR": runtime}) == fallback
    assert keyreserve.reserve_dir({"XDG_RUNTIME_DIR": str(private)}) == str(private / "crate-keys")


def test_runtime_dir_on_a_disk_is_not_used(tmp_path: Path, memory_dir: Path) -> None:
    """A private XDG_RUNTIME_DIR on a disk (tmp_path here) would put keys on that
    disk: the reserve moves to /dev/shm, and nothing is written on the disk."""
    on_disk = tmp_path / "xdg"
    on_disk.mkdir(mode=0o700)
    on_disk.chmod(0o700)
    if keyreserve.in_memory(str(on_disk)):
        pytest.skip("tmp_path is on a tmpfs here")
    environ = {"XDG_RUNTIME_DIR": str(on_disk)}
    assert keyreserve.reserve_dir(environ) == f"/dev/shm/crate-keys-{os.getuid()}"
    assert keyreserve.reserve_dir({"XDG_RUNTIME_DIR": str(memory_dir)}) == str(
        memory_dir / "crate-keys"
    )


MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
25 22 0:21 / /dev rw,nosuid - devtmpfs udev rw
26 25 0:22 / /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw
40 22 0:30 / /run/user/1000 rw,nosuid - tmpfs tmpfs rw,mode=700
41 22 0:31 / /mnt/my\\040disk rw - ext4 /dev/vdb rw
42 22 0:32 / /mnt/stack rw - tmpfs tmpfs rw
43 42 0:33 / /mnt/stack rw - ext4 /dev/vdc rw
44 22 0:34 / /srv/ram rw - ramfs ramfs rw
"""


@pytest.mark.parametrize(
    ("path", "memory"),
    [
        ("/dev/shm", True),
        ("/dev/shm/crate-keys-0", True),
        ("/dev/shmx", False),  # a sibling whose name starts the same
        ("/dev", False),
        ("/run/user/1000", True),
        ("/run/user/10000", False),
        ("/mnt/my disk/x", False),
        ("/mnt/stack/x", False),  # a disk mounted over a tmpfs: the disk counts
        ("/srv/ram/keys", True),
        ("/home/user", False),
    ],
)
def test_in_memory_reads_the_mount_that_holds_the_path(
    tmp_path: Path, path: str, memory: bool
) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    assert keyreserve.in_memory(path, str(table)) is memory
    assert keyreserve.in_memory(path, str(tmp_path / "none")) is False


# -- refill's lock and its cleaning -----------------------------------------------------


def test_refill_returns_at_once_while_another_holds_the_lock(reserve: Path) -> None:
    make_reserve(reserve)
    made: list[int] = []
    # In a thread: a refill that waited for the lock would hang the test.
    refilling = threading.Thread(target=lambda: made.append(keyreserve.refill(BITS)))
    holder = os.open(reserve / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # flock belongs to the open file description: a second open, even in
        # this process, conflicts with it (what refill() meets here).
        other = os.open(reserve / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
        refilling.start()
        refilling.join(timeout=5)
        assert not refilling.is_alive(), "refill waits for the lock"
        assert made == [0]
        assert key_names(reserve) == set()
    finally:
        os.close(holder)  # lets a waiting refill go: the thread ends
        if refilling.ident is not None:
            refilling.join(timeout=30)
    assert keyreserve.refill(BITS) == 3  # the lock was all that stopped it


def test_needs_refill_while_short_of_keys_and_no_refill_runs(reserve: Path) -> None:
    assert keyreserve.needs_refill()  # no folder yet
    make_reserve(reserve)
    assert keyreserve.needs_refill()  # no lock file yet
    holder = os.open(reserve / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert not keyreserve.needs_refill()  # a refill is at work
    finally:
        os.close(holder)
    assert keyreserve.needs_refill()  # the holder let go
    assert keyreserve.needs_refill()  # and so did the probe of the call before
    assert keyreserve.refill(BITS) == 3
    assert not keyreserve.needs_refill()
    assert keyreserve.take(BITS) is not None
    assert keyreserve.needs_refill()


def test_no_refill_for_a_folder_others_can_enter(reserve: Path) -> None:
    """A reserve that take() would refuse is not worth a refill process per command."""
    make_reserve(reserve)
    reserve.chmod(0o755)
    assert not keyreserve.needs_refill()
    reserve.chmod(0o700)
    assert keyreserve.needs_refill()


def test_keys_of_every_size_count_and_any_size_can_be_taken(reserve: Path) -> None:
    """The reserve holds the size the home's setting asks for; before the setting
    is read, crate takes a key of any size (and checks the size later)."""
    assert keyreserve.refill(BITS) == 3
    assert keyreserve.refill(3072) == 0  # three keys are enough, whatever their size
    key = keyreserve.take(None)
    assert key is not None and key.key_size == BITS
    assert keyreserve.take(3072) is None


def test_key_files_from_the_future_are_removed_by_a_refill(reserve: Path) -> None:
    """A clock set back must not leave keys that refill counts and take() refuses."""
    assert keyreserve.refill(BITS) == 3
    ahead = time.time() + 3 * 3600
    for name in key_names(reserve):
        os.utime(reserve / name, (ahead, ahead))
    assert keyreserve.refill(BITS) == 3
    assert keyreserve.take(BITS) is not None


def test_refill_removes_stale_files_and_keeps_fresh_ones(
    reserve: Path, spare_keys: list[Any]
) -> None:
    make_reserve(reserve)
    partial_old = put_key(reserve, ".partial-x", b"half a key", age=120)
    taken_old = put_key(reserve, f"rsa{BITS}-x.key.123.taken", b"claimed", age=120)
    expired = put_key(
        reserve, f"rsa{BITS}-expired.key", keyreserve.dump_key(spare_keys[0]), age=7200
    )
    partial_new = put_key(reserve, ".partial-y", b"being written")
    assert keyreserve.refill(BITS) == 3  # the expired key does not count
    assert not partial_old.exists()
    assert not taken_old.exists()
    assert not expired.exists()
    assert partial_new.read_bytes() == b"being written"
    assert len(key_names(reserve)) == 3


# -- concurrent takers ---------------------------------------------------------------

TAKER = """
import sys
from crate_cli.client import keyreserve
print("ready", flush=True)
sys.stdin.readline()
key = keyreserve.take(2048)
print("none" if key is None else format(key.public_key().public_numbers().n, "x"), flush=True)
"""


def test_concurrent_takers_never_share_a_key(reserve: Path) -> None:
    assert keyreserve.refill(BITS) == 3
    in_reserve = {format(n, "x") for n in file_moduli(reserve).values()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TAKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        for proc in procs:  # all imported and waiting: then they go at once
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=30)[0].strip() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0] * 6
    moduli = [r for r in results if r != "none"]
    assert len(moduli) == 3, results
    assert len(set(moduli)) == 3, results
    assert set(moduli) == in_reserve
    assert sorted(os.listdir(reserve)) == [".lock"]
