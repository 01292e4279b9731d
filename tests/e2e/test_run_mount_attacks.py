"""End to end: `crate run --mount` against someone who wants the secrets.

crate opens the FIFO by its path for each reader. Whoever can rename files in
the mount's folder could put a FIFO of their own at the path, read it, and
get the secrets crate writes. So:

- crate writes only to the FIFO it placed at the path (its inode, the first
  and then each spare renamed over the path). These tests swap the path for
  a FIFO, a symlink to one and a plain file of their own, at the moment
  crate is about to open the path again, then read what they put there:
  nothing may arrive, crate must say so in one line (without a value), and it
  leaves what is not its own. This runs as any user.
- crate refuses a folder where another user could do that swap: one its
  group or everyone can write to without the sticky bit, or one another
  user owns. As root (CI), these tests also act as a second user (uid
  65534, from a forked child) to show that the refused folders would allow
  the swap and that a sticky /tmp-like folder, which is accepted, does not.
- A file mount updated by --watch is written only to a file crate creates:
  a symlink put at the path meanwhile does not redirect the update.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crate_cli.run.mount import own_private_group
from tests.support.crate_runner import CrateRunner, assert_clean_error
from tests.support.processes import Running, wait_for

pytestmark = pytest.mark.e2e

PYTHON = sys.executable
TOKEN = "mount-token-5d1c9a"
# More than a pipe holds (64 KiB), so that crate is still writing to the first
# reader while these tests swap the path.
BIG = {f"BIG_{i}": "x" * 60000 for i in range(4)}
NOBODY = 65534
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as a second user needs root (CI runs these tests as root)"
)

# argv: CONTROL [read]. Waits for CONTROL/done; with `read`, then prints the mount.
WAITER = """
import os, sys, time
control = sys.argv[1]
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(control, "done")) and time.monotonic() < deadline:
    time.sleep(0.02)
if sys.argv[2:] == ["read"]:
    with open(os.environ["CRATE_SECRETS_PATH"], "rb") as f:
        sys.stdout.write(f.read().decode())
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    """A home with TOKEN and BIG in personal/dev; tests must not change it."""
    base = tmp_path_factory.mktemp("mount-attacks")
    runner = CrateRunner(base / "home")
    big = base / "big.env"
    big.write_text("".join(f"{k}={v}\n" for k, v in BIG.items()))
    runner("secrets", "import", str(big), check=True)
    runner("secrets", "set", f"TOKEN={TOKEN}", check=True)
    return runner


@pytest.fixture(scope="module")
def content(home: CrateRunner) -> bytes:
    """What a reader of the mount gets."""
    fetched: str = home("secrets", "fetch", "--format", "json", check=True).stdout
    return fetched.encode()


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start crate in the background: background(runner, *args)."""
    started: list[Running] = []

    def start(runner: CrateRunner, *args: str) -> Running:
        running = Running(runner, list(args), tmp_path / f"crate-{len(started)}")
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir(mode=0o700)
    return path


def appears(path: Path, running: Running) -> Callable[[], bool]:
    """A condition for wait_for: `path` exists (crate must still run meanwhile)."""

    def check() -> bool:
        running.check_running()
        return os.path.lexists(path)

    return check


def start_waiter(
    background: Callable[..., Running], home: CrateRunner, path: Path, tmp_path: Path, *extra: str
) -> tuple[Running, Path]:
    """crate run --mount PATH EXTRA -- WAITER; (the run, the file that ends the command)."""
    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    running = background(
        home, "run", "--mount", str(path), *extra, "--", PYTHON, "-c", WAITER, str(control)
    )
    wait_for(appears(path, running), "the mount")
    return running, control / "done"


def replacement(kind: str, path: Path, aside: Path) -> Path:
    """A file of the attacker's at `path` (renamed over what is there); what to read."""
    catch = aside / "catch"
    new = path.with_name(".attacker")
    if kind == "fifo":
        os.mkfifo(new, 0o600)
        catch = path
    elif kind == "symlink":
        os.mkfifo(catch, 0o600)
        new.symlink_to(catch)
    else:
        new.write_bytes(b"")
        catch = path
    os.replace(new, path)
    return catch


