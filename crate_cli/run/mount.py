"""`crate run --mount PATH`: the secrets as a file for the command to read.

Two modes:

- `fifo` (the default): a named pipe (0600). crate writes the rendered
  secrets each time a reader opens it, so nothing is ever written to disk;
  `--mount-max-reads N` removes it after N reads.
- `file`: a 0600 regular file, for programs that cannot read a pipe (they
  seek, or stat the size first).

Either way the path is created by crate (an existing path is refused, never
overwritten) and removed when the command ends, however it ends: crate stays
its parent to do that. Only a SIGKILL of crate itself can leave it behind,
and then a FIFO holds nothing.

crate writes the secrets only to a file it created itself:

- The folder must be one where no other user can replace the mount: owned
  by the user (or root), and not writable by others unless it has the
  sticky bit (as /tmp has), which keeps them from renaming or removing a
  file they do not own. Anything else is refused before a file is made.
- A FIFO is opened by its path each time a reader comes, so crate records
  the inode of each FIFO it places at the path (the first, then each spare
  renamed over it) and checks the descriptor it opened against it (and that
  it is a FIFO of crate's user) before writing. Something else there (a FIFO
  someone renamed over the path to catch the secrets) gets nothing: crate
  closes it, says so in one line and stops serving the mount.
- A file (and each update of it under --watch) is written through the
  descriptor that created it (O_EXCL, O_NOFOLLOW), then renamed into place:
  the content cannot be sent anywhere else.

At the end crate removes the path only if what is there is still its own.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from crate_cli.errors import Conflict, CrateError, InvalidInput
from crate_cli.threads import start_thread

Inode = tuple[int, int]  # (st_dev, st_ino)


class Replaced(Exception):
    """What crate expected at a path is no longer there."""


class Mount:
    """A mounted secrets file at `path` (`mode` fifo or file); `close()` removes it.

    The options are checked by args.check_run_args. `notice` says one line
    on stderr (the supervisor sets its own, which knows about raw terminals).
    """

    def __init__(self, path: str, content: bytes, mode: str, max_reads: int | None) -> None:
        self.path = Path(path).absolute()
        self.mode = mode
        self.max_reads = max_reads
        self.reads = 0
        self.notice: Callable[[str], None] = _notice
        self._content = content
        self._closed = threading.Event()
        self._lock = threading.Lock()
        # The inode crate last placed at the path: only that one is written to
        # (fifo) or removed at the end.
        self._placed: Inode | None = None
        self._reported = False
        self._create()

    def _create(self) -> None:
        folder = self.path.parent
        try:
            st = os.stat(folder)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise InvalidInput(
                f"cannot mount the secrets at {self.path}: its folder does not exist"
            )
        check_folder(self.path, folder, st)
        try:
            if self.mode == "fifo":
                self._placed = self._make_fifo(self.path)
            else:
                self._placed = _create_private(self.path, self._content)
        except FileExistsError:
            raise Conflict(
                f"cannot mount the secrets at {self.path}: something is already there",
                "choose another path; crate never overwrites a file with secrets",
            ) from None
        except Replaced:
            raise CrateError(
                f"cannot mount the secrets at {self.path}: something replaced the pipe as "
                "crate made it; nothing was written to it"
            ) from None
        except OSError as e:
            raise CrateError(f"cannot mount the secrets at {self.path}: {e.strerror}") from None
        if self.mode == "fifo":
            start_thread(self._serve, name="crate-mount")

    def _make_fifo(self, path: Path) -> Inode:
        """A new FIFO at `path`, 0600 whatever the umask; its inode.

        Raises FileExistsError if `path` exists, Replaced if what is there just
        after is not a FIFO of crate's user (someone swapped it meanwhile).
        """
        os.mkfifo(path, 0o600)
        # Its inode and mode through a descriptor: by path, chmod would follow
        # a symlink put there meanwhile. Opening the read end without waiting
        # lets no writer through (the pipe is new; nobody has it open).
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            raise Replaced from None
        try:
            st = os.fstat(fd)
            if not _crates_fifo(st):
                raise Replaced
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        return st.st_dev, st.st_ino

    def _serve(self) -> None:
        """Write the content to each reader of the FIFO, until closed or N reads.

        A reader holds the pipe open until it has read to the end, and while it
        does, opening the pipe again would succeed at once and feed it twice.
        So each reader gets its own pipe: as soon as one opens, a fresh FIFO is
        renamed over the path for the next, and the first reads its copy from
        the pipe it opened (rename keeps the path present at every instant).

        The path is opened anew for each reader: what was opened is written to
        only if it is the FIFO crate placed there last (see the module
        docstring).
        """
        spare = self.path.with_name(f".{self.path.name}.{os.urandom(8).hex()}.fifo")
        while not self._closed.is_set():
            try:
                # Waits for a reader. O_NOFOLLOW: a symlink there is not crate's.
                fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                return  # removed (by close(), or by the command: nothing to serve)
            except OSError:
                with self._lock:
                    self._report_replaced()  # a symlink, a socket: not crate's
                return
            try:
                if not self._is_placed(os.fstat(fd)):
                    with self._lock:
                        self._report_replaced()
                    return
                # Under the lock: close() must not remove the path between the
                # two steps, or the spare would come back in its place.
                with self._lock:
                    if self._closed.is_set():
                        return
                    try:
                        placed = self._make_fifo(spare)
                    except Replaced:  # the spare: left alone, as it is not crate's
                        self._report_replaced()
                        return
                    except OSError:
                        return
                    try:
                        os.replace(spare, self.path)
                    except OSError:
                        with contextlib.suppress(OSError):
                            spare.unlink()
                        return
                    self._placed = placed
                    content = self._content
                with contextlib.suppress(BrokenPipeError):  # the reader stopped early
                    write_all(fd, content)
            finally:
                os.close(fd)
            self.reads += 1
            if self.max_reads is not None and self.reads >= self.max_reads:
                self.close()
                return

    def _is_placed(self, st: os.stat_result) -> bool:
        """Whether `st` is the file crate last placed at the path."""
        kind = stat.S_ISFIFO if self.mode == "fifo" else stat.S_ISREG
        return (
            kind(st.st_mode)
            and st.st_uid == os.geteuid()
            and (st.st_dev, st.st_ino) == self._placed
        )

    def _report_replaced(self) -> None:
        """Say once that the mount holds a file crate did not create (called
        with the lock held, so that _serve and close() say it once between them)."""
        if self._reported:
            return
        self._reported = True
        self.notice(
            f"the mount at {self.path} was replaced by a file crate did not create; "
            "crate wrote nothing to it, stopped serving the mount and left that file there"
        )

    def update(self, content: bytes) -> None:
        """New content for the next read (crate run --watch)."""
        with self._lock:
            self._content = content
        if self.mode == "file" and not self._closed.is_set():
            temp = self.path.with_name(f".{self.path.name}.{os.urandom(8).hex()}.tmp")
            try:
                placed = _create_private(temp, content)
                os.replace(temp, self.path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            with self._lock:
                self._placed = placed

    def close(self) -> None:
        """Remove the path; a FIFO writer waiting for a reader is released, and
        so is a reader waiting for a writer (it reads an empty file). A path
        that holds something crate did not place there is left alone."""
        with self._lock:  # not while _serve swaps in a fresh FIFO
            if self._closed.is_set():
                return
            self._closed.set()
            try:
                st = os.lstat(self.path)
            except OSError:
                return  # already gone (the command removed it)
            if not self._is_placed(st):
                self._report_replaced()
                return
            waiting = None
            if self.mode == "fifo":
                flags = os.O_NONBLOCK | os.O_NOFOLLOW
                with contextlib.suppress(OSError):
                    # Opening the read end lets the writer's open() return.
                    waiting = os.open(self.path, os.O_RDONLY | flags)
                with contextlib.suppress(OSError):
                    # A reader that opened the pipe while _serve was busy with
                    # another (or after the last of --mount-max-reads) would
                    # wait forever: give it an end of file.
                    os.close(os.open(self.path, os.O_WRONLY | flags))
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if waiting is not None:
            os.close(waiting)


def check_folder(path: Path, folder: Path, st: os.stat_result) -> None:
    """Refuse (InvalidInput) a mount `folder` where another user could rename
    or replace the mount: one owned by another user than crate's (or root),
    or one its group (unless it is the user's private group) or everyone can
    write to without the sticky bit."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (os.geteuid(), 0):
        problem = f"its folder {folder} belongs to another user (uid {st.st_uid})"
        hint = "choose a folder of your own, or one with the sticky bit such as /tmp"
    elif (
        mode & stat.S_IWOTH or (mode & stat.S_IWGRP and not own_private_group(st.st_gid))
    ) and not mode & stat.S_ISVTX:
        who = "every user" if mode & stat.S_IWOTH else "its group"
        problem = f"{who} can write to its folder {folder} (mode {mode:04o}, no sticky bit)"
        hint = (
            f"make the folder writable by you alone (chmod go-w {folder}), or choose one "
            "with the sticky bit such as /tmp"
        )
    else:
        return
    raise InvalidInput(
        f"cannot mount the secrets at {path}: {problem}, so another user could replace "
        "the mount with a file of their own",
        hint,
    )


def own_private_group(gid: int) -> bool:
    """Whether group `gid` is this user's private group (the user's primary
    group, named after the user, with no other members): then a folder that
    the group may write to is no one else's to write to. Debian and Ubuntu
    give each user such a group, and with a umask of 002 new folders are
    group-writable."""
    import grp
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return (
        gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}
    )


def _crates_fifo(st: os.stat_result) -> bool:
    return stat.S_ISFIFO(st.st_mode) and st.st_uid == os.geteuid()


def _create_private(path: Path, content: bytes) -> Inode:
    """A new 0600 file holding `content`; its inode. An existing path (or
    symlink) is an error: the content goes only to the file this creates.

    Not config.write_private_file: that one replaces what is there and makes
    the folder private, and this folder is the user's.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        write_all(fd, content)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def _notice(text: str) -> None:
    write_all(2, f"crate: {text}\n".encode())


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