def swap_notice(running: Running, path: Path) -> list[str]:
    return [line for line in running.stderr_lines if f"the mount at {path} was replaced" in line]


@pytest.mark.parametrize("kind", ["fifo", "symlink", "file"])
def test_a_spare_fifo_swapped_for_the_attackers_gets_nothing(
    home: CrateRunner,
    content: bytes,
    background: Callable[..., Running],
    tmp_path: Path,
    folder: Path,
    kind: str,
) -> None:
    """Between two readers: crate has put its spare FIFO at the path and is
    still writing to the first reader when the path is swapped. When crate
    opens the path for the next reader, it finds the attacker's file."""
    path = folder / "secrets"
    running, done = start_waiter(background, home, path, tmp_path)
    first = os.open(path, os.O_RDONLY)  # the first reader; crate writes to it
    caught = None
    try:
        wait_for(lambda: os.lstat(path).st_ino != os.fstat(first).st_ino, "crate's spare FIFO")
        catch = replacement(kind, path, tmp_path)
        attacker = path.lstat()
        if stat.S_ISFIFO(os.stat(catch).st_mode):
            # A reader waits there: crate's open of the path returns at once.
            caught = os.open(catch, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(first, "rb") as f:
            first = -1
            assert f.read() == content, "the first reader gets its copy, whole"
        got = b""
        deadline = time.monotonic() + 20
        while not swap_notice(running, path):
            running.check_running()
            assert time.monotonic() < deadline, f"crate never reported the swap: {running.stderr}"
            if caught is not None:
                with contextlib.suppress(BlockingIOError):
                    got += os.read(caught, 1 << 16)
            else:
                got = catch.read_bytes()
            assert got == b"", f"crate wrote {len(got)} bytes to a file it did not create"
            time.sleep(0.02)
        if caught is not None:
            # Nothing to read: an end of file, or (while crate still holds the
            # FIFO open) EAGAIN.
            with contextlib.suppress(BlockingIOError):
                got += os.read(caught, 1 << 16)
            assert got == b"", "crate wrote to a FIFO it did not create"
        else:
            assert catch.read_bytes() == b""
    finally:
        for fd in (first, caught):
            if fd is not None and fd >= 0:
                os.close(fd)
    done.touch()
    assert running.wait() == 0, running.stderr
    assert running.stderr_lines == [
        f"crate: the mount at {path} was replaced by a file crate did not create; crate wrote "
        "nothing to it, stopped serving the mount and left that file there"
    ]
    assert TOKEN not in running.stderr
    # crate left the attacker's file, and nothing of its own.
    assert os.listdir(folder) == ["secrets"]
    assert (path.lstat().st_ino, path.lstat().st_mode) == (attacker.st_ino, attacker.st_mode)


def test_a_fifo_swapped_while_crate_waits_for_a_reader_is_left_alone(
    home: CrateRunner, background: Callable[..., Running], tmp_path: Path, folder: Path
) -> None:
    """crate waits on its own FIFO, which the swap unnamed: it writes nothing
    anywhere, and at the end leaves (and reports) the attacker's FIFO instead
    of opening and removing it."""
    path = folder / "secrets"
    running, done = start_waiter(background, home, path, tmp_path)
    replacement("fifo", path, tmp_path)
    attacker = path.lstat()
    caught = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        time.sleep(0.3)
        assert os.read(caught, 1 << 16) == b""
        done.touch()
        assert running.wait() == 0, running.stderr
        assert os.read(caught, 1 << 16) == b""
    finally:
        os.close(caught)
    assert len(swap_notice(running, path)) == 1, running.stderr
    assert len(running.stderr_lines) == 1, running.stderr
    assert os.listdir(folder) == ["secrets"]
    assert path.lstat().st_ino == attacker.st_ino


# -- --watch and a file mount ----------------------------------------------------------


def test_a_watch_update_of_a_file_mount_is_not_redirected(
    crate: CrateRunner, background: Callable[..., Running], tmp_path: Path, folder: Path
) -> None:
    """A symlink renamed over the file before an update: the update replaces
    the symlink with a new file of crate's, and the symlink's target gets
    nothing."""
    crate("secrets", "set", "WATCHED=value-one-6a2f", check=True)
    path = folder / "secrets"
    running, done = start_waiter(
        background, crate, path, tmp_path, "--mount-mode", "file", "--watch"
    )
    catch = tmp_path / "catch"
    catch.write_bytes(b"")
    link = folder / ".link"
    link.symlink_to(catch)
    os.replace(link, path)
    crate("secrets", "set", "WATCHED=value-two-6a2f", check=True)

    def restarted() -> bool:
        running.check_running()
        return "restarting the command" in running.stderr

    wait_for(restarted, "the restart")
    assert catch.read_bytes() == b""
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert json.loads(path.read_text())["WATCHED"] == "value-two-6a2f"
    done.touch()
    assert running.wait() == 0, running.stderr
    assert not os.path.lexists(path)
    assert "value-" not in running.stderr


# -- the mount's folder ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fifo", "file"])
@pytest.mark.parametrize(
    ("permissions", "who"),
    [(0o777, "every user"), (0o703, "every user"), (0o770, "its group")],
    ids=["0777", "0703", "0770"],
)
def test_a_folder_others_can_write_to_without_the_sticky_bit_is_refused(
    home: CrateRunner, tmp_path: Path, folder: Path, mode: str, permissions: int, who: str
) -> None:
    folder.chmod(permissions)
    if who == "its group" and own_private_group(folder.stat().st_gid):
        # The user's private group is no one else's: give the folder a shared one.
        if os.geteuid() != 0:
            pytest.skip("needs root to give the folder a group shared with others")
        os.chown(folder, -1, NOBODY)
    path = folder / "secrets"
    marker = tmp_path / "ran"
    done = home("run", "--mount", str(path), "--mount-mode", mode, "--", "touch", str(marker))
    assert_clean_error(done, 2, hidden=(TOKEN,))
    message, hint = done.stderr.splitlines()
    assert message == (
        f"crate: error: cannot mount the secrets at {path}: {who} can write to its folder "
        f"{folder} (mode {permissions:04o}, no sticky bit), so another user could replace "
        "the mount with a file of their own"
    )
    assert f"chmod go-w {folder}" in hint and "sticky bit" in hint
    assert not marker.exists()
    assert os.listdir(folder) == []


def test_a_folder_writable_by_the_usersown_private_group_is_accepted(
    home: CrateRunner, content: bytes, folder: Path
) -> None:
    """Debian and Ubuntu give each user a private group, and with umask 002 a
    project folder is 0775: its group is the user alone, so it is accepted."""
    if not own_private_group(folder.stat().st_gid):
        pytest.skip("the folder's group is not this user's private group here")
    folder.chmod(0o775)
    path = folder / "secrets"
    done = home("run", "--mount", str(path), "--", "cat", str(path))
    assert done.returncode == 0, done
    assert done.stdout.encode() == content


@pytest.mark.parametrize("mode", ["fifo", "file"])
@pytest.mark.parametrize("permissions", [0o1777, 0o1770])
def test_a_sticky_folder_is_accepted(
    home: CrateRunner, content: bytes, tmp_path: Path, folder: Path, mode: str, permissions: int
) -> None:
    folder.chmod(permissions)
    path = folder / "secrets"
    script = 'cat "$CRATE_SECRETS_PATH"'
    done = home("run", "--mount", str(path), "--mount-mode", mode, "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.encode() == content
    assert os.listdir(folder) == []


# -- as a second user (root only) ---------------------------------------------------------


def as_user(uid: int, actions: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Run each action in a child forked as `uid` (and its group): "ok", or the
    errno name it failed with."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest beyond this point
        code = 70
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            results = {}
            for name, action in actions.items():
                try:
                    action()
                    results[name] = "ok"
                except OSError as e:
                    results[name] = errno.errorcode.get(e.errno or 0, str(e.errno))
            os.write(write, json.dumps(results).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the second user's child failed"
    return dict(json.loads(data))


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder that a second user can reach (tmp_path's parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="crate-mount-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@as_root
@pytest.mark.parametrize(
    ("owner", "group", "permissions", "why"),
    [
        (NOBODY, 0, 0o755, f"its folder {{folder}} belongs to another user (uid {NOBODY})"),
        (NOBODY, 0, 0o1777, f"its folder {{folder}} belongs to another user (uid {NOBODY})"),
        (0, 0, 0o777, "every user can write to its folder {folder} (mode 0777, no sticky bit)"),
        (0, NOBODY, 0o775, "its group can write to its folder {folder} (mode 0775, no sticky bit)"),
    ],
    ids=["owned-by-another", "owned-by-another-sticky", "world-writable", "group-writable"],
)
def test_a_folder_where_another_user_could_swap_the_mount_is_refused(
    home: CrateRunner, shared: Path, owner: int, group: int, permissions: int, why: str
) -> None:
    """The second user can indeed replace root's file in each of these
    folders; crate refuses to mount there."""
    folder = shared / "mnt"
    folder.mkdir()
    os.chown(folder, owner, group)
    folder.chmod(permissions)
    victim = folder / "roots-file"
    victim.write_bytes(b"")
    fifo = folder / "attackers-fifo"

    def swap() -> None:
        os.mkfifo(fifo, 0o600)
        os.replace(fifo, victim)

    assert as_user(NOBODY, {"swap": swap}) == {"swap": "ok"}, "the folder is not what it seems"
    victim.unlink()
    path = folder / "secrets"
    done = home("run", "--mount", str(path), "--", "true")
    assert_clean_error(done, 2, hidden=(TOKEN,))
    assert why.format(folder=folder) in done.stderr
    assert os.listdir(folder) == []


@as_root
def test_in_a_sticky_folder_another_user_cannot_touch_the_mount(
    home: CrateRunner,
    content: bytes,
    background: Callable[..., Running],
    tmp_path: Path,
    shared: Path,
) -> None:
    """/tmp-like (root's, 1777): accepted, and the second user can neither
    replace, move, remove nor read crate's FIFO; the command reads the secrets."""
    folder = shared / "tmp"
    folder.mkdir()
    folder.chmod(0o1777)
    path = folder / "secrets"
    control = tmp_path / "control"
    control.mkdir()
    running = background(
        home, "run", "--mount", str(path), "--", PYTHON, "-c", WAITER, str(control), "read"
    )
    wait_for(appears(path, running), "the mount")
    fifo = folder / "attackers-fifo"
    results = as_user(
        NOBODY,
        {
            "make": lambda: os.mkfifo(fifo, 0o666),
            "replace": lambda: os.replace(fifo, path),
            "move": lambda: os.rename(path, folder / "moved"),
            "remove": lambda: os.unlink(path),
            "read": lambda: os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK)),
        },
    )
    assert results == {
        "make": "ok",
        "replace": "EPERM",
        "move": "EPERM",
        "remove": "EPERM",
        "read": "EACCES",
    }
    (control / "done").touch()
    assert running.wait() == 0, running.stderr
    assert running.stdout_path.read_bytes() == content
    assert running.stderr == ""
    assert sorted(os.listdir(folder)) == ["attackers-fifo"]
